"""A Kaggle kernel's output stays well inside Kaggle's 20 GB: run folders written as a kernel
writes them (fp16 final weights, no best.pt), measured, and scaled to the full profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import sample_arrays
from digit_utils.pipeline import budget, output_size

REPO = Path(__file__).resolve().parents[1]
TINY = ("simple_cnn", "deep_cnn")  # two sizes, so bytes per weight and the fixed part separate
EPOCHS, ROWS, VAL = 2, 240, 0.25


@pytest.fixture(scope="module")
def kernel_runs(sample_dir, tmp_path_factory):
    """Two finished runs trained inside a (simulated) Kaggle kernel: {model: run folder}."""
    from digit_utils.config import TrainConfig
    from digit_utils.train import loop

    images, labels, _, _ = sample_arrays(sample_dir)
    root = tmp_path_factory.mktemp("kernel")
    folders = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
        mp.setenv("DIGITS_KAGGLE_TEMP", str(root / "temp"))
        for model in TINY:
            cfg = TrainConfig.from_dict(
                {"model": model, "epochs": EPOCHS, "batch_size": 64, "device": "cpu",
                 "val_fraction": VAL, "name": model, "ema": 0.9}
            )  # fmt: skip
            run_dir = root / "working/outputs/03_model_zoo/runs" / model
            loop.train(cfg, images[:ROWS], labels[:ROWS], run_dir=run_dir, quiet=True)
            folders[model] = run_dir
        yield folders, root / "temp"


def test_every_model_has_its_state_size():
    import torch

    from digit_utils.train.models import build_model, list_models

    counted = {}
    for model in list_models():
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            counted[model] = sum(t.numel() for t in build_model(model).state_dict().values())
    assert counted == output_size.STATE_ELEMENTS


def test_fp16_weights_predict_what_the_fp32_ones_do(kernel_runs, sample_dir):
    """The output's last.pt is fp16; the trained (fp32) EMA weights stay in scratch.
    Probabilities within 1e-3, the same digit for every image whose top two the fp32 model does
    not hold within twice the largest change (a tie; a barely trained tiny net has a few among
    1,000), and the same accuracy on the held-back labels give or take one image."""
    import torch

    from digit_utils.train import checkpoints, runs
    from digit_utils.train.inference import predict_proba
    from digit_utils.train.models import build_model

    folders, _ = kernel_runs
    _, _, test_images, test_labels = sample_arrays(sample_dir)
    for model, run_dir in folders.items():
        stored = checkpoints.load_checkpoint(run_dir / runs.LAST)["model"]
        assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
        with pytest.MonkeyPatch.context() as mp:  # where the kernel left its resumable one
            mp.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
            mp.setenv("DIGITS_KAGGLE_TEMP", str(kernel_runs[1]))
            full = checkpoints.load_checkpoint(runs.resume_path(run_dir))
        exact = build_model(model)
        exact.load_state_dict(full["ema"])
        half, _ = checkpoints.load_run(run_dir, "last")
        p32 = predict_proba(exact.eval(), test_images, precision="fp32")
        p16 = predict_proba(half, test_images, precision="fp32")
        moved = abs(p32 - p16).max()
        assert moved < 1e-3, model
        top2 = np.sort(p32, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 2 * moved  # only a closer pair can swap
        assert clear.mean() > 0.95, model  # the check below covers nearly every image
        assert (p32.argmax(1) == p16.argmax(1))[clear].all(), model
        right32, right16 = (p.argmax(1) == test_labels for p in (p32, p16))
        assert abs(int(right32.sum()) - int(right16.sum())) <= 1, model


def measured_run_bytes(folders) -> tuple:
    """``per_run(model, eval_rows, epochs)`` from the real folders: last.pt's bytes per state
    element and fixed part (a line through the two models), the out-of-fold files' bytes per row
    (headers included), and the other files' bytes per epoch (the history grows with them)."""
    from digit_utils.train import runs

    size = lambda p: p.stat().st_size  # noqa: E731
    elements = {m: output_size.STATE_ELEMENTS[m] for m in folders}
    last = {m: size(f / runs.LAST) for m, f in folders.items()}
    (a, b) = TINY
    per_element = (last[b] - last[a]) / (elements[b] - elements[a])
    fixed = max(last[m] - per_element * elements[m] for m in folders)
    n_val = round(ROWS * VAL)
    per_row = max(
        (size(f / runs.VAL_INDICES) + size(f / runs.VAL_PROBA)) / n_val for f in folders.values()
    )
    others = max(
        sum(size(p) for p in f.iterdir()) - last[m] - per_row * n_val for m, f in folders.items()
    )

    def per_run(model: str, eval_rows: int, epochs: int) -> float:
        return (
            fixed + per_element * output_size.STATE_ELEMENTS[model] + per_row * eval_rows
            + others * max(1.0, epochs / EPOCHS)
        )  # fmt: skip

    return per_element, per_run


@pytest.mark.parametrize("profile", [None, "full.yaml"])  # a kernel's own defaults; the full
def test_a_full_stage_output_is_well_inside_kaggles_20_gb(kernel_runs, profile):
    from digit_utils.train import runs

    folders, _ = kernel_runs
    for f in folders.values():
        assert sorted(p.name for p in f.iterdir()) == sorted(runs.OUTPUT_FILES)  # no best.pt
    per_element, per_run = measured_run_bytes(folders)
    assert 1.9 < per_element < 2.2  # fp16: two bytes a weight, plus the zip's framing

    plan = budget.plan_budget(REPO / "notebooks", profile and REPO / "params" / profile)
    measured = output_size.stage_bytes(plan.work, per_run=per_run)
    estimated = output_size.plan_output_bytes(plan)
    assert set(measured) == {"02_augmentation", "03_model_zoo", "04_train_cnn",
                             "05_ensemble_submission"}  # fmt: skip
    for stage, (_, most) in measured.items():
        assert most < 10 * 1000**3, (stage, most)  # half of Kaggle's 20 GB, at the worst case
        # the estimate the download's wait is sized by agrees: within 5% below (the line through
        # two small nets counts each tensor's zip framing as bytes per weight, a little high for
        # big nets) and 25% above (its allowance for the small files is generous)
        assert 0.95 * most < estimated[stage][1] < 1.25 * most, stage
    # the screening at its worst: 21 models at rung 0, the dearest promoted after: real work
    assert measured["03_model_zoo"][1] > 100 * 1000**2
