"""Fault injection: the `digits` command, in a fresh process, over a table of bad inputs.

Each case must end with a non-zero exit, exactly one ``error:`` line that names the thing at
fault, no traceback, and no file changed outside the command's outputs folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from conftest import REPO
from digit_utils import data

TRAIN_HEADER = ",".join(data.TRAIN_HEADER)
TEST_HEADER = ",".join(data.TEST_HEADER)
ROW = ",".join(["0"] * 784)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0  # root ignores permission bits


def train(t: Path, body: str = f"3,{ROW}\n", name: str = "train.csv") -> Path:
    (t / name).write_text(TRAIN_HEADER + "\n" + body)
    return t / name


def folder(t: Path, *, train_body: str = f"3,{ROW}\n", test: bool = True) -> Path:
    d = t / "competition"
    d.mkdir(exist_ok=True)
    train(d, train_body)
    if test:
        (d / "test.csv").write_text(TEST_HEADER + "\n" + ROW + "\n")
    return d


def write(t: Path, name: str, raw: bytes) -> Path:
    (t / name).write_bytes(raw)
    return t / name


def zip_of(t: Path, name: str = "digit-recognizer.zip", prefix: str = "", stored=False) -> Path:
    d = folder(t)
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(t / name, "w", method) as zf:
        for f in ("train.csv", "test.csv"):
            zf.write(d / f, prefix + f)
    return t / name


def label_42_zip(t: Path) -> Path:
    d = folder(t, train_body=f"42,{ROW}\n")
    with zipfile.ZipFile(t / "bad.zip", "w") as zf:
        for f in ("train.csv", "test.csv"):
            zf.write(d / f, f)
    return t / "bad.zip"


def patched_zip(t: Path, field: str) -> Path:
    """A zip whose members say they are encrypted (flag bit 0) or use compression method 9
    (deflate64, which Python cannot read): the header fields patched, as no writer here makes
    either."""
    path = zip_of(t, stored=True)
    raw = bytearray(path.read_bytes())
    for magic, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local, central headers
        at = raw.find(magic)
        while at != -1:
            if field == "encrypted":
                raw[at + flags] |= 0x01
            else:
                raw[at + flags + 2] = 9
            at = raw.find(magic, at + 4)
    path.write_bytes(bytes(raw))
    return path


def bad_crc_zip(t: Path) -> Path:
    path = zip_of(t, stored=True)
    raw = bytearray(path.read_bytes())
    at = raw.index(b"\n3,0,0") + 3
    raw[at] ^= 0x01  # one flipped bit inside train.csv's data
    path.write_bytes(bytes(raw))
    return path


FULL = "ImageId,Label\n" + "".join(f"{i},{i % 10}\n" for i in range(1, 28_001))


def submission(t: Path, text: str | bytes = FULL) -> Path:
    path = t / "submission.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def notebooks(t: Path) -> None:
    for stem in ("01_eda", "02_augmentation"):
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        params = nbformat.v4.new_code_cell("data_dir = ''  # folder")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell("print(data_dir)")]
        (t / "project" / "notebooks").mkdir(exist_ok=True)
        nbformat.write(nb, t / "project" / "notebooks" / f"{stem}.ipynb")
    (t / "empty.yaml").write_text("{}\n")  # a profile that sets nothing


def run_folder(t: Path, metrics: str = "{}", config: str = "{}") -> str:
    """A run folder under outputs/runs/ with these metrics.json and config.json texts."""
    folder = t / "project" / "outputs" / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(metrics)
    (folder / "config.json").write_text(config)
    return "runs"


def real_notebooks(t: Path, *params: str, profile: bytes = b"{}\n") -> list[str]:
    """The project's five notebooks, and `digits pipeline` with these -p values: refused before
    the first one starts (before even the data is looked for)."""
    (t / "project" / "notebooks").mkdir()
    for nb in (REPO / "notebooks").glob("0*.ipynb"):
        shutil.copy(nb, t / "project" / "notebooks" / nb.name)
    args = [a for p in params for a in ("-p", p)]
    return ["pipeline", "--no-html", "--profile", write(t, "p.yaml", profile), *args]


def image(t: Path, name: str, colour: int = 230) -> Path:
    Image.new("L", (40, 40), colour).save(t / name, format="PNG")
    return t / name


def broken_kaggle(t: Path) -> str:
    """A PATH whose first `kaggle` is a script with an interpreter that does not exist."""
    (t / "brokenbin").mkdir()
    (t / "brokenbin" / "kaggle").write_text("#!/nonexistent/python3\nprint('hi')\n")
    (t / "brokenbin" / "kaggle").chmod(0o755)
    return f"{t / 'brokenbin'}{os.pathsep}{os.environ['PATH']}"


def outputs_file(t: Path) -> dict:
    (t / "outputs-file").write_text("not a folder")
    return {"DIGITS_OUTPUTS": str(t / "outputs-file")}


LAUGHS = [
    f"  - &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
]  # each list nine of the previous one: 9**9 strings once expanded
ALIAS_BOMB = "\n".join(
    ["data_dir:", "  - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]", *LAUGHS, ""]
).encode()
KAGGLE = {"KAGGLE_USERNAME": "alice", "KAGGLE_KEY": "s3cr3t-key-value"}
PREDICT = ["predict", "--run", "{t}/no-run"]

# id: (setup(t) -> argv (strings with {t}) and extra env, what the error line must name)
CASES = {
    # ---- data validate: files that are not what they claim
    "gzip-as-csv": (
        lambda t: ["data", "validate", write(t, "train.csv", b"\x1f\x8b\x08\x00")],
        "is a gzip file",
    ),
    "latin1-byte": (lambda t: ["data", "validate", write(t, "train.csv", b"\xe9")], "not UTF-8"),
    "latin1-in-row": (
        lambda t: [
            "data",
            "validate",
            write(t, "t.csv", f"{TRAIN_HEADER}\n3,{ROW[:-1]}\xe9\n".encode("latin-1")),
        ],
        "row 1 (line 2), column 'pixel783'",
    ),
    "png-as-csv": (lambda t: ["data", "validate", image(t, "train.csv")], "is a PNG image"),
    "missing-csv": (lambda t: ["data", "validate", t / "nope.csv"], "nope.csv"),
    "empty-csv": (lambda t: ["data", "validate", write(t, "train.csv", b"")], "file is empty"),
    "only-header": (lambda t: ["data", "validate", train(t, "")], "no data rows"),
    "wrong-header": (
        lambda t: ["data", "validate", write(t, "x.csv", b"a,b\n1,2\n")],
        "header has 2 columns",
    ),
    "label-3.0": (
        lambda t: ["data", "validate", train(t, f"3.0,{ROW}\n")],
        "column 'label': value '3.0'",
    ),
    "label-10": (lambda t: ["data", "validate", train(t, f"10,{ROW}\n")], "label value 10"),
    "pixel-256": (
        lambda t: ["data", "validate", train(t, f"3,256{ROW[1:]}\n")],
        "pixel value 256",
    ),
    "pixel-text": (
        lambda t: ["data", "validate", train(t, f"3,x{ROW[1:]}\n")],
        "column 'pixel0': value 'x'",
    ),
    "empty-cell": (lambda t: ["data", "validate", train(t, f"3,{ROW[:-1]}\n")], "empty cell"),
    "short-row": (lambda t: ["data", "validate", train(t, f"3,{ROW[:-2]}\n")], "has 784 columns"),
    "extra-value-every-row": (  # pandas would take the labels as an index, silently
        lambda t: ["data", "validate", train(t, f"3,{ROW},5\n7,{ROW},5\n")],
        "train.csv, row 1 (line 2): has 786 columns, expected 785",
    ),
    "pixel-1e2": (
        lambda t: ["data", "validate", train(t, f"3,1e2{ROW[1:]}\n")],
        "column 'pixel0': value '1e2' is not an integer",
    ),
    "pixel-underscore": (
        lambda t: ["data", "validate", train(t, f"3,1_0{ROW[1:]}\n")],
        "value '1_0' is not an integer",
    ),
    "cell-2M-digits": (
        lambda t: ["data", "validate", train(t, f"3,{'9' * 2_000_000}{ROW[1:]}\n")],
        "(2,000,000 characters) is outside 0–255",
    ),
    "fifo-as-csv": (  # reading it would wait for ever; "file not found" was wrong
        lambda t: ["data", "validate", os.mkfifo(t / "train.csv") or t / "train.csv"],
        "train.csv: is a named pipe (FIFO), not a file",
    ),
    "symlink-loop": (
        lambda t: ["data", "validate", (t / "a.csv").symlink_to(t / "a.csv") or t / "a.csv"],
        "a.csv: is a symbolic link that loops",
    ),
    "train-linked-to-dev-null": (
        lambda t: [
            "data",
            "validate",
            (folder(t) / "train.csv").unlink()
            or (t / "competition/train.csv").symlink_to("/dev/null")
            or t / "competition",
        ],
        "train.csv links to /dev/null, which is a device, not a file",
    ),
    "folder-no-test": (
        lambda t: ["data", "validate", folder(t, test=False)],
        "folder lacks test.csv",
    ),
    "folder-train-is-dir": (
        lambda t: [
            "data",
            "validate",
            (folder(t) / "train.csv").unlink()
            or (t / "competition/train.csv").mkdir()
            or t / "competition",
        ],
        "train.csv is a folder",
    ),
    "test-with-label": (
        lambda t: ["data", "validate", (folder(t), train(t / "competition", name="test.csv"))[0]],
        "must not carry a 'label'",
    ),
    "sample-sub-latin1": (
        lambda t: [
            "data",
            "validate",
            (
                folder(t),
                write(t / "competition", "sample_submission.csv", b"ImageId,Label\n1,\xe9\n"),
            )[0],
        ],
        "sample_submission.csv",
    ),
    "nowhere": (lambda t: ["data", "validate", t / "nowhere"], "no such file or folder"),
    # ---- zips
    "zip-names-member": (
        lambda t: ["data", "validate", label_42_zip(t)],
        "bad.zip (member train.csv), row 1 (line 2), column 'label': label value 42",
    ),
    "sample-over-user-files": (  # the user's train.csv and test.csv stay as they were
        lambda t: ["data", "sample", "--dest", folder(t)],
        "will not overwrite train.csv, test.csv",
    ),
    "download-validated-first": (  # nothing lands in data/raw (not even the folder)
        lambda t: (["data", "download"], {**KAGGLE, "FAKE_KAGGLE_ZIP": str(label_42_zip(t))}),
        "the downloaded digit-recognizer.zip (member train.csv), row 1",
    ),
    "zip-encrypted": (
        lambda t: ["data", "validate", patched_zip(t, "encrypted")],
        "archive member train.csv is encrypted",
    ),
    "zip-deflate64": (
        lambda t: ["data", "validate", patched_zip(t, "method")],
        "archive member train.csv uses compression method 9",
    ),
    "locate-encrypted": (
        lambda t: ["data", "locate", "--no-download", patched_zip(t, "encrypted")],
        "archive member train.csv is encrypted",
    ),
    "zip-missing": (lambda t: ["data", "validate", t / "gone.zip"], "zip archive not found"),
    "zip-bad-crc": (lambda t: ["data", "validate", bad_crc_zip(t)], "train.csv is corrupt"),
    "zip-not-zip": (
        lambda t: ["data", "validate", write(t, "d.zip", b"PK\x03\x04 nope")],
        "not a valid zip",
    ),
    "zip-nested": (lambda t: ["data", "validate", zip_of(t, prefix="inner/")], "under inner/"),
    "zip-empty-file": (lambda t: ["data", "validate", write(t, "d.zip", b"")], "d.zip"),
    "locate-bad-crc": (
        lambda t: ["data", "locate", "--no-download", bad_crc_zip(t)],
        "CRC mismatch",
    ),
    "locate-missing": (
        lambda t: ["data", "locate", "--no-download", t / "nowhere"],
        "does not exist",
    ),
    "locate-a-file": (
        lambda t: ["data", "locate", "--no-download", train(t)],
        "is a file, not a folder",
    ),
    "locate-fifo": (
        lambda t: ["data", "locate", "--no-download", os.mkfifo(t / "d") or t / "d"],
        "explicit data path is a named pipe (FIFO), not a folder or a zip",
    ),
    "locate-link-loop": (
        lambda t: ["data", "locate", "--no-download", (t / "d").symlink_to(t / "d") or t / "d"],
        "explicit data path is a symbolic link that loops",
    ),
    "locate-env-missing-zip": (
        lambda t: (["data", "locate", "--no-download"], {"DIGITS_DATA_DIR": f"{t}/gone.zip"}),
        "zip archive not found",
    ),
    # ---- kaggle
    "submit-latin1": (
        lambda t: (
            ["kaggle", "submit", submission(t, b"ImageId,Label\n1,\xe9\n"), "-m", "x"],
            KAGGLE,
        ),
        "byte 0xe9 is not UTF-8",
    ),
    "submit-gzip": (
        lambda t: (["kaggle", "submit", submission(t, b"\x1f\x8b\x08"), "-m", "x"], KAGGLE),
        "is a gzip file",
    ),
    "submit-label-3.0": (
        lambda t: (
            ["kaggle", "submit", submission(t, "ImageId,Label\n1,3.0\n"), "-m", "x"],
            KAGGLE,
        ),
        "value '3.0'",
    ),
    "submit-label-1e2": (
        lambda t: (
            ["kaggle", "submit", submission(t, "ImageId,Label\n1,1e2\n"), "-m", "x"],
            KAGGLE,
        ),
        "value '1e2' is not an integer",
    ),
    "submit-fifo": (
        lambda t: (["kaggle", "submit", os.mkfifo(t / "s.csv") or t / "s.csv", "-m", "x"], KAGGLE),
        "s.csv: is a named pipe (FIFO), not a file",
    ),
    "submit-folder": (
        lambda t: (["kaggle", "submit", (t / "s").mkdir() or t / "s", "-m", "x"], KAGGLE),
        "is a folder, not a file",
    ),
    "submit-missing": (
        lambda t: (["kaggle", "submit", t / "nope.csv", "-m", "x"], KAGGLE),
        "nope.csv",
    ),
    "submit-no-credentials": (
        lambda t: ["kaggle", "submit", submission(t), "-m", "x"],
        "no Kaggle credentials",
    ),
    "proxy-403": (
        lambda t: (["kaggle", "submissions"], {**KAGGLE, "FAKE_KAGGLE_FAIL": "proxy-403"}),
        "a proxy refused",
    ),
    "kaggle-403": (
        lambda t: (["kaggle", "submissions"], {**KAGGLE, "FAKE_KAGGLE_FAIL": "403"}),
        "accept the competition rules",
    ),
    "kaggle-interpreter-missing": (  # "No such file" named the script, which exists
        lambda t: (["kaggle", "submissions"], {**KAGGLE, "PATH": broken_kaggle(t)}),
        "its interpreter line '#!/nonexistent/python3' names a program that does not exist",
    ),
    "kaggle-network": (
        lambda t: (["kaggle", "submissions"], {**KAGGLE, "FAKE_KAGGLE_FAIL": "network"}),
        "cannot reach kaggle.com",
    ),
    "kernel-status-unknown-prefix": (
        lambda t: (notebooks(t), ["kaggle", "kernel", "status", "0"], KAGGLE)[1:],
        "'0' names no notebook",
    ),
    "kernel-build-outputs-is-file": (
        lambda t: (notebooks(t), ["kaggle", "kernel", "build", "--user", "a"], outputs_file(t))[
            1:
        ],
        "outputs-file",
    ),
    **{
        f"kernel-build-{name}": (
            lambda t, text=text: (
                notebooks(t),
                write(t / "project" / "notebooks", "01_eda.ipynb", text),
                ["kaggle", "kernel", "build", "01", "--user", "a"],
            )[2],
            "01_eda.ipynb: cannot read notebook",
        )
        for name, text in (
            ("list", b"[]"),
            (
                "cells-text",
                b'{"cells": "abc", "metadata": {}, "nbformat": 4, "nbformat_minor": 5}',
            ),
        )
    },
    # ---- pipeline
    "pipeline-outputs-is-file": (
        lambda t: (
            notebooks(t),
            ["pipeline", "--no-html", "--profile", "{t}/empty.yaml"],
            {**outputs_file(t), "DIGITS_DATA_DIR": str(folder(t))},
        )[1:],
        "outputs-file",
    ),
    "pipeline-data-zip-missing": (
        lambda t: (
            notebooks(t),
            ["pipeline", "-p", f"data_dir={t}/gone.zip", "--profile", "{t}/empty.yaml"],
        )[1],
        "zip archive not found",
    ),
    "pipeline-unknown-param": (
        lambda t: (
            notebooks(t),
            ["pipeline", "-p", "epocs=2", "--profile", str(write(t, "p.yaml", b"{}\n"))],
        )[1],
        "epocs",
    ),
    "pipeline-only-empty": (
        lambda t: (notebooks(t), ["pipeline", "--only", "", "--profile", "{t}/empty.yaml"])[1],
        "--only '' names no notebook",
    ),
    "pipeline-damaged-selected": (
        lambda t: (
            notebooks(t),
            write(t / "project" / "notebooks", "01_eda.ipynb", b"[]"),
            ["pipeline", "--only", "01", "--profile", "{t}/empty.yaml"],
        )[2],
        "01_eda.ipynb: not a readable notebook",
    ),
    "pipeline-damaged-unselected": (  # 02 is not inspected: the run gets as far as outputs
        lambda t: (
            notebooks(t),
            write(t / "project" / "notebooks", "02_augmentation.ipynb", b"{not json"),
            ["pipeline", "--only", "01", "--profile", "{t}/empty.yaml"],
            outputs_file(t),
        )[2:],
        "outputs-file: the outputs folder is a file",
    ),
    "pipeline-from-empty": (
        lambda t: (notebooks(t), ["pipeline", "--from", "", "--profile", "{t}/empty.yaml"])[1],
        "--from '' names no notebook",
    ),
    "pipeline-no-notebooks": (
        lambda t: ["pipeline", "--profile", write(t, "p.yaml", b"{}\n")],
        "no notebooks folder: nothing to run",
    ),
    "profile-not-utf8": (
        lambda t: (notebooks(t), ["pipeline", "--profile", write(t, "p.yaml", b"x: \xe9\n")])[1],
        "p.yaml: line 1: byte 0xe9 is not UTF-8 text",
    ),
    "profile-is-a-folder": (
        lambda t: (notebooks(t), ["pipeline", "--profile", (t / "p.yml").mkdir() or t / "p.yml"])[
            1
        ],
        "p.yml is a folder, not a YAML file",
    ),
    "profile-duplicate-key": (
        lambda t: (
            notebooks(t),
            ["pipeline", "--profile", write(t, "p.yaml", b"data_dir: a\n# b\ndata_dir: c\n")],
        )[1],
        "p.yaml: key 'data_dir' appears twice, on lines 1 and 3",
    ),
    "profile-alias-bomb": (  # 9**9 strings once expanded; the error line must stay short
        lambda t: (notebooks(t), ["pipeline", "--profile", write(t, "p.yaml", ALIAS_BOMB)])[1],
        "01_eda: data_dir: expected str, got [['lol', 'lol', 'lol', 'lol', ...], [[...], ",
    ),
    **{
        f"status-record-{name}": (
            lambda t, text=text: [
                "pipeline",
                "--status",
                (t / "project" / "outputs").mkdir()
                or write(t / "project" / "outputs", "pipeline.json", text.encode()),
            ][:2],
            f"pipeline.json: damaged pipeline record: {field}",
        )
        for name, text, field in (
            ("null", "null", "the file must be a JSON object, got None"),
            ("list", "[]", "the file must be a JSON object, got []"),
            ("notebooks-text", '{"notebooks": "abc"}', "notebooks must be list, got 'abc'"),
            (
                "seconds-text",
                '{"status": "ok", "notebooks": [{"name": "01", "status": "ok", "seconds": "12"}]}',
                "notebooks[0].seconds must be float or null, got '12'",
            ),
        )
    },
    **{
        f"runs-{name}": (
            lambda t, m=m, c=c: [run_folder(t, m, c)],
            f"{file}: damaged run file: {why}",
        )
        for name, m, c, file, why in (
            ("metrics-list", "[]", "{}", "metrics.json", "the file must be a JSON object"),
            ("config-list", "{}", "[1]", "config.json", "the file must be a JSON object"),
            ("acc-text", '{"final_val_acc": "high"}', "{}", "metrics.json", "final_val_acc must"),
            (
                "finished-5",
                '{"finished": 5}',
                "{}",
                "metrics.json",
                "finished must be str or null",
            ),
            (
                "fold-text",
                "{}",
                '{"fold": "x"}',
                "config.json",
                "fold must be int or null, got 'x'",
            ),
            ("not-json", "{", "{}", "metrics.json", "not readable JSON"),
        )
    },
    # ---- values checked before the first notebook starts (not only names and types)
    **{
        f"value-{name}": (lambda t, given=given: real_notebooks(t, *given), said)
        for name, given, said in (
            ("epochs-0", ["04_train_cnn.epochs=0"], "04_train_cnn: epochs: 0 is too small"),
            ("model-banana", ["model=banana"], "model: 'banana' is not a known model"),
            ("lr-nan", ["lr=.nan"], "lr: nan must be a finite number"),
            ("wd-nan", ["weight_decay=.nan"], "weight_decay: nan must be a finite number"),
            ("policy", ["02_augmentation.policies=bogus_policy"], "'bogus_policy' is not an"),
            ("zoo-model", ["03_model_zoo.models=resnet9000"], "'resnet9000' is not a known"),
            ("n-folds-1", ["04_train_cnn.n_folds=1"], "n_folds: 1 must be 0 (one holdout)"),
            ("tsne-neg", ["01_eda.tsne_samples=-5"], "01_eda: tsne_samples: -5 must be at least"),
            ("tta-99", ["05_ensemble_submission.tta=99"], "tta: 99 must be an integer in [0, 8]"),
            ("threshold", ["pseudo_threshold=2"], "pseudo_threshold: 2.0 must be in [0, 1]"),
            # braces doubled: the test .format()s each argument
            ("model-yaml-junk", ["model={{[}}"], "model: '{[}' is not a known model"),
            ("model-cjk", ["model=模型"], "model: '模型' is not a known model"),
        )
    },
    "value-profile-date": (
        lambda t: real_notebooks(t, profile=b"04_train_cnn:\n  model: 2024-01-01\n"),
        "04_train_cnn: model: '2024-01-01' is not a known model",
    ),
    **{
        f"predict-run-list-{name}": (
            lambda t, text=text: [
                "predict",
                write(
                    (t / "project/outputs/05_ensemble_submission").mkdir(parents=True)
                    or t / "project/outputs/05_ensemble_submission",
                    "runs.json",
                    text,
                ),
                image(t, "a.png"),
            ][::2],
            f"runs.json: damaged run list: {why}",
        )
        for name, text, why in (
            ("not-json", b"{", "not readable JSON (JSONDecodeError"),
            ("no-models", b"{}", "it has no 'models'"),
            ("models-list", b'{"models": []}', "models must be dict, got []"),
            (
                "runs-text",
                b'{"models": {"a": "x"}}',
                "models.a must be a list of run folders, got",
            ),
        )
    },
    # ---- predict
    "predict-figures-is-file": (
        lambda t: [*PREDICT, "--show", "--figures", write(t, "figs", b"x"), image(t, "a.png")],
        "figures folder",
    ),
    "predict-device-banana": (
        lambda t: [*PREDICT, "--device", "banana", image(t, "a.png")],
        "'banana' is not a device name",
    ),
    "predict-device-cuda": (
        lambda t: [*PREDICT, "--device", "cuda", image(t, "a.png")],
        "CUDA is not available here",
    ),
    "predict-no-run": (lambda t: ["predict", image(t, "a.png")], "no trained run"),
}
if not IS_ROOT:  # as root every folder is writable, so this fault cannot be staged
    CASES["predict-figures-unwritable"] = (
        lambda t: [
            *PREDICT,
            "--show",
            "--figures",
            (t / "ro").mkdir(0o555) or t / "ro",
            image(t, "a.png"),
        ],
        "not writable",
    )


def snapshot(root: Path, skip: set[Path]) -> dict[str, str]:
    """Every file and folder under ``root`` (outside ``skip``) with a hash of its bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        if any(p == s or s in p.parents for s in skip):
            continue
        out[str(p.relative_to(root))] = (
            hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest() if p.is_file() else "dir"
        )
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_ends_in_one_error_line(case, tmp_path, isolated, fake_kaggle):
    setup, names = CASES[case]
    got = setup(tmp_path)
    argv, env = got if isinstance(got, tuple) else (got, {})
    argv = [str(a).format(t=tmp_path) for a in argv]
    env = {**os.environ, **env}
    outputs = Path(env.get("DIGITS_OUTPUTS", isolated / "outputs"))
    # The fake CLI's call log, and matplotlib's font cache in $HOME, are not ours to judge.
    skip = {outputs, fake_kaggle.log, tmp_path / "home" / ".cache", tmp_path / "home" / ".config"}
    before = snapshot(tmp_path, skip)
    done = subprocess.run(
        [sys.executable, "-m", "digit_utils.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode not in (0, 130), done.stderr
    assert len(errors) == 1, done.stderr
    assert names in errors[0], done.stderr
    assert len(errors[0]) < 2100, errors[0][:300]  # what it echoes is cut
    assert "Traceback" not in done.stderr and "this is a bug" not in done.stderr, done.stderr
    assert snapshot(tmp_path, skip) == before


def test_an_unexpected_exception_is_reported_as_a_bug(tmp_path):
    """The last resort: one line that says bug, and the traceback saved to a file."""
    code = (
        "import sys; from digit_utils import cli; from digit_utils.cli import data as data_cli;"
        "data_cli._validate = lambda a: 1 / 0;"
        "sys.exit(cli.main(['data', 'validate', 'x']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ZeroDivisionError: division by zero (this is a bug")
    saved = Path(line.split("full traceback in ")[1].rstrip(")"))
    assert "Traceback" in saved.read_text() and "ZeroDivisionError" in saved.read_text()
    saved.unlink()


# --------------------------------------------------------------------------------------------
# State left by other runs: a run in progress, a dead run's pid reused, a killed extraction


def digits(*argv, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "digit_utils.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_a_second_pipeline_on_the_same_outputs_is_refused(tmp_path, isolated):
    from digit_utils.pipeline import record

    notebooks(tmp_path)
    with record.lock(isolated / "outputs"):  # the first run, still going
        done = digits("pipeline", "--no-html", "--profile", tmp_path / "empty.yaml")
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"another pipeline run is using this outputs folder (process {os.getpid()} on " in line
    assert f"{socket.gethostname()}, started 20" in line
    assert not (isolated / "outputs" / "pipeline.json").exists()


def test_a_running_record_whose_pid_was_reused_reads_as_interrupted(isolated):
    from digit_utils.pipeline import record

    path = isolated / "outputs" / record.RECORD
    path.parent.mkdir()
    me = {"pid": os.getpid(), "host": socket.gethostname(), "status": "running"}
    entry = {"name": "01_eda", "status": "running", "seconds": None}
    path.write_text(json.dumps({**me, "pid_start": 1, "notebooks": [entry]}))  # not my start
    done = digits("pipeline", "--status")
    assert done.returncode == 0 and "pipeline interrupted" in done.stdout, done.stdout
    path.write_text(json.dumps({**me, "pid_start": record.process_start(os.getpid())}))
    assert "(still running)" in digits("pipeline", "--status").stdout


def test_a_killed_extractions_temp_folder_is_swept_by_the_next(tmp_path, isolated):
    """SIGKILL mid-extraction leaves data/cache/.zip-<fp>.<pid>.<random>; the next one removes
    it (its process is gone), and keeps a live process's."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True).stdout.strip()  # fmt: skip
    cache = isolated / "data" / "cache"
    stale = [cache / f".zip-abc.{gone}.x1y2", cache / ".zip-abc.old"]
    live = cache / f".zip-abc.{os.getpid()}.z3"
    for d in (*stale, live):
        (d / "files").mkdir(parents=True)
        (d / "files" / "train.csv").write_text("half")
    os.utime(stale[1], (1e9, 1e9))  # the older layout, without a pid: stale by its age
    done = digits("data", "locate", "--no-download", zip_of(tmp_path))
    assert done.returncode == 0, done.stderr
    assert live.is_dir() and not any(d.exists() for d in stale)


def test_a_file_size_limit_is_a_user_error_naming_the_file(tmp_path):
    """EFBIG (and ENOSPC, EROFS, EACCES alike) while writing: the path and what to do, no half
    file. `ulimit -f` stands in for a full or size-limited disk."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    done = subprocess.run(
        [sys.executable, "-m", "digit_utils.cli", "data", "sample", "--dest", tmp_path / "s"],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
        timeout=120,
    )
    (line,) = done.stderr.splitlines()
    assert done.returncode == 1 and "this is a bug" not in line
    assert line.startswith(f"error: {tmp_path / 's' / 'train.csv'}: File too large; ")
    assert list((tmp_path / "s").iterdir()) == []  # no half-written train.csv or temp file


def test_a_run_without_seconds_is_listed(tmp_path):
    run_folder(tmp_path, '{"train_seconds": null, "model": "m", "final_val_acc": 0.5}')
    done = digits("runs", env={"DIGITS_ROOT": str(tmp_path / "project")})
    assert done.returncode == 0 and "runs/r" in done.stdout, done.stderr
