"""Search space: the `tuning.hyperparameters` section, sampling and applying values."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, MutableMapping, MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any

from confit.utils.collections import split_path

from tuner.errors import ConfigError

HYPERPARAMETER_TYPES = ("int", "float", "categorical", "ordered_categorical")
HYPERPARAMETER_KEYS = ("alias", "type", "low", "high", "step", "log", "choices")


@dataclass(frozen=True)
class Hyperparameter:
    """One entry of `tuning.hyperparameters`.

    Attributes:
        path: The key as written in the config, e.g. `optimizer.groups.'.*'.lr.max_value`.
        parts: The path split with confit's rules: quoted parts kept whole, digits as list
            indices.
        name: The Optuna parameter name: the alias if given, else the path.
        type: One of `int`, `float`, `categorical`, `ordered_categorical`.
        low: Lower bound (int and float types).
        high: Upper bound, inclusive (int and float types).
        step: Discretization step, or None for a continuous range.
        log: Whether the range is sampled on a log scale.
        choices: The values of a categorical or ordered categorical hyperparameter.
    """

    path: str
    parts: tuple[str | int, ...]
    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def is_categorical(self) -> bool:
        return self.type in ("categorical", "ordered_categorical")


def parse_hyperparameters(section: Any) -> list[Hyperparameter]:
    """Parse and validate the `tuning.hyperparameters` mapping.

    Raises:
        ConfigError: On the first invalid entry, naming its key and the fix.
    """
    if not isinstance(section, Mapping) or not section:
        raise ConfigError(
            "tuning.hyperparameters: expected a mapping of config paths to search ranges, "
            f"got {section!r}. Add at least one entry, for example "
            "'optimizer.groups.\".*\".lr.max_value': "
            "{type: float, low: 1e-5, high: 1e-3, log: true}."
        )
    hyperparameters = [_parse_one(str(path), spec) for path, spec in section.items()]

    names = [hp.name for hp in hyperparameters]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(
            f"tuning.hyperparameters: the names {duplicates} are used by more than one entry. "
            "Give each hyperparameter a distinct alias."
        )
    return hyperparameters


def _parse_one(path: str, spec: Any) -> Hyperparameter:
    where = f"tuning.hyperparameters.{path!r}"
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping with at least 'type', got {spec!r}.")
    unknown = sorted(set(spec) - set(HYPERPARAMETER_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {unknown}. Valid keys: {', '.join(HYPERPARAMETER_KEYS)}."
        )
    try:
        parts = tuple(split_path(path))
    except Exception as error:  # confit raises plain exceptions on malformed paths
        raise ConfigError(f"{where}: cannot split the path ({error}).") from error
    if not parts or any(part == "" for part in parts):
        raise ConfigError(
            f"{where}: the path has an empty part. Quote parts that contain dots, "
            "for example optimizer.groups.'.*'.lr."
        )

    kind = spec.get("type")
    if kind not in HYPERPARAMETER_TYPES:
        raise ConfigError(
            f"{where}.type: invalid value {kind!r}. Use one of {', '.join(HYPERPARAMETER_TYPES)}."
        )
    name = str(spec.get("alias") or path)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}.")

    if kind in ("categorical", "ordered_categorical"):
        return _parse_categorical(where, path, parts, name, kind, spec)
    return _parse_range(where, path, parts, name, kind, spec, log)


def _parse_categorical(
    where: str, path: str, parts: tuple, name: str, kind: str, spec: Mapping
) -> Hyperparameter:
    choices = spec.get("choices")
    if not isinstance(choices, Sequence) or isinstance(choices, str) or not choices:
        raise ConfigError(
            f"{where}.choices: a {kind} hyperparameter needs a non-empty list of choices, "
            f"got {choices!r}."
        )
    for key in ("low", "high", "step"):
        if spec.get(key) is not None:
            raise ConfigError(
                f"{where}.{key}: not allowed for a {kind} hyperparameter. "
                "Remove it or use type float or int."
            )
    return Hyperparameter(path, parts, name, kind, choices=tuple(choices))


def _parse_range(
    where: str, path: str, parts: tuple, name: str, kind: str, spec: Mapping, log: bool
) -> Hyperparameter:
    if spec.get("choices") is not None:
        raise ConfigError(
            f"{where}.choices: not allowed for type {kind}. Use type categorical for a list."
        )
    low = _required_number(where, "low", spec.get("low"), kind)
    high = _required_number(where, "high", spec.get("high"), kind)
    step = _number(where, "step", spec.get("step"), kind, required=False)

    if low > high:
        raise ConfigError(
            f"{where}: low ({low}) is greater than high ({high}). Swap the two bounds."
        )
    if log and low <= 0:
        raise ConfigError(
            f"{where}.low: a log-scale range needs low > 0, got {low}. "
            "Set low to a small positive value such as 1e-6, or remove 'log: true'."
        )
    if log and step is not None:
        raise ConfigError(
            f"{where}: 'step' and 'log: true' cannot be combined (Optuna rejects it). Remove one."
        )
    if step is not None and step <= 0:
        raise ConfigError(f"{where}.step: must be positive, got {step}.")
    if kind == "int" and step is None:
        step = 1
    return Hyperparameter(path, parts, name, kind, low=low, high=high, step=step, log=log)


def _required_number(where: str, key: str, value: Any, kind: str) -> float | int:
    number = _number(where, key, value, kind, required=True)
    assert number is not None  # _number raises for a missing required value
    return number


def _number(where: str, key: str, value: Any, kind: str, required: bool) -> float | int | None:
    if value is None:
        if required:
            raise ConfigError(
                f"{where}.{key}: missing. A {kind} hyperparameter needs low and high."
            )
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}.") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}.")
    if kind == "int":
        if float(value) != int(value):
            raise ConfigError(f"{where}.{key}: expected an integer for type int, got {value!r}.")
        return int(value)
    return float(value)


def suggest_values(trial: Any, hyperparameters: Sequence[Hyperparameter]) -> dict[str, Any]:
    """Sample one value per hyperparameter with Optuna's `suggest_*` API.

    Returns:
        The user-facing values by name: for ordered categorical ones, the choice itself (Optuna
        samples its index so that TPE models the order).
    """
    values: dict[str, Any] = {}
    for hp in hyperparameters:
        if hp.type == "float":
            values[hp.name] = trial.suggest_float(
                hp.name, hp.low, hp.high, step=hp.step, log=hp.log
            )
        elif hp.type == "int":
            values[hp.name] = trial.suggest_int(hp.name, hp.low, hp.high, step=hp.step, log=hp.log)
        elif hp.type == "categorical":
            values[hp.name] = trial.suggest_categorical(hp.name, list(hp.choices or ()))
        else:
            index = trial.suggest_int(hp.name, 0, len(hp.choices or ()) - 1)
            values[hp.name] = (hp.choices or ())[index]
    return values


def user_values(
    params: Mapping[str, Any], hyperparameters: Sequence[Hyperparameter]
) -> dict[str, Any]:
    """Map Optuna's stored params back to user-facing values (ordered categorical indices)."""
    values = dict(params)
    for hp in hyperparameters:
        if hp.type == "ordered_categorical" and hp.name in values:
            values[hp.name] = (hp.choices or ())[int(values[hp.name])]
    return values


