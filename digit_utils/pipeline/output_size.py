"""What each stage leaves in its Kaggle kernel's output (``/kaggle/working``, which Kaggle caps at
20 GB and every later kernel mounts), estimated before anything runs: its run folders, from the
stage's work (:func:`budget.stage_work`) and each architecture's size.

A run folder in a kernel's output keeps its final weights in fp16 (2 bytes an element of the
state dict), the out-of-fold rows and probabilities (an int64 index and ten float32 a row), and a
few small files (config, history, metrics, complete.json, the checkpoint's framing). The
figures here are upper bounds: tests/test_kaggle_output.py writes real run folders in a kernel's
layout and checks the estimate against their sizes, scaled by parameter count.
"""

from __future__ import annotations

from collections.abc import Sequence

from digit_utils.pipeline.budget import Plan, Work, plan_budget

OUTPUT_LIMIT_BYTES = 20 * 1000**3  # Kaggle keeps at most 20 GB of a kernel's /kaggle/working

# Elements of each registered model's state dict (parameters and buffers), counted with
# ``build_model`` on the meta device; tests/test_kaggle_output.py checks every row.
STATE_ELEMENTS: dict[str, int] = {
    "simple_cnn": 21_840,
    "fast_cnn": 29_661,
    "deep_cnn": 326_833,
    "deep_cnn_wide": 1_300_817,
    "se_vgg": 1_171_528,
    "preact_resnet164": 1_727_357,
    "wrn16_4": 2_752_231,
    "wrn28_10": 36_496_883,
    "resnet18": 11_182_430,
    "resnet34": 21_298_030,
    "resnet50": 23_572_863,
    "vgg16_bn": 33_653_975,
    "efficientnet_b0": 4_061_847,
    "efficientnet_b3": 10_798_256,
    "mnasnet0_5": 970_710,
    "mnasnet1_0": 3_152_518,
    "mobilenet_v2": 2_270_270,
    "mobilenet_v3_small": 1_539_964,
    "mobilenet_v3_large": 4_239_000,
    "squeezenet1_0": 727_306,
    "squeezenet1_1": 726_474,
}
WEIGHT_BYTES = 2  # fp16 (checkpoints.half_weights); BatchNorm's int64 counters are a few bytes
ROW_BYTES = 8 + 10 * 4  # val_indices.npy (int64) and val_proba.npy (float32 × 10) per row
RUN_FILES_BYTES = 256 * 1024  # config, history, metrics, complete.json, .npy and .pt framing
STAGE_FILES_BYTES = 64 * 1024**2  # hand-off files, figures, submission.csv, metrics.json
# Downloads: a slow line's rate, and the wait for a stage whose output is a few small files
SLOW_DOWNLOAD_BYTES_PER_S = 2 * 1024**2
BASE_DOWNLOAD_S = 600.0


def run_bytes(model: str, eval_rows: int, epochs: int = 0) -> int:
    """Bytes of one run folder in a kernel's output (an upper bound). The history grows by a
    few hundred bytes an epoch, inside ``RUN_FILES_BYTES`` for any epoch count a stage uses."""
    return WEIGHT_BYTES * STATE_ELEMENTS[model] + ROW_BYTES * eval_rows + RUN_FILES_BYTES


def stage_bytes(work: Sequence[Work], per_run=run_bytes) -> dict[str, tuple[int, int]]:
    """``{stage: (fewest, most) bytes}`` of the run folders its work writes, plus its small
    files; ``per_run(model, eval_rows, epochs)`` sizes one run folder."""
    sizes: dict[str, list[int]] = {}
    for w in work:
        each = [per_run(m, w.eval_rows, w.epochs) for m in w.models]
        total = sizes.setdefault(w.stage, [STAGE_FILES_BYTES, STAGE_FILES_BYTES])
        total[0] += w.runs[0] * min(each)
        total[1] += w.runs[1] * max(each)
    return {s: (lo, hi) for s, (lo, hi) in sizes.items()}


def plan_output_bytes(plan: Plan | None = None) -> dict[str, tuple[int, int]]:
    """Every stage's output bytes for ``plan`` (default: the notebooks' own parameters, what a
    kernel runs); stages that train nothing hold only their small files."""
    plan = plan or plan_budget()
    sizes = stage_bytes(plan.work)
    return {s: sizes.get(s, (STAGE_FILES_BYTES,) * 2) for s in plan.parameters}


def download_seconds(expected_bytes: int) -> float:
    """How long ``digits kaggle kernel output`` waits for ``expected_bytes`` on a slow line."""
    return BASE_DOWNLOAD_S + expected_bytes / SLOW_DOWNLOAD_BYTES_PER_S


def report(sizes: dict[str, tuple[int, int]]) -> str:
    """One line per stage: its output's size range against Kaggle's 20 GB."""
    gb = lambda b: f"{b / 1000**3:.2f}"  # noqa: E731
    return "\n".join(
        f"{stage}: output {gb(lo)}–{gb(hi)} GB of Kaggle's {OUTPUT_LIMIT_BYTES // 1000**3} GB"
        for stage, (lo, hi) in sizes.items()
    )
