"""One trial in a worker: run it in the trial host, then record its end and tidy its models.

`hpc.worker` claims the trial and calls `run_trial`. Every database call goes through the
worker's retrying `_Database`, so a short outage delays the record instead of losing it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from hpc import signals
from hpc.db_bursts import held
from hpc.db_retry import describe, is_connection_error
from hpc.heartbeat import Heartbeat
from hpc.log_context import error_line
from hpc.reaper import fail_and_retry
from hpc.trial_host import TRIAL_LOG, HostDied, TrialHost, TrialOutcome
from tuner.objectives import TrialRequest
from tuner.private_dirs import make_private_dir
from tuner.report import MODEL_FOLDERS

if TYPE_CHECKING:
    from hpc.worker import WorkerSpec, _Database

logger = logging.getLogger("hpc.worker")
SEED_MODULUS = 2**32


def trial_seed(sweep_seed: int, trial_number: int) -> int:
    """Training seed of one trial, as EDS-NLP derives it: sweep seed plus trial number."""
    return (sweep_seed + trial_number) % SEED_MODULUS


def run_trial(
    study: optuna.Study,
    claimed: tuple[optuna.Trial, dict[str, Any]],
    host: TrialHost,
    spec: WorkerSpec,
    worker_id: int,
    stop: signals.StopRequest,
    db: _Database,
    rdb: RDBStorage,
) -> None:
    trial, values = claimed
    trial_dir = spec.paths.trial_dir(trial.number)
    make_private_dir(trial_dir)
    # A retried trial carries the seed of the trial it repeats.
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seed = trial_seed(spec.seed, trial.number)
    with held(rdb.engine):
        db.call(lambda: trial.set_user_attr("seed", seed), "record the trial's seed")
        db.call(lambda: trial.set_user_attr("trial_dir", str(trial_dir)), "record the trial folder")
    retry = ""
    if "retry_of" in trial.user_attrs:
        retry = (
            f" (attempt {trial.user_attrs.get('attempt', 2)}, "
            f"retry of trial {trial.user_attrs['retry_of']})"
        )
    logger.info(
        "Trial %d started%s: %s",
        trial.number,
        retry,
        format_values(values),
        extra={"trial": trial.number},
    )

    # Phase 2 trains every trial under the same frozen values of the other hyperparameters.
    request = TrialRequest(
        number=trial.number, values={**spec.frozen, **values}, seed=seed, trial_dir=str(trial_dir)
    )
    started = time.monotonic()
    with Heartbeat(rdb, trial._trial_id, trial.number, spec.heartbeat_s):
        try:
            outcome = host.run(
                request, lambda step, value: _report(trial, step, value), lambda: stop.requested
            )
        except HostDied as died:
            outcome = TrialOutcome("failed", error=f"HostDied: {died}")
    duration_s = time.monotonic() - started
    with held(rdb.engine):
        _record_end(study, trial, outcome, duration_s, spec, stop, db, rdb)


def _record_end(
    study: optuna.Study,
    trial: optuna.Trial,
    outcome: TrialOutcome,
    duration_s: float,
    spec: WorkerSpec,
    stop: signals.StopRequest,
    db: _Database,
    rdb: RDBStorage,
) -> None:
    """Record how a trial ended: its duration, its result or retry, the models kept."""
    db.call(
        lambda: trial.set_user_attr("duration_s", round(duration_s, 3)),
        "record the trial's duration",
    )
    train_s = outcome.train_s
    if train_s is not None:
        db.call(
            lambda: trial.set_user_attr("train_s", round(train_s, 3)),
            "record the trial's time in train()",
        )
    if outcome.state == "interrupted":
        why = f"Interrupted: the worker received {stop.name}"
        db.call(
            lambda: _unless_finished(
                rdb, trial, lambda: fail_and_retry(study, trial, why, count_attempt=False)
            ),
            "queue the interrupted trial again",
        )
        _delete_model(spec, trial.number)
        return
    db.call(
        lambda: _unless_finished(
            rdb, trial, lambda: record_outcome(study, trial, outcome, duration_s, spec.max_retries)
        ),
        f"record the end of trial {trial.number}",
    )
    complete = outcome.state == "complete"
    db.call(
        lambda: _keep_best_models(rdb, spec, trial.number, complete=complete),
        "list the best trials",
    )


def _unless_finished(rdb: RDBStorage, trial: optuna.Trial, record: Callable[[], object]) -> None:
    """Record a trial's end unless an attempt cut by an outage already did."""
    if rdb.get_trial(trial._trial_id).state.is_finished():
        return
    record()


def _report(trial: optuna.Trial, step: int, value: float) -> bool:
    """Report a validation score; while the database is away, go on without pruning."""
    try:
        trial.report(value, step)
        return trial.should_prune()
    except Exception as error:
        if not is_connection_error(error):
            raise
        logger.warning(
            "Trial %d: score of step %d not recorded (%s); the trial goes on without pruning.",
            trial.number,
            step,
            describe(error),
        )
        return False


def record_outcome(
    study: optuna.Study,
    trial: optuna.Trial,
    outcome: TrialOutcome,
    duration_s: float,
    max_retries: int,
) -> None:
    if outcome.state == "complete":
        study.tell(trial, outcome.value)
        logger.info(
            "Trial %d finished with value %s in %.1f s.",
            trial.number,
            outcome.value,
            duration_s,
            extra={"trial": trial.number},
        )
    elif outcome.state == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        logger.info(
            "Trial %d pruned after %.1f s (last score %s).",
            trial.number,
            duration_s,
            outcome.value,
            extra={"trial": trial.number},
        )
    else:
        log_path = Path(trial.user_attrs["trial_dir"]) / TRIAL_LOG
        error = outcome.error or "UnknownError: the trial failed"
        # Only the first line: the trial's `error` attribute and trial.log keep the rest.
        logger.error(
            "Trial %d failed after %.1f s: %s (log: %s)",
            trial.number,
            duration_s,
            error_line(error),
            log_path,
            extra={"trial": trial.number},
        )
        fail_and_retry(study, trial, error, max_retries=max_retries)


_OUTSIDE_BEST_SQL = sqlalchemy.text(
    """
    SELECT t.number
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
    WHERE s.study_name = :study_name AND t.state = 'COMPLETE'
    ORDER BY v.value DESC, t.number
    OFFSET :keep
    """
)


def _keep_best_models(rdb: RDBStorage, spec: WorkerSpec, number: int, complete: bool) -> None:
    """Delete saved models of all trials but the `keep_models` best complete ones.

    A trial that did not complete deletes its own model. A complete trial queries the database
    for the numbers of the complete trials outside the best `keep_models` (studies maximize)
    and deletes their models: pruned and failed trials were handled when they ended. Only
    numbers are read, so the cost stays small on a study of thousands of trials.
    """
    if not complete:
        _delete_model(spec, number)
        return
    with rdb.engine.connect() as connection:
        outside = connection.execute(
            _OUTSIDE_BEST_SQL, {"study_name": spec.study_name, "keep": spec.keep_models}
        ).scalars()
        for other in outside:
            _delete_model(spec, int(other))


def _delete_model(spec: WorkerSpec, number: int) -> None:
    for name in MODEL_FOLDERS:
        folder = spec.paths.trial_dir(number) / name
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            logger.debug("Deleted the model of trial %d: %s", number, folder)


def format_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in values.items())
