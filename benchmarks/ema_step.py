"""The EMA's per-step cost, before (a copy_ per BatchNorm count) and after (one foreach copy).

Times, interleaved and repeated, deep_cnn training steps at batch 128 (forward, loss, backward,
AdamW, EMA) with each EMA, and the EMA update alone; prints medians. Not a test:

    python benchmarks/ema_step.py --repeats 5 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from digit_utils.train.models import build_model
from digit_utils.train.steps import Ema


class PerCountEma(Ema):
    """The EMA as it was: the floating tensors in one lerp, then a copy_ per BatchNorm count."""

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self._ema, self._live, 1 - decay)
        self.copy_counts()

    def copy_counts(self) -> None:
        for e, m in zip(self._ema_counts, self._live_counts, strict=True):
            e.copy_(m)


def foreach_counts(ema: Ema) -> None:
    torch._foreach_copy_(ema._ema_counts, ema._live_counts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deep_cnn")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 1, 28, 28, device=device).contiguous(
        memory_format=torch.channels_last
    )
    y = torch.randint(0, 10, (args.batch,), device=device)
    emas = {"per-count copy_": PerCountEma(model), "foreach copy": Ema(model)}
    print(f"{args.model}: {len(emas['foreach copy']._ema_counts)} BatchNorm counts")
    steps_per_s = {k: [] for k in emas}
    update_us = {k: [] for k in emas}
    counts_us = {k: [] for k in emas}
    copy_counts = {"per-count copy_": emas["per-count copy_"].copy_counts,
                   "foreach copy": lambda: foreach_counts(emas["foreach copy"])}  # fmt: skip
    for _ in range(args.repeats):
        for name, ema in emas.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                ema.update(0.999)
            steps_per_s[name].append(args.steps / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for _ in range(1000):
                ema.update(0.999)
            update_us[name].append((time.perf_counter() - t0) * 1e3)  # µs per update
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(1000):
                    copy_counts[name]()
            counts_us[name].append((time.perf_counter() - t0) * 1e3)
    for name in emas:
        print(f"{name:16s} steps/s median {statistics.median(steps_per_s[name]):.2f} "
              f"({', '.join(f'{v:.2f}' for v in steps_per_s[name])}); EMA update alone "
              f"median {statistics.median(update_us[name]):.1f} µs, its BatchNorm counts "
              f"{statistics.median(counts_us[name]):.1f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
