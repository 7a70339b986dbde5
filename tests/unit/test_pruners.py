"""Pruners built from `tuning.pruner`, and the validation warm-up of the default one."""

from __future__ import annotations

import optuna
import pytest

from tuner.errors import ConfigError
from tuner.pruners import DEFAULT_PRUNER, WarmUpPruner, build_pruner


def study_with_pruner(pruner: optuna.pruners.BasePruner) -> optuna.Study:
    """Return a study with 5 complete trials that scored 1.0 at each of 10 validations."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(5):
        trial = study.ask()
        for step in range(1, 11):
            trial.report(1.0, step)
        study.tell(trial, 1.0)
    return study


def first_prune_step(study: optuna.Study) -> int | None:
    """Report a poor score at each validation; return the step the pruner stops, if any."""
    trial = study.ask()
    for step in range(1, 11):
        trial.report(0.1, step)
        if trial.should_prune():
            return step
    return None


def test_default_waits_for_five_validations() -> None:
    study = study_with_pruner(build_pruner(dict(DEFAULT_PRUNER)))
    assert first_prune_step(study) == 5


def test_plain_median_prunes_at_first_validation() -> None:
    study = study_with_pruner(build_pruner("median"))
    assert first_prune_step(study) == 1


def test_min_validations_applies_to_any_pruner() -> None:
    pruner = build_pruner({"type": "threshold", "lower": 0.5, "min_validations": 3})
    assert isinstance(pruner, WarmUpPruner)
    assert first_prune_step(study_with_pruner(pruner)) == 3


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("mean", "invalid value 'mean'"),
        ({"type": "median", "min_validations": -1}, "min_validations"),
        ({"type": "percentile", "percentile": 150.0}, "invalid options for 'percentile'"),
    ],
)
def test_invalid_pruner_rejected(value: object, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        build_pruner(value)


def test_null_disables_pruning() -> None:
    assert isinstance(build_pruner(None), optuna.pruners.NopPruner)
