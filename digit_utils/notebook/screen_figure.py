"""The zoo's screening figure: accuracy against the training budget, one line per architecture,
ending where each stopped (kept apart from :mod:`plots`, which is long already)."""

from __future__ import annotations

import matplotlib.pyplot as plt
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
