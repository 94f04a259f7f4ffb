"""`digits kaggle submit|submissions|kernel build|push|status|output`."""

from __future__ import annotations

import sys

from . import kaggle, kernels, paths
from .errors import KaggleError


def _user(args) -> str:
    name = args.user or kaggle.username()
    if not name:
        raise KaggleError(
            "no Kaggle user name for the kernel id: pass --user NAME, or set up credentials "
            "(~/.kaggle/kaggle.json or KAGGLE_USERNAME and KAGGLE_KEY)"
        )
    return name


def _submit(args) -> int:
    print(kaggle.submit(args.file, args.message).rstrip())
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
    # Built and pushed in pipeline order, so an upstream kernel exists before its readers.
    for folder in _build_all(args):
        print(kernels.push(folder, accelerator=args.accelerator).rstrip())
    return 0


def _kernel(name: str) -> str:
    """A notebook prefix such as ``03`` as its stem, the way build and push read it.

    Owner/slug refs, our slugs and names no local notebook matches are passed on as given.
    """
    if "/" in name or name.startswith(kernels.SLUG_PREFIX):
        return name
    known = [p.stem for p in sorted(paths.notebooks_dir().glob("*.ipynb"))]
    if name in known or not any(stem.startswith(name) for stem in known):
        return name
    return kernels.find_notebooks([name])[0].stem  # raises when the prefix is ambiguous


def _status(args) -> int:
    name = _kernel(args.slug)
    state, failure = kernels.status(name)
    ref = kernels.kernel_ref(name, kaggle.username())
    print(f"{ref}: {state}")
    if state in ("error", "cancel_requested", "cancel_acknowledged"):
        print(
            f"error: kernel {ref} did not complete: {failure or state}; its log is at "
            f"https://www.kaggle.com/code/{ref}/log",
            file=sys.stderr,
        )
        return 1
    return 0


def _output(args) -> int:
    dest = kernels.output(_kernel(args.slug), args.path)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    print(f"{len(files)} output file(s) in {dest}: {', '.join(files[:10])}")
    return 0


def register_cli(sub) -> None:
    p = sub.add_parser("kaggle", help="submit to the competition; notebooks as Kaggle kernels")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    v = verbs.add_parser("submit", help="validate a submission file, then submit it")
    v.add_argument("file", help="the submission CSV (ImageId,Label; 28,000 rows)")
    v.add_argument("-m", "--message", required=True, help="what this submission is")
    v.set_defaults(func=_submit)

    v = verbs.add_parser("submissions", help="list your past submissions and their scores")
    v.set_defaults(func=_submissions)

    k = verbs.add_parser("kernel", help="build, push and follow the notebooks as Kaggle kernels")
    kverbs = k.add_subparsers(dest="kernel_verb", required=True, metavar="VERB")
    for name, func, text in (
        ("build", _build, "write outputs/kernels/<slug>/ for each notebook"),
        ("push", _push, "build, then upload and run each kernel on Kaggle"),
    ):
        v = kverbs.add_parser(name, help=text)
        v.add_argument("notebooks", nargs="*", metavar="NOTEBOOK", help="path, stem or prefix")
        v.add_argument("--user", help="Kaggle user name (default: from the credentials)")
        v.add_argument("--public", action="store_true", help="make the kernels public")
        v.set_defaults(func=func)
    v.add_argument(
        "--accelerator",
        default=kernels.ACCELERATOR,
        help="GPU for the kernels that need one (default %(default)s; or NvidiaTeslaP100)",
    )

    v = kverbs.add_parser("status", help="a pushed kernel's run status")
    v.add_argument("slug", help="OWNER/SLUG, a slug, or a notebook stem such as 03_train_cnn")
    v.set_defaults(func=_status)

    v = kverbs.add_parser("output", help="download a kernel's output files")
    v.add_argument("slug", help="OWNER/SLUG, a slug, or a notebook stem")
    v.add_argument(
        "-p", "--path", help="folder to download into (default: outputs/kernels/<slug>/output)"
    )
    v.set_defaults(func=_output)
