"""A synthetic trial plug-in: sleeps, reports scripted scores, fails on request.

It imports neither torch nor EDS-NLP, so tests of budgets, scheduling and faults run with
real workers, a real database and real child processes in seconds.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner.config import TuningSettings
from tuner.errors import ConfigError, TrialError
from tuner.objectives import ScoreCallback, TrialRequest

OPTIONS = {
    "duration_s": 0.2,  # seconds per trial, or [min, max] drawn from the trial seed
    "steps": 2,  # validations reported per trial
    "fail_trials": [],  # trial numbers that raise an exception
    # A text file: fail_trials then raise a ValueError that quotes it, as data errors can.
    "fail_document": None,
    "nan_trials": [],  # trial numbers that return NaN
    "crash_trials": [],  # trial numbers whose process kills itself (SIGKILL, as the OOM killer)
    "slow_trials": {},  # trial number -> seconds, for the trials that take longer
    "weights": {},  # hyperparameter name -> weight in the score (default 1 each)
    "fail_array_tasks": [],  # Slurm array task ids whose worker exits with status 1 at start
}


class SyntheticObjective:
    """Score = 1 minus the weighted mean squared distance of the normalized values to 0.3."""

    def __init__(self, tuning: TuningSettings, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(
                f"hpc.synthetic: unknown keys {unknown}. Valid keys: {', '.join(OPTIONS)}."
            )
        self.options = {**OPTIONS, **dict(options)}
        if not isinstance(self.options["weights"], Mapping):
            raise ConfigError(
                "hpc.synthetic.weights: expected a mapping of hyperparameter name to weight, "
                f"got {self.options['weights']!r}."
            )
        if not isinstance(self.options["slow_trials"], Mapping):
            raise ConfigError(
                "hpc.synthetic.slow_trials: expected a mapping of trial number to seconds, got "
                f"{self.options['slow_trials']!r}."
            )
        self.tuning = tuning

    def prepare(self) -> None:
        return None

    def run(self, request: TrialRequest, on_score: ScoreCallback) -> float:
        number = request.number
        if number in self.options["crash_trials"]:
            os.kill(os.getpid(), signal.SIGKILL)
        slow = {int(key): float(value) for key, value in self.options["slow_trials"].items()}
        duration_s = slow.get(number, self._duration_s(request.seed))
        steps = max(1, int(self.options["steps"]))
        target = self.score(request.values)
        for step in range(1, steps + 1):
            time.sleep(duration_s / steps)
            on_score(step, target * step / steps)
        if number in self.options["fail_trials"]:
            if self.options["fail_document"] is not None:
                text = Path(self.options["fail_document"]).read_text(encoding="utf-8")
                raise ValueError(f"Span does not align with the tokens of {text!r}")
            raise TrialError(f"synthetic failure requested for trial {number}")
        if number in self.options["nan_trials"]:
            return math.nan
        return target

    def score(self, values: Mapping[str, Any]) -> float:
        weights = self.options["weights"]
        distances = []
        total = 0.0
        for hp in self.tuning.hyperparameters:
            value = values.get(hp.name)
            if hp.is_categorical:
                choices = list(hp.choices or ())
                position = (
                    choices.index(value) / max(1, len(choices) - 1) if value in choices else 0.0
                )
            else:
                low, high = float(hp.low), float(hp.high)  # type: ignore[arg-type]
                number = float(value)  # type: ignore[arg-type]
                if hp.log:
                    low, high, number = math.log(low), math.log(high), math.log(number)
                position = 0.0 if high == low else (number - low) / (high - low)
            weight = float(weights.get(hp.name, 1.0))
            distances.append(weight * (position - 0.3) ** 2)
            total += weight
        return 1.0 - sum(distances) / (total or 1.0)

    def _duration_s(self, seed: int) -> float:
        duration = self.options["duration_s"]
        if isinstance(duration, (list, tuple)):
            low, high = float(duration[0]), float(duration[1])
            return low + (high - low) * ((seed * 2654435761) % 1000) / 999
        return float(duration)
