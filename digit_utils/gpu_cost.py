"""What one training run costs on a Kaggle T4, per architecture: the table the pipeline's GPU
budget (:mod:`digit_utils.pipeline.budget`) and 05's second round (:mod:`digit_utils.train.pseudo`,
``max_gpu_hours``) both read. Torch-free: `budget.costs_of` recounts a row with torch.
"""

from __future__ import annotations

from digit_utils.errors import ConfigError

# Forward MFLOPs per 28×28 image and leaf modules (layers) of each registered model, counted
# with torch.utils.flop_counter.FlopCounterMode on one image (`costs_of` recomputes a row;
# tests/test_budget.py checks the cheap ones and that every registered model has a row).
MODEL_COST: dict[str, tuple[float, int]] = {
    "simple_cnn": (0.961, 6),
    "fast_cnn": (4.251, 14),
    "deep_cnn": (30.33, 26),
    "deep_cnn_wide": (120.5, 26),
    "se_vgg": (232.2, 39),
    "preact_resnet164": (378.8, 549),
    "wrn16_4": (600.7, 51),
    "wrn28_10": (8028.4, 93),
    "resnet18": (911.6, 52),
    "resnet34": (1871.8, 92),
    "resnet50": (2093.6, 126),
    "vgg16_bn": (561.3, 52),
    "efficientnet_b0": (58.41, 230),
    "efficientnet_b3": (148.3, 367),
    "mnasnet0_5": (14.86, 141),
    "mnasnet1_0": (46.51, 141),
    "mobilenet_v2": (43.50, 141),
    "mobilenet_v3_small": (9.869, 141),
    "mobilenet_v3_large": (36.72, 168),
    "squeezenet1_0": (76.44, 57),
    "squeezenet1_1": (30.26, 57),
}
# Images/s of one T4 measured by `make gpu-check` (fp16, batch 128); empty until a T4 ran it.
MEASURED_T4: dict[str, float] = {}

# The FLOP-derived estimate, as a (fast, slow) pair of assumptions. A training step costs 3×
# the forward FLOPs; a T4 sustains 16 (fast) to 6 (slow) TFLOP/s of its 65 fp16 peak on these
# small convolutions. Small nets are launch-bound instead: about 6 kernel launches per layer
# and step (forward, two backward, AMP casts, the optimizer) plus 40 for the step's own work
# (augmentation, loss, EMA, scaler), at 10 (fast) to 20 (slow) µs each.
T4_TFLOPS = (16.0, 6.0)
LAUNCH_US = (10.0, 20.0)
LAUNCHES_PER_LAYER, LAUNCHES_PER_STEP = 6, 40


def t4_images_per_s(model: str, batch_size: int = 128) -> tuple[float, float, str]:
    """``(fast, slow, how)``: a T4's training images/s for ``model``; "measured" or "FLOPs"."""
    if model in MEASURED_T4:
        return MEASURED_T4[model], MEASURED_T4[model], "measured"
    if model not in MODEL_COST:
        raise ConfigError(f"no T4 cost for model {model!r}: add it to gpu_cost.MODEL_COST")
    mflops, layers = MODEL_COST[model]
    rates = []
    for tflops, launch_us in zip(T4_TFLOPS, LAUNCH_US, strict=True):
        compute_s = 3 * mflops * 1e6 * batch_size / (tflops * 1e12)  # one step's arithmetic
        launch_s = (LAUNCHES_PER_LAYER * layers + LAUNCHES_PER_STEP) * launch_us * 1e-6
        rates.append(batch_size / max(compute_s, launch_s))
    return rates[0], rates[1], "FLOPs"


def training_seconds(
    model: str, epochs: int, train_rows: int, eval_rows: int, batch_size: int = 128
) -> tuple[float, float]:
    """(low, high) T4 seconds of one run: ``epochs`` passes over ``train_rows`` and a forward
    pass (a third of a step) over ``eval_rows`` each epoch, at the fast and slow assumption."""
    fast, slow, _ = t4_images_per_s(model, batch_size)
    images = epochs * (train_rows + eval_rows / 3)
    return images / fast, images / slow
