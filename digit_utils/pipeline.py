"""The papermill runner behind `digits pipeline`: run the numbered notebooks in order.

Each notebook gets only the parameters its ``parameters`` cell declares (routing and profiles:
:mod:`profiles`). Every key, and for the pipeline's own stages every value's type, is checked
before any notebook runs (papermill only warns).

Executed notebooks go to ``outputs/notebooks/``, HTML to ``outputs/reports/`` and the run record
to ``outputs/pipeline.json``, rewritten atomically after each notebook so that a crash leaves an
accurate record.

(Over 300 lines: running, recording and reporting a notebook are one story.)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__, atomic, paths, pipeline_status, stages, tracking
from .errors import ConfigError, DigitsError
from .profiles import load_profile, parse_overrides, route_parameters

log = logging.getLogger(__name__)

NOTEBOOK_NAME = re.compile(r"^(\d\d)_\w+$")  # 03_train_cnn: two-digit prefix, then a name
RECORD = "pipeline.json"  # the run record, in the outputs folder
DATA_DIR = stages.DATA_DIR  # the parameter the runner fills with the located data folder
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class PipelineError(DigitsError):
    """A notebook failed; the message names it, the failing cell and the error."""


# --------------------------------------------------------------------------------------------
# Notebooks, their parameters and the profiles


def discover_notebooks(folder: str | Path | None = None) -> list[Path]:
    """The pipeline's notebooks ``NN_*.ipynb`` in ``folder`` (default: notebooks/), in order."""
    folder = Path(folder) if folder is not None else paths.notebooks_dir()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_NAME.match(p.stem))


def declared_parameters(notebook: str | Path) -> dict[str, dict]:
    """``{name: {name, inferred_type_name, default, help}}`` from the ``parameters`` cell."""
    import papermill

    path = Path(notebook)
    if not path.is_file():
        raise ConfigError(f"{path}: notebook not found")
    with _quiet_papermill():
        return papermill.inspect_notebook(str(path))


def select(
    notebooks: Sequence[Path], only: str | Sequence[str] | None = None, start: str | None = None
) -> list[Path]:
    """The notebooks ``only`` names (prefixes or stems), from ``start`` on, in pipeline order."""
    stems = [p.stem for p in notebooks]
    chosen = list(notebooks)
    if start:
        chosen = chosen[stems.index(stages.match(stems, start)) :]
    if only:
        names = only.split(",") if isinstance(only, str) else list(only)
        wanted = {stages.match(stems, n) for n in names if n.strip()}
        chosen = [p for p in chosen if p.stem in wanted]
    if not chosen:
        raise ConfigError(f"the selection (only={only!r}, from={start!r}) leaves no notebook")
    return chosen


# --------------------------------------------------------------------------------------------
# Running


@contextlib.contextmanager
def _quiet_papermill() -> Iterator[None]:
    """papermill logs every input and output path at INFO; keep the runner's own lines readable."""
    logger = logging.getLogger("papermill")
    level = logger.level
    if not log.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _kernel_env(outputs: Path | None, profile: str | None = None) -> Iterator[None]:
    """Environment the kernels inherit: our outputs folder, inline figures, and the profile (the
    notebooks' MLflow runs share one experiment and carry it as a tag; see tracking.py).

    ipykernel keeps an MPLBACKEND it finds (tests set Agg), which would leave the executed
    notebooks and their reports without figures.
    """
    changes = {"MPLBACKEND": INLINE_BACKEND, tracking.PROFILE_ENV: profile or "none"}
    if outputs is not None:
        changes["DIGITS_OUTPUTS"] = str(outputs)
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _render_html(notebook: Path, dest: Path) -> Path | None:
    """An HTML rendering of an executed (or partly executed) notebook; None if that fails."""
    try:
        import nbformat
        from nbconvert import HTMLExporter

        # Its own logger: nbconvert warns about every figure without alt text, which is noise here.
        quiet = logging.getLogger(f"{__name__}.html")
        quiet.setLevel(logging.ERROR)
        exporter = HTMLExporter(log=quiet)
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, dest)
        return dest
    except Exception as e:  # a report is a convenience: never let it hide the run's outcome
        log.warning("could not render %s as HTML: %s", notebook.name, e)
        return None


