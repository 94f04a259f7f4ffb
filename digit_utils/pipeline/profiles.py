"""Profiles and overrides: where a pipeline run's parameter values come from, and which
notebook each one goes to.

Values come from a profile (``params/<name>.yaml``) and ``key=value`` overrides; a top-level key
named after a notebook stem (``04_train_cnn``) holds overrides for that notebook only. Precedence,
low to high: notebook defaults < profile global < profile per-notebook < -p global < -p
per-notebook. ``parse_value`` is the one reader of a ``key=value`` text (the benchmarks use it).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from digit_utils import paths, stages
from digit_utils.errors import ConfigError

SECTION = re.compile(r"^\d\d(_\w+)?$")  # a profile/-p key naming a notebook; never an identifier
EXPONENT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")  # 1e-3, 5E4, -2.5e+1


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
        if path.is_dir():
            raise ConfigError(f"profile {path} is a folder, not a YAML file")
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise ConfigError(f"profile file {path} does not exist")
        path = params_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(available_profiles()) or f"none in {params_dir()}"
            raise ConfigError(f"unknown profile {str(name_or_path)!r}; available: {known}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}: line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 text"
        ) from None
    try:
        profile = yaml.load(text, Loader=_loader())  # noqa: S506  (a SafeLoader)
    except yaml.YAMLError as e:
        why = " ".join(str(e).split())
        raise ConfigError(f"{path}: not valid YAML ({why[:300]})") from None
    except _DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    if profile is None:
        return {}
    if not isinstance(profile, dict):
        raise ConfigError(f"{path}: a profile must be a mapping of parameter names to values")
    return _plain(profile, {})


class _DuplicateKey(Exception):
    """A mapping in a profile names the same key twice (YAML would keep the last silently)."""


def _loader():
    """PyYAML's SafeLoader, refusing duplicate keys and naming both of their lines."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may repeat keys
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(
                        f"key {key!r} appears twice, on lines {seen[key]} and {line} "
                        "(YAML would silently keep the last)"
                    )
                seen[key] = line
            except TypeError:  # an unhashable key: YAML itself refuses it below
                continue
        return loader.construct_mapping(node)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def _plain(value: Any, memo: dict[int, Any]) -> Any:
    """YAML values as the user meant them: a date stays the text it was, and 1e-3 is a float
    (YAML 1.1, which PyYAML reads, wants 1.0e-3 and otherwise gives the string '1e-3').
    ``memo`` keeps YAML's aliases shared: expanded, nine nested aliases make 9**9 objects."""
    if isinstance(value, dict | list):
        if id(value) in memo:
            return memo[id(value)]
        if isinstance(value, dict):
            memo[id(value)] = out = {}
            out.update({str(k): _plain(v, memo) for k, v in value.items()})
        else:
            memo[id(value)] = out = []
            out.extend(_plain(v, memo) for v in value)
        return out
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and EXPONENT.match(value):
        return float(value)
    return value


def parse_value(text: str) -> Any:
    """The value of a ``key=value`` override, read as YAML (``2``, ``0.1``, ``1e-3``, ``true``,
    ``[1, 2]``); anything YAML cannot read is meant as text."""
    import yaml

    try:
        return _plain(yaml.safe_load(text), {})
    except yaml.YAMLError:
        return text


def parse_overrides(items: Sequence[str]) -> dict:
    """``["epochs=2", "04_train_cnn.lr=0.1"]`` → ``{"epochs": 2, "04_train_cnn": {"lr": 0.1}}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"-p {item!r}: expected key=value (or notebook.key=value)")
        value = parse_value(text)
        stem, dot, name = key.rpartition(".")
        if dot:
            out.setdefault(stem, {})
            if not isinstance(out[stem], dict):
                raise ConfigError(f"-p {item!r}: {stem!r} is both a parameter and a notebook")
            out[stem][name] = value
        else:
            out[key] = value
    return out


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
            if key in every or SECTION.match(key):  # 04_train_cnn, or just 04
                stem = stages.match(list(every), key, f"{origin} section")
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
