"""`digits predict IMAGE [IMAGE ...] --run outputs/runs/<name>`: classify your own digit images."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from digit_utils import atomic, paths
from digit_utils.cli.options import add_model_options, device_of
from digit_utils.errors import DataError, DigitsError


def _table(predictions) -> str:
    width = max(4, *(len(p.source) for p in predictions))
    lines = [f"{'file':<{width}}  digit  confidence  top-3"]
    for p in predictions:
        top = "  ".join(f"{d}:{prob:.3f}" for d, prob in p.top(3))
        lines.append(f"{p.source:<{width}}  {p.digit:>5}  {p.confidence:>10.1%}  {top}")
    return "\n".join(lines)


def _figures_dir(args) -> Path | None:
    """Where --show saves, checked before any model loads: a folder we can write, or an error."""
    if not args.show:
        return None
    out = Path(args.figures) if args.figures else paths.outputs_dir() / "predict"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DigitsError(f"figures folder {out}: cannot create it ({e.strerror})") from None
    if not os.access(out, os.W_OK):
        raise DigitsError(f"figures folder {out}: not writable")
    return out


def _read_all(names: list[str]) -> tuple[np.ndarray, list[str], list[str]]:
    """The images that can be read (N,1,28,28), their names, and one line per image that can't.

    One blank or unreadable image should not cost the answers for all the others.
    """
    from digit_utils.serve.predictor import preprocess

    images, kept, failed = [], [], []
    for name in names:
        try:
            images.append(preprocess(name))
            kept.append(name)
        except DataError as e:
            failed.append(str(e))
    return (np.stack(images) if images else np.zeros((0, 1, 28, 28), np.uint8)), kept, failed


def _predict(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # figures go to files; no display needed
    import matplotlib.pyplot as plt

    from digit_utils.serve.predictor import Predictor, plot_prediction, to_predictions
    from digit_utils.train.runs import default_runs

    out = _figures_dir(args)
    runs = [Path(r) for r in args.run] if args.run else default_runs()
    predictor = Predictor.from_run(runs, which=args.which, tta=args.tta, device=device_of(args))
    images, names, failed = _read_all(list(args.images))
    if len(failed) == len(args.images) == 1:
        raise DataError(failed[0])
    predictions = to_predictions(predictor.predict_images(images), names) if names else []
    figures = []
    for i, (image, pred) in enumerate(zip(images, predictions, strict=True)):
        if out is None:
            break
        fig = plot_prediction(image, pred)
        figures.append(out / f"{i:02d}_{Path(pred.source).stem}.png")
        atomic.atomic_write(
            figures[-1], lambda fh, fig=fig: fig.savefig(fh, format="png", dpi=100), mode="wb"
        )
        plt.close(fig)
    if args.json:
        record = {"runs": [str(r) for r in runs], "tta": args.tta, "which": args.which}
        record["predictions"] = [p.to_dict() for p in predictions]
        record["figures"] = [str(f) for f in figures]
        record["failed"] = failed
        print(json.dumps(record, indent=2))
    else:
        if predictions:
            print(_table(predictions))
        for f in figures:
            print(f"figure: {f}")
    if failed:
        for line in failed[:-1]:
            print(f"skipped: {line}", file=sys.stderr)
        raise DataError(
            f"{len(failed)} of {len(args.images)} image(s) not classified; {failed[-1]}"
        )
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("predict", help="classify your own digit images with trained run(s)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files of single digits")
    add_model_options(
        p, "the runs of the newest run list, i.e. the ensemble's members, else the newest run"
    )
    p.add_argument(
        "--which", choices=["best", "last"], default="last", help="checkpoint (last: final model)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--show",
        action="store_true",
        help="save a figure per image (as the model sees it, with probability bars)",
    )
    p.add_argument("--figures", metavar="DIR", help="where --show saves (default outputs/predict)")
    p.set_defaults(func=_predict)
