"""The papermill runner behind `digits pipeline`: run the numbered notebooks in order.

What runs with which parameters is checked first (:mod:`request`); the run record is
:mod:`record`.

Executed notebooks go to ``outputs/notebooks/``, HTML to ``outputs/reports/`` and the run record
to ``outputs/pipeline.json``.

"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from digit_utils import paths
from digit_utils.errors import ConfigError, DigitsError
from digit_utils.pipeline.record import RECORD, Record, lock
from digit_utils.pipeline.record import describe as describe_record
from digit_utils.pipeline.record import read as read_record
from digit_utils.pipeline.request import (
    Request,
    discover_notebooks,
    plan,
    quiet_papermill,
)
from digit_utils.train import tracking

log = logging.getLogger(__name__)

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


class PipelineError(DigitsError):
    """A notebook failed; the message names it, the failing cell and the error."""


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
    folder = Path(notebooks_dir) if notebooks_dir is not None else paths.notebooks_dir()
    notebooks = discover_notebooks(folder)
    if not notebooks:  # a run that did nothing must not pass for one that worked
        what = "no notebooks (NN_*.ipynb) in" if folder.is_dir() else "no notebooks folder"
        raise ConfigError(f"{folder}: {what}: nothing to run (is DIGITS_ROOT the project?)")
    request = plan(notebooks, profile, only, start, overrides)  # everything checked here
    out = Path(outputs).resolve() if outputs is not None else paths.outputs_dir()
    with lock(out):  # one run at a time on these outputs
        return _run_locked(request, out, outputs is not None, folder, render_html)


def _run_locked(request: Request, out: Path, own_outputs: bool, folder: Path, html: bool) -> dict:
    from digit_utils import data

    # Once, before any notebook: this may download, or write and announce the offline sample.
    source = data.locate(request.data_dir())
    sources = request.fill_data_dir(source)
    record = _start_record(out / RECORD, request, source, sources)
    print(
        f"pipeline: {len(request.selected)} notebook(s), profile {record.data['profile']}",
        flush=True,
    )
    with _kernel_env(out if own_outputs else None, record.data["profile"]):
        for nb in request.selected:
            _run_recorded(nb, request.selected, record, out, folder, html)
    record.save("ok")
    print(f"pipeline ok in {record.data['seconds']:.1f} s; record in {record.path}")
    return record.data


def _start_record(path: Path, request: Request, source, sources: dict) -> Record:
    """A new record for this run, after saying so if the last run was interrupted."""
    try:
        earlier = read_record(path)
    except DigitsError as e:  # a damaged record of an earlier run: this run's replaces it
        print(f"warning: {str(e).split('; the next')[0]}; replacing it", flush=True)
        earlier = None
    if earlier and earlier["status"] == "interrupted":
        print(describe_record(earlier, path), flush=True)
    record = Record(path, request, source, sources)
    record.save()
    return record


def _run_recorded(
    nb: Path, selected: list[Path], record: Record, out: Path, cwd: Path, render_html: bool
) -> None:
    """Run one notebook with its record entry saved before and after; on failure mark the rest
    skipped and raise PipelineError (or re-raise Ctrl-C)."""
    entry = record.entries[nb.stem]
    entry["status"] = "running"
    record.save()
    error = _run_one(nb, entry, out, cwd, render_html)
    record.save()
    if error is None:
        return
    for later in selected[selected.index(nb) + 1 :]:
        record.entries[later.stem]["status"] = "skipped"
    record.save("failed")
    if isinstance(error, KeyboardInterrupt):
        raise error
    raise PipelineError(
        _describe_failure(nb.stem, entry["error"])
        + f"\n  partly executed notebook: {entry['executed']}"
        + (f"\n  report: {entry['report']}" if entry["report"] else "")
        + f"\n  record: {record.path}"
    ) from None


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
        with quiet_papermill():
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
