"""The README's tables, written from the summaries by a command, never by hand.

A README marks each table with a pair of comments naming a results folder (relative to the README's
folder) and optionally one corpus of it::

    <!-- table:results/study-ptb#ptb -->
    (replaced by the markdown table of results/study-ptb/summary.json, rows of corpus ptb)
    <!-- /table:results/study-ptb#ptb -->

``FOLDER#rank-full`` names the folder's table of whole-split ranks instead (its runs with a
``rank-full.json``; ``full_rank`` in ``summary.json``), and ``FOLDER#matched-compute`` (or
``FOLDER#CORPUS/matched-compute``) its table of where each head stands at softmax's training seconds, both
without the summary's title and sentence.

:func:`update_readme` replaces what lies between every pair with the table of that folder's
``summary.json`` (written by ``softmax-bench plot FOLDER``), leaving everything else as it is. Used by
``softmax-bench plot FOLDER --readme README.md`` and ``scripts/readme_tables.py README.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

from lm import io
from lm.errors import UserError

FULL_RANK = "rank-full"  # the fragment of a marker that names the whole-split rank table, not a corpus
MATCHED_COMPUTE = "matched-compute"  # the fragment (alone or after CORPUS/) that names the matched-compute table

# A marker stands on a line of its own (so prose that quotes the syntax, e.g. in backticks, is not one).
OPENING = re.compile(r"^<!-- table:(?P<name>[^\s>]+) -->$", re.M)
BLOCK = re.compile(r"^<!-- table:(?P<name>[^\s>]+) -->$(?P<body>.*?)^<!-- /table:(?P=name) -->$", re.S | re.M)


def table(name: str, base: Path) -> str:
    """The markdown of the marker ``name`` (``FOLDER``, ``FOLDER#CORPUS``, ``FOLDER#rank-full``,
    ``FOLDER#matched-compute`` or ``FOLDER#CORPUS/matched-compute``), ``FOLDER`` relative to ``base``."""
    from lm.summary import full_rank_markdown, markdown_tables, matched_compute_markdown, read_full_rank, read_summary

    folder, _, dataset = name.partition("#")
    kind = ""
    if dataset == MATCHED_COMPUTE or dataset.endswith("/" + MATCHED_COMPUTE):
        dataset, kind = dataset[:-len(MATCHED_COMPUTE)].rstrip("/"), MATCHED_COMPUTE
    if dataset == FULL_RANK:
        full = read_full_rank(base / folder)
        if full.empty:
            raise UserError(f"table marker {name}: no run of {base / folder} has a rank-full.json (softmax-bench rank "
                            f"RUN --output rank-full.json), or its summary.json is older than them; run softmax-bench "
                            f"plot {base / folder} again.")
        return full_rank_markdown(full, title=False)
    frame = read_summary(base / folder)
    if "test_ppl_ci95_low" not in frame.columns:
        raise UserError(f"{base / folder}/summary.json was written by an older version; run softmax-bench plot "
                        f"{base / folder} again.")
    if dataset:
        choices = sorted({str(d) for d in frame["dataset"]})
        frame = frame[frame["dataset"] == dataset]
        if frame.empty:
            raise UserError(f"table marker {name}: {base / folder} has no runs on corpus {dataset}; it has: {', '.join(choices)}.")
    if kind == MATCHED_COMPUTE:
        matched = matched_compute_markdown(frame, title=False)
        if not matched:
            raise UserError(f"table marker {name}: no run of {base / folder} has validation curves beside a softmax run "
                            f"at the same setting (or its summary.json is older than the matched-compute columns; run "
                            f"softmax-bench plot {base / folder} again).")
        return matched
    blocks = len({(d, b) for d, b in zip(frame["dataset"], frame["body"])})
    return markdown_tables(frame, headings=blocks > 1)


def _folder(name: str, base: Path) -> Path:
    return (base / name.partition("#")[0]).resolve()


def render(text: str, base: Path, only: Path | None = None) -> tuple[str, list[str]]:
    """``text`` with every marked table replaced (only those of the folder ``only`` when given) and the
    names of the markers replaced."""
    openings = [m["name"] for m in OPENING.finditer(text)]
    blocks = [m["name"] for m in BLOCK.finditer(text)]
    for name in openings:
        if openings.count(name) != blocks.count(name):
            raise UserError(f"table marker <!-- table:{name} --> has no closing <!-- /table:{name} --> after it.")
    replaced = []

    def replace(match: re.Match) -> str:
        name = match["name"]
        if only is not None and _folder(name, base) != Path(only).resolve():
            return match.group(0)
        replaced.append(name)
        return f"<!-- table:{name} -->\n\n{table(name, base)}\n\n<!-- /table:{name} -->"

    return BLOCK.sub(replace, text), replaced


def update_readme(readme: str | Path, only: str | Path | None = None, check: bool = False) -> tuple[list[str], bool]:
    """Replace the marked tables of ``readme`` (only those of folder ``only`` when given); return the
    marker names and whether the file changed. With ``check`` nothing is written."""
    readme = Path(readme)
    if not readme.is_file():
        raise UserError(f"README {readme} does not exist.")
    text = readme.read_text(encoding="utf-8")
    new, names = render(text, readme.parent, only)
    if new != text and not check:
        io.atomic_write_text(readme, new)
    return names, new != text
