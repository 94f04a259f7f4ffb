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

from . import __version__, atomic, data, paths, stages, tracking, typed
from .config import TrainConfig


def check_params(stage: str, params: Mapping[str, Any]) -> MappingProxyType:
    """Validate a notebook's parameters against its stage's schema: no unknown or missing names,
    right types. The message quotes the parameters-cell line that is wrong."""
    checked = typed.check(params, stages.spec(stage).schema, where=f"{stage}: ", quote=True)
    return MappingProxyType(checked)


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
        from . import plots

        plots.save(fig, self.out, name)
        self.figures.append(f"{name}.png")
        plots.plt.close(fig)  # shown once, as this cell's result, not again by the inline backend
        return fig

    @cached_property
    def data_fingerprint(self) -> str | None:
        """The training arrays' fingerprint, as in every checkpoint (see data.data_fingerprint)."""
        return data.data_fingerprint(*data.load_train(self.source)) if self.source else None

    def train_config(self, **overrides) -> TrainConfig:
        """The TrainConfig this notebook's parameters describe: the fields it shows, the
        settings its stage fixes, then ``overrides`` (e.g. a resolved augmentation)."""
        spec = stages.spec(self.name)
        shown = {f: self.params[f] for f in spec.train_fields}
        return TrainConfig.from_dict({**spec.fixed, **shown, **overrides})

    def runs_dir(self) -> Path:
        """Where this notebook's training runs live (see paths.runs_dir)."""
        return paths.runs_dir(self.name)

    def save_json(self, obj, name: str) -> Path:
        """Write ``<out>/<name>`` atomically (what a later notebook reads)."""
        return atomic.write_json(obj, self.out / name)

    def finish(self, **metrics) -> dict:
        """Write ``<out>/metrics.json`` (headline metrics + provenance) atomically."""
        record = {
            "stage": self.name,
            "metrics": metrics,
            "params": dict(self.params),
            "data": self.source.to_dict() if self.source else None,
            "data_fingerprint": self.data_fingerprint,
            "figures": self.figures,
            "seconds": round(time.time() - self.started, 1),
            "version": __version__,
            "python": platform.python_version(),
        }
        atomic.write_json(record, self.out / "metrics.json")
        if self.tracker is not None:
            self.tracker.finish(record, self.out, stages.spec(self.name).writes)
        return record


def start(stage: str, namespace: Mapping[str, Any]) -> Stage:
    """Check the notebook's parameters (taken by name from ``namespace``, the notebook's
    ``globals()``), locate the data (if the notebook reads it), make the outputs folder."""
    names = stages.spec(stage).schema
    checked = check_params(stage, {k: namespace[k] for k in names if k in namespace})
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    warnings.filterwarnings("ignore", category=data.DataWarning, message=r".*rows, the comp")
    source = None
    if stages.DATA_DIR in checked:
        source = data.locate(checked[stages.DATA_DIR] or None)  # logs which files it uses
    stage_ = Stage(stage, checked, source, paths.stage_dir(stage))
    # opens the notebook's MLflow run (when its tracking parameter asks): training runs nest in it
    stage_.tracker = tracking.start_stage(stage, checked, source.to_dict() if source else None)
    return stage_
