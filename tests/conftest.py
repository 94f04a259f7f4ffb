"""Shared fixtures: an isolated project root, the offline sample, a fake `kaggle` CLI."""

from __future__ import annotations

import json
import os
import stat
import sys
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REPLICA = REPO.parent / "shared" / "data" / "digit-recognizer.zip"  # may be absent


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run only where there is a CUDA GPU, and say why they skip."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; this machine has none (CPU-only torch run)")
    for item in marked:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own project root, outputs and a home without Kaggle credentials."""
    root = tmp_path / "project"
    root.mkdir()
    monkeypatch.setenv("DIGITS_ROOT", str(root))
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # "auto" precision is fp32 on every CPU here, so a run's figures do not depend on whether this
    # machine computes bf16 natively (CI's CPU may or may not); test_devices sets it either way
    monkeypatch.setenv("DIGITS_CPU_BF16", "0")
    for var in (
        "DIGITS_DATA_DIR",
        "DIGITS_OUTPUTS",
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "KAGGLE_CONFIG_DIR",
        "KAGGLE_KERNEL_RUN_TYPE",
    ):
        monkeypatch.delenv(var, raising=False)
    return root


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """The offline sample (4,000 train / 1,000 test MNIST digits), written once per session."""
    from digit_utils import data

    return data.make_sample(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="session")
def competition_zip(tmp_path_factory, sample_dir) -> Path:
    """A small zip laid out like Kaggle's digit-recognizer.zip (built from the offline sample)."""
    path = tmp_path_factory.mktemp("zip") / "digit-recognizer.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("train.csv", "test.csv", "sample_submission.csv"):
            zf.write(sample_dir / name, name)
    return path


class FakeKaggle:
    """Handle on the fake CLI: its recorded calls and knobs for its behaviour."""

    def __init__(self, log: Path, monkeypatch):
        self.log, self._mp = log, monkeypatch

    @property
    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def fail_with(self, kind: str) -> None:
        self._mp.setenv("FAKE_KAGGLE_FAIL", kind)

    def kernel_statuses(self, **by_slug: str) -> None:
        """Status sequences per kernel of user alice, e.g. ``{"02": "QUEUED,COMPLETE"}`` given as
        keyword ``s02="QUEUED,COMPLETE"`` (by the stage's prefix); see fake_kaggle.py."""
        from digit_utils import stages
        from digit_utils.kaggle import kernels

        mapping = {}
        for key, states in by_slug.items():
            stem = stages.match(list(stages.STAGES), key.removeprefix("s"))
            mapping[f"alice/{kernels.kernel_slug(stem)}"] = states
        self._mp.setenv("FAKE_KAGGLE_KERNEL_STATUSES", json.dumps(mapping))

    def login(self, username="alice", key="s3cr3t-key-value") -> None:
        self._mp.setenv("KAGGLE_USERNAME", username)
        self._mp.setenv("KAGGLE_KEY", key)


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch, competition_zip) -> FakeKaggle:
    """A fake `kaggle` first on PATH, standing in for the real CLI (see fake_kaggle.py)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    exe = bindir / "kaggle"
    exe.write_text(f"#!{sys.executable}\n" + (HERE / "fake_kaggle.py").read_text())
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(tmp_path / "kaggle-calls.jsonl"))
    monkeypatch.setenv("FAKE_KAGGLE_ZIP", str(competition_zip))
    monkeypatch.delenv("FAKE_KAGGLE_FAIL", raising=False)
    return FakeKaggle(tmp_path / "kaggle-calls.jsonl", monkeypatch)


def sample_arrays(sample_dir: Path):
    """The offline sample as arrays: (train images, labels, test images, held-back test labels)."""
    import warnings

    from digit_utils import data

    source = data.DataSource(sample_dir, "sample")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sample's "not 42,000 rows" notice
        images, labels = data.load_train(source)
        test_images = data.load_test(source)
    return images, labels, test_images, data.load_test_labels(source)


def train_tiny(recipe: dict, images, labels, run_dir: Path, **settings) -> Path:
    """Train one tiny CPU run on the first 2,000 rows; returns its folder."""
    from digit_utils.config import TrainConfig
    from digit_utils.train import loop as train

    cfg = TrainConfig.from_dict({**recipe, "device": "cpu", **settings})
    train.train(cfg, images[:2000], labels[:2000], run_dir=run_dir, quiet=True)
    return Path(run_dir)
