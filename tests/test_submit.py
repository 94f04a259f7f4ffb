"""Submission building, validation (each malformed case) and writing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from digit_utils.data import submission as submit
from digit_utils.data.submission import SubmissionError, build_submission, validate_submission
from digit_utils.errors import DataError

GOOD = "ImageId,Label\n1,3\n2,0\n3,9\n"


def test_build_from_probabilities_and_labels_agree():
    proba = np.eye(10, dtype=np.float32)[[3, 0, 9]] * 0.8 + 0.02
    frame = build_submission(proba)
    assert list(frame.columns) == ["ImageId", "Label"]
    assert frame["ImageId"].tolist() == [1, 2, 3]
    assert frame["Label"].tolist() == [3, 0, 9]
    assert build_submission(np.array([3, 0, 9])).equals(frame)


@pytest.mark.parametrize(
    "pred, reason",
    [
        (np.zeros((3, 9), np.float32), "shape"),
        (np.zeros((0,), np.int64), "shape"),
        (np.array([1.0, 2.0]), "integers"),
        (np.array([1, 10]), "outside 0–9"),
        (np.full((2, 10), np.nan, np.float32), "not finite"),
    ],
)
def test_build_rejects_bad_predictions(pred, reason):
    with pytest.raises(SubmissionError, match=reason):
        build_submission(pred)


def test_submission_error_is_a_data_error():
    assert issubclass(SubmissionError, DataError)


def test_valid_file_passes(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(GOOD)
    frame = validate_submission(path, expected_rows=3)
    assert frame["Label"].tolist() == [3, 0, 9]
    path.write_bytes(GOOD.replace("\n", "\r\n").encode())  # Windows line endings are fine
    assert len(validate_submission(path)) == 3


@pytest.mark.parametrize(
    "text, expected_rows, message",
    [
        ("", None, "file is empty"),
        ("imageid,label\n1,3\n", None, "header is 'imageid,label'"),
        ("ImageId,Label,Extra\n1,3,0\n", None, "expected exactly 'ImageId,Label'"),
        ("Label,ImageId\n3,1\n", None, "header is 'Label,ImageId'"),
        ("ImageId,Label\n", None, "no data rows"),
        (GOOD, 4, "has 3 rows, expected 4"),
        ("ImageId,Label\n1,3\n\n2,0\n", None, "row 2 (line 3): blank line"),
        ("ImageId,Label\n1,3\n2,0\n\n", None, "row 3 (line 4): blank line"),
        ("ImageId,Label\n1,3\n2,\n", None, "row 2 (line 3), column 'Label': empty cell"),
        ("ImageId,Label\n1,3\n,0\n", None, "row 2 (line 3), column 'ImageId': empty cell"),
        ("ImageId,Label\n1,3\n2,0,1\n", None, "row 2 (line 3): has 3 cells"),
        ("ImageId,Label\n1,3\n2,4.0\n", None, "column 'Label': value '4.0' is not an integer"),
        ("ImageId,Label\n1,3\n2,x\n", None, "column 'Label': value 'x'"),
        ("ImageId,Label\n1,3\n2,10\n", None, "row 2 (line 3), column 'Label': label 10 is"),
        ("ImageId,Label\n1,3\n2,-1\n", None, "label -1 is outside 0–9"),
        ("ImageId,Label\n0,3\n1,0\n", None, "row 1 (line 2), column 'ImageId': ImageId 0 where 1"),
        ("ImageId,Label\n1,3\n1,0\n", None, "row 2 (line 3), column 'ImageId': ImageId 1 where 2"),
        ("ImageId,Label\n2,3\n1,0\n", None, "ImageId 2 where 1 was expected"),
        ("ImageId,Label\n1,3\n3,0\n", None, "ImageId 3 where 2 was expected"),
    ],
)
def test_each_malformed_file_is_named(tmp_path, text, expected_rows, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(SubmissionError) as info:
        validate_submission(path, expected_rows)
    assert message in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            b"ImageId,Label\n1,3\n2,\xe9\n",
            "row 2 (line 3), column 'Label': byte 0xe9 is not UTF-8",
        ),
        (b"Image\xffId,Label\n1,3\n", "header: byte 0xff is not UTF-8"),
        (b"\x1f\x8b\x08\x00gzip", "is a gzip file, not CSV text"),
    ],
)
def test_non_utf8_files_are_named_not_a_traceback(tmp_path, raw, message):
    # These used to raise UnicodeDecodeError out of `digits kaggle submit`.
    path = tmp_path / "sub.csv"
    path.write_bytes(raw)
    with pytest.raises(SubmissionError) as info:
        validate_submission(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_byte_order_mark_and_missing_file(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    with pytest.raises(SubmissionError, match="byte-order mark"):
        validate_submission(path)
    with pytest.raises(SubmissionError, match="file not found"):
        validate_submission(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    "frame, message",
    [
        (pd.DataFrame({"ImageId": [1, 2], "Label": [1.0, 2.0]}), "must be integers"),
        (
            pd.DataFrame({"ImageId": [1, 2], "Label": [1.0, None]}),
            "row 2 (line 3), column 'Label'",
        ),
        (pd.DataFrame({"Id": [1, 2], "Label": [1, 2]}), "header is ['Id', 'Label']"),
        (pd.DataFrame({"ImageId": [1, 3], "Label": [1, 2]}), "ImageId 3 where 2"),
    ],
)
def test_frames_are_checked_too(frame, message):
    with pytest.raises(SubmissionError) as info:
        validate_submission(frame)
    assert message in str(info.value)


def test_write_submission_writes_valid_csv_and_provenance(tmp_path, monkeypatch):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    labels = np.arange(25) % 10
    path = submit.write_submission(
        labels, tmp_path / "submission.csv", expected_rows=25, provenance={"method": "average"}
    )
    assert path.read_text().splitlines()[:3] == ["ImageId,Label", "1,0", "2,1"]
    assert validate_submission(path, 25)["Label"].tolist() == labels.tolist()
    record = json.loads((tmp_path / "submission.json").read_text())
    assert record["method"] == "average"
    assert record["rows"] == 25
    assert record["label_counts"]["0"] == 3
    assert record["package_version"]
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_write_submission_refuses_wrong_row_count_and_leaves_old_file(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text(GOOD)
    with pytest.raises(SubmissionError, match="expected 28,000"):
        submit.write_submission(np.array([1, 2]), path, expected_rows=28_000)
    assert path.read_text() == GOOD


def test_write_submission_copies_to_kaggle_working(tmp_path, monkeypatch):
    working = tmp_path / "kaggle_working"
    working.mkdir()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.setenv("DIGITS_KAGGLE_WORKING", str(working))
    path = submit.write_submission(np.array([4, 2]), tmp_path / "out" / "submission.csv")
    assert (working / "submission.csv").read_text() == path.read_text()
