"""Build Optuna pruners from EDS-NLP's `tuning.pruner` value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from tuner.errors import ConfigError

PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "nop": optuna.pruners.NopPruner,
}


def build_pruner(value: Any) -> optuna.pruners.BasePruner:
    """Build a pruner from a name, a mapping `{type: name, **options}`, or None (no pruning)."""
    if value is None:
        return optuna.pruners.NopPruner()
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping) or value.get("type") not in PRUNERS:
        raise ConfigError(
            f"tuning.pruner: invalid value {value!r}. Use one of {', '.join(PRUNERS)}, null, or a "
            "mapping such as {type: percentile, percentile: 25.0}."
        )
    options = {key: option for key, option in value.items() if key != "type"}
    try:
        return PRUNERS[value["type"]](**options)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"tuning.pruner: invalid options for {value['type']!r}: {error}"
        ) from None
