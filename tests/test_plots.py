"""The figures' promises a reader relies on: labels, legends off the data, honest axes."""

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from digit_utils.notebook import eda, plots, zoo_figures


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    matplotlib.pyplot.close("all")


def _digits(n=300, seed=0):
    """Random 'digits' whose classes differ in where the ink goes, so PCA has structure."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, (n, 1, 28, 28)).astype(np.uint8)
    for d in range(10):
        images[labels == d, 0, 2 * d : 2 * d + 6, 4:24] = 250
    return images, labels


def _legend_clear_of_axes(fig, ax, legend) -> bool:
    fig.canvas.draw()
    return not legend.get_window_extent().overlaps(ax.get_window_extent())


def test_pca_variance_is_the_share_of_the_coordinates():
    images, _ = _digits()
    coords, variance = eda.pca(images)
    pixels = images.reshape(len(images), -1) / 255.0
    assert coords.shape == (len(images), 2) and variance.shape == (2,)
    shares = coords.var(axis=0) / pixels.var(axis=0).sum()
    np.testing.assert_allclose(shares, variance, rtol=1e-3)
    assert variance[0] >= variance[1] > 0


def test_embedding_labels_each_class_once_and_names_the_variance():
    images, labels = _digits()
    keep = labels != 7  # a class absent from the sample gets no label
    coords, variance = eda.pca(images[keep])
    ax = plots.embedding(coords, labels[keep], "PCA", variance).axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == [str(d) for d in range(10) if d != 7]
    assert ax.get_xlabel() == f"PC1 ({variance[0]:.1%} of variance)"
    assert ax.get_ylabel() == f"PC2 ({variance[1]:.1%} of variance)"
    for t in ax.texts:  # at its centroid, or nudged at most a little (display units)
        centroid = ax.transData.transform(coords[labels[keep] == int(t.get_text())].mean(axis=0))
        shift = t.get_transform().transform(t.get_position()) - centroid
        assert np.hypot(*shift) < 0.1 * ax.get_window_extent().width, t.get_text()
    assert all(t.get_path_effects() for t in ax.texts), "white outline to read over the points"


def test_spread_keeps_labels_apart_and_leaves_lone_ones_alone():
    points = np.array([[0.5, 0.5], [0.51, 0.5], [0.5, 0.52], [0.9, 0.1]])
    out = plots._spread(points, gap=0.05)
    dist = np.hypot(*(out[:, None] - out[None]).transpose(2, 0, 1)) + np.eye(4)
    assert dist.min() >= 0.05 - 1e-6
    assert np.allclose(out[3], points[3]) and np.abs(out - points).max() < 0.06


def test_embedding_without_variance_has_no_pc_labels():
    images, labels = _digits()
    ax = plots.embedding(images.reshape(len(images), -1)[:, :2], labels, "t-SNE").axes[0]
    assert "PC" not in ax.get_xlabel() + ax.get_ylabel()


def test_class_shares_legend_is_off_the_bars():
    rng = np.random.default_rng(0)
    fig = plots.class_distribution(rng.integers(0, 10, 500), rng.integers(0, 10, 800))
    ax = fig.axes[0]
    assert _legend_clear_of_axes(fig, ax, ax.get_legend())


def test_per_class_bars_carry_their_values_and_the_title_names_the_baseline():
    y_true = np.repeat(np.arange(10), 100)
    y_pred = y_true.copy()
    y_pred[:3] = 1  # digit 0: 97 of 100 right
    y_pred[500:510] = 0  # digit 5: 90 of 100 right
    fig = plots.per_class_accuracy(y_true, y_pred)
    ax = fig.axes[0]
    values = [t.get_text() for t in ax.texts]
    assert values[0] == "97.00" and values[5] == "90.00" and values.count("100.00") == 8
    low = ax.get_ylim()[0]
    assert 0 < low <= 89 and f"axis from {low:g}%, not 0" in ax.get_title()


def test_per_class_marks_an_absent_digit():
    y = np.repeat(np.arange(9), 10)  # no 9
    ax = plots.per_class_accuracy(y, y).axes[0]
    assert [t.get_text() for t in ax.texts][9] == "no rows"


def _history(epochs=6, runs=2):
    rows = [
        {"epoch": e, "train_loss": 0.5 + 1 / e, "val_loss": 0.3 + 1 / e + r / 100,
         "val_acc": 1 - 0.05 / e - r / 1000}
        for r in range(runs)
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    return pd.DataFrame(rows)


@pytest.mark.parametrize("floor", [0.0, 0.5])
def test_history_legend_is_off_the_curves(floor):
    fig = plots.training_history(_history(), "fast_cnn", loss_floor=floor)
    loss = fig.axes[0]
    labels = [t.get_text() for t in loss.get_legend().get_texts()]
    assert labels == ["training", "validation"] + (["smoothing floor"] if floor else [])
    assert _legend_clear_of_axes(fig, loss, loss.get_legend())
    renderer = fig.canvas.get_renderer()
    label = loss.xaxis.label.get_window_extent(renderer)
    assert not loss.get_legend().get_window_extent(renderer).overlaps(label)


def _board():
    return pd.DataFrame(
        {
            "model": ["small", "medium", "large_model_name", "at_chance"],
            "infer_ms_per_1000": [8.0, 60.0, 2500.0, 40.0],
            "val_acc": [0.985, 0.992, 0.995, 0.11],
            "params": [100_000, 1_000_000, 20_000_000, 50_000],
        }
    )


def test_bubble_key_matches_the_bubbles():
    fig = zoo_figures.accuracy_vs_speed(_board())
    ax = fig.axes[0]
    key = ax.get_legend()
    assert key.get_title().get_text() == "parameters"
    sizes = dict(zip(_board()["params"], ax.collections[0].get_sizes(), strict=True))
    pairs = zip(key.get_texts(), key.legend_handles, strict=True)
    shown = {t.get_text(): h.get_sizes()[0] for t, h in pairs}
    assert list(shown) == ["100k", "1M", "10M"]  # powers of ten within 50k..20M
    assert shown["100k"] == pytest.approx(sizes[100_000]) and shown["1M"] == sizes[1_000_000]
    assert _legend_clear_of_axes(fig, ax, key)


def test_accuracy_vs_speed_labels_stay_inside_the_axes():
    fig = zoo_figures.accuracy_vs_speed(_board())
    ax = fig.axes[0]
    fig.canvas.draw()
    box = ax.get_window_extent()
    names = [a for a in ax.texts if a.get_text() in ("small", "medium", "large_model_name")]
    assert len(names) == 3
    for a in names:
        extent = a.get_window_extent()
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, a.get_text()


def test_bubble_key_of_one_model_reads_short():
    board = _board().iloc[:1].assign(params=29_434)
    key = zoo_figures.accuracy_vs_speed(board).axes[0].get_legend()
    assert [t.get_text() for t in key.get_texts()] == ["29.4k"]
