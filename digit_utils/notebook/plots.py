"""Every figure the notebooks show. Each function returns a Figure; ``save`` writes it as PNG.

Over 300 lines: one function per figure, and the figures belong together."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import patheffects
from matplotlib.ticker import MaxNLocator

from digit_utils import atomic

sns.set_theme(context="notebook", style="whitegrid")
DIGITS = list(range(10))


def save(fig: plt.Figure, folder: str | Path, name: str, dpi: int = 110) -> Path:
    """Write ``fig`` as ``folder/name.png`` and return the path (the notebook still shows it)."""
    path = Path(folder) / f"{name}.png"

    def write(fh):
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")

    return atomic.atomic_write(path, write, mode="wb")  # a full disk leaves no half figure


def _image_grid(
    images: np.ndarray, titles: Sequence[str] | None, ncols: int, size: float = 1.1, **title_kw
) -> plt.Figure:
    """Digits ``[n,1,28,28]`` or ``[n,28,28]`` in a grid, optional title under each."""
    images = np.asarray(images).reshape(-1, 28, 28)
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=255)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8, **title_kw)
    fig.tight_layout()
    return fig


def _grid_title(fig: plt.Figure, title: str) -> plt.Figure:
    """A title above an image grid, in space made for it (a plain suptitle overlaps the first
    row's captions once tight_layout has run)."""
    lines = title.count("\n") + 1
    height = fig.get_figheight()
    room = 0.32 * lines + 0.3  # inches for the title and a gap above the first captions
    fig.set_figheight(height + room)
    fig.subplots_adjust(top=height / (height + room))
    fig.suptitle(title, y=1 - 0.05 / (height + room), va="top")
    return fig


def _epoch_axis(ax) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 2.5


# ---------------------------------------------------------------------------- exploring data


def class_balance(labels: np.ndarray, title: str = "Digits in train.csv") -> plt.Figure:
    counts = np.bincount(labels, minlength=10)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    sns.barplot(x=DIGITS, y=counts, ax=ax, color="steelblue")
    for d, c in enumerate(counts):
        ax.text(d, c, f"{c:,}", ha="center", va="bottom", fontsize=8)
    ax.axhline(counts.mean(), ls="--", color="gray", lw=1, label="mean")
    ax.set(xlabel="digit", ylabel="images", title=title)
    ax.legend(loc="lower right")
    return fig


def samples_per_class(images: np.ndarray, labels: np.ndarray, per_class: int = 10, seed=0):
    """A row of random examples for each digit."""
    rng = np.random.default_rng(seed)
    rows = [
        rng.choice(np.flatnonzero(labels == d), per_class, replace=False)
        for d in DIGITS
        if (labels == d).sum() >= per_class
    ]
    fig = _image_grid(images[np.concatenate(rows)], None, per_class, size=0.8)
    return _grid_title(fig, "Random training digits, one row per class")


def mean_images(images: np.ndarray, labels: np.ndarray) -> plt.Figure:
    """The average digit of each class: where the ink usually goes."""
    means = np.stack([images[labels == d].mean(axis=0) for d in DIGITS])
    fig = _image_grid(means, [str(d) for d in DIGITS], 10, size=1.2)
    return _grid_title(fig, "Mean image per class")


def intensity_distributions(images: np.ndarray, labels: np.ndarray) -> plt.Figure:
    """Left: histogram of non-zero pixel values. Right: ink (sum of pixels / 255) per digit."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.5))
    flat = images.reshape(len(images), -1)
    nonzero = flat[flat > 0]
    a.hist(nonzero, bins=64, color="slategray")
    a.set(
        yscale="log",
        xlabel="pixel value (non-zero only)",
        ylabel="count (log)",
        title=f"{(flat == 0).mean():.0%} of pixels are exactly 0",
    )
    ink = flat.sum(axis=1) / 255.0
    sns.boxplot(x=labels, y=ink, ax=b, color="lightsteelblue", fliersize=1)
    b.set(xlabel="digit", ylabel="ink (pixel sum / 255)", title="Ink per digit")
    fig.tight_layout()
    return fig


def _spread(points: np.ndarray, gap: float = 0.05, rounds: int = 50) -> np.ndarray:
    """Nudge 2-D points (axes fractions) apart until no two are closer than ``gap``: labels at
    nearby centroids stay readable, each as close to its own centroid as the others allow."""
    p = np.array(points, dtype=float)
    for _ in range(rounds):
        diff = p[:, None] - p[None]  # (n, n, 2)
        dist = np.hypot(diff[..., 0], diff[..., 1]) + np.eye(len(p))
        if dist.min() >= gap:
            break
        push = np.where(dist < gap, (gap - dist) / 2 / dist, 0)[..., None] * diff
        p += push.sum(axis=1)
    return p


def embedding(
    coords: np.ndarray, labels: np.ndarray, title: str, variance: Sequence[float] | None = None
) -> plt.Figure:
    """A 2-D embedding coloured by digit, each digit's label once at its class's centroid (or,
    where centroids crowd, nudged just clear of the others).

    ``variance``: the share of variance of each axis (PCA), written into the axis labels."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    palette = dict(zip(DIGITS, sns.color_palette("tab10", 10), strict=True))
    sns.scatterplot(
        x=coords[:, 0], y=coords[:, 1], hue=labels, palette=palette, s=6, linewidth=0, ax=ax
    )
    outline = [patheffects.withStroke(linewidth=4, foreground="white")]  # legible over points
    label = {"fontsize": 15, "weight": "bold", "ha": "center", "va": "center"}
    present = [d for d in DIGITS if (labels == d).any()]
    centres = np.array([coords[labels == d].mean(axis=0) for d in present]).reshape(-1, 2)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    lo, span = np.array([x0, y0]), np.array([x1 - x0, y1 - y0])
    at = _spread((centres - lo) / span)  # in axes fractions, so both axes weigh alike
    for d, (x, y) in zip(present, at, strict=True):
        ax.text(
            x, y, str(d), color=palette[d], path_effects=outline, transform=ax.transAxes, **label
        )
    ax.set(title=title, xticks=[], yticks=[])
    if variance is not None:
        ax.set(
            xlabel=f"PC1 ({variance[0]:.1%} of variance)",
            ylabel=f"PC2 ({variance[1]:.1%} of variance)",
        )
    ax.legend(title="digit", bbox_to_anchor=(1.02, 1), loc="upper left", markerscale=2)
    return fig


def train_vs_test(train: np.ndarray, test: np.ndarray) -> plt.Figure:
    """Ink distribution overlay plus the difference of the mean images (test − train)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    for name, imgs in (("train", train), ("test", test)):
        ink = imgs.reshape(len(imgs), -1).sum(axis=1) / 255.0
        sns.kdeplot(ink, ax=a, label=f"{name} (n={len(imgs):,})", fill=True, alpha=0.3)
    a.set(xlabel="ink per image", title="Ink distribution, train vs test")
    a.legend()
    diff = test.mean(axis=0)[0] - train.mean(axis=0)[0]
    lim = max(1.0, float(np.abs(diff).max()))
    im = b.imshow(diff, cmap="coolwarm", vmin=-lim, vmax=lim)
    b.set(title="mean test − mean train", xticks=[], yticks=[])
    fig.colorbar(im, ax=b, shrink=0.8, label="grey levels")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------ augmentation


def augmentation_gallery(gallery: np.ndarray, title: str = "") -> plt.Figure:
    """``gallery`` is ``[n_images, n_draws, 28, 28]``: the first column is the original."""
    n_images, n_draws = gallery.shape[:2]
    titles = [
        "original" if j == 0 else f"draw {j}" for _ in range(n_images) for j in range(n_draws)
    ]
    fig = _image_grid(gallery.reshape(-1, 28, 28), titles, n_draws, size=0.95)
    return _grid_title(fig, title) if title else fig


def learning_curves(histories: pd.DataFrame, hue: str, title: str) -> plt.Figure:
    """Validation accuracy (%) by epoch, one line per ``hue`` value: the mean over its runs
    (seeds or folds) with a band of ± one sd."""
    fig, ax = plt.subplots(figsize=(8, 4))
    data = histories.assign(val_acc_pct=histories["val_acc"] * 100)
    sns.lineplot(data=data, x="epoch", y="val_acc_pct", hue=hue, marker="o", errorbar="sd", ax=ax)
    _epoch_axis(ax)
    last = data[data.epoch == data.epoch.max()]["val_acc_pct"]
    ax.set_ylim(max(0, min(last.min() - 5, data["val_acc_pct"].quantile(0.1))), 100)
    ax.set(title=title, ylabel="validation accuracy (%)")
    return fig


def decision(table: pd.DataFrame, title: str, xlabel: str = "accuracy (%)") -> plt.Figure:
    """A :class:`stats.Decision` table: each candidate's accuracy with its 95% interval, the
    chosen one in orange, those the best does not beat (McNemar) in blue, the rest grey."""
    t = table.iloc[::-1]  # simplest at the top
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(t) + 1.4))
    for y, (_, row) in enumerate(t.iterrows()):
        color = "darkorange" if row["chosen"] else "steelblue" if row["within_noise"] else "gray"
        acc, lo, hi = row["accuracy"] * 100, row["low"] * 100, row["high"] * 100
        ax.errorbar(acc, y, xerr=[[acc - lo], [hi - acc]], fmt="o", color=color, capsize=4)
        note = f" {acc:.2f}% ({int(row['errors'])} errors)" + ("  chosen" if row["chosen"] else "")
        ax.text(hi, y, note, va="center", fontsize=8, color=color)
    ax.set_yticks(range(len(t)), t.index)
    sane = t[t["accuracy"] > 0.2]  # a model at chance would flatten the others
    low = (sane if len(sane) else t)["low"].min() * 100
    ax.set_xlim(max(0, low - (100 - low) * 0.25), 100 + (100 - low) * 0.45)
    if len(sane) < len(t):
        off = ", ".join(t.index[t.accuracy <= 0.2])
        ax.text(0.01, 0.01, f"off the scale (near chance): {off}", transform=ax.transAxes,
                fontsize=8, color="gray")  # fmt: skip
    ax.set_xticks([x for x in ax.get_xticks() if x <= 100])  # room for labels, not for 104%
    ax.set(xlabel=f"{xlabel}, 95% interval ({int(t['rows'].iloc[0]):,} rows)", title=title)
    return fig


# --------------------------------------------------------------------------------- training


def training_history(histories: pd.DataFrame, title: str, loss_floor: float = 0.0):
    """Loss and validation accuracy by epoch, mean ± sd over the runs in ``histories``.

    ``loss_floor`` (label smoothing's lowest possible training loss) is drawn as a line: the
    training loss cannot go below it, the plain validation loss can.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.6))
    long = histories.melt(id_vars="epoch", value_vars=["train_loss", "val_loss"], var_name="loss")
    long["loss"] = long["loss"].map({"train_loss": "training", "val_loss": "validation"})
    sns.lineplot(data=long, x="epoch", y="value", hue="loss", marker="o", errorbar="sd", ax=a)
    if loss_floor > 0:
        a.axhline(loss_floor, ls="--", color="gray", lw=1, label="smoothing floor")
    n_keys = len(a.get_legend_handles_labels()[0])  # below the axes: the curves stay uncovered
    a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=n_keys, frameon=False)
    a.set(ylabel="cross-entropy", title="Loss (training: in training mode, smoothed targets)")
    acc = histories.assign(pct=histories.val_acc * 100)
    sns.lineplot(data=acc, x="epoch", y="pct", marker="o", errorbar="sd", color="seagreen", ax=b)
    peak = acc.groupby("epoch")["pct"].mean()
    b.axvline(peak.idxmax(), ls=":", color="gray", lw=1)
    b.set(
        ylabel="validation accuracy (%)",
        title=f"Validation accuracy (peak at epoch {peak.idxmax()})",
    )
    b.set_ylim(max(0, peak.iloc[len(peak) // 3 :].min() - 1), 100)
    for ax in (a, b):
        _epoch_axis(ax)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def lr_schedule(lr: np.ndarray, steps_per_epoch: int, title: str) -> plt.Figure:
    """The learning rate at every optimiser step (warm-up included), epochs marked on top."""
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.plot(np.arange(1, len(lr) + 1), lr, color="darkorange")
    ax.set(xlabel="optimiser step", ylabel="learning rate", title=title, ylim=(0, lr.max() * 1.08))
    top = ax.secondary_xaxis(
        "top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch)
    )
    top.set_xlabel("epoch")
    top.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def confusion(y_true: np.ndarray, y_pred: np.ndarray, title: str = "") -> plt.Figure:
    """Confusion counts with the diagonal masked, so the rare mistakes are readable."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(y_true, y_pred, labels=DIGITS)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    sns.heatmap(
        cm,
        annot=True,
        fmt="d",
        cmap="Reds",
        mask=np.eye(10, dtype=bool),
        ax=ax,
        cbar_kws={"label": "mistakes"},
    )
    ax.grid(False)  # the style's grid would cross the diagonal's counts
    ax.collections[0].colorbar.locator = MaxNLocator(integer=True)  # counts, never 0.5
    ax.collections[0].colorbar.update_ticks()
    for d in DIGITS:
        ax.text(d + 0.5, d + 0.5, cm[d, d], ha="center", va="center", color="gray", fontsize=8)
    acc = np.trace(cm) / max(1, cm.sum())
    ax.set(xlabel="predicted", ylabel="true", title=title or f"Confusion (accuracy {acc:.2%})")
    return fig


def per_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> plt.Figure:
    """Accuracy per digit, its value on each bar; the axis starts just below the weakest class
    (gaps of tenths of a percent would vanish from 0), and the title says where."""
    acc = np.array(
        [(y_pred[y_true == d] == d).mean() if (y_true == d).any() else np.nan for d in DIGITS]
    )
    pct = acc * 100
    fig, ax = plt.subplots(figsize=(8, 3.2))
    bars = ax.bar(DIGITS, np.nan_to_num(pct), color="seagreen")
    ax.set_xticks(DIGITS)
    low = float(np.floor(max(0, np.nanmin(pct) - 1)))
    ax.set_ylim(low, 100 + (100 - low) * 0.12)  # room for the labels above a 100% bar
    ax.set_yticks([t for t in ax.get_yticks() if low <= t <= 100])
    labels = ["no rows" if np.isnan(p) else f"{p:.2f}" for p in pct]
    ax.bar_label(bars, labels, padding=2, fontsize=8)
    where = f"axis from {low:g}%, not 0" if low > 0 else "axis from 0"
    ax.set(xlabel="digit", ylabel="accuracy (%)", title=f"Accuracy per class ({where})")
    return fig


def digit_grid(images, titles: Sequence[str], ncols: int = 10, title: str = "") -> plt.Figure:
    """Digits with a caption each (misclassified or least-confident examples)."""
    if len(images) == 0:
        fig, ax = plt.subplots(figsize=(6, 1))
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        return fig
    fig = _image_grid(images, titles, min(ncols, max(len(images), 6)), size=1.25)
    return _grid_title(fig, title) if title else fig


# ----------------------------------------------------------------------- zoo and ensembles


def class_distribution(pred: np.ndarray, reference: np.ndarray | None = None) -> plt.Figure:
    """Predicted test classes as shares, beside the training labels' shares when given."""
    bars = {"predicted test": pred}
    if reference is not None:
        bars["train labels"] = reference
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(bars)
    for i, (name, values) in enumerate(bars.items()):
        share = np.bincount(values, minlength=10) / len(values)
        ax.bar(np.arange(10) + (i - (len(bars) - 1) / 2) * width, share, width, label=name)
    ax.set_xticks(DIGITS)
    ax.set(xlabel="digit", ylabel="share of images", title="Class shares: predicted test vs train")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the bars, never on them
    return fig


def mistakes(images: np.ndarray, y_true: np.ndarray, proba: np.ndarray, what: str, limit=30):
    """The misclassified digits, worst first: ranked by the probability left on the true label.

    Caption ``true→predicted`` and, below, ``p(true)`` / ``p(predicted)``.
    """
    pred = proba.argmax(axis=1)
    p_true = proba[np.arange(len(y_true)), y_true]
    wrong = np.flatnonzero(pred != y_true)
    shown = wrong[np.argsort(p_true[wrong], kind="stable")][:limit]
    titles = [f"{y_true[i]}→{pred[i]}\n{p_true[i]:.2f} / {proba[i, pred[i]]:.2f}" for i in shown]
    return digit_grid(
        images[shown],
        titles,
        title=f"{what}: {len(wrong)} mistakes in {len(y_true):,} digits, worst first\n"
        "caption: true→predicted, then p(true) / p(predicted)",
    )


def least_confident(images: np.ndarray, proba: np.ndarray, limit: int = 30):
    """The digits the model is least sure about, captioned with its top two guesses."""
    top2 = np.argsort(-proba, axis=1)[:, :2]
    order = np.argsort(proba.max(axis=1))[:limit]
    titles = [
        f"{top2[i, 0]} {proba[i, top2[i, 0]]:.2f} / {top2[i, 1]} {proba[i, top2[i, 1]]:.2f}"
        for i in order
    ]
    return digit_grid(images[order], titles, title="Least confident predictions (top two guesses)")


def suspects(images: np.ndarray, table: pd.DataFrame, what: str) -> plt.Figure:
    """Ranked training rows (``suspects.rank``'s table, its first rows) with their images:
    caption ``#row``, ``given→predicted`` and the loss of the given label."""
    titles = [f"#{r.row}\n{r.label}→{r.predicted}  {r.loss:.2f}" for r in table.itertuples()]
    return digit_grid(
        images[table["row"].to_numpy()],
        titles,
        title=f"{what}: the {len(table)} rows whose given label the models disagree with most\n"
        "caption: #row, given→predicted, then the loss of the given label",
    )
