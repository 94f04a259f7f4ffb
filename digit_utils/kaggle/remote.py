"""A built kernel on Kaggle, through the CLI: push one (everything that can be checked first is),
its run status, and its output files (complete, fresh, and holding what its stage promises)."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

from digit_utils import paths, stages
from digit_utils.errors import ConfigError, KaggleError
from digit_utils.kaggle import client as kaggle
from digit_utils.kaggle.kernels import (
    ACCELERATOR,
    METADATA_FILE,
    MIN_CLI,
    kernel_metadata,
    kernel_ref,
    push_args,
    read_metadata,
)

# `kaggle kernels push` prints this (and still exits 0) when it drops kernel_sources it cannot
# find: the kernel then runs without its upstream's outputs.
DROPPED_SOURCES = re.compile(r"not valid kernel sources[^:\n]*:?[ \t]*(.*)")


def dropped_sources(out: str, declared: list[str]) -> list[str]:
    """The upstream kernels a push report says were dropped ([] when none were)."""
    match = DROPPED_SOURCES.search(out)
    if not match:
        return []
    named = re.findall(r"[A-Za-z0-9_-]+/[A-Za-z0-9_-]+", match.group(1))
    return named or list(declared)


# `kernels status OWNER/SLUG/N` reads version N's run; this CLI is the one checked to send the
# version as the API wants it (`v<N>`, a 404 otherwise). Only `push --wait` needs it.
MIN_WAIT_CLI = "2.2.5"
PUSHED_VERSION = re.compile(r"Kernel version (\d+) successfully")
METADATA_KEYS = ("id", "code_file", "enable_gpu", "competition_sources", "kernel_sources")


def check_built(kernel_dir: str | Path) -> dict:
    """A built kernel's metadata, checked before anything is sent (its notebook, the competition,
    and for a pipeline stage the upstream kernels and GPU the stage graph gives it)."""
    meta = read_metadata(kernel_dir)
    if missing := [key for key in METADATA_KEYS if key not in meta]:
        raise KaggleError(f"{kernel_dir}: {METADATA_FILE} lacks {', '.join(missing)}; rebuild it")
    problems = []
    owner, _, slug = str(meta["id"]).partition("/")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", owner) or not re.fullmatch(r"[a-z0-9-]+", slug):
        problems.append(f"id {meta['id']!r} is not OWNER/SLUG")
    if not (Path(kernel_dir) / str(meta["code_file"])).is_file():
        problems.append(f"its notebook {meta['code_file']} is missing")
    if meta["competition_sources"] != [kaggle.COMPETITION]:
        problems.append(
            f"competition_sources is {meta['competition_sources']}, not [{kaggle.COMPETITION!r}]"
        )
    stage = stage_of(meta["id"]) if not problems else None
    if stage:
        expected = kernel_metadata(stage, owner)
        for key in ("kernel_sources", "enable_gpu", "machine_shape"):
            if meta.get(key) != expected.get(key):
                problems.append(
                    f"{key} is {meta.get(key)!r}, but the stage graph gives {stage} "
                    f"{expected.get(key)!r}"
                )
    if problems:
        raise KaggleError(
            f"{kernel_dir}: {'; '.join(problems)}. Rebuild it with `digits kaggle kernel build`"
        )
    return meta


def pushed_version(out: str) -> int | None:
    """The version number a push report names ("Kernel version 3 successfully pushed")."""
    match = PUSHED_VERSION.search(out)
    return int(match.group(1)) if match else None


def push(kernel_dir: str | Path, *, accelerator: str = ACCELERATOR) -> str:
    """Push a built kernel; returns the CLI's report (with the kernel's URL)."""
    meta = read_metadata(kernel_dir)
    args = push_args(kernel_dir, gpu=meta["enable_gpu"], accelerator=accelerator)
    try:
        out = kaggle.run(args)
    except KaggleError as e:
        if "unrecognized arguments" in str(e):  # argparse of a CLI without --accelerator
            raise KaggleError(
                f"the installed kaggle CLI is older than {MIN_CLI}, which `kernels push "
                f"--accelerator` and the T4 machine shape need: run `pip install -U "
                f"'kaggle>={MIN_CLI}'`"
            ) from None
        raise
    if match := re.search(r"Kernel push error:?\s*(.*)", out):
        raise KaggleError(f"Kaggle rejected the push of {meta['id']}: {match.group(1).strip()}")
    if missing := dropped_sources(out, meta["kernel_sources"]):
        raise KaggleError(
            f'Kaggle dropped the upstream kernel(s) {", ".join(missing)} of {meta["id"]} ("not '
            'valid kernel sources"): this run will not see their outputs. Push them first (same '
            "owner, see --user) and let them complete, then push this one again; "
            "`digits kaggle kernel push --wait` does both"
        )
    if re.search(r"not valid competition sources", out):
        raise KaggleError(
            f'Kaggle dropped the competition {kaggle.COMPETITION} from {meta["id"]} ("not valid '
            'competition sources"): the kernel would run without its data. Accept the rules at '
            f"https://www.kaggle.com/competitions/{kaggle.COMPETITION}/rules with the account "
            f"that pushes, check the slug in competition_sources ({meta['competition_sources']}),"
            " then push again"
        )
    return out


def _run_about(ref: str, args: list[str], *, timeout: float = 600) -> str:
    """``kaggle.run`` with the kernel named in its errors (except the missing credentials)."""
    if not kaggle.has_credentials():
        raise KaggleError(kaggle.NO_CREDENTIALS)
    try:
        return kaggle.run(args, timeout=timeout)
    except KaggleError as e:
        raise KaggleError(f"kernel {ref}: {e}") from None


FAILED_STATES = ("error", "cancel_requested", "cancel_acknowledged")


def status(ref: str) -> tuple[str, str]:
    """(status word in lower case, e.g. ``complete``, and the failure message or "")."""
    ref = kernel_ref(ref, kaggle.username())
    out = _run_about(ref, ["kernels", "status", ref])
    match = re.search(r'has status "([^"]+)"', out)
    if not match:
        raise KaggleError(f"kernel {ref}: unexpected answer from the Kaggle CLI: {out.strip()}")
    failure = re.search(r'Failure message: "(.*)"', out)
    return match.group(1).rsplit(".", 1)[-1].lower(), failure.group(1) if failure else ""


# CLI 1.8.4–2.2.1 downloads only the first page (about 20) of a kernel's output files and still
# exits 0; 03 writes hundreds, so submission.csv could silently never arrive. (`--file-pattern`,
# a regular expression searched in each file's path under /kaggle/working, came with 1.8.4.)
MIN_OUTPUT_CLI = "2.2.2"
OUTPUT_MARKER = ".digits-kernel-output"  # names the kernel a folder's files were downloaded from
# Seconds to wait for a download when its size is not estimated (the CLI passes the estimate of
# pipeline/output_size): a training stage's output holds its run folders, the others a few files.
OUTPUT_TIMEOUT = {"training": 3600.0, "other": 600.0}
KEPT_OUT = ("best.pt",)  # run-folder files no reader loads (older kernels' outputs have them)


def stage_of(ref: str) -> str | None:
    """The stage whose kernel ``owner/slug`` is (None for a kernel outside the graph)."""
    slug = ref.split("/")[1]
    return next((name for name in stages.STAGES if paths.kernel_slug(name) == slug), None)


def output_args(ref: str, dest: str | Path, pattern: str | None = None) -> list[str]:
    """The ``kaggle`` arguments that download a kernel's output (pure); ``-o`` overwrites, so a
    newer file of the same size is never skipped on the CLI's time-zone-naive date check, and
    ``--file-pattern`` downloads only the files whose path it matches (``re.search``)."""
    args = ["kernels", "output", ref, "-p", str(dest), "-o"]
    return args + ["--file-pattern", pattern] if pattern is not None else args


def needed_pattern(stage: str | None) -> str | None:
    """The files of a stage's output that a later stage, ``digits predict`` or ``digits serve``
    reads, as a ``--file-pattern``: what it delivers (submission.csv), its hand-off files and
    metrics.json, and its run folders without best.pt. None (everything) outside the graph."""
    if stage is None:
        return None
    spec = stages.STAGES[stage]
    own = "|".join(re.escape(name) for name in (*spec.writes, "metrics.json"))
    skip = "|".join(re.escape(name) for name in KEPT_OUT)
    run_files = rf"runs/[^/]+/(?!(?:{skip})$)[^/]+"  # a run folder's files, not runs/runs.csv
    folder = rf"outputs/{re.escape(stage)}/(?:{own}|{run_files})"
    return rf"(?:^|/)(?:{'|'.join([*map(re.escape, spec.delivers), folder])})$"


def output_timeout(stage: str | None) -> float:
    spec = stages.STAGES.get(stage or "")
    return OUTPUT_TIMEOUT["training" if spec and spec.gpu else "other"]


def _checked_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not (
        isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0
    ):
        raise ConfigError(f"timeout: expected a finite number of seconds above 0, got {timeout!r}")
    return timeout


def _checked_pattern(files: str | None) -> str | None:
    if files is not None:
        try:
            re.compile(files)
        except (re.error, TypeError) as e:
            raise ConfigError(f"files: {files!r} is not a regular expression ({e})") from None
    return files


def _check_replaceable(dest: Path, default: bool) -> None:
    """KaggleError unless ``dest`` is missing, empty, ours by default, or an earlier download."""
    if not dest.exists() or default or (dest / OUTPUT_MARKER).is_file():
        return
    if not dest.is_dir() or any(dest.iterdir()):
        raise KaggleError(
            f"{dest} is not empty and holds no earlier kernel output: the download replaces the "
            "folder's files, so pass a new or empty folder with -p"
        )


def output(
    ref: str,
    dest: str | Path | None = None,
    *,
    timeout: float | None = None,
    files: str | None = None,
    everything: bool = False,
) -> Path:
    """Download a kernel's output files into ``dest`` (default outputs/kernels/<slug>/output),
    replacing what an earlier download left there; KaggleError when a file its stage promises
    (``StageSpec.promised``) and the selection covers did not arrive.

    Which files: those a later stage or ``digits predict``/``serve`` reads
    (:func:`needed_pattern`), ``files`` (a regular expression searched in each path, as the
    CLI's ``--file-pattern``), or, with ``everything``, all of them. ``timeout``: seconds
    (default by the stage's kind).
    """
    timeout, files = _checked_timeout(timeout), _checked_pattern(files)
    if everything and files is not None:
        raise ConfigError("files: give a pattern or ask for everything, not both")
    ref = kernel_ref(ref, kaggle.username())
    default = dest is None
    dest = Path(dest or paths.outputs_dir() / "kernels" / ref.split("/")[1] / "output")
    _check_replaceable(dest, default)
    if not kaggle.has_credentials():
        raise KaggleError(kaggle.NO_CREDENTIALS)
    try:
        kaggle.require_version(MIN_OUTPUT_CLI, "downloads every page of a kernel's output files")
    except KaggleError as e:
        raise KaggleError(f"kernel {ref}: {e}") from None
    stage = stage_of(ref)
    partial = dest.parent / f".{dest.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pattern = None if everything else files if files is not None else needed_pattern(stage)
    _run_about(ref, output_args(ref, partial, pattern), timeout=timeout or output_timeout(stage))
    promised = stages.STAGES[stage].promised if stage else ()
    wanted = [name for name in promised if pattern is None or re.search(pattern, name)]
    if missing := [name for name in wanted if not (partial / name).is_file()]:
        raise KaggleError(
            f"kernel {ref}: its output lacks {', '.join(missing)}, which {stage} always writes "
            f"(what did arrive is in {partial}): check its latest run with `digits kaggle kernel "
            f"status {ref}` and its log at https://www.kaggle.com/code/{ref}/log"
        )
    (partial / OUTPUT_MARKER).write_text(ref + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    return dest
