"""The zoo's figures: the screening (accuracy against the training budget, one line per
architecture, ending where each stopped) and accuracy against inference time (kept apart from
:mod:`plots`, which is long already)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

CHANCE = 0.2  # below this an architecture learnt nothing yet; it would flatten the others


def screening(scores: pd.DataFrame, last_rung: int) -> plt.Figure:
    """``scores`` (one row per architecture and rung: model, rung, budget, accuracy): a line per
    architecture over epochs × folds (log); a filled circle where it reached ``last_rung``, a
    cross where it stopped earlier."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    colours = plt.get_cmap("tab20")
    learnt = scores[scores.accuracy > CHANCE]
    for i, (model, rows) in enumerate(scores.groupby("model", sort=False)):
        rows = rows.sort_values("rung")
        shown = rows[rows.accuracy > CHANCE]
        if shown.empty:
            continue
        end = rows.iloc[-1]
        colour = colours(i % 20)
        ax.plot(shown.budget, shown.accuracy * 100, "-", color=colour, alpha=0.7, label=model)
        ax.plot(end.budget, end.accuracy * 100, "o" if end.rung == last_rung else "x",
                color=colour, markersize=7, markeredgewidth=2)  # fmt: skip
    if 0 < len(learnt) < len(scores):
        off = ", ".join(sorted(set(scores.model) - set(learnt.model))) or "none"
        ax.text(0.01, 0.01, f"below {CHANCE:.0%} at every rung reached (not drawn): {off}",
                transform=ax.transAxes, fontsize=8, color="gray")  # fmt: skip
    budgets = sorted(set(scores.budget))
    ax.set_xscale("log")
    ax.set_xticks(budgets)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.minorticks_off()
    ax.set(
        xlabel="budget per architecture: epochs × folds (log)",
        ylabel="accuracy on the rung's held-out rows (%)",
        title="Screening: accuracy at each budget (o: reached the last rung, x: stopped)",
    )
    ax.legend(fontsize=7, ncol=1 + len(set(scores.model)) // 12, loc="center left",
              bbox_to_anchor=(1.01, 0.5))  # fmt: skip
    fig.tight_layout()
    return fig


def _bubble(params, largest: float):
    """Marker area (points²) for a parameter count: area grows with the square root, so a
    100-fold larger model is a 10-fold larger bubble, not one that hides the others."""
    return 40 + 400 * np.sqrt(np.asarray(params, dtype=float) / largest)


def _count(n: float) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:.3g}"


def _size_key(ax, params: pd.Series) -> None:
    """A legend of bubble areas: powers of ten within the range of ``params`` (or its ends)."""
    low, high = params.min(), params.max()
    keys = [10.0**k for k in range(int(np.ceil(np.log10(low))), int(np.log10(high)) + 1)]
    keys = keys if len(keys) >= 2 else sorted({float(low), float(high)})
    handles = [
        ax.scatter([], [], s=_bubble(k, high), color="C0", alpha=0.6, label=_count(k))
        for k in keys
    ]
    ax.legend(handles=handles, title="parameters", loc="upper left", bbox_to_anchor=(1.01, 1),
              labelspacing=1.3, borderpad=1, frameon=False)  # fmt: skip


def accuracy_vs_speed(board: pd.DataFrame) -> plt.Figure:
    """Holdout accuracy against inference time, bubble area by parameter count (with its key)."""
    fig, ax = plt.subplots(figsize=(8.5, 5))
    x, y = board["infer_ms_per_1000"], board["val_acc"] * 100
    ax.scatter(x, y, s=_bubble(board["params"], board["params"].max()), alpha=0.6)
    learnt = board[board["val_acc"] > CHANCE]  # a model left at chance would flatten the rest
    if 0 < len(learnt) < len(board):
        low = learnt["val_acc"].min() * 100
        ax.set_ylim(low - (100 - low) * 0.3, 100 + (100 - low) * 0.1)
        off = ", ".join(board.loc[board["val_acc"] <= CHANCE, "model"])
        ax.text(0.01, 0.01, f"off the scale (near chance): {off}", transform=ax.transAxes,
                fontsize=8, color="gray")  # fmt: skip
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.08)  # whole bubbles at the edges
    fig.canvas.draw()  # the limits are final: labels in the right third point left
    right = ax.transAxes.inverted()
    for _, row in learnt.iterrows():
        point = (row["infer_ms_per_1000"], row["val_acc"] * 100)
        at_right = right.transform(ax.transData.transform(point))[0] > 0.7
        ax.annotate(row["model"], point, fontsize=8, textcoords="offset points",
                    xytext=(-6, 6) if at_right else (6, 6), ha="right" if at_right else "left",
                    annotation_clip=False)  # fmt: skip
    ax.set(
        xlabel="inference ms per 1,000 images (log)",
        ylabel="out-of-fold accuracy (%)",
        title="Accuracy against inference time (bubble area: parameters)",
    )
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")  # 200, not 2×10²
    few = FuncFormatter(lambda v, _: f"{v:,.0f}" if f"{v:.0e}"[0] in "25" else "")  # 20, 50
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(few)  # every minor label would collide (600700800900)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    _size_key(ax, board["params"])
    fig.tight_layout()
    return fig
