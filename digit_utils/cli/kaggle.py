"""`digits kaggle submit|submissions|kernel build|push|status|output`."""

from __future__ import annotations

import sys

from digit_utils.cli.options import seconds_or_minutes, verb, verbs
from digit_utils.data import submission as submit
from digit_utils.errors import KaggleError
from digit_utils.kaggle import client as kaggle
from digit_utils.kaggle import kernels, remote
from digit_utils.kaggle import push as kernel_push


def _user(args) -> str:
    name = args.user or kaggle.username()
    if not name:
        raise KaggleError(f"no Kaggle user name for the kernel id: {kaggle.NO_USERNAME}")
    return name


def _submit(args) -> int:
    print(submit.submit(args.file, args.message).rstrip())
    return 0


def _submissions(args) -> int:
    rows = kaggle.submissions()
    if not rows:
        print("no submissions yet")
    for row in rows:
        score = row.get("publicScore") or "-"
        print(
            f"{row.get('date', '')}  {score:>8}  {row.get('status', '')}  "
            f"{row.get('fileName', '')}  {row.get('description', '')}"
        )
    return 0


def _build_all(args) -> list:
    user = _user(args)
    built = []
    for notebook in kernels.find_notebooks(args.notebooks):
        folder = kernels.build_kernel(notebook, user, public=args.public)
        meta = kernels.read_metadata(folder)
        gpu = "GPU" if meta["enable_gpu"] else "CPU"
        sources = ", ".join(meta["kernel_sources"]) or "competition data only"
        print(f"built {meta['id']} ({gpu}; reads {sources}) in {folder}")
        built.append(folder)
    return built


def _build(args) -> int:
    _build_all(args)
    return 0


def _push(args) -> int:
    if args.plan:  # a pushed kernel runs its notebook's defaults: their budget, nothing pushed
        from digit_utils.pipeline.budget import plan_budget

        print(plan_budget(profile=None).report())
        return 0
    kernels.check_accelerator(args.accelerator)  # before building anything
    # Built and pushed in pipeline order, so an upstream kernel comes before its readers.
    poller = kernel_push.Poller(poll=args.poll, timeout=args.timeout * 60)
    kernel_push.push_in_order(
        _build_all(args), accelerator=args.accelerator, wait=args.wait, poller=poller
    )
    return 0


def _status(args) -> int:
    state, failure = remote.status(args.slug)
    ref = kernels.kernel_ref(args.slug, kaggle.username())
    print(f"{ref}: {state}")
    if state in remote.FAILED_STATES:
        print(
            f"error: kernel {ref} did not complete: {failure or state}; its log is at "
            f"https://www.kaggle.com/code/{ref}/log",
            file=sys.stderr,
        )
        return 1
    return 0


def _download_timeout(slug: str) -> float | None:
    """Seconds to wait for a kernel's output: by its stage's estimated size (the notebooks'
    defaults, what a kernel runs) on a slow line; None (the kind's default) outside the graph."""
    from digit_utils.errors import DigitsError
    from digit_utils.pipeline import output_size

    try:
        stage = remote.stage_of(kernels.kernel_ref(slug, kaggle.username()))
        sizes = output_size.plan_output_bytes() if stage else {}
    except DigitsError:  # no notebooks here to estimate from, or no user name for the slug
        return None
    return output_size.download_seconds(sizes[stage][1]) if stage in sizes else None


def _output(args) -> int:
    timeout = args.timeout * 60 if args.timeout is not None else _download_timeout(args.slug)
    dest = remote.output(
        args.slug, args.path, timeout=timeout, files=args.files, everything=args.all
    )
    files = sorted(
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and p.name != remote.OUTPUT_MARKER
    )
    print(f"{len(files)} output file(s) in {dest}: {', '.join(files[:10])}")
    return 0


def register_cli(sub) -> None:
    group = verbs(sub, "kaggle", "submit to the competition; notebooks as Kaggle kernels")

    v = verb(group, "submit", _submit, "validate a submission file, then submit it")
    v.add_argument("file", help="the submission CSV (ImageId,Label; 28,000 rows)")
    v.add_argument("-m", "--message", required=True, help="what this submission is")

    verb(group, "submissions", _submissions, "list your past submissions and their scores")

    kverbs = verbs(
        group, "kernel", "build, push and follow the notebooks as Kaggle kernels", "kernel_verb"
    )
    for name, func, text in (
        ("build", _build, "write outputs/kernels/<slug>/ for each notebook"),
        ("push", _push, "build, then upload and run each kernel on Kaggle"),
    ):
        v = verb(kverbs, name, func, text)
        v.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="path, stem or prefix")
        v.add_argument("--user", help="Kaggle user name (default: from the credentials)")
        v.add_argument("--public", action="store_true", help="make the kernels public")
    _push_options(v)

    v = verb(kverbs, "status", _status, "a pushed kernel's run status")
    v.add_argument("slug", help="OWNER/SLUG, a slug, or a notebook stem such as 04_train_cnn")

    v = verb(kverbs, "output", _output, "download a kernel's output files")
    v.add_argument("slug", help="OWNER/SLUG, a slug, or a notebook stem")
    v.add_argument(
        "-p",
        "--path",
        help="folder to download into, replacing an earlier download (default: "
        "outputs/kernels/<slug>/output)",
    )
    v.add_argument(
        "--timeout",
        type=seconds_or_minutes(allow_zero=False),
        metavar="MINUTES",
        help="longest download (default: 10 plus the stage's estimated output at 2 MB/s)",
    )
    which = v.add_mutually_exclusive_group()
    which.add_argument(
        "--files",
        metavar="REGEX",
        help="only the files whose path under /kaggle/working this matches (default: what a "
        "later stage, predict and serve read: no figures, no best.pt)",
    )
    which.add_argument("--all", action="store_true", help="every file of the output")


def _push_options(v) -> None:
    """`kernel push`'s own options: the GPU, waiting stage by stage, and the budget."""
    v.add_argument(
        "--plan",
        action="store_true",
        help="print each stage's training work and estimated T4 GPU-hours against Kaggle's "
        "12-hour session and weekly quota; push nothing",
    )
    v.add_argument(
        "--accelerator",
        default=kernels.ACCELERATOR,
        help="GPU for the kernels that need one (default %(default)s: two T4s; the P100 is "
        "refused, today's Kaggle image cannot use it)",
    )
    v.add_argument(
        "--wait",
        action="store_true",
        help="push stage by stage: each kernel once its upstream kernels are complete, then wait "
        "for all (without it, a kernel whose upstream is not complete is refused)",
    )
    v.add_argument(
        "--poll",
        type=seconds_or_minutes(allow_zero=False),
        default=60,
        metavar="SECONDS",
        help="between status calls (--wait)",
    )
    v.add_argument(
        "--timeout",
        type=seconds_or_minutes(allow_zero=True),
        default=720,
        metavar="MINUTES",
        help="longest wait for one kernel (--wait; default %(default)s)",
    )
