"""Build, validate and write ``submission.csv``.

One validator serves both the submission writer and ``digits kaggle submit``: header exactly
``ImageId,Label``; the expected row count when given (28,000 for the competition); ImageId 1…N,
unique and in order; integer labels 0–9; no blank lines and no empty cells. Every number is a
plain integer: ``3.0`` is refused here exactly as it is in train.csv (one rule for both).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from digit_utils import __version__, atomic, paths
from digit_utils.atomic import file_hash
from digit_utils.data.checks import (
    BOM,
    EXPECTED_ROWS,
    SUBMISSION_HEADER,
    check_text,
    cut_cell,
    integer,
)
from digit_utils.errors import DataError
from digit_utils.kaggle import client as kaggle
from digit_utils.paths import not_a_file

HEADER_LINE = ",".join(SUBMISSION_HEADER)


class SubmissionError(DataError):
    """A submission file or frame breaks the competition's format; names the row and column."""


def build_submission(pred) -> pd.DataFrame:
    """The submission frame for probabilities ``float [N,10]`` or labels ``int [N]``."""
    pred = np.asarray(pred)
    if pred.ndim == 2 and pred.shape[1] == 10 and pred.shape[0] > 0:
        if not np.issubdtype(pred.dtype, np.floating):
            raise SubmissionError(f"pred: probabilities must be floats, got {pred.dtype}")
        bad = ~np.isfinite(pred).all(axis=1)
        if bad.any():
            raise SubmissionError("pred: probabilities are not finite", row=int(bad.argmax()) + 1)
        labels = pred.argmax(axis=1)
    elif pred.ndim == 1 and pred.shape[0] > 0:
        if not np.issubdtype(pred.dtype, np.integer):
            raise SubmissionError(f"pred: labels must be integers, got {pred.dtype}")
        labels = pred
    else:
        raise SubmissionError(
            f"pred: expected probabilities [N,10] or labels [N] with N > 0, got shape {pred.shape}"
        )
    out = (labels < 0) | (labels > 9)
    if out.any():
        i = int(out.argmax())
        raise SubmissionError(f"pred: label {labels[i]} is outside 0–9", row=i + 1)
    return pd.DataFrame(
        {
            "ImageId": np.arange(1, len(labels) + 1, dtype=np.int64),
            "Label": labels.astype(np.int64),
        }
    )


def _check_count(n: int, expected_rows: int | None, where) -> None:
    if n == 0:
        raise SubmissionError("has a header but no data rows", file=where)
    if expected_rows is not None and n != expected_rows:
        raise SubmissionError(f"has {n:,} rows, expected {expected_rows:,}", file=where)


def _check_frame(frame: pd.DataFrame, expected_rows: int | None, where) -> pd.DataFrame:
    """Vectorised checks of an in-memory frame (row numbers count from 1 after the header)."""
    columns = [str(c) for c in frame.columns]
    if columns != SUBMISSION_HEADER:
        raise SubmissionError(f"header is {columns}, expected {SUBMISSION_HEADER}", file=where)
    _check_count(len(frame), expected_rows, where)
    for col in SUBMISSION_HEADER:
        values = frame[col]
        if values.isna().any():
            row = int(values.isna().to_numpy().argmax()) + 1
            raise SubmissionError("empty cell", file=where, row=row, column=col)
        if not pd.api.types.is_integer_dtype(values):
            raise SubmissionError(
                f"values must be integers, got dtype {values.dtype}", file=where, column=col
            )
    ids = frame["ImageId"].to_numpy()
    wrong = ids != np.arange(1, len(ids) + 1)
    if wrong.any():
        i = int(wrong.argmax())
        raise SubmissionError(
            f"ImageId {ids[i]} where {i + 1} was expected (ImageIds run 1…N, unique, in order)",
            file=where,
            row=i + 1,
            column="ImageId",
        )
    labels = frame["Label"].to_numpy()
    out = (labels < 0) | (labels > 9)
    if out.any():
        i = int(out.argmax())
        raise SubmissionError(
            f"label {labels[i]} is outside 0–9", file=where, row=i + 1, column="Label"
        )
    return frame.reset_index(drop=True)


