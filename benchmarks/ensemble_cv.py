"""CV accuracy of single models vs soft averaging, majority vote and stacking.

Trains K models on the same stratified holdout of the full train.csv (``split_seed`` shared, so
every model holds out the same rows), then scores each single model and each ensemble method on
those out-of-fold rows; stacking by an inner 5-fold CV. Defaults are CPU-sized (5 x fast_cnn,
2 epochs, seeds 0-4, augmentation alternating none/affine); pass --epochs, --models, --augment for
a GPU-sized run.

    .venv/bin/python benchmarks/ensemble_cv.py
    .venv/bin/python benchmarks/ensemble_cv.py --models se_vgg --epochs 30 --device cuda --tta 4

Writes ``outputs/benchmarks/ensemble_cv.{csv,md}`` and the runs under
``outputs/benchmarks/ensemble_cv_runs/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from digit_utils import atomic, data, ensemble, paths, predict, train
from digit_utils.config import TrainConfig

REPLICA = Path(__file__).resolve().parents[2] / "shared" / "data" / "digit-recognizer.zip"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        default=str(REPLICA) if REPLICA.exists() else None,
        help="competition folder or zip (default: the shared replica, else locate())",
    )
    p.add_argument("--models", default="fast_cnn", help="comma list, cycled over the K runs")
    p.add_argument("--augment", default="none,affine", help="comma list of presets, cycled")
    p.add_argument("-k", "--n-models", type=int, default=5, help="number of base models")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="peak LR (default: the config's)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="shared stratified holdout")
    p.add_argument("--rows", type=int, default=None, help="use only the first N train rows")
    p.add_argument("--tta", type=int, default=0, help="shift-TTA for the OOF probabilities")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="folder for tables and runs")
    return p.parse_args(argv)  # fmt: skip


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub table without the optional `tabulate` dependency."""
    rows = [list(map(str, frame.columns)), ["---"] * frame.shape[1]]
    rows += [[str(v) for v in r] for r in frame.itertuples(index=False)]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def atomic_text(text: str, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else paths.outputs_dir() / "benchmarks"
    runs_root = out / "ensemble_cv_runs"
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a subset's "not 42,000 rows" notice
        source = data.locate(args.data, download=False)
        images, labels = data.load_train(source)
    if args.rows:
        images, labels = images[: args.rows], labels[: args.rows]
    models, augments = args.models.split(","), args.augment.split(",")
    runs, seconds = [], {}
    for i in range(args.n_models):
        model, augment = models[i % len(models)], augments[i % len(augments)]
        name = f"{i}-{model}-{augment}-seed{i}"
        cfg = {"model": model, "augment": augment, "epochs": args.epochs, "seed": i,
               "split_seed": 0, "val_fraction": args.val_fraction, "device": args.device,
               "batch_size": args.batch_size, "tta": args.tta, "name": name}  # fmt: skip
        if args.lr is not None:
            cfg["lr"] = args.lr
        start = time.perf_counter()
        result = train.train(
            TrainConfig.from_dict(cfg), images, labels, run_dir=runs_root / name, quiet=True
        )
        seconds[name] = time.perf_counter() - start
        print(f"trained {name}: holdout {result.metrics['best_val_acc']:.4%} "
              f"in {seconds[name]:.0f} s", flush=True)  # fmt: skip
        runs.append(runs_root / name)

    oof = predict.load_oof(runs)
    start = time.perf_counter()
    table = ensemble.compare_methods(oof.probas, labels[oof.indices], names=oof.names)
    stack_seconds = time.perf_counter() - start
    table["train_s"] = table["method"].map(seconds).round(0)
    singles = table.loc[table["kind"] == "single", "accuracy"]
    method, accuracy = ensemble.pick_best(table)

    header = (
        f"rows: {len(images):,} ({source.describe()}); holdout {len(oof.indices):,} rows shared "
        f"by {len(runs)} models; {args.epochs} epochs; models {args.models}; augment "
        f"{args.augment}; tta {args.tta}; device {args.device}; {platform.node()} "
        f"({os.cpu_count()} CPUs), load avg {os.getloadavg()[0]:.1f} at the end"
    )
    summary = (
        f"single models: mean {singles.mean():.4%} ± {singles.std(ddof=1):.4%} (std over "
        f"{len(singles)}); best method: {method} {accuracy:.4%}; compare_methods took "
        f"{stack_seconds:.1f} s"
    )
    shown = table.assign(accuracy=table["accuracy"].map("{:.4%}".format))
    print(header, shown.to_string(index=False), summary, sep="\n\n")
    atomic.write_csv(table, out / "ensemble_cv.csv")
    atomic_text(
        f"# Ensemble CV\n\n{header}\n\n{markdown(shown)}\n\n{summary}\n",
        out / "ensemble_cv.md",
    )
    print(f"\nwrote {out / 'ensemble_cv.csv'} and {out / 'ensemble_cv.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
