"""Phase planning: which hyperparameters phase 2 tunes, and where the others are frozen.

After phase 1, the most important half of the hyperparameters (by fANOVA importance) are
tuned again, and the others keep phase 1's best values. Each edge case gets a decision and a
reason for the log, never an exception:

- no complete trial in phase 1: phase 2 has no best value to start from, so the sweep stops
  after phase 1 with a report that explains why;
- one or two complete trials, or a metric equal on every complete trial: fANOVA cannot rank
  the parameters, so phase 2 tunes all of them;
- a categorical hyperparameter with one choice: nothing to tune, so it is frozen at that
  choice and left out of the ranking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from tuner.space import Hyperparameter, user_values
from tuner.text import plural

PHASE_2 = "phase 2"
ALL_IN_PHASE_2 = "phase 2 with every hyperparameter"
STOP = "stop after phase 1"


@dataclass(frozen=True)
class PhaseBudget:
    """The budget of one phase: trials, GPU-hours or wall-clock seconds, None when unset."""

    n_trials: int | None
    gpu_hours: float | None
    timeout_s: float | None


def phase_budget(
    n_trials: int | None,
    gpu_hours: float | None,
    timeout_s: float | None,
    two_phase: bool,
    phase: int,
) -> PhaseBudget:
    """Split the sweep's budget between the phases, as EDS-NLP does.

    Phase 2 gets `n_trials // 2` trials and phase 1 the rest (the larger half); GPU-hours and
    time are halved. A one-phase sweep keeps the whole budget.
    """
    if not two_phase:
        return PhaseBudget(n_trials, gpu_hours, timeout_s)
    if n_trials is not None:
        second = n_trials // 2
        n_trials = n_trials - second if phase == 1 else second
    return PhaseBudget(
        n_trials,
        None if gpu_hours is None else gpu_hours / 2,
        None if timeout_s is None else timeout_s / 2,
    )


@dataclass(frozen=True)
class PhasePlan:
    """The plan that follows phase 1.

    Attributes:
        decision: `PHASE_2`, `ALL_IN_PHASE_2` or `STOP`.
        reason: One sentence for the log and the report.
        kept: Names of the hyperparameters phase 2 tunes, most important first.
        frozen: Name to value (as the user writes it) of the hyperparameters phase 2 does not
            tune.
        start: Phase 1's best values of the kept hyperparameters: phase 2's first trial.
    """

    decision: str
    reason: str
    kept: tuple[str, ...] = ()
    frozen: Mapping[str, Any] = field(default_factory=dict)
    start: Mapping[str, Any] = field(default_factory=dict)


def plan_phase_two(
    trials: Sequence[FrozenTrial],
    hyperparameters: Sequence[Hyperparameter],
    importances: Mapping[str, float],
    maximize: bool = True,
) -> PhasePlan:
    """Plan phase 2 from phase 1's trials and fANOVA importances.

    Args:
        trials: Phase 1's trials (any state).
        hyperparameters: The search space of phase 1.
        importances: fANOVA importance by name, empty when it could not be computed.
        maximize: Whether a higher metric is better.

    Ties in importance are broken by the order of the hyperparameters in the config.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not complete:
        states = sorted({t.state.name for t in trials}) or ["none"]
        return PhasePlan(
            STOP,
            f"no trial completed (trial states: {', '.join(states)}), so phase 2 "
            "has no best values to start from",
        )
    best = (max if maximize else min)(complete, key=lambda t: float(t.value))  # type: ignore[arg-type]
    best_values = user_values(best.params, hyperparameters)
    single = {
        hp.name: (hp.choices or (None,))[0]
        for hp in hyperparameters
        if hp.is_categorical and len(hp.choices or ()) == 1
    }
    tunable = [hp.name for hp in hyperparameters if hp.name not in single]
    start_all = {name: best_values[name] for name in tunable if name in best_values}
    if not tunable:
        return PhasePlan(
            STOP, "every hyperparameter has a single choice, so there is nothing to tune"
        )
    usable = {name: importances[name] for name in tunable if name in importances}
    if len(complete) < 3 or not usable:
        why = (
            f"only {plural(len(complete), 'complete trial')}"
            if len(complete) < 3
            else "fANOVA could not rank the parameters (the metric may be equal on every trial)"
        )
        return PhasePlan(
            ALL_IN_PHASE_2,
            f"{why}, so phase 2 tunes all {len(tunable)} hyperparameters again",
            kept=tuple(tunable),
            frozen=dict(single),
            start=start_all,
        )
    order = {name: index for index, name in enumerate(tunable)}
    ranked = sorted(tunable, key=lambda name: (-usable.get(name, 0.0), order[name]))
    count = math.ceil(len(tunable) / 2)
    kept = tuple(ranked[:count])
    frozen = {name: best_values[name] for name in ranked[count:] if name in best_values}
    frozen.update(single)
    return PhasePlan(
        PHASE_2,
        f"phase 2 tunes the {count} most important of {len(tunable)} hyperparameters "
        f"({', '.join(kept)}) and freezes the others at phase 1's best values (trial "
        f"{best.number})",
        kept=kept,
        frozen=frozen,
        start={name: best_values[name] for name in kept if name in best_values},
    )
