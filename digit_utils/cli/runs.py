"""`digits runs`: the finished training runs as a table, sortable and filterable, or JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from digit_utils import paths

SORT_KEYS = ("finished", "val_acc", "best_val_acc", "train_seconds", "model", "seed", "name")
BEST_FIRST = {"val_acc", "best_val_acc"}  # the other keys sort lowest (or oldest) first


def register_cli(sub) -> None:
    p = sub.add_parser(
        "runs",
        help="list finished training runs: model, seed, fold, accuracy, time, device, folder",
        description="Every finished run folder under outputs/ (notebooks' and your own). "
        "Accuracy is the final model's on the run's validation rows.",
    )
    p.add_argument("--sort", choices=SORT_KEYS, default="finished",
                   help="order by this column (accuracies best first, others lowest or oldest "
                   "first; default: finished)")  # fmt: skip
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.add_argument("--model", help="only runs of this model")
    p.add_argument("--stage", help="only runs of this notebook (e.g. 04_train_cnn)")
    p.add_argument("--last", type=int, metavar="N", help="only the N most recently finished")
    p.add_argument("--json", action="store_true", help="print JSON records (for scripts)")
    p.set_defaults(func=_runs)


def _select(table, args):
    if args.model:
        table = table[table["model"] == args.model]
    if args.stage:
        table = table[table["stage"] == args.stage]
    if args.last is not None:
        table = table.tail(max(args.last, 0))  # the table comes oldest first
    descending = (args.sort in BEST_FIRST) != args.reverse
    return table.sort_values(args.sort, ascending=not descending, kind="stable")


def _text(table) -> str:
    outputs = paths.outputs_dir()

    def folder(path: str) -> str:
        p = Path(path)
        return str(p.relative_to(outputs)) if p.is_relative_to(outputs) else path

    shown = table.assign(
        fold=table["fold"].map(lambda f: "-" if f is None or f != f else str(int(f))),
        val_acc=table["val_acc"].map(lambda a: "-" if a is None or a != a else f"{a:.4f}"),
        seconds=table["train_seconds"].map(lambda s: "-" if s is None or s != s else f"{s:.1f}"),
        date=table["finished"].map(lambda d: str(d).replace("T", " ")[:16]),
        folder=table["run_dir"].map(folder),
    )[["model", "seed", "fold", "val_acc", "seconds", "device", "date", "folder"]]
    return shown.to_string(index=False)


def _runs(args) -> int:
    from digit_utils.train.runs import finished_runs  # imports torch: only for this command

    table = _select(finished_runs(), args)
    if args.json:
        records = [
            {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
            for row in table.to_dict(orient="records")
        ]
        print(json.dumps(records, indent=2, default=str))
    elif table.empty:
        print(f"no finished runs under {paths.outputs_dir()}")
    else:
        print(_text(table))
    return 0
