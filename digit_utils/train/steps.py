"""The parts of one training step that the loop calls per batch: forward and loss (eager, or
compiled once per process) and the weights' exponential moving average.

``compile`` modes (config.COMPILE_MODES): "forward" compiles the model (its backward too);
"step" compiles forward and loss as one graph, whose backward AOTAutograd compiles with it;
"graphs" replays that graph as CUDA graphs (``mode="reduce-overhead"``), for the small nets
whose eager steps are launch-bound. The optimizer step stays outside the compiled region: on
CUDA it is already one fused kernel, and ``torch.compile(optimizer.step)`` guards on the
optimizer object, so every run recompiles it and a worker's ninth run hits Dynamo's recompile
limit and falls back to eager (seen on CPU with torch 2.14). The compiled callables are built
once per process and mode; Dynamo's cache on the function's code keeps one graph per
architecture (and precision, label smoothing), so a worker's later runs of the same model
compile nothing. None of these modes has been measured on a GPU yet.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from digit_utils.train.devices import compile_blocker, maybe_compile

# (model, images, labels, label smoothing, autocast dtype or None) -> (loss, logits)
StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
_COMPILED: dict[str, StepFn] = {}  # per process: compile mode -> compiled forward_loss


def forward_loss(
    model: nn.Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    label_smoothing: float,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of one batch: the model under autocast (none for fp32), the loss in fp32."""
    with torch.autocast(xb.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(xb)
    return F.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing), logits


def _compiled(mode: str) -> StepFn:
    """The process's compiled forward_loss for ``mode`` ("step" or "graphs"), built once."""
    if mode not in _COMPILED:
        if mode == "graphs":
            graph = torch.compile(forward_loss, mode="reduce-overhead")

            def replay(*args):
                # a new iteration: the previous replay's outputs (loss, logits) may be reused
                torch.compiler.cudagraph_mark_step_begin()
                return graph(*args)

            _COMPILED[mode] = replay
        else:
            _COMPILED[mode] = torch.compile(forward_loss)
    return _COMPILED[mode]


def training_step(
    model: nn.Module, mode: str, device: torch.device, precision: str
) -> tuple[nn.Module, StepFn]:
    """(the module to call, the forward-and-loss function) of a run in compile ``mode``; the
    eager ones, with one warning saying why, when the device or precision rules compiling out."""
    if mode == "off":
        return model, forward_loss
    if mode == "forward":
        return maybe_compile(model, True, device, precision), forward_loss
    if reason := compile_blocker(device, precision):
        warnings.warn(f"compile={mode!r} ignored, training eagerly: {reason}", stacklevel=2)
        return model, forward_loss
    if mode == "graphs" and device.type != "cuda":
        warnings.warn(
            f"compile='graphs' needs CUDA; on {device.type} the step is compiled without CUDA "
            "graphs (compile='step')",
            stacklevel=2,
        )
        mode = "step"
    return model, _compiled(mode)


class Ema:
    """An exponential moving average of a model's weights, updated with two foreach kernels per
    step: one lerp over every floating tensor (weights and BatchNorm's running mean and
    variance) and one copy of the integer ones (BatchNorm's num_batches_tracked), rather than a
    copy per BatchNorm layer. The tensor lists are taken once (views that share the models'
    storage) rather than walking two state_dicts every step."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval()
        pairs = zip(self.model.state_dict().values(), model.state_dict().values(), strict=True)
        self._ema, self._live, self._ema_counts, self._live_counts = [], [], [], []
        for e, m in pairs:
            if e.is_floating_point():
                self._ema.append(e)
                self._live.append(m)
            else:  # BatchNorm's num_batches_tracked: a count, copied, never averaged
                self._ema_counts.append(e)
                self._live_counts.append(m)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        if self._ema:
            torch._foreach_lerp_(self._ema, self._live, 1 - decay)
        if self._ema_counts:
            torch._foreach_copy_(self._ema_counts, self._live_counts)