def _read_file(path: Path) -> pd.DataFrame:
    """Parse a submission CSV cell by cell, so that each defect is named by its line."""
    if not path.is_file():
        raise SubmissionError(not_a_file(path), file=path)
    text = path.read_bytes()
    if not text.strip():
        raise SubmissionError("file is empty", file=path)
    if text.startswith(BOM):
        raise SubmissionError("starts with a byte-order mark; save it as plain UTF-8", file=path)
    check_text(path, text, SubmissionError)
    ids, labels = [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if header != SUBMISSION_HEADER:
            raise SubmissionError(
                f"header is {','.join(header)!r}, expected exactly {HEADER_LINE!r}", file=path
            )
        for cells in reader:
            row = reader.line_num - 1  # data rows count from 1 after the header
            if not cells or all(c.strip() == "" for c in cells):
                raise SubmissionError("blank line", file=path, row=row)
            if len(cells) != 2:
                raise SubmissionError(f"has {len(cells)} cells, expected 2", file=path, row=row)
            for col, cell, into in zip(SUBMISSION_HEADER, cells, (ids, labels), strict=True):
                if cell.strip() == "":
                    raise SubmissionError("empty cell", file=path, row=row, column=col)
                if (value := integer(cell)) is None:
                    raise SubmissionError(
                        f"value {cut_cell(cell)} is not an integer", file=path, row=row, column=col
                    )
                into.append(min(max(value, -(2**62)), 2**62))  # int64; out of range anyway
    return pd.DataFrame(
        {"ImageId": np.array(ids, dtype=np.int64), "Label": np.array(labels, dtype=np.int64)}
    )


def validate_submission(
    path_or_frame: str | Path | pd.DataFrame, expected_rows: int | None = None
) -> pd.DataFrame:
    """Check a submission file (or frame) and return it as a frame; raises SubmissionError."""
    if isinstance(path_or_frame, pd.DataFrame):
        return _check_frame(path_or_frame, expected_rows, "submission frame")
    path = Path(path_or_frame)
    return _check_frame(_read_file(path), expected_rows, path)


def write_submission(
    pred,
    path: str | Path,
    *,
    expected_rows: int | None = None,
    provenance: dict | None = None,
) -> Path:
    """Build, validate and atomically write a submission, plus its provenance beside it.

    ``provenance`` (method, CV accuracy, data fingerprint, runs, ...) goes into a JSON file named
    like the CSV (``submission.json``), completed with the package version, the time, the row
    count, the label counts and the CSV's own fingerprint. Inside a Kaggle kernel a copy also goes
    to ``/kaggle/working/submission.csv``, the file Kaggle submits.
    """
    path = Path(path)
    frame = validate_submission(build_submission(pred), expected_rows)
    atomic.write_csv(frame, path)
    validate_submission(path, expected_rows)  # what is on disk, not just what we meant to write
    counts = frame["Label"].value_counts().reindex(range(10), fill_value=0)
    record = {
        **(provenance or {}),
        "file": path.name,
        "rows": len(frame),
        "label_counts": {str(k): int(v) for k, v in counts.items()},
        "submission_fingerprint": file_hash(path),
        "package_version": __version__,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic.write_json(record, path.with_suffix(".json"))
    if paths.in_kaggle_kernel():
        kaggle_copy = paths.kaggle_working_root() / "submission.csv"
        if kaggle_copy.resolve() != path.resolve():
            atomic.write_csv(frame, kaggle_copy)
    return path


def submit(path: str | Path, message: str, *, expected_rows: int | None = None) -> str:
    """Validate a submission file (28,000 rows unless told otherwise), then submit it through
    the Kaggle CLI; returns the CLI's report."""
    rows = EXPECTED_ROWS["test"] if expected_rows is None else expected_rows
    validate_submission(path, rows)
    return kaggle.submit(path, message)


IN_KERNEL = (
    "not submitted: a Kaggle kernel runs with the internet off, so submit=True cannot reach the "
    "competition. Submit /kaggle/working/submission.csv from this kernel's Output tab, or "
    "download it (`digits kaggle kernel output 05_ensemble_submission`) and run "
    "`digits kaggle submit FILE -m MESSAGE` on your machine."
)


def submit_if_asked(path: str | Path, message: str, asked: bool) -> str:
    """The notebook's last step: submit when asked and possible; says what happened either way."""
    if not asked:
        return f"not submitted (submit=False): {path}"
    if paths.in_kaggle_kernel():
        return IN_KERNEL
    return submit(path, message)
