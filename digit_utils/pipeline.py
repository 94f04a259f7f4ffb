"""The papermill runner behind `digits pipeline`: run the numbered notebooks in order.

Each notebook gets only the parameters its ``parameters`` cell declares. Values come from a
profile (``params/<name>.yaml``) and ``-p key=value`` overrides; a top-level key named after a
notebook stem (``03_train_cnn``) holds overrides for that notebook only. Precedence, low to high:
notebook defaults < profile global < profile per-notebook < -p global < -p per-notebook.
Every key is checked against the declarations before any notebook runs (papermill only warns).

Executed notebooks go to ``outputs/notebooks/``, HTML to ``outputs/reports/`` and the run record
to ``outputs/pipeline.json``, rewritten atomically after each notebook so that a crash leaves an
accurate record.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import __version__, atomic, paths
from .errors import ConfigError, DigitsError

log = logging.getLogger(__name__)

NOTEBOOK_NAME = re.compile(r"^(\d\d)_\w+$")  # 03_train_cnn: two-digit prefix, then a name
SECTION = re.compile(r"^\d\d(_\w+)?$")  # a profile/-p key naming a notebook; never an identifier
EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # 1e-3, 5E4, -2.5e+1
DATA_DIR = "data_dir"  # the parameter the runner fills with the located data folder
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


def params_dir() -> Path:
    return paths.project_root() / "params"


def available_profiles() -> list[str]:
    return sorted(p.stem for p in params_dir().glob("*.yaml"))


def load_profile(name_or_path: str | Path | None) -> dict:
    """A profile by name (``params/<name>.yaml``) or as a path to a YAML file; None gives {}."""
    import yaml

    if name_or_path is None:
        return {}
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise ConfigError(f"profile file {path} does not exist")
        path = params_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(available_profiles()) or f"none in {params_dir()}"
            raise ConfigError(f"unknown profile {str(name_or_path)!r}; available: {known}")
    try:
        profile = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if profile is None:
        return {}
    if not isinstance(profile, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of parameter names to values")
    return _plain(profile)


def _plain(value: Any) -> Any:
    """YAML values as the user meant them: a date stays the text it was, and 1e-3 is a float
    (YAML 1.1, which PyYAML reads, wants 1.0e-3 and otherwise gives the string '1e-3')."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and EXPONENT.match(value):
        return float(value)
    return value


def parse_overrides(items: Sequence[str]) -> dict:
    """``["epochs=2", "03_train_cnn.lr=0.1"]`` → ``{"epochs": 2, "03_train_cnn": {"lr": 0.1}}``."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"-p {item!r}: expected key=value (or notebook.key=value)")
        try:
            value = _plain(yaml.safe_load(text))
        except yaml.YAMLError:
            value = text  # anything YAML cannot read is meant as text
        stem, dot, name = key.rpartition(".")
        if dot:
            out.setdefault(stem, {})
            if not isinstance(out[stem], dict):
                raise ConfigError(f"-p {item!r}: {stem!r} is both a parameter and a notebook")
            out[stem][name] = value
        else:
            out[key] = value
    return out


def _match(notebooks: Sequence[str], selector: str, what: str = "notebook") -> str:
    """The stem a selector (``03`` or ``03_train_cnn``) names; ConfigError when none or several."""
    selector = selector.strip()
    hits = [s for s in notebooks if s == selector or s.split("_", 1)[0] == selector]
    if len(hits) != 1:
        problem = "matches several notebooks" if hits else "names no notebook"
        known = ", ".join(notebooks) or "none"
        raise ConfigError(f"{what} {selector!r} {problem}; the notebooks are: {known}")
    return hits[0]


def select(
    notebooks: Sequence[Path], only: str | Sequence[str] | None = None, start: str | None = None
) -> list[Path]:
    """The notebooks ``only`` names (prefixes or stems), from ``start`` on, in pipeline order."""
    stems = [p.stem for p in notebooks]
    chosen = list(notebooks)
    if start:
        chosen = chosen[stems.index(_match(stems, start)) :]
    if only:
        names = only.split(",") if isinstance(only, str) else list(only)
        wanted = {_match(stems, n) for n in names if n.strip()}
        chosen = [p for p in chosen if p.stem in wanted]
    if not chosen:
        raise ConfigError(f"the selection (only={only!r}, from={start!r}) leaves no notebook")
    return chosen


def route_parameters(
    notebooks: Mapping[str, Mapping[str, Any]],
    profile: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    unselected: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict]:
    """``{stem: parameters to pass}`` for the selected notebooks; pure, raises ConfigError.

    ``notebooks`` maps each selected stem to its declared parameters (``declared_parameters``).
    ``unselected`` does the same for the pipeline's other notebooks: a profile is written for the
    whole pipeline, so its keys (and sections) for those are skipped quietly, whereas a ``-p`` key
    that no selected notebook declares is an error.
    """
    unselected = unselected or {}
    every = {**unselected, **notebooks}
    routed: dict[str, dict] = {stem: {} for stem in notebooks}
    for origin, values in (("profile", profile), ("-p", overrides)):
        sections: dict[str, Any] = {}
        flat = {}
        for key, value in values.items():
            if key in every or SECTION.match(key):  # 03_train_cnn, or just 03
                stem = _match(list(every), key, f"{origin} section")
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{origin} section {key!r} must be a mapping of parameters")
                sections[stem] = {**sections.get(stem, {}), **value}
            else:
                flat[key] = value
        for key, value in flat.items():
            takers = [s for s, declared in notebooks.items() if key in declared]
            if not takers and not (origin == "profile" and _declared_by(key, unselected)):
                raise ConfigError(_unknown(origin, key, notebooks, unselected))
            for stem in takers:
                routed[stem][key] = value
        for stem, section in sections.items():
            for key in section:
                if key not in every[stem]:
                    raise ConfigError(_unknown(origin, f"{stem}.{key}", {stem: every[stem]}))
            if stem in notebooks:
                # After the global keys: per-notebook values beat global ones of the same origin.
                routed[stem].update(section)
            elif origin == "-p":
                raise ConfigError(f"-p targets {stem}, which is not among the selected notebooks")
    return routed


def _declared_by(key: str, notebooks: Mapping[str, Mapping[str, Any]]) -> list[str]:
    return [stem for stem, declared in notebooks.items() if key in declared]


def _unknown(origin, key, notebooks, unselected=None) -> str:
    name = key.rpartition(".")[2]
    elsewhere = _declared_by(name, unselected or {})
    if elsewhere:
        return (
            f"{origin} parameter {key!r} is declared only by {', '.join(elsewhere)}, not selected"
        )
    listing = "; ".join(f"{s}: {', '.join(d) or '(none)'}" for s, d in notebooks.items())
    return f"{origin} parameter {key!r} is unknown; the notebooks declare: {listing}"


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
def _kernel_env(outputs: Path | None) -> Iterator[None]:
    """Environment the kernels inherit: our outputs folder, and inline figures.

    ipykernel keeps an MPLBACKEND it finds (tests set Agg), which would leave the executed
    notebooks and their reports without figures.
    """
    changes = {"MPLBACKEND": INLINE_BACKEND}
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
    record_path = out / "pipeline.json"
    record: dict[str, Any] = {
        "status": "running",
        "profile": str(profile) if profile is not None else None,
        "overrides": dict(overrides),
        "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
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
    with _kernel_env(out if outputs is not None else None):
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


# --------------------------------------------------------------------------------------------
# Command line


def _cli(args) -> int:
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
    p.set_defaults(func=_cli)
