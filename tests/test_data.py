"""The data layer: locate order, CLI download, offline sample, validation, caching."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPLICA
from digit_utils import atomic, data
from digit_utils.data import arrays, sources
from digit_utils.errors import DataError, DataWarning, KaggleError

TRAIN_HEADER = ",".join(data.TRAIN_HEADER)
TEST_HEADER = ",".join(data.TEST_HEADER)


def _row(label: int | None = 3, fill: int = 0) -> list[str]:
    pixels = [str(fill)] * 784
    return pixels if label is None else [str(label), *pixels]


def write_rows(path: Path, header: str, rows: list[list[str]]) -> Path:
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A folder with a 5-row train.csv and a 3-row test.csv in the competition's format."""
    rng = np.random.default_rng(0)
    train = [[str(i % 10), *map(str, rng.integers(0, 256, 784))] for i in range(5)]
    write_rows(tmp_path / "train.csv", TRAIN_HEADER, train)
    write_rows(tmp_path / "test.csv", TEST_HEADER, [_row(None, 7) for _ in range(3)])
    return tmp_path


# ------------------------------------------------------------------------------------- loading


def test_load_round_trips_a_small_csv(tiny):
    with pytest.warns(DataWarning, match="5 rows"):
        images, labels = data.load_train(tiny)
    assert images.dtype == np.uint8 and images.shape == (5, 1, 28, 28)
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3, 4]
    frame = pd.read_csv(tiny / "train.csv")
    assert np.array_equal(images.reshape(5, -1), frame.iloc[:, 1:].to_numpy())
    with pytest.warns(DataWarning):
        test = data.load_test(tiny)
    assert test.shape == (3, 1, 28, 28) and (test == 7).all()


def test_second_load_uses_the_cache_and_a_change_invalidates_it(tiny, monkeypatch):
    before = (tiny / "train.csv").read_bytes()
    with pytest.warns(DataWarning):
        first, _ = data.load_train(tiny)
    assert list(tiny.glob(".train.*.npz"))

    def no_parse(*a, **k):
        raise AssertionError("parsed again although the cache is valid")

    monkeypatch.setattr(arrays, "_parse", no_parse)
    again, _ = data.load_train(tiny)
    assert np.array_equal(first, again)
    assert (tiny / "train.csv").read_bytes() == before  # raw file untouched

    monkeypatch.undo()
    rows = (tiny / "train.csv").read_text().splitlines()
    rows[1] = "9," + ",".join(["255"] * 784)
    (tiny / "train.csv").write_text("\n".join(rows) + "\n")
    with pytest.warns(DataWarning):
        changed, labels = data.load_train(tiny)
    assert labels[0] == 9 and (changed[0] == 255).all()
    assert len(list(tiny.glob(".train.*.npz"))) == 1  # the stale cache was removed


def test_cache_of_a_read_only_folder_goes_under_data_cache(tiny, isolated, monkeypatch):
    # Kaggle's /kaggle/input is read-only; as root chmod would not stop us, so say it is.
    real_access = os.access
    monkeypatch.setattr(
        arrays.os, "access", lambda p, mode: False if Path(p) == tiny else real_access(p, mode)
    )
    with pytest.warns(DataWarning):
        data.load_train(tiny)
    assert not list(tiny.glob(".train.*.npz"))
    assert len(list((isolated / "data" / "cache").rglob(".train.*.npz"))) == 1


def test_replica_slice_loads(tmp_path):
    if not REPLICA.is_file():
        pytest.skip("the shared competition replica is not present")
    with zipfile.ZipFile(REPLICA) as zf, zf.open("train.csv") as fh:
        head = [next(fh).decode() for _ in range(201)]
    (tmp_path / "train.csv").write_text("".join(head))
    with pytest.warns(DataWarning, match="200 rows"):
        images, labels = data.load_train(tmp_path / "train.csv")
    assert images.shape == (200, 1, 28, 28) and set(labels) <= set(range(10))


