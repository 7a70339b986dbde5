"""Start the next trial under the claim's lock: a sample not tried yet in the phase, with its
first heartbeat and owner written before any reaper can see it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from hpc import tables
from hpc.reaper import fail_and_retry
from hpc.trial_run import format_values
from tuner.space import suggest_values

if TYPE_CHECKING:
    from hpc.worker import WorkerSpec

logger = logging.getLogger("hpc.worker")

# Samples drawn in a row that all repeat earlier trials before the phase counts as exhausted.
MAX_DUPLICATE_SAMPLES = 20
PARAMS_KEY_ATTR = "params_key"


def retry_own_orphans(study: optuna.Study, worker_id: int) -> None:
    """Queue again the RUNNING trials of this worker, which runs none while it claims."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") == worker_id:
            fail_and_retry(
                study,
                trial,
                "ClaimInterrupted: the database connection broke while the trial was claimed",
                count_attempt=False,
            )


def start_trial(
    study: optuna.Study,
    spec: WorkerSpec,
    rdb: RDBStorage,
    worker_id: int,
) -> tuple[optuna.Trial, dict[str, Any]]:
    """Start the next trial under the claim's lock, sampling again over duplicates.

    TPE's random start-up samples ignore running trials, so on a small discrete space two
    workers can draw the same values. A sample whose values already ran or run in this phase
    is closed at once (FAIL with `duplicate_of`, left out of every count) and another is
    drawn. Retries repeat their values on purpose and are exempt.

    Raises:
        SpaceExhausted: `MAX_DUPLICATE_SAMPLES` samples in a row were all duplicates.
    """
    for _ in range(MAX_DUPLICATE_SAMPLES):
        trial = study.ask()
        values = suggest_values(trial, spec.sampled_hyperparameters)
        key = json.dumps(values, sort_keys=True, default=str)
        enqueued = "fixed_params" in rdb.get_trial_system_attrs(trial._trial_id)
        earlier = None if enqueued else duplicate_of(rdb.engine, spec.study_name, key)
        if earlier is None:
            break
        trial.set_user_attr("duplicate_of", earlier)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        logger.info("Sample %s repeats trial %d: drawing another.", format_values(values), earlier)
    else:
        raise SpaceExhausted(
            f"{tables.SPACE_EXHAUSTED}: {MAX_DUPLICATE_SAMPLES} samples in a row repeated "
            "trials that already ran or run in this phase"
        )
    trial.set_user_attr(PARAMS_KEY_ATTR, key)
    # The first heartbeat and the owner are written under the claim's lock, so no reaper
    # ever finds this trial without them.
    rdb.record_heartbeat(trial._trial_id)
    trial.set_user_attr("worker", worker_id)
    if spec.job_id:
        trial.set_user_attr("job_id", spec.job_id)
        # A requeued job keeps its id, so the restart count identifies the run that ran the trial.
        trial.set_user_attr("restart_count", int(os.environ.get("SLURM_RESTART_COUNT", "0")))
    return trial, values


class SpaceExhausted(Exception):
    """Every recent sample repeated a trial of the phase."""


_DUPLICATE_SQL = sqlalchemy.text(
    """
    SELECT t.number
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    JOIN trial_user_attributes k
        ON k.trial_id = t.trial_id AND k.key = :params_key AND k.value_json = :value
    WHERE s.study_name = :study_name
      AND t.state IN ('COMPLETE', 'PRUNED', 'RUNNING', 'FAIL')
      AND NOT EXISTS (
          SELECT 1 FROM trial_user_attributes r
          WHERE r.trial_id = t.trial_id AND r.key IN ('retried_as', 'duplicate_of')
      )
    ORDER BY t.number
    LIMIT 1
    """
)


def duplicate_of(engine: sqlalchemy.Engine, study_name: str, key: str) -> int | None:
    """Return the number of a trial of the phase that ran or runs these values, if any.

    A failed trial queued to run again is not one: its retry carries the values.
    """
    with engine.connect() as connection:
        return connection.execute(
            _DUPLICATE_SQL,
            {"params_key": PARAMS_KEY_ATTR, "value": json.dumps(key), "study_name": study_name},
        ).scalar_one_or_none()
