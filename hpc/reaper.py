"""Reaping: trials left RUNNING by workers that died are failed and queued again."""

from __future__ import annotations

import logging

import optuna
import sqlalchemy

from hpc import tables

logger = logging.getLogger(__name__)

# A trial lost this many times with its worker is failed for good: it may be what kills it.
MAX_ATTEMPTS = 3
RETRIED_ATTR = "retried_as"


def reap_lost_trials(
    engine: sqlalchemy.Engine,
    study: optuna.Study,
    sweep_name: str,
    extra_dead: set[int] | None = None,
) -> int:
    """Fail the RUNNING trials of dead workers and queue each again.

    Dead workers are this host's workers whose process is gone, plus `extra_dead` (workers
    whose Slurm job has ended).

    The retry keeps the parameters and the training seed. The failed trial gets the user
    attribute `retried_as`, so budgets do not count it as finished.

    Returns:
        The number of trials reaped.
    """
    dead = tables.dead_local_workers(engine, sweep_name) | (extra_dead or set())
    if not dead:
        return 0
    reaped = 0
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker") in dead:
            fail_and_retry(study, trial, "WorkerLost: its worker process ended while it ran")
            reaped += 1
    tables.mark_ended(engine, dead, "process not found")
    return reaped


def fail_and_retry(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial | optuna.Trial,
    error: str,
    count_attempt: bool = True,
) -> None:
    """Fail a RUNNING trial and queue a copy with the same parameters and training seed.

    Args:
        count_attempt: False for a trial stopped by preemption or a time limit, which is
            no fault of the trial itself, so it does not use up its attempts.
    """
    live = trial if isinstance(trial, optuna.Trial) else optuna.trial.Trial(study, trial._trial_id)
    user_attrs = trial.user_attrs
    attempt = int(user_attrs.get("attempt", 1))
    next_attempt = attempt + 1 if count_attempt else attempt
    live.set_user_attr("error", error)
    if attempt < MAX_ATTEMPTS or not count_attempt:
        study.enqueue_trial(
            trial.params,
            user_attrs={
                "seed": user_attrs.get("seed"),
                "retry_of": trial.number,
                "attempt": next_attempt,
            },
        )
        live.set_user_attr(RETRIED_ATTR, "queued")
        logger.warning(
            "Trial %d failed: %s. It runs again with the same parameters and seed.",
            trial.number,
            error,
        )
    else:
        logger.error(
            "Trial %d failed: %s. Not retried: attempt %d of %d.",
            trial.number,
            error,
            attempt,
            MAX_ATTEMPTS,
        )
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def reap_ended_slurm_workers(
    engine: sqlalchemy.Engine, study: optuna.Study, sweep_name: str
) -> int:
    """Reap the trials of workers whose Slurm job no longer runs, and of dead local workers.

    A job that Slurm still lists as pending, running or requeued keeps its workers' trials:
    a requeued job's new run reaps the trials of its earlier run when it starts.
    """
    from hpc import scheduler

    workers = tables.unfinished_workers_with_jobs(engine, sweep_name)
    job_ids = sorted({job for job in workers.values() if job})
    states = scheduler.query_jobs(job_ids) if job_ids else []
    active = {state.display_id for state in states if state.active}
    ended = {worker for worker, job in workers.items() if job and job not in active}
    if ended:
        tables.mark_ended(engine, ended, "Slurm job ended")
    return reap_lost_trials(engine, study, sweep_name, extra_dead=ended)


def reap_earlier_runs(
    engine: sqlalchemy.Engine, study: optuna.Study, sweep_name: str, job_id: str, worker_id: int
) -> int:
    """Reap the trials of earlier runs of this worker's own job (a requeued job keeps its id)."""
    workers = tables.unfinished_workers_with_jobs(engine, sweep_name)
    earlier = {worker for worker, job in workers.items() if job == job_id and worker != worker_id}
    if not earlier:
        return 0
    tables.mark_ended(engine, earlier, "job requeued")
    return reap_lost_trials(engine, study, sweep_name, extra_dead=earlier)