# ---------------------------------------------------------------------------------- validation


def _expect(path: Path, *parts: str) -> DataError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError) as info:
            data.validate_csv(path)
    message = str(info.value)
    assert path.name in message
    for part in parts:
        assert part in message, message
    return info.value


def test_missing_and_empty_files(tmp_path):
    _expect(tmp_path / "train.csv", "file not found")
    (tmp_path / "train.csv").write_text("")
    _expect(tmp_path / "train.csv", "empty")
    (tmp_path / "train.csv").write_text(TRAIN_HEADER + "\n")
    _expect(tmp_path / "train.csv", "no data rows")


def test_wrong_header_names_the_column(tmp_path):
    swapped = TRAIN_HEADER.replace("pixel0,pixel1", "pixel1,pixel0")
    err = _expect(write_rows(tmp_path / "train.csv", swapped, [_row()]), "pixel1", "order")
    assert err.column == "pixel1"
    short = ",".join(data.TRAIN_HEADER[:-1])
    _expect(write_rows(tmp_path / "train.csv", short, [_row()[:-1]]), "784 columns", "785")


def test_wrong_column_count_names_the_row(tmp_path):
    rows = [_row(), _row(), _row()[:-1]]
    err = _expect(write_rows(tmp_path / "train.csv", TRAIN_HEADER, rows), "row 3", "784 columns")
    assert err.row == 3
    rows = [_row(), _row() + ["0"]]
    _expect(write_rows(tmp_path / "train.csv", TRAIN_HEADER, rows), "row 2", "786 columns")


@pytest.mark.parametrize(
    ("cell", "column", "message"),
    [
        ("abc", "pixel10", "'abc' is not an integer"),
        ("1.5", "pixel10", "'1.5' is not an integer"),
        ("", "pixel10", "empty cell"),
        ("256", "pixel10", "pixel value 256 is outside 0–255"),
        ("-1", "pixel10", "pixel value -1 is outside 0–255"),
        ("10", "label", "label value 10 is outside 0–9"),
    ],
)
def test_bad_cells_name_row_and_column(tmp_path, cell, column, message):
    bad = _row()
    bad[data.TRAIN_HEADER.index(column)] = cell
    path = write_rows(tmp_path / "train.csv", TRAIN_HEADER, [_row(), _row(), bad])
    err = _expect(path, "row 3", f"column '{column}'", message)
    assert (err.row, err.column) == (3, column)


def test_test_csv_with_a_label_column(tiny):
    write_rows(tiny / "test.csv", TRAIN_HEADER, [_row()])
    with (
        pytest.raises(DataError, match="must not carry a 'label' column"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", DataWarning)
        data.validate(tiny)


def test_a_single_csv_is_typed_by_its_header_not_its_name(tmp_path):
    # Named like a test file but laid out as train.csv: the header decides.
    path = write_rows(tmp_path / "my_test_rows.csv", TRAIN_HEADER, [_row(), _row(label=9)])
    with pytest.warns(DataWarning, match="competition's train.csv"):
        assert data.validate(path) == {"my_test_rows.csv": 2}
    path = write_rows(tmp_path / "train_subset.csv", TEST_HEADER, [_row(None)])
    with pytest.warns(DataWarning, match="competition's test.csv"):
        assert data.validate(path) == {"train_subset.csv": 1}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x1f\x8b\x08\x00\x00\x00", "is a gzip file, not CSV text"),
        (b"PK\x03\x04junk", "is a zip archive, not CSV text"),
        (b"\xe9", "header: byte 0xe9 is not UTF-8 text"),
        ("{h}\n3," + "0," * 40 + "\xe9" + ",0" * 743 + "\n", "row 1 (line 2), column 'pixel40'"),
    ],
)
def test_non_utf8_files_are_named(tmp_path, raw, message):
    # A gzip renamed .csv or one latin-1 byte used to raise UnicodeDecodeError.
    path = tmp_path / "train.csv"
    if isinstance(raw, str):
        raw = raw.format(h=TRAIN_HEADER).encode("latin-1")
    path.write_bytes(raw)
    _expect(path, message)


