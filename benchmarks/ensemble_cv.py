"""CV accuracy of single models vs soft averaging, majority vote, stacking and greedy selection,
with and without a pseudo-labelled second round.

Trains K base models (members) on the full train.csv: with ``--folds k`` each member is k fold
runs of one recipe (every labelled row trains k-1 of them and scores the last: out-of-fold on all
rows), else one run on a shared stratified holdout. Every member shares ``split_seed``, so their
validation rows are the same. Prints each member's out-of-fold accuracy and each method's (stacking
and greedy selection scored by an inner 5-fold CV). With ``--pseudo T`` a second round retrains
every member with the test rows its fold's first-round ensemble is at least T sure of (the
teacher of fold f never trained on fold f's rows; see ``digit_utils.train.pseudo``) and prints
the same table for it; out-of-fold rows are train rows only.

    .venv/bin/python benchmarks/ensemble_cv.py
    .venv/bin/python benchmarks/ensemble_cv.py --folds 3 --epochs 1 -k 3 --pseudo 0.995
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

from digit_utils import atomic, data, ensemble, paths
from digit_utils.config import TrainConfig
from digit_utils.pipeline.profiles import parse_overrides
from digit_utils.train import grids, inference, pseudo

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
    p.add_argument("--folds", type=int, default=0, help="k-fold members (0: one holdout)")
    p.add_argument(
        "--pseudo",
        type=float,
        default=None,
        help="also a second round with test rows the teacher is this sure of",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="further TrainConfig settings for every member, e.g. warmup_epochs=0.2",
    )
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


def train_members(args, images, labels, root, round_fn) -> tuple[dict, dict]:
    """K members, each one recipe over the folds (or the holdout): ``(run groups, seconds)``."""
    models, augments = args.models.split(","), args.augment.split(",")
    groups, seconds = {}, {}
    for i in range(args.n_models):
        model, augment = models[i % len(models)], augments[i % len(augments)]
        name = f"{i}-{model}-{augment}"
        cfg = {"model": model, "augment": augment, "epochs": args.epochs, "split_seed": 0,
               "val_fraction": args.val_fraction, "device": args.device,
               "batch_size": args.batch_size, "tta": args.tta}  # fmt: skip
        if args.lr is not None:
            cfg["lr"] = args.lr
        cfg.update(parse_overrides(args.set))
        start = time.perf_counter()
        grid = round_fn(images, labels, TrainConfig.from_dict(cfg), {name: {}}, seeds=[i],
                        folds=args.folds, root=root)  # fmt: skip
        took = seconds[f"{name}-s{i}"] = time.perf_counter() - start
        groups.update(grid.run_groups())
        print(f"trained {name} (seed {i}, {args.folds or 'holdout'} fold(s)): out-of-fold "
              f"{grid.results['val_acc'].mean():.4%} (fold mean) in {took:.0f} s",
              flush=True)  # fmt: skip
    return groups, seconds


def score(groups, labels, seconds) -> tuple[pd.DataFrame, float]:
    oof = inference.load_oof(groups)
    start = time.perf_counter()
    table = ensemble.compare_methods(oof.probas, labels[oof.indices], names=oof.names)
    table["train_s"] = table["method"].map(seconds).round(0)
    return table, time.perf_counter() - start


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else paths.outputs_dir() / "benchmarks"
    runs_root = out / "ensemble_cv_runs"
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a subset's "not 42,000 rows" notice
        source = data.locate(args.data, download=False)
        images, labels = data.load_train(source)
        test_images = data.load_test(source) if args.pseudo else None
    if args.rows:
        images, labels = images[: args.rows], labels[: args.rows]

    groups, seconds = train_members(args, images, labels, runs_root, grids.run_grid)
    tables = {"first round": score(groups, labels, seconds)}
    if args.pseudo:
        chosen = []

        def second_round(images, labels, base, variants, **kw):
            grid, selected = pseudo.run_pseudo_grid(
                images, labels, test_images, base, variants, groups, threshold=args.pseudo,
                **kw,
            )  # fmt: skip
            chosen.append(selected)
            return grid

        pl_groups, pl_seconds = train_members(
            args, images, labels, out / "ensemble_cv_pseudo_runs", second_round
        )
        tables[f"pseudo-labels ≥ {args.pseudo}"] = score(pl_groups, labels, pl_seconds)
        selected = pd.concat(chosen).drop_duplicates()
        print(f"pseudo-labelled test rows per split:\n{selected.to_string(index=False)}")

    header = (
        f"rows: {len(images):,} ({source.describe()}); "
        f"{f'{args.folds}-fold out-of-fold' if args.folds else 'one shared holdout'}; "
        f"{args.n_models} members; {args.epochs} epoch(s); models {args.models}; augment "
        f"{args.augment}; tta {args.tta}; device {args.device}; {platform.node()} "
        f"({os.cpu_count()} CPUs), load avg {os.getloadavg()[0]:.1f} at the end"
    )
    sections, frames = [], []
    for label, (table, took) in tables.items():
        singles = table.loc[table["kind"] == "single", "accuracy"]
        method, accuracy = ensemble.pick_best(table)
        summary = (
            f"{label}: single members {singles.mean():.4%} ± {singles.std(ddof=1):.4%} (std "
            f"over {len(singles)}); best method {method} {accuracy:.4%}; scoring took {took:.1f} s"
        )
        shown = table.assign(accuracy=table["accuracy"].map("{:.4%}".format))
        print(f"\n{label}\n{shown.to_string(index=False)}\n{summary}")
        sections.append(f"## {label}\n\n{markdown(shown)}\n\n{summary}\n")
        frames.append(table.assign(round=label))
    print(f"\n{header}")
    atomic.write_csv(pd.concat(frames, ignore_index=True), out / "ensemble_cv.csv")
    atomic_text(f"# Ensemble CV\n\n{header}\n\n" + "\n".join(sections), out / "ensemble_cv.md")
    print(f"\nwrote {out / 'ensemble_cv.csv'} and {out / 'ensemble_cv.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
