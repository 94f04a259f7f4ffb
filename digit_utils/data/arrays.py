"""The competition files as arrays: images ``uint8 [N, 1, 28, 28]``, labels ``int64 [N]``.

Raw files are never modified; parsed arrays are cached beside the CSV (or under ``data/cache``
when that folder is read-only, and in scratch space inside a Kaggle kernel; see
``paths.cache_dir``), keyed by a hash of the CSV's bytes so that an edited CSV is parsed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils import atomic, paths
from digit_utils.data.checks import SAMPLE_TEST_LABELS, _parse
from digit_utils.data.sources import DataSource, locate
from digit_utils.errors import DataError
from digit_utils.paths import not_a_file

log = logging.getLogger("digit_utils.data")

# --------------------------------------------------------------------------------------------
# Loading with a cache


def _cache_path(csv_path: Path, key: str) -> Path:
    folder = csv_path.parent
    # in a kernel never beside the CSV: a writable folder there may be /kaggle/working (output)
    if not os.access(folder, os.W_OK) or paths.in_kaggle_kernel():
        folder = (
            paths.cache_dir()
            / hashlib.blake2b(str(csv_path.resolve()).encode(), digest_size=4).hexdigest()
        )
    return folder / f".{csv_path.stem}.{key}.npz"


def _load(path: Path, kind: str) -> tuple[np.ndarray, np.ndarray | None]:
    path = Path(path)
    if not path.is_file():
        raise DataError(not_a_file(path), file=path)
    key = atomic.file_hash(path)
    cache = _cache_path(path, key)
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return z["images"], (z["labels"] if "labels" in z.files else None)
        except (OSError, ValueError, KeyError):
            cache.unlink(missing_ok=True)  # a broken cache is just parsed again
    values, _ = _parse(path, kind)
    if kind == "train":
        labels = values[:, 0].astype(np.int64)
        images = values[:, 1:].astype(np.uint8).reshape(-1, 1, 28, 28)
    else:
        labels, images = None, values.astype(np.uint8).reshape(-1, 1, 28, 28)
    _write_cache(cache, images, labels)
    return images, labels


def _write_cache(cache: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        for stale in cache.parent.glob(cache.name.rsplit(".", 2)[0] + ".*.npz"):
            stale.unlink(missing_ok=True)  # caches of earlier versions of this CSV
        arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
        atomic.atomic_write(cache, lambda fh: np.savez(fh, **arrays), mode="wb")
    except OSError as e:  # a cache we cannot write only costs time
        log.debug("cannot write cache %s: %s", cache, e)


def load_train(source: DataSource | str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N,1,28,28]`` and labels ``int64 [N]`` from train.csv."""
    path = _csv(source, "train.csv")
    images, labels = _load(path, "train")
    return images, labels


def load_test(source: DataSource | str | Path | None = None) -> np.ndarray:
    """Images ``uint8 [N,1,28,28]`` from test.csv."""
    return _load(_csv(source, "test.csv"), "test")[0]


def load_test_labels(source: DataSource) -> np.ndarray | None:
    """The offline sample's held-back test labels, ``int64 [N]``; None for the real data."""
    if source.test_labels_csv is None:
        return None
    return pd.read_csv(source.test_labels_csv)["Label"].to_numpy(np.int64)


def _csv(source: DataSource | str | Path | None, name: str) -> Path:
    if source is None:
        source = locate()
    if isinstance(source, DataSource):
        return source.path / name
    source = Path(source)
    return source / name if source.is_dir() else source


def copy_subset(source: DataSource, dest: Path, n_train: int, n_test: int) -> Path:
    """Write the first rows of the competition files to ``dest`` (tiny runs, tests, kernels)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        atomic.write_csv(pd.read_csv(source.path / name, nrows=n), dest / name)
    sub = pd.read_csv(source.sample_submission_csv, nrows=n_test)
    atomic.write_csv(sub, dest / "sample_submission.csv")
    if source.test_labels_csv:
        labels = pd.read_csv(source.test_labels_csv, nrows=n_test)
        atomic.write_csv(labels, dest / SAMPLE_TEST_LABELS)
    return dest


def data_fingerprint(images, labels) -> str:
    """The data fingerprint of every provenance record (checkpoints, metrics, submissions): a
    short hash of the training arrays, so records made from the same rows can be joined."""
    h = hashlib.blake2b(digest_size=8)
    for array in (images, labels):
        array = array.cpu().numpy() if hasattr(array, "cpu") else np.asarray(array)
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()