def optuna_params(
    values: Mapping[str, Any], hyperparameters: Sequence[Hyperparameter]
) -> dict[str, Any]:
    """Map user-facing values to what Optuna stores (ordered categoricals as choice indices).

    The inverse of `user_values`.
    """
    params = dict(values)
    for hp in hyperparameters:
        if hp.type == "ordered_categorical" and hp.name in params:
            params[hp.name] = list(hp.choices or ()).index(params[hp.name])
    return params


def preflight_assignments(hyperparameters: Sequence[Hyperparameter]) -> list[dict[str, Any]]:
    """Return the value sets that preflight builds: all lows, all highs, each choice.

    Categorical hyperparameters take their first choice in the low and high sets. Each of their
    other choices gets its own set, with the range hyperparameters at their low value.
    """
    low = {hp.name: hp.low if not hp.is_categorical else hp.choices[0] for hp in hyperparameters}  # type: ignore[index]
    high = {hp.name: hp.high if not hp.is_categorical else hp.choices[0] for hp in hyperparameters}  # type: ignore[index]
    assignments = [low, high]
    for hp in hyperparameters:
        for choice in (hp.choices or ())[1:]:
            assignments.append({**low, hp.name: choice})
    return assignments


def apply_values(
    config: Any, hyperparameters: Sequence[Hyperparameter], values: Mapping[str, Any]
) -> Any:
    """Return a deep copy of the unresolved config with each value written at its path.

    Hyperparameters missing from `values` are left as the config has them.
    """
    updated = copy.deepcopy(config)
    for hp in hyperparameters:
        if hp.name in values:
            set_path(updated, hp.parts, values[hp.name], label=hp.path)
    return updated


