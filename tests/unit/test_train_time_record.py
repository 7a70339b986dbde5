"""The worker records a trial's time inside train() next to its duration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest

from hpc import trial_run
from hpc.sweep_state import SweepPaths
from hpc.trial_host import TrialOutcome
from hpc.trial_run import _record_end


class DirectDatabase:
    """The worker's `_Database` without retries."""

    def call(self, operation: Callable[[], Any], what: str) -> Any:
        return operation()


@pytest.fixture(autouse=True)
def no_model_cleanup(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model cleanup queries PostgreSQL; these trials save no model."""
    monkeypatch.setattr(trial_run, "_keep_best_models", lambda *args, **kwargs: None)


def record(tmp_path: Path, outcome: TrialOutcome) -> optuna.trial.FrozenTrial:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    spec = SimpleNamespace(paths=SweepPaths(tmp_path), max_retries=2, keep_models=1)
    stop = SimpleNamespace(name=None)
    _record_end(study, trial, outcome, 3.4567, spec, stop, DirectDatabase(), study._storage)
    return study.trials[0]


def test_train_time_recorded(tmp_path: Path) -> None:
    frozen = record(tmp_path, TrialOutcome("complete", value=0.5, train_s=2.71828))
    assert frozen.state == optuna.trial.TrialState.COMPLETE
    assert frozen.user_attrs["duration_s"] == 3.457
    assert frozen.user_attrs["train_s"] == 2.718


def test_unmeasured_train_time_absent(tmp_path: Path) -> None:
    frozen = record(tmp_path, TrialOutcome("complete", value=0.5))
    assert frozen.user_attrs["duration_s"] == 3.457
    assert "train_s" not in frozen.user_attrs
