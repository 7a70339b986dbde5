"""Phase planning after phase 1, edge cases included."""

from __future__ import annotations

import optuna
import pytest

from tuner.phases import ALL_IN_PHASE_2, PHASE_2, STOP, plan_phase_two
from tuner.space import Hyperparameter, parse_hyperparameters

SPACE = parse_hyperparameters(
    {
        "model.lr": {"alias": "lr", "type": "float", "low": 0.0, "high": 1.0},
        "model.depth": {"alias": "depth", "type": "int", "low": 1, "high": 8},
        "model.act": {"alias": "act", "type": "categorical", "choices": ["relu", "gelu"]},
        "model.dropout": {"alias": "dropout", "type": "float", "low": 0.0, "high": 0.5},
        "model.norm": {"alias": "norm", "type": "categorical", "choices": ["layer"]},
    }
)


def trial(number: int, value: float | None, state: str = "COMPLETE") -> optuna.trial.FrozenTrial:
    distributions = {
        "lr": optuna.distributions.FloatDistribution(0.0, 1.0),
        "depth": optuna.distributions.IntDistribution(1, 8),
        "act": optuna.distributions.CategoricalDistribution(["relu", "gelu"]),
        "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
        "norm": optuna.distributions.CategoricalDistribution(["layer"]),
    }
    params = {"lr": number / 10, "depth": 1 + number % 8, "act": "relu", "dropout": 0.1}
    params["norm"] = "layer"
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[state],
        value=value,
        params=params,
        distributions=distributions,
    )


def numbered(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    for number, frozen in enumerate(trials):
        frozen.number = number
    return trials


IMPORTANCES = {"lr": 0.5, "dropout": 0.3, "depth": 0.1, "act": 0.1}


@pytest.mark.parametrize(
    ("trials", "importances", "decision", "words"),
    [
        ([], {}, STOP, "no trial completed (trial states: none)"),
        ([trial(0, None, "FAIL"), trial(1, None, "PRUNED")], {}, STOP, "FAIL, PRUNED"),
        ([trial(0, 0.5)], {}, ALL_IN_PHASE_2, "only 1 complete trial"),
        ([trial(0, 0.5), trial(1, 0.6)], IMPORTANCES, ALL_IN_PHASE_2, "only 2 complete"),
        ([trial(n, 0.5) for n in range(5)], {}, ALL_IN_PHASE_2, "could not rank"),
        ([trial(n, n / 10) for n in range(5)], IMPORTANCES, PHASE_2, "the 2 most important of 4"),
    ],
)
def test_decision_by_case(
    trials: list[optuna.trial.FrozenTrial], importances: dict, decision: str, words: str
) -> None:
    plan = plan_phase_two(numbered(trials), SPACE, importances)
    assert plan.decision == decision
    assert words in plan.reason


def test_top_half_kept_rest_frozen_at_best() -> None:
    trials = numbered([trial(n, n / 10) for n in range(5)])
    plan = plan_phase_two(trials, SPACE, IMPORTANCES)
    assert plan.kept == ("lr", "dropout")
    assert plan.frozen == {"depth": 5, "act": "relu", "norm": "layer"}
    assert plan.start == {"lr": 0.4, "dropout": 0.1}


def test_single_choice_frozen_and_not_ranked() -> None:
    plan = plan_phase_two(numbered([trial(n, n / 10) for n in range(5)]), SPACE, IMPORTANCES)
    assert "norm" not in plan.kept
    assert plan.frozen["norm"] == "layer"


def test_ties_broken_by_config_order() -> None:
    even = {"lr": 0.25, "depth": 0.25, "act": 0.25, "dropout": 0.25}
    plan = plan_phase_two(numbered([trial(n, n / 10) for n in range(5)]), SPACE, even)
    assert plan.kept == ("lr", "depth")


def test_minimized_metric_uses_lowest_value() -> None:
    plan = plan_phase_two(
        numbered([trial(n, n / 10) for n in range(5)]), SPACE, IMPORTANCES, maximize=False
    )
    assert plan.start == {"lr": 0.0, "dropout": 0.1}


def test_only_single_choices_stop() -> None:
    only = [hp for hp in SPACE if hp.name == "norm"]
    plan = plan_phase_two(numbered([trial(n, n / 10) for n in range(3)]), only, {})
    assert plan.decision == STOP
    assert isinstance(only[0], Hyperparameter)
