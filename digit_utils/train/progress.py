"""Progress bars that read well wherever they end up: the terminal, a live notebook, and the
saved notebook as GitHub or the HTML report shows it.

Widgets (tqdm.auto in Jupyter) are stored as "0%" wherever they cannot render, so inside a
notebook kernel every bar is plain text on stdout, updated at most every few seconds (the
pipeline folds the carriage returns away when it saves the notebook), and inner bars (one per
epoch's batches) are not drawn at all: one bar per run.
"""

from __future__ import annotations

import sys

from tqdm.std import tqdm

NOTEBOOK_INTERVAL_S = 5.0  # the fewer updates, the smaller the saved notebook


def in_notebook() -> bool:
    """True inside a Jupyter kernel (papermill, Kaggle, Jupyter), False in a terminal."""
    return "ipykernel" in sys.modules


def bar(iterable=None, *, inner: bool = False, disable: bool = False, **kw) -> tqdm:
    """A tqdm bar; in a notebook a text one on stdout, and none at all for an ``inner`` bar."""
    if in_notebook():
        disable = disable or inner
        kw = {"file": sys.stdout, "mininterval": NOTEBOOK_INTERVAL_S, "ncols": 100, **kw}
    return tqdm(iterable, disable=disable, **kw)
