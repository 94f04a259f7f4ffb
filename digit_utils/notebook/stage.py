"""What every numbered notebook does first and last: check its parameters, find the data, save
figures to its own outputs folder and record headline metrics with their provenance."""

from __future__ import annotations

import logging
import platform
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

from digit_utils import __version__, atomic, data, paths, stages, typed
from digit_utils.config import TrainConfig
from digit_utils.errors import DataWarning, VerdictError
from digit_utils.train import models, tracking

LOGGER = "digit_utils"  # the package's logger; a notebook configures this one only


def check_params(stage: str, params: Mapping[str, Any]) -> MappingProxyType:
    """Validate a notebook's parameters against its stage's schema: no unknown or missing names,
    right types (the message quotes the parameters-cell line that is wrong), right values (the
    same checks the pipeline makes before it starts the notebook)."""
    checked = typed.check(params, stages.spec(stage).schema, where=f"{stage}: ", quote=True)
    return MappingProxyType(stages.check_values(stage, checked))


def split_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c'] (list parameters are comma-separated strings for papermill)."""
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass
class Stage:
    """One notebook's run: its parameters, data source, outputs folder and metrics."""

    name: str
    params: MappingProxyType
    source: data.DataSource | None
    out: Path
    started: float = field(default_factory=time.time)
    figures: list[str] = field(default_factory=list)
    tracker: tracking.StageTracking | None = None  # the MLflow parent run, when tracking asks

    def show(self, fig, name: str):
        """Save ``fig`` as ``<out>/<name>.png`` and return it so the notebook displays it."""
        from digit_utils.notebook import plots

        plots.save(fig, self.out, name)
        self.figures.append(f"{name}.png")
        plots.plt.close(fig)  # shown once, as this cell's result, not again by the inline backend
        return fig

    @cached_property
    def data_fingerprint(self) -> str | None:
        """The training arrays' fingerprint, as in every checkpoint (see data.data_fingerprint)."""
        return data.data_fingerprint(*data.load_train(self.source)) if self.source else None

    def train_config(self, **overrides) -> TrainConfig:
        """The TrainConfig this notebook's parameters describe: the fields it shows, then
        ``overrides`` (e.g. a resolved augmentation)."""
        spec = stages.spec(self.name)
        shown = {f: self.params[f] for f in spec.train_fields}
        config = TrainConfig.from_dict({**shown, **overrides})
        models.check_name(config.model)
        return config

    def runs_dir(self) -> Path:
        """Where this notebook's training runs live (see paths.runs_dir)."""
        return paths.runs_dir(self.name)

    def save_json(self, obj, name: str) -> Path:
        """Write ``<out>/<name>`` atomically (what a later notebook reads)."""
        return atomic.write_json(obj, self.out / name)

    def finish(self, **metrics) -> dict:
        """Write ``<out>/metrics.json`` (headline metrics + provenance) atomically, with the size
        of the stage's outputs folder (on Kaggle, the kernel's output: 20 GB at most)."""
        size = sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file())
        logging.getLogger(LOGGER).info(
            "%s: outputs %.1f MB in %s", self.name, size / 1e6, self.out
        )
        record = {
            "stage": self.name,
            "metrics": metrics,
            "params": dict(self.params),
            "data": self.source.to_dict() if self.source else None,
            "data_fingerprint": self.data_fingerprint,
            "figures": self.figures,
            "seconds": round(time.time() - self.started, 1),
            "output_bytes": size,  # the outputs folder before this file
            "version": __version__,
            "python": platform.python_version(),
        }
        atomic.write_json(record, self.out / "metrics.json")
        if self.tracker is not None:
            self.tracker.finish(record, self.out, stages.spec(self.name).writes)
        return record


def say(text: str, **checks: bool):
    """A sentence for the notebook (Markdown) that holds only if every named check is true.

    A verdict is built from the results with an f-string; the checks state what the sentence
    takes for granted (``say(f"{a} beats {b}", a_is_ahead=acc[a] > acc[b])``), so a run whose
    numbers would contradict it stops with a VerdictError instead of printing a false claim.
    """
    from IPython.display import Markdown  # notebooks only; the CLI never imports this module

    if failed := [name for name, ok in checks.items() if not ok]:
        raise VerdictError(f"the sentence {text!r} contradicts the results: {', '.join(failed)}")
    return Markdown(text)


def _quiet_logging() -> None:
    """INFO from this package to the cell's stdout, plain; nothing else (matplotlib's INFO lines
    about categorical units stay silent). Idempotent: a rerun of the cell adds no handler."""
    log = logging.getLogger(LOGGER)
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(getattr(h, "_digits", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._digits = True
        log.addHandler(handler)


def _locate(data_dir: str):
    """Find the data; its warnings (the offline-sample banner) print as plain text, without the
    ``file:line`` and source line that Python's warning format adds."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        source = data.locate(data_dir or None)  # logs which files it uses
    for w in caught:
        if issubclass(w.category, DataWarning) and "rows, the comp" not in str(w.message):
            print(str(w.message).strip("\n"), file=sys.stderr)
        elif not issubclass(w.category, DataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return source


def start(stage: str, namespace: Mapping[str, Any]) -> Stage:
    """Check the notebook's parameters (taken by name from ``namespace``, the notebook's
    ``globals()``), locate the data (if the notebook reads it), make the outputs folder."""
    names = stages.spec(stage).schema
    checked = check_params(stage, {k: namespace[k] for k in names if k in namespace})
    _quiet_logging()
    warnings.filterwarnings("ignore", category=DataWarning, message=r".*rows, the comp")
    source = _locate(checked[stages.DATA_DIR]) if stages.DATA_DIR in checked else None
    stage_ = Stage(stage, checked, source, paths.stage_dir(stage))
    # opens the notebook's MLflow run (when its tracking parameter asks): training runs nest in it
    stage_.tracker = tracking.start_stage(stage, checked, source.to_dict() if source else None)
    return stage_