def _metrics(folder: Path, since: float) -> dict | None:
    """Headline metrics from ``metrics.json`` if this run wrote it (an older one would mislead).

    The notebooks write ``{"metrics": {...}, "params": ..., ...}`` (``notebook.Stage.finish``);
    a file without a ``metrics`` mapping is taken whole.
    """
    path = folder / "metrics.json"
    try:
        if path.stat().st_mtime < since - 1:  # 1 s of slack for coarse file-system clocks
            return None
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(found, dict) and isinstance(found.get("metrics"), dict):
        return found["metrics"]
    return found


def _kernel_name(notebook: Path) -> str:
    import nbformat

    meta = nbformat.read(notebook, as_version=4).metadata
    return meta.get("kernelspec", {}).get("name") or "python3"


def _source_cell(error, executed: Path) -> int:
    """The failing cell's index in the source notebook (papermill's index counts its injected
    parameters cell)."""
    import nbformat

    try:
        cells = nbformat.read(executed, as_version=4).cells
        before = cells[: error.cell_index + 2]  # +2: the error marker cells papermill inserted
        injected = any("injected-parameters" in c.metadata.get("tags", []) for c in before)
    except Exception:
        injected = False
    return error.cell_index - int(injected)


def _failure(error: BaseException, executed: Path) -> dict:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        lines = (error.source or "").strip().splitlines()
        return {
            "cell_index": _source_cell(error, executed),
            "exec_count": error.exec_count,
            "ename": error.ename,
            "evalue": error.evalue,
            "source": lines[0][:120] if lines else "",
        }
    if isinstance(error, KeyboardInterrupt):
        return {"ename": "KeyboardInterrupt", "evalue": "interrupted"}
    return {"ename": type(error).__name__, "evalue": str(error)}


def _describe_failure(stem: str, failure: dict) -> str:
    where = ""
    if "cell_index" in failure:
        where = f" in cell {failure['cell_index']} (In [{failure['exec_count']}])"
    text = f"{stem} failed{where}: {failure['ename']}: {failure['evalue']}"
    if failure.get("source"):
        text += f"\n  cell starts: {failure['source']}"
    return text


