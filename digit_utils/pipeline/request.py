"""What a pipeline run will do, checked before any notebook starts: the notebooks ``NN_*.ipynb``,
the ones selected, and each one's parameters (routed from the profile and ``-p`` overrides to the
notebooks whose ``parameters`` cell declares them; see :mod:`profiles`). Every key, and for the
stages in :mod:`digit_utils.stages` every value, is checked here (papermill only warns).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digit_utils import paths, stages
from digit_utils.errors import ConfigError
from digit_utils.pipeline.profiles import load_profile, parse_overrides, route_parameters

NOTEBOOK_NAME = re.compile(r"^(\d\d)_\w+$")  # 04_train_cnn: two-digit prefix, then a name
DATA_DIR = stages.DATA_DIR  # the parameter the runner fills with the located data folder


@contextlib.contextmanager
def quiet_papermill() -> Iterator[None]:
    """papermill logs every input and output path at INFO; keep the runner's own lines readable."""
    logger = logging.getLogger("papermill")
    level = logger.level
    if not logging.getLogger("digit_utils.pipeline").isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


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
    try:
        with quiet_papermill():
            return papermill.inspect_notebook(str(path))
    except Exception as e:  # the user's file: not JSON, `[]`, cells that are a string, ...
        why = " ".join(f"{e.__class__.__name__}: {e}".split())
        raise ConfigError(f"{path}: not a readable notebook ({why[:200]})") from None


def select(
    notebooks: Sequence[Path], only: str | Sequence[str] | None = None, start: str | None = None
) -> list[Path]:
    """The notebooks ``only`` names (prefixes or stems), from ``start`` on, in pipeline order."""
    stems = [p.stem for p in notebooks]
    chosen = list(notebooks)
    if start is not None:  # --from "" names no notebook (it used to mean the first)
        chosen = chosen[stems.index(stages.match(stems, start, "--from")) :]
    if only is not None:  # --only "" is a selection of nothing, not of everything
        names = only.split(",") if isinstance(only, str) else list(only)
        if not any(n.strip() for n in names):
            raise ConfigError(f"--only {only!r} names no notebook; give prefixes such as 01,03")
        wanted = {stages.match(stems, n) for n in names if n.strip()}
        chosen = [p for p in chosen if p.stem in wanted]
    if not chosen:
        raise ConfigError(f"the selection (only={only!r}, from={start!r}) leaves no notebook")
    return chosen


@dataclass
class Request:
    """The notebooks to run and each one's parameters, every key and value already checked."""

    notebooks: list[Path]  # every notebook in the folder, in order
    selected: list[Path]  # the ones that run
    declared: dict[str, dict]  # {stem: its parameters cell}, for the selected ones
    parameters: dict[str, dict]  # {stem: the values it gets}, for the selected ones
    profile: str | Path | None
    profile_values: dict[str, Any]
    overrides: dict[str, Any]

    def data_dir(self) -> str | None:
        """The data folder the user gave for the whole run (``-p data_dir=…`` or the profile)."""
        return self.overrides.get(DATA_DIR, self.profile_values.get(DATA_DIR))

    def fill_data_dir(self, source) -> dict[str, dict]:
        """Give every data-reading notebook the located folder unless it has its own; returns
        ``{stem: where its data came from}`` for the record."""
        sources = {}
        for stem, params in self.parameters.items():
            if DATA_DIR in self.declared[stem]:
                params.setdefault(DATA_DIR, str(source.path))
                given = Path(params[DATA_DIR]).expanduser().resolve()
                own = {"path": str(given), "origin": "parameter", "is_sample": None}
                sources[stem] = source.to_dict() if given == source.path.resolve() else own
        return sources


def _check_model_names(stem: str, params: Mapping[str, Any]) -> None:
    """Names of registered models, as the notebook's build will want (the registry lives in
    the train wing, above the stage graph): ``model`` ("auto" where the stage reads the zoo's
    choice) and the zoo's ``models`` ("all" or a list)."""
    from digit_utils.train import models  # torch: only once a pipeline is really planned

    names = []
    if isinstance(params.get("model"), str):
        auto = stages.MODEL_CHOICE in stages.spec(stem).reads and params["model"] == "auto"
        names += [] if auto else [params["model"]]
    if isinstance(params.get("models"), str) and params["models"] != "all":
        names += [n.strip() for n in params["models"].split(",") if n.strip()] or [""]
    for name in names:
        try:
            models.check_name(name)
        except ConfigError as e:
            raise ConfigError(f"{stem}: {e}") from None


def plan(
    notebooks: Sequence[Path],
    profile: str | Path | None,
    only: str | Sequence[str] | None,
    start: str | None,
    overrides: Mapping[str, Any] | Sequence[str] | None,
) -> Request:
    """The run ``profile``, ``only``, ``start`` and ``overrides`` ask for; raises ConfigError for
    anything wrong with them, before any kernel starts."""
    if overrides is None:
        overrides = {}
    elif not isinstance(overrides, Mapping):
        overrides = parse_overrides(overrides)
    selected = select(notebooks, only, start)
    chosen = {p.stem: declared_parameters(p) for p in selected}
    others = {}  # only to name the notebook a -p key belongs to; a damaged one is not run
    for p in notebooks:
        if p.stem not in chosen:
            with contextlib.suppress(ConfigError):
                others[p.stem] = declared_parameters(p)
    values = load_profile(profile)
    routed = route_parameters(chosen, values, overrides, unselected=others)
    for stem, params in routed.items():
        if stem in stages.STAGES:  # the same checks the notebook makes, before any kernel starts
            stages.check_values(stem, params)
            _check_model_names(stem, params)
    return Request(list(notebooks), selected, chosen, routed, profile, values, dict(overrides))
