"""The competition files' format, and the row-by-row check that names what is wrong with a CSV.

Contract: train.csv is ``label,pixel0..pixel783``, test.csv ``pixel0..pixel783``, every value an
integer (labels 0-9, pixels 0-255). An error names the file, row and column.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils.errors import DataError, DataWarning
from digit_utils.paths import not_a_file

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


# --------------------------------------------------------------------------------------------
# Validation


BOM = b"\xef\xbb\xbf"  # Excel writes one at the start of "CSV UTF-8"; pandas skips it, so do we
# Files that are not CSV text, by their first bytes, to say what they are instead.
MAGIC = {b"\x1f\x8b": "a gzip file", b"PK\x03\x04": "a zip archive", b"\x89PNG": "a PNG image"}


def _read_bytes(path: Path) -> bytes:
    """The file's bytes without a BOM; raises for a missing, empty or non-UTF-8 file."""
    if path.is_dir() and not path.is_symlink():
        raise DataError("is a folder, not a CSV file", file=path)
    if not path.is_file():
        raise DataError(not_a_file(path), file=path)
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


# One rule for every integer we read (train/test cells, submission cells): an optional minus and
# ASCII digits, spaces around allowed. Not 3.0, 1e2, 1_000, +3 or another script's digits.
_INTEGER = re.compile(r" *-?[0-9]+ *")
_INTEGER_BYTES = b'0123456789-, "\r\n'  # every byte a valid body may hold (the fast check)


def integer(cell: str) -> int | None:
    """The cell's integer under the one rule, or None when it is not one."""
    if not _INTEGER.fullmatch(cell):
        return None
    text = cell.strip()
    if len(text.lstrip("-").lstrip("0")) > 18:  # int() refuses 4,300+ digits; any range we
        return -(10**18) if text.startswith("-") else 10**18  # check is far below this
    return int(text)


def cut_cell(cell: str, limit: int = 24, quote: bool = True) -> str:
    """A cell as an error message quotes it: cut, with its length, when it is long."""
    if len(cell) <= limit:
        return repr(cell) if quote else cell
    cut = repr(cell[:limit] + "…") if quote else cell[:limit] + "…"
    return f"{cut} ({len(cell):,} characters)"


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
    limit = csv.field_size_limit(max(csv.field_size_limit(), len(raw)))  # a 2 MB cell is a cell
    try:
        return _first_bad_cell(path, raw, header)
    finally:
        csv.field_size_limit(limit)


def _first_bad_cell(path: Path, raw: bytes, header: list[str]) -> DataError | None:
    reader = csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))
    next(reader)
    for row_no, row in enumerate(reader, start=1):
        if len(row) != len(header):
            return DataError(
                f"has {len(row)} columns, expected {len(header)}", file=path, row=row_no
            )
        for col, cell in zip(header, row, strict=True):
            if cell.strip() == "":
                return DataError("empty cell", file=path, row=row_no, column=col)
            value = integer(cell)
            if value is None:
                return DataError(
                    f"value {cut_cell(cell)} is not an integer", file=path, row=row_no, column=col
                )
            low, high = (0, 9) if col == "label" else (0, 255)
            if not low <= value <= high:
                what = "label" if col == "label" else "pixel"
                text = cut_cell(cell.strip(), 12, quote=False)
                return DataError(
                    f"{what} value {text} is outside {low}–{high}",
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
    body = raw[raw.find(b"\n") + 1 :] if b"\n" in raw else b""
    if body.translate(None, _INTEGER_BYTES):  # pandas would read 3.0 and 1e2 as integers
        raise _diagnose(path, raw, header) or DataError("holds a non-integer value", file=path)
    try:
        with warnings.catch_warnings():  # a row's extra value: counted below, not warned about
            warnings.simplefilter("ignore", pd.errors.ParserWarning)
            # index_col=False: else a value too many on every row silently becomes the index
            frame = pd.read_csv(io.BytesIO(raw), dtype=np.int32, engine="c", index_col=False)
        values = frame.to_numpy()
    except (ValueError, OverflowError, pd.errors.ParserError) as e:
        raise _diagnose(path, raw, header) or DataError(f"cannot parse ({e})", file=path) from None
    if values.shape[0] == 0:
        raise DataError("has a header but no data rows", file=path)
    if body.count(b",") != values.shape[0] * (len(header) - 1):  # a row with more fields
        raise _diagnose(path, raw, header) or DataError("rows differ in length", file=path)
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


def validate_sample_submission(path: Path) -> int:
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:  # UnicodeDecodeError is a ValueError
        raise DataError(f"cannot parse ({e.__class__.__name__}: {e})", file=path) from None
    if list(frame.columns) != SUBMISSION_HEADER:
        raise DataError(
            f"header is {list(frame.columns)}, expected {SUBMISSION_HEADER}", file=path
        )
    return len(frame)
