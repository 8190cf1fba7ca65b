"""What the benchmark scripts that time each case in a fresh process share: running a case there (its own
peak memory, the load average around it) and the head of the JSON they write (command, provenance)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lm.io import atomic_write_json  # noqa: E402  (light: no torch; the scripts write their JSON with it)


def run_case(script: str, spec: dict) -> dict:
    """``python SCRIPT --worker SPEC`` in a fresh process; its last stdout line (JSON) with the load
    average before and after. A failed case ends the benchmark with its error output."""
    before = os.getloadavg()
    done = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    if done.returncode != 0:
        raise SystemExit(f"case {spec} failed:\n{done.stderr}")
    case = json.loads(done.stdout.strip().splitlines()[-1])
    return {**case, "load_average_before": list(before), "load_average_after": list(os.getloadavg())}


def header(name: str, script: str) -> dict:
    """The command that reproduces the file, the code version, date and machine (lm.provenance), and the
    versions of the numerical libraries."""
    import numpy as np
    import scipy

    from lm.provenance import provenance  # imported here: workers that import this module stay light

    return {"benchmark": name, "command": shlex.join(["python", f"scripts/{Path(script).name}", *sys.argv[1:]]),
            **provenance("cpu"), "numpy_version": np.__version__, "scipy_version": scipy.__version__,
            "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
            "blas_threads": os.environ.get("OMP_NUM_THREADS", "library default")}
