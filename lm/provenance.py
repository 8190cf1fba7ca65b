"""Where a number came from: code version, machine and date, recorded beside every result.

Every file that holds a result (``result.json`` of a run, ``rank.json``, ``summary.json``, the benchmark
files of ``scripts/``) takes its provenance from here, so they all carry the same keys:
``git_commit``, ``git_dirty`` (``code_version()``), ``date`` and the machine (``provenance()``).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

_REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the checkout this code runs from, or None outside a git checkout."""
    return _git("rev-parse", "HEAD")


def git_dirty() -> bool | None:
    """Whether tracked files differ from that commit (None outside a git checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def code_version() -> dict:
    """``{"git_commit", "git_dirty"}`` of the code that writes a result."""
    return {"git_commit": git_commit(), "git_dirty": git_dirty()}


def machine(device: torch.device | str = "cpu") -> dict:
    device = torch.device(device)
    info = {
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "load_average_1_5_15_min": _load_average(),  # how busy the machine was as the file was written
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none): a timing taken on a shared
    machine shows here, e.g. a one-thread run on 2 cores with more than one other job beside it."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def provenance(device: torch.device | str = "cpu") -> dict:
    """Code version, date and machine: the keys every result file records."""
    return {**code_version(), "date": now(), **machine(device)}