def test_byte_order_mark_is_accepted_and_never_shown(tiny):
    # Excel's "CSV UTF-8" starts with a BOM; the header used to read '\ufefflabel' (item 11).
    path = tiny / "train.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    with pytest.warns(DataWarning):
        assert data.validate_csv(path) == 5
        assert data.load_train(path)[1].tolist() == [0, 1, 2, 3, 4]


def test_one_integer_rule_for_train_and_submission(tiny):
    # Item 11: label 3.0 passed in train.csv but not in a submission; now neither takes it.
    rows = [["3.0", *["0"] * 784]]
    err = _expect(write_rows(tiny / "train.csv", TRAIN_HEADER, rows), "'3.0' is not an integer")
    assert (err.row, err.column) == (1, "label")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "test.csv").unlink(), "folder lacks test.csv"),
        (
            lambda d: ((d / "train.csv").unlink(), (d / "train.csv").mkdir()),
            "train.csv is a folder",
        ),
    ],
)
def test_folder_problems_are_named_exactly(tiny, make, message):
    # Item 11: both used to be "folder lacks train.csv and test.csv".
    make(tiny)
    for call in (data.validate, data.locate):
        with pytest.raises(DataError) as info:
            call(tiny)
        assert message in str(info.value) and "lacks train.csv" not in str(info.value)


def test_zip_with_a_bad_crc(tmp_path, sample_dir):
    archive = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for name in ("train.csv", "test.csv"):
            zf.write(sample_dir / name, name)
    raw = bytearray(archive.read_bytes())
    at = raw.index(b"pixel0,") + 100  # inside train.csv's stored bytes
    raw[at] = raw[at] ^ 0x01
    archive.write_bytes(bytes(raw))
    for call in (data.validate, data.locate):
        with pytest.raises(DataError, match="train.csv is corrupt .CRC mismatch"):
            call(archive)


def test_zip_that_is_missing_or_nests_its_files(tmp_path, sample_dir):
    with pytest.raises(DataError, match="zip archive not found"):
        data.validate(tmp_path / "nowhere.zip")  # item 6: a FileNotFoundError traceback
    archive = tmp_path / "nested.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("train.csv", "test.csv"):
            zf.write(sample_dir / name, f"digit-recognizer/{name}")
    with pytest.raises(DataError, match="under digit-recognizer/, unzip it"):
        data.validate(archive)


def test_download_never_overwrites_a_different_file(fake_kaggle, isolated, tiny):
    fake_kaggle.login()
    raw = isolated / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "train.csv").write_bytes((tiny / "train.csv").read_bytes())
    with pytest.raises(DataError, match="will not overwrite train.csv"):
        data.download_competition()
    assert (raw / "train.csv").read_bytes() == (tiny / "train.csv").read_bytes()
    assert not (raw / "test.csv").exists()


def test_corrupt_zip(tmp_path):
    bad = tmp_path / "digit-recognizer.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(DataError, match="not a valid zip archive") as info:
        data.validate(bad)
    assert "digit-recognizer.zip" in str(info.value)


def test_zip_missing_a_member(tmp_path):
    archive = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("train.csv", TRAIN_HEADER + "\n")
    with pytest.raises(DataError, match="lacks test.csv"):
        data.validate(archive)


def test_row_counts_warn_but_do_not_fail(tiny):
    with pytest.warns(DataWarning, match="competition's train.csv has 42,000"):
        assert data.validate_csv(tiny / "train.csv") == 5


def test_validate_a_good_zip(competition_zip):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        report = data.validate(competition_zip)
    assert report == {"train.csv": 4000, "test.csv": 1000, "sample_submission.csv": 1000}


# ------------------------------------------------------------------------------ offline sample


