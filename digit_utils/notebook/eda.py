"""Numbers behind the exploratory notebook: duplicates, embeddings, summary tables."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from digit_utils.errors import ConfigError


def _digests(images: np.ndarray) -> np.ndarray:
    """One hash per image (exact pixel equality)."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in flat])


def duplicates(train: np.ndarray, test: np.ndarray) -> dict[str, int]:
    """Exact duplicate images within train, within test and shared between them."""
    tr, te = _digests(train), _digests(test)
    return {
        "within_train": int(len(tr) - len(np.unique(tr))),
        "within_test": int(len(te) - len(np.unique(te))),
        "train_test_shared": int(np.isin(np.unique(te), np.unique(tr)).sum()),
    }


def summary(labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> pd.DataFrame:
    """Sizes and basic statistics of the two files, as a small table."""
    rows = []
    for name, imgs in (("train", train), ("test", test)):
        flat = imgs.reshape(len(imgs), -1)
        rows.append(
            {
                "file": f"{name}.csv",
                "images": len(imgs),
                "mean pixel": round(float(flat.mean()), 2),
                "zero pixels": f"{(flat == 0).mean():.1%}",
                "mean ink": round(float(flat.sum(axis=1).mean() / 255), 1),
            }
        )
    table = pd.DataFrame(rows).set_index("file")
    table["classes"] = [len(np.unique(labels)), "—"]
    return table


def pca(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components' coordinates ``[n, 2]`` and the share of the pixels'
    variance each explains ``[2]``."""
    from sklearn.decomposition import PCA

    fit = PCA(n_components=2, random_state=seed)
    coords = fit.fit_transform(images.reshape(len(images), -1).astype(np.float32) / 255.0)
    return coords, fit.explained_variance_ratio_


def embed(images: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """2-D coordinates: PCA, or t-SNE on the first 50 principal components."""
    from sklearn.decomposition import PCA

    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    if method == "pca":
        return pca(images, seed)[0]
    if method == "tsne":
        from sklearn.manifold import TSNE

        reduced = PCA(n_components=min(50, len(x) - 1), random_state=seed).fit_transform(x)
        perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
        return TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(reduced)
    raise ConfigError(f"method: unknown embedding {method!r}; use 'pca' or 'tsne'")
