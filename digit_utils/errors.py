"""Our own exception types: every bad input ends in one of these, never a deep traceback."""

from __future__ import annotations


class DigitsError(Exception):
    """Base class of every error digit_utils raises on purpose."""


class DataError(DigitsError):
    """A competition file is missing or malformed; names the file, the row and the column."""

    def __init__(self, message: str, *, file=None, row: int | None = None, column=None):
        self.file, self.row, self.column = file, row, column
        self.detail = message  # what is wrong, without where (to re-aim it at another file)
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            # Data row numbers count from 1 after the header, so line = row + 1.
            where.append(f"row {row} (line {row + 1})")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class KaggleError(DigitsError):
    """A Kaggle CLI call failed; the message says what to do about it."""


class ConfigError(DigitsError):
    """A parameter is unknown, of the wrong type or out of range."""


class CheckpointError(DigitsError):
    """A checkpoint is truncated, foreign or incompatible."""


class VerdictError(DigitsError):
    """A notebook's sentence would contradict the results printed above it."""


class DataWarning(UserWarning):
    """Something legitimate but unusual about the data, such as a subset of the rows."""


class TrackingWarning(UserWarning):
    """An experiment tracker (MLflow, TensorBoard) failed; training and its run folder go on."""