def test_offline_sample_has_the_competition_format(sample_dir):
    train = pd.read_csv(sample_dir / "train.csv")
    test = pd.read_csv(sample_dir / "test.csv")
    sub = pd.read_csv(sample_dir / "sample_submission.csv")
    labels = pd.read_csv(sample_dir / "test_labels.csv")
    assert list(train.columns) == data.TRAIN_HEADER and len(train) == 4000
    assert list(test.columns) == data.TEST_HEADER and len(test) == 1000
    assert list(sub.columns) == ["ImageId", "Label"] and len(sub) == 1000
    assert sub["ImageId"].tolist() == list(range(1, 1001)) and (sub["Label"] == 0).all()
    assert labels["ImageId"].tolist() == list(range(1, 1001))
    assert all(dtype.kind == "i" for dtype in train.dtypes)
    assert train.to_numpy().min() >= 0 and train.iloc[:, 1:].to_numpy().max() == 255
    # stratified: every digit in both parts, about 10% each
    assert train["label"].value_counts().between(380, 420).all()
    assert labels["Label"].value_counts().between(90, 110).all()
    # header bytes exactly like Kaggle's (no index column, no quoting)
    assert (sample_dir / "train.csv").read_text().split("\n", 1)[0] == TRAIN_HEADER


# -------------------------------------------------------------------------------- locate order