def run_pipeline(
    profile: str | Path | None = "quick",
    only: str | Sequence[str] | None = None,
    start: str | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    notebooks_dir: str | Path | None = None,
    outputs: str | Path | None = None,
    render_html: bool = True,
) -> dict:
    """Run the selected notebooks in order; returns the ``pipeline.json`` record.

    ``overrides`` is a mapping like :func:`parse_overrides` returns, or the raw ``key=value``
    strings. Raises ConfigError before anything runs, and PipelineError when a notebook fails.
    """
    from . import data

    folder = Path(notebooks_dir) if notebooks_dir is not None else paths.notebooks_dir()
    all_notebooks = discover_notebooks(folder)
    if not all_notebooks:
        print(f"no notebooks (NN_*.ipynb) in {folder}: nothing to run")
        return {"notebooks": [], "status": "empty"}
    if overrides is None:
        overrides = {}
    elif not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)

    # Everything that can be wrong with the request is found here, before any kernel starts.
    selected = select(all_notebooks, only, start)
    declared = {p.stem: declared_parameters(p) for p in all_notebooks}
    chosen = {p.stem: declared[p.stem] for p in selected}
    others = {s: d for s, d in declared.items() if s not in chosen}
    values = load_profile(profile)
    routed = route_parameters(chosen, values, overrides, unselected=others)
    for stem, params in routed.items():
        if stem in stages.STAGES:  # the same check the notebook makes, before any kernel starts
            stages.check_values(stem, params)

    # Once, before any notebook: this may download, or write and announce the offline sample.
    # A data_dir the user gave globally is the one to locate (and to validate now).
    source = data.locate(overrides.get(DATA_DIR, values.get(DATA_DIR)))
    sources = {}
    for stem, params in routed.items():
        if DATA_DIR in chosen[stem]:
            params.setdefault(DATA_DIR, str(source.path))
            given = Path(params[DATA_DIR]).expanduser().resolve()
            own = {"path": str(given), "origin": "parameter", "is_sample": None}
            sources[stem] = source.to_dict() if given == source.path.resolve() else own

    out = Path(outputs).resolve() if outputs is not None else paths.outputs_dir()
    record_path = out / RECORD
    earlier = pipeline_status.read(record_path)
    if earlier and earlier["status"] == "interrupted":
        print(pipeline_status.describe(earlier, record_path), flush=True)
    record: dict[str, Any] = {
        "status": "running",
        "profile": str(profile) if profile is not None else None,
        "overrides": dict(overrides),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "version": __version__,
        "seconds": 0.0,
        "data": source.to_dict(),
        "notebooks": [
            {
                "name": p.stem,
                "status": "pending" if p.stem in chosen else "skipped",
                "seconds": None,
                "parameters": routed.get(p.stem, {}),
                "metrics": None,
                "data": sources.get(p.stem),
                "notebook": str(p),
                "executed": None,
                "report": None,
                "error": None,
            }
            for p in all_notebooks
        ],
    }
    entries = {e["name"]: e for e in record["notebooks"]}
    t_start = time.perf_counter()

    def save(status: str | None = None) -> None:
        if status:
            record["status"] = status
        record["seconds"] = round(time.perf_counter() - t_start, 2)
        atomic.write_json(record, record_path)

    # (data.locate has already logged and, for the sample, warned which files are used)
    print(f"pipeline: {len(selected)} notebook(s), profile {record['profile']}", flush=True)
    save()
    with _kernel_env(out if outputs is not None else None, record["profile"]):
        for nb in selected:
            entry = entries[nb.stem]
            entry["status"] = "running"
            save()
            error = _run_one(nb, entry, out, folder, render_html)
            save()
            if error is not None:
                for later in selected[selected.index(nb) + 1 :]:
                    entries[later.stem]["status"] = "skipped"
                save("failed")
                if isinstance(error, KeyboardInterrupt):
                    raise error
                raise PipelineError(
                    _describe_failure(nb.stem, entry["error"])
                    + f"\n  partly executed notebook: {entry['executed']}"
                    + (f"\n  report: {entry['report']}" if entry["report"] else "")
                    + f"\n  record: {record_path}"
                ) from None
    save("ok")
    print(f"pipeline ok in {record['seconds']:.1f} s; record in {record_path}")
    return record


def _run_one(
    nb: Path, entry: dict, out: Path, cwd: Path, render_html: bool
) -> BaseException | None:
    """Execute one notebook, filling its record entry; returns the error that stopped it."""
    import papermill

    executed = out / "notebooks" / nb.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    executed.unlink(missing_ok=True)  # a previous run's copy must not pass for this run's
    entry["executed"] = str(executed)
    shown = ", ".join(f"{k}={v!r}" for k, v in entry["parameters"].items())
    print(f"[{nb.stem}] running" + (f" with {shown}" if shown else ""), flush=True)
    wall, t0 = time.time(), time.perf_counter()
    error: BaseException | None = None
    try:
        with _quiet_papermill():
            papermill.execute_notebook(
                str(nb),
                str(executed),
                parameters=entry["parameters"],
                kernel_name=_kernel_name(nb),
                cwd=str(cwd),
                progress_bar=True,
                # The kernel writes its log to our stderr; on Ctrl-C it logs a ZMQ traceback
                # while it dies. Failures reach us through papermill, so it may stay quiet.
                extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
                # text progress bars (progress.py) rewrite their line with \r; saved as
                # printed, every update would show in the HTML report and on GitHub
                coalesce_streams=True,
            )
    except (Exception, KeyboardInterrupt) as e:  # the record must say failed, whatever it was
        error = e
    entry["seconds"] = round(time.perf_counter() - t0, 2)
    entry["status"] = "ok" if error is None else "failed"
    entry["metrics"] = _metrics(out / nb.stem, since=wall)
    if error is not None:
        entry["error"] = _failure(error, executed)
    if not executed.is_file():  # papermill failed before writing anything: nothing to keep
        entry["executed"] = None
    elif render_html:
        report = _render_html(executed, out / "reports" / f"{nb.stem}.html")
        entry["report"] = str(report) if report else None
    if error is None:
        print(f"[{nb.stem}] ok in {entry['seconds']:.1f} s")
    else:
        print(f"[{nb.stem}] FAILED after {entry['seconds']:.1f} s")
    return error
