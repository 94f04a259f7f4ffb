"""What every numbered notebook does first and last: check its parameters, find the data, save
figures to its own outputs folder and record headline metrics with their provenance."""

from __future__ import annotations

import logging
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

from . import __version__, atomic, data, paths
from .errors import ConfigError

# The parameters each notebook declares and their types (papermill only warns about unknown
# parameters, so the notebook's second cell passes its parameters here and fails loudly).
NUMBER = (int, float)
SCHEMAS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "01_eda": {"data_dir": str, "tsne_samples": int, "seed": int},
    "02_augmentation": {
        "data_dir": str,
        "model": str,
        "epochs": int,
        "batch_size": int,
        "lr": NUMBER,
        "policies": str,
        "seeds": int,
        "val_fraction": NUMBER,
        "device": str,
    },
    "03_train_cnn": {
        "data_dir": str,
        "model": str,
        "epochs": int,
        "batch_size": int,
        "optimizer": str,
        "lr": NUMBER,
        "schedule": str,
        "weight_decay": NUMBER,
        "label_smoothing": NUMBER,
        "ema": NUMBER,
        "augment": str,
        "val_fraction": NUMBER,
        "n_folds": int,
        "seeds": int,
        "tta": int,
        "device": str,
        "precision": str,
        "compile": bool,
    },
    "04_model_zoo": {
        "data_dir": str,
        "models": str,
        "epochs": int,
        "batch_size": int,
        "lr": NUMBER,
        "augment": str,
        "val_fraction": NUMBER,
        "seed": int,
        "device": str,
    },
    "05_ensemble_submission": {
        "data_dir": str,
        "runs": str,
        "tta": int,
        "cv_folds": int,
        "device": str,
        "submit": bool,
        "message": str,
    },
}


def check_params(stage: str, params: dict) -> MappingProxyType:
    """Validate a notebook's parameters against its schema: no unknown keys, right types."""
    schema = SCHEMAS[stage]
    if unknown := sorted(set(params) - set(schema)):
        raise ConfigError(f"{stage}: unknown parameter(s) {unknown}; known: {sorted(schema)}")
    if missing := sorted(set(schema) - set(params)):
        raise ConfigError(f"{stage}: missing parameter(s) {missing}")
    for key, want in schema.items():
        value = params[key]
        ok = isinstance(value, want) and not (isinstance(value, bool) and want is not bool)
        if not ok:
            names = " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise ConfigError(f"{stage}: parameter {key}={value!r} should be {names}")
    return MappingProxyType(dict(params))


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

    def show(self, fig, name: str):
        """Save ``fig`` as ``<out>/<name>.png`` and return it so the notebook displays it."""
        from . import plots

        plots.save(fig, self.out, name)
        self.figures.append(f"{name}.png")
        plots.plt.close(fig)  # shown once, as this cell's result, not again by the inline backend
        return fig

    @cached_property
    def data_fingerprint(self) -> str | None:
        """Hash of the train.csv this notebook read (hashed once, 76 MB for the real file)."""
        return data.fingerprint(self.source.train_csv) if self.source else None

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
        return record


def start(stage: str, **params) -> Stage:
    """Check parameters, locate the data (if the notebook reads it), make the outputs folder."""
    checked = check_params(stage, params)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    warnings.filterwarnings("ignore", category=data.DataWarning, message=r".*rows, the comp")
    source = None
    if "data_dir" in checked:
        source = data.locate(checked["data_dir"] or None)  # logs which files it uses
    return Stage(stage, checked, source, paths.stage_dir(stage))