def _files(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text(TRAIN_HEADER + "\n")
    (folder / "test.csv").write_text(TEST_HEADER + "\n")
    return folder


def test_locate_order(tmp_path, isolated, monkeypatch, fake_kaggle):
    monkeypatch.setenv("DIGITS_KAGGLE_INPUT", str(tmp_path / "kaggle" / "input"))
    explicit = _files(tmp_path / "explicit")
    env = _files(tmp_path / "env")
    kernel = _files(tmp_path / "kaggle" / "input" / "competitions" / "digit-recognizer")
    _files(tmp_path / "kaggle" / "input" / "some-other-dataset")  # decoy
    raw = _files(isolated / "data" / "raw")

    monkeypatch.setenv("DIGITS_DATA_DIR", str(env))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    fake_kaggle.login()
    assert data.locate(explicit) == data.DataSource(explicit.resolve(), "explicit")
    assert data.locate() == data.DataSource(env.resolve(), "env")
    monkeypatch.delenv("DIGITS_DATA_DIR")
    assert data.locate() == data.DataSource(kernel, "kaggle-input")
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    assert data.locate() == data.DataSource(raw, "repo")
    assert fake_kaggle.calls == []  # nothing downloaded while files were found


def test_inside_a_kernel_no_competition_data_is_an_error_not_the_sample(
    tmp_path, isolated, monkeypatch, fake_kaggle
):
    """A kernel whose competition input is missing never falls back to data/raw, a download or
    the offline sample: the error names the mount it looked in."""
    root = tmp_path / "kaggle" / "input"
    _files(root / "some-other-dataset" / "nested")  # holds train.csv but under another name
    (root / "some-other-dataset" / "nested" / "train.csv").unlink()
    _files(isolated / "data" / "raw")  # a local copy is not what the kernel was given
    monkeypatch.setenv("DIGITS_KAGGLE_INPUT", str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    fake_kaggle.login()
    with pytest.raises(DataError) as e:
        data.locate()
    message = str(e.value)
    assert message.startswith("no competition data in this Kaggle kernel")
    assert f"{root}/digit-recognizer/" in message
    assert f"{root}/competitions/digit-recognizer/" in message
    assert "accept its rules" in message
    assert fake_kaggle.calls == []
    assert not (isolated / "data" / "sample").exists()
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")  # on a local machine data/raw still serves
    assert data.locate().origin == "repo"


def test_kaggle_input_classic_layout(tmp_path, monkeypatch):
    root = tmp_path / "input"
    found = _files(root / "digit-recognizer")
    monkeypatch.setenv("DIGITS_KAGGLE_INPUT", str(root))
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert data.locate() == data.DataSource(found, "kaggle-input")


def test_locate_downloads_with_credentials(isolated, fake_kaggle):
    fake_kaggle.login()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        source = data.locate()
    assert source.origin == "download" and source.path == isolated / "data" / "raw"
    [argv] = fake_kaggle.calls
    assert argv[:4] == ["competitions", "download", "-c", "digit-recognizer"]
    assert argv[4] == "-p" and Path(argv[5]).parent == isolated / "data" / "raw"
    assert sorted(p.name for p in source.path.iterdir() if not p.name.startswith(".")) == [
        "sample_submission.csv",
        "test.csv",
        "train.csv",
    ]
    assert not list(source.path.glob("*.zip")) and not list(source.path.glob("tmp*"))


def test_locate_falls_back_to_the_sample_loudly_once(isolated, monkeypatch):
    monkeypatch.setattr(sources, "_warned_sample", False)
    with pytest.warns(DataWarning, match="OFFLINE SAMPLE"):
        source = data.locate()
    assert source.is_sample and source.path == isolated / "data" / "sample"
    assert source.test_labels_csv is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        assert data.locate().is_sample  # said once is enough


def test_explicit_zip_never_touches_data_raw(isolated, competition_zip, tiny, monkeypatch):
    # The zip used to be extracted over data/raw and became the default.
    raw = isolated / "data" / "raw"
    raw.mkdir(parents=True)
    for name in ("train.csv", "test.csv"):
        (raw / name).write_bytes((tiny / name).read_bytes())
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    for given in ("path", "env"):
        if given == "env":
            monkeypatch.setenv("DIGITS_DATA_DIR", str(competition_zip))
        source = data.locate(competition_zip if given == "path" else None)
        assert source.path.parent == isolated / "data" / "cache"
        assert source.path.name == f"zip-{atomic.file_hash(competition_zip)}"
        assert (source.path / "sample_submission.csv").is_file()
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before
    monkeypatch.delenv("DIGITS_DATA_DIR")
    with pytest.warns(DataWarning, match="5 rows"):
        assert data.locate().origin == "repo" and len(data.load_train()[1]) == 5


def test_bad_explicit_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.locate(tmp_path / "nowhere")
    with pytest.raises(DataError, match="lacks train.csv, test.csv"):
        data.locate(tmp_path)


# ------------------------------------------------------------------------ Kaggle CLI failures


def test_download_without_credentials_says_what_to_do(fake_kaggle):
    with pytest.raises(KaggleError, match="no Kaggle credentials found.*kaggle.json"):
        data.download_competition()
    assert fake_kaggle.calls == []


@pytest.mark.parametrize(
    ("kind", "advice"),
    [("403", "accept the competition rules"), ("network", "cannot reach kaggle.com")],
)
def test_download_failures_are_explained(fake_kaggle, kind, advice):
    fake_kaggle.login(key="very-secret-value")
    fake_kaggle.fail_with(kind)
    with pytest.raises(KaggleError, match=advice) as info:
        data.download_competition()
    assert "very-secret-value" not in str(info.value)


def _digits(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "digit_utils.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_cli_download_without_credentials_has_no_traceback(fake_kaggle):
    done = _digits("data", "download")
    assert done.returncode == 1
    assert done.stderr.startswith("error: no Kaggle credentials found")
    assert "Traceback" not in done.stderr


def test_cli_validate(tmp_path, tiny):
    bad = _row()
    bad[5] = "x"
    write_rows(tmp_path / "bad_train.csv", TRAIN_HEADER, [bad])
    done = _digits("data", "validate", str(tmp_path / "bad_train.csv"))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "bad_train.csv, row 1 (line 2), column 'pixel4': value 'x' is not an integer" in (
        done.stderr
    )
    done = _digits("data", "validate", str(tiny))
    assert done.returncode == 0 and "ok  train.csv: 5 rows" in done.stdout


def test_cli_locate_json(sample_dir):
    done = _digits("data", "locate", str(sample_dir), "--json")
    assert done.returncode == 0 and '"origin": "explicit"' in done.stdout
