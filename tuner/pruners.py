"""Build Optuna pruners from EDS-NLP's `tuning.pruner` value.

Without a `pruner` key, trials are pruned by the median rule only after 5 complete trials and
5 validations of their own: EDS-NLP users found that Optuna's `MedianPruner()` defaults stop
almost every trial at its first validation, when a fresh model's scores predict little. Any
pruner also accepts `min_validations`, the number of validations a trial always gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.errors import ConfigError

PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "nop": optuna.pruners.NopPruner,
}
DEFAULT_PRUNER: Mapping[str, Any] = {"type": "median", "n_startup_trials": 5, "min_validations": 5}


class WarmUpPruner(optuna.pruners.BasePruner):
    """Never prune a trial before it has reported `min_validations` scores; then ask `inner`.

    Counting validations rather than training steps keeps the rule the same whatever
    `max_steps` and `validation_interval` are.
    """

    def __init__(self, inner: optuna.pruners.BasePruner, min_validations: int) -> None:
        self.inner = inner
        self.min_validations = min_validations

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if len(trial.intermediate_values) < self.min_validations:
            return False
        return self.inner.prune(study, trial)


def build_pruner(value: Any) -> optuna.pruners.BasePruner:
    """Build a pruner from a name, a mapping `{type: name, **options}`, or None (no pruning)."""
    if value is None:
        return optuna.pruners.NopPruner()
    original = value
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping) or value.get("type") not in PRUNERS:
        raise ConfigError(
            f"tuning.pruner: invalid value {original!r}. Use one of {', '.join(PRUNERS)}, null, "
            "or a mapping such as {type: percentile, percentile: 25.0}."
        )
    options = {
        key: option for key, option in value.items() if key not in ("type", "min_validations")
    }
    min_validations = value.get("min_validations", 0)
    if (
        isinstance(min_validations, bool)
        or not isinstance(min_validations, int)
        or min_validations < 0
    ):
        raise ConfigError(
            f"tuning.pruner.min_validations: expected an integer >= 0, got {min_validations!r}."
        )
    try:
        pruner = PRUNERS[value["type"]](**options)
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"tuning.pruner: invalid options for {value['type']!r}: {error}"
        ) from None
    return WarmUpPruner(pruner, min_validations) if min_validations else pruner