def set_path(tree: Any, parts: Sequence[str | int], value: Any, label: str | None = None) -> None:
    """Write `value` at `parts` in nested mappings and lists, in place.

    Works on confit `Config` objects and ruamel round-trip maps alike. The last key may be
    new (it can name an argument the component accepts); every other part must exist.

    Raises:
        ConfigError: When an intermediate key or list index does not exist.
    """
    node = tree
    for depth, part in enumerate(parts[:-1]):
        node = _child(node, part, parts, depth, label)
    last = parts[-1]
    if isinstance(node, MutableSequence):
        node[_index(node, last, parts, len(parts) - 1, label)] = value
    elif isinstance(node, MutableMapping):
        node[last] = value
    else:
        raise _missing(parts, len(parts) - 1, label, node)


def get_path(tree: Any, parts: Sequence[str | int]) -> Any:
    """Return the value at `parts`, raising KeyError when any part is missing."""
    node = tree
    for part in parts:
        if isinstance(node, Sequence) and not isinstance(node, str):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, Mapping) and str(part) in node:
            node = node[str(part)]
        else:
            raise KeyError(part)
    return node


def has_path(tree: Any, parts: Sequence[str | int]) -> bool:
    try:
        get_path(tree, parts)
    except (KeyError, IndexError, ValueError, TypeError):
        return False
    return True


def _child(node: Any, part: str | int, parts: Sequence, depth: int, label: str | None) -> Any:
    if isinstance(node, MutableSequence):
        return node[_index(node, part, parts, depth, label)]
    if isinstance(node, Mapping):
        if part in node:
            return node[part]
        if str(part) in node:
            return node[str(part)]
    raise _missing(parts, depth, label, node)


def _index(node: Sequence, part: str | int, parts: Sequence, depth: int, label: str | None) -> int:
    try:
        index = int(part)
    except ValueError:
        raise _missing(parts, depth, label, node) from None
    if not -len(node) <= index < len(node):
        raise _missing(parts, depth, label, node)
    return index


def _missing(parts: Sequence, depth: int, label: str | None, node: Any) -> ConfigError:
    shown = label or ".".join(str(part) for part in parts)
    prefix = ".".join(str(part) for part in parts[:depth]) or "<root>"
    if isinstance(node, Mapping):
        available = ", ".join(repr(key) for key in list(node)[:12])
        hint = f"Keys under {prefix}: {available}."
    elif isinstance(node, Sequence) and not isinstance(node, str):
        hint = f"{prefix} is a list of {len(node)} items: use an index from 0 to {len(node) - 1}."
    else:
        hint = f"{prefix} is a value, not a section."
    return ConfigError(
        f"tuning.hyperparameters.{shown!r}: the path does not exist in the config: "
        f"{parts[depth]!r} not found under {prefix}. {hint} Quote parts that contain dots "
        "(for example optimizer.groups.'.*'.lr)."
    )
