"""`digits predict IMAGE [IMAGE ...] --run outputs/runs/<name>`: classify your own digit images."""

from __future__ import annotations

import json
from pathlib import Path

from . import paths


def _table(predictions) -> str:
    width = max(4, *(len(p.source) for p in predictions))
    lines = [f"{'file':<{width}}  digit  confidence  top-3"]
    for p in predictions:
        top = "  ".join(f"{d}:{prob:.3f}" for d, prob in p.top(3))
        lines.append(f"{p.source:<{width}}  {p.digit:>5}  {p.confidence:>10.1%}  {top}")
    return "\n".join(lines)


def _predict(args) -> int:
    import matplotlib

    matplotlib.use("Agg")  # figures go to files; no display needed
    import matplotlib.pyplot as plt

    from .predictor import Predictor, load_images, plot_prediction, to_predictions
    from .runs import default_runs

    runs = [Path(r) for r in args.run] if args.run else default_runs()
    predictor = Predictor.from_run(runs, which=args.which, tta=args.tta, device=args.device)
    images, names, _ = load_images(list(args.images))  # (N,1,28,28) as the model sees them
    predictions = to_predictions(predictor.predict_images(images), names)
    figures = []
    if args.show:
        out = Path(args.figures) if args.figures else paths.outputs_dir() / "predict"
        out.mkdir(parents=True, exist_ok=True)
        for i, (image, pred) in enumerate(zip(images, predictions, strict=True)):
            fig = plot_prediction(image, pred)
            figures.append(out / f"{i:02d}_{Path(pred.source).stem}.png")
            fig.savefig(figures[-1], dpi=100)
            plt.close(fig)
    if args.json:
        record = {"runs": [str(r) for r in runs], "tta": args.tta, "which": args.which}
        record["predictions"] = [p.to_dict() for p in predictions]
        record["figures"] = [str(f) for f in figures]
        print(json.dumps(record, indent=2))
    else:
        print(_table(predictions))
        for f in figures:
            print(f"figure: {f}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("predict", help="classify your own digit images with trained run(s)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files of single digits")
    p.add_argument(
        "--run",
        action="append",
        metavar="RUN_DIR",
        help="a run folder (repeat for an ensemble; default: the runs of the newest run list, "
        "i.e. the ensemble's members, else the newest run)",
    )
    p.add_argument(
        "--which", choices=["best", "last"], default="last", help="checkpoint (last: final model)"
    )
    p.add_argument("--tta", type=int, default=0, help="shift-TTA: average over 1 + N shifts")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--show",
        action="store_true",
        help="save a figure per image (as the model sees it, with probability bars)",
    )
    p.add_argument("--figures", metavar="DIR", help="where --show saves (default outputs/predict)")
    p.set_defaults(func=_predict)
