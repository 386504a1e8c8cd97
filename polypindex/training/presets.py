"""The one loader of the YAML presets in ``training/configs`` (training, MSN, ...).

A run's settings are a frozen dataclass (:class:`training.train_config.TrainConfig`,
:class:`training.msn_config.MsnConfig`, or any other). :func:`load_preset` reads a
preset by name or a YAML file by path, applies ``--set key=value`` overrides (as parsed
by :func:`model.data.config.parse_overrides`; dotted keys reach nested configs) and builds
the dataclass with :func:`config_from_dict`, which rejects unknown keys and values of
the wrong type with a :class:`~model.core.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from polypindex.model.core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

T = TypeVar("T")


def available_presets(pattern: str = "*.yaml") -> list[str]:
    """Names of the presets in ``training/configs`` matching ``pattern``."""
    return sorted(p.stem for p in CONFIG_DIR.glob(pattern))


def merge_overrides(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base``; keys may be dotted
    (``encoder.d_model``), values may be mappings or config dataclasses."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = merge_overrides(node[leaf], value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            node[leaf] = config_to_dict(value)
        else:
            node[leaf] = copy.deepcopy(value) if isinstance(value, Mapping) else value
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as plain data: nested configs as dicts, tuples as lists at the
    top level (what :func:`config_from_dict` reads back)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            to_dict = getattr(value, "to_dict", None)
            value = to_dict() if callable(to_dict) else dataclasses.asdict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _union_members(hint: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against the type ``hint`` (numbers given for a text field become
    text; lists for a tuple field become tuples). Raises ConfigError on a mismatch."""
    members = _union_members(hint)
    if members is not None:
        for member in members:
            try:
                return _coerce(value, member, where)
            except ConfigError:
                continue
        if str in members and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    origin = typing.get_origin(hint)
    ok: bool
    if hint is Any:
        ok = True
    elif hint is type(None):
        ok = value is None
    elif hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        ok = isinstance(value, str)
    elif origin is tuple:
        args = typing.get_args(hint)
        variadic = args[-1:] == (Ellipsis,)
        if variadic and not isinstance(value, list | tuple):
            value = [value]  # one value for a list field: a list of one
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_hints = [args[0]] * len(value) if variadic else list(args)
        if len(item_hints) != len(value):
            raise ConfigError(f"{where}: expected {len(item_hints)} values, got {value!r}")
        return tuple(
            _coerce(v, h, f"{where}[{i}]")
            for i, (v, h) in enumerate(zip(value, item_hints, strict=True))
        )
    elif isinstance(hint, type):
        ok = isinstance(value, hint)
    else:  # an annotation this checker does not know: leave it to the dataclass
        ok = True
    if not ok:
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    return value


def _describe(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def config_from_dict(cls: type[T], data: Mapping[str, Any], label: str | None = None) -> T:
    """Build the config dataclass ``cls`` from plain data.

    Nested config fields take a mapping (read by the nested class's ``from_dict`` when it
    has one, else field by field, recursively); every other value is checked against
    the field's annotation.

    Args:
        cls: a dataclass.
        data: field values (unknown keys are an error).
        label: how errors name the config (default: the class name).

    Raises:
        ConfigError: an unknown field, a value of the wrong type, or whatever the
            dataclass's own validation rejects.
    """
    name = label or cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{name}: unknown field(s) {unknown}; known fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints.get(key, Any)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            from_dict = getattr(hint, "from_dict", None)
            kwargs[key] = (
                from_dict(dict(value))
                if callable(from_dict)
                else config_from_dict(hint, value, key)
            )
        else:
            kwargs[key] = _coerce(value, hint, f"{name}.{key}")
    return cls(**kwargs)


def read_preset(name_or_path: str | Path, what: str, pattern: str = "*.yaml") -> dict[str, Any]:
    """The mapping in a preset (a name in ``training/configs``) or a YAML file; its
    ``name`` defaults to the file's stem.

    Args:
        name_or_path: a preset name or a path to a ``.yaml`` / ``.yml`` file.
        what: the kind of config, for error messages (``"training"``, ``"MSN"``).
        pattern: the presets listed when the name is unknown.

    Raises:
        ConfigError: unknown preset, unreadable YAML, or not a mapping.
    """
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") or path.is_file()):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no {what} config {str(name_or_path)!r}: not a file and not one of "
            f"{available_presets(pattern)}"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} config must be a mapping of fields")
    data.setdefault("name", path.stem)
    return data


def load_preset(
    cls: type[T],
    name_or_path: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    what: str | None = None,
    pattern: str = "*.yaml",
) -> T:
    """Read a preset or YAML file, apply ``overrides`` and build the dataclass ``cls``.

    Args:
        cls: the config dataclass.
        name_or_path: a preset name in ``training/configs`` or a YAML path.
        overrides: field values replacing the file's; nested fields either as dicts
            (``{"encoder": {"d_model": 32}}``) or dotted keys (``"encoder.d_model"``),
            e.g. the output of :func:`model.data.config.parse_overrides`.
        what: the kind of config in error messages (default: the class name).
        pattern: which presets an unknown name lists.

    Raises:
        ConfigError: unknown preset, unreadable YAML, or an invalid/unknown field.
    """
    data = read_preset(name_or_path, what or cls.__name__, pattern)
    return config_from_dict(cls, merge_overrides(data, overrides or {}))
