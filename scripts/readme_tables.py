"""Write the README's tables from the summaries (``<!-- table:FOLDER[#CORPUS] -->`` markers, see lm/readme.py).

    python scripts/readme_tables.py README.md            # replace every marked table
    python scripts/readme_tables.py README.md --check    # exit 1 when a table differs from its summary

Each FOLDER (relative to the README) must hold a ``summary.json`` written by ``softmax-bench plot FOLDER``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lm.errors import UserError  # noqa: E402
from lm.readme import update_readme  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("readme", nargs="+", help="markdown files with table markers")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a table is out of date")
    args = parser.parse_args(argv)
    stale = []
    try:
        for readme in args.readme:
            names, changed = update_readme(readme, check=args.check)
            if changed:
                stale.append(readme)
            state = ("out of date" if args.check else "updated") if changed else "up to date"
            print(f"{readme}: {len(names)} table{'' if len(names) == 1 else 's'} ({', '.join(names) or 'no markers'}); {state}")
    except UserError as error:
        print(f"readme_tables: error: {error}", file=sys.stderr)
        return 2
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
