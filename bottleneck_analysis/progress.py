"""A tqdm progress bar behind the ``progress(n_done, n_total)`` callbacks of the quiet library (CLI only)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A callback ``(n_done, n_total)`` drawing a tqdm bar on stderr; the bar opens at the first call and
    closes when the context ends (or is replaced when ``n_total`` changes, for a second stage)."""
    from tqdm import tqdm

    state: dict = {"bar": None}

    def update(n_done: int, n_total: int) -> None:
        bar = state["bar"]
        if bar is None or bar.total != n_total:
            if bar is not None:
                bar.close()
            bar = state["bar"] = tqdm(total=n_total, desc=description, file=sys.stderr, leave=False,
                                      dynamic_ncols=True, mininterval=0.5)
        bar.update(n_done - bar.n)

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].close()


@contextlib.contextmanager
def staged_progress(descriptions: dict[str, str]) -> Iterator[Callable[[str, int, int], None]]:
    """A callback ``(stage, n_done, n_total)`` with one tqdm bar per stage (opened when the stage starts,
    the previous one closed); ``descriptions`` maps stage names to the bars' labels."""
    from tqdm import tqdm

    state: dict = {"stage": None, "bar": None}

    def update(stage: str, n_done: int, n_total: int) -> None:
        if stage != state["stage"] or state["bar"] is None or state["bar"].total != n_total:
            if state["bar"] is not None:
                state["bar"].close()
            state["stage"] = stage
            state["bar"] = tqdm(total=n_total, desc=descriptions.get(stage, stage), file=sys.stderr, leave=False,
                                dynamic_ncols=True, mininterval=0.5)
        state["bar"].update(n_done - state["bar"].n)

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].close()
