"""`digits pipeline`: run the numbered notebooks headless (see :mod:`digit_utils.pipeline`)."""

from __future__ import annotations

from digit_utils import paths
from digit_utils.pipeline import record
from digit_utils.pipeline.profiles import parse_overrides
from digit_utils.pipeline.runner import run_pipeline


def _cli(args) -> int:
    if args.status:
        path = paths.outputs_dir() / record.RECORD
        print(record.describe(record.read(path), path))
        return 0
    if args.plan:  # the GPU budget of this profile, nothing run
        from digit_utils.pipeline.budget import plan_budget

        overrides = parse_overrides(args.param or [])
        print(plan_budget(profile=args.profile, overrides=overrides, only=args.only,
                          start=args.start).report())  # fmt: skip
        return 0
    run_pipeline(
        profile=args.profile,
        only=args.only,
        start=args.start,
        overrides=parse_overrides(args.param or []),
        render_html=not args.no_html,
    )
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run the numbered notebooks with papermill",
        description="Run notebooks/NN_*.ipynb in order; outputs/pipeline.json records the run.",
    )
    p.add_argument("--profile", default="quick", help="params/<name>.yaml or a YAML path")
    p.add_argument("--only", help="comma-separated prefixes or stems, e.g. 03,05")
    p.add_argument("--from", dest="start", help="start at this notebook (prefix or stem)")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="override a parameter (YAML value); NOTEBOOK.KEY=VALUE targets one notebook",
    )
    p.add_argument("--no-html", action="store_true", help="skip the HTML reports")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print each stage's training work and estimated T4 GPU-hours; run nothing",
    )
    p.add_argument(
        "--status", action="store_true", help="report the last run (finished, failed, interrupted)"
    )
    p.set_defaults(func=_cli)
