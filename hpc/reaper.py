"""Reaping: trials left RUNNING by workers that died are failed and, by the retry policy,
queued again with the same parameters and seed.

A trial is lost when its worker died without a word (SIGKILL, out-of-memory kill, node
loss). Two signs are required before a trial is reaped, so that a database outage never
duplicates a trial that still runs:

- its heartbeat is older than the grace period (`hpc.heartbeat_grace_s`), and
- the run of the Slurm job that held it no longer runs (the job ended, or was requeued and
  waits or runs again), or, for a local worker, its process is gone.

Workers reap before each claim, and so do the finalize job and `status`, so lost trials are
cleaned up even when every worker is dead.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
import sqlalchemy
from sqlalchemy import text

from hpc import tables
from hpc.log_context import REAPER_LOG, error_line, log_file
from tuner import retry_policy
from tuner.retry_policy import RETRIED_ATTR

if TYPE_CHECKING:
    from hpc.sweep import Sweep

logger = logging.getLogger(__name__)

# A parameter set that failed this many more times is failed for good: it may be what kills
# its worker.
DEFAULT_MAX_RETRIES = 2
DEFAULT_GRACE_S = 300.0
MAX_ERROR_CHARS = 2000
# States in which the run of a job that last held a trial may still be alive. A requeued job
# waiting in PENDING or REQUEUED has no live run. A job that runs again started a new run,
# whose worker reaps the trials of the earlier run when it starts.
LIVE_JOB_STATES = frozenset({"RUNNING", "SUSPENDED", "STOPPED", "COMPLETING", "CONFIGURING"})
LOST_ERROR = "WorkerLost: its worker stopped sending heartbeats and {why}"

_SILENT_TRIALS_SQL = text(
    """
    SELECT t.trial_id AS trial_id,
           t.number AS number,
           w.value_json AS worker,
           j.value_json AS job_id,
           extract(epoch FROM LOCALTIMESTAMP - coalesce(h.heartbeat, t.datetime_start))
               AS silent_s
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id
    LEFT JOIN trial_user_attributes w ON w.trial_id = t.trial_id AND w.key = 'worker'
    LEFT JOIN trial_user_attributes j ON j.trial_id = t.trial_id AND j.key = 'job_id'
    WHERE s.study_name = :study_name
      AND t.state = 'RUNNING'
      AND coalesce(h.heartbeat, t.datetime_start)
          < LOCALTIMESTAMP - make_interval(secs => :older_than_s)
    ORDER BY t.number
    """
)


@dataclass(frozen=True)
class SilentTrial:
    """A RUNNING trial whose last heartbeat is older than some number of seconds."""

    trial_id: int
    number: int
    worker: int | None
    job_id: str | None
    silent_s: float


def silent_trials(
    engine: sqlalchemy.Engine, study_name: str, older_than_s: float
) -> list[SilentTrial]:
    """List the RUNNING trials of a study with no heartbeat for `older_than_s` seconds.

    One query; heartbeats are written with the database's clock, so workers' clocks do not
    matter. A trial with no heartbeat row is judged by its start time.
    """
    with engine.connect() as connection:
        rows = connection.execute(
            _SILENT_TRIALS_SQL, {"study_name": study_name, "older_than_s": float(older_than_s)}
        ).all()
    return [
        SilentTrial(
            trial_id=int(row.trial_id),
            number=int(row.number),
            worker=None if row.worker is None else int(json.loads(row.worker)),
            job_id=None if row.job_id is None else str(json.loads(row.job_id)),
            silent_s=float(row.silent_s),
        )
        for row in rows
    ]


def reap_stale_trials(
    engine: sqlalchemy.Engine,
    study: optuna.Study,
    sweep_name: str,
    grace_s: float = DEFAULT_GRACE_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    query_jobs: Callable[[Sequence[str]], list] | None = None,
    unchecked_grace_s: float | None = None,
) -> int:
    """Fail and retry the stale trials whose job run or worker process is gone.

    A stale trial whose job still runs is left alone and logged: its worker may only have
    lost the database for a while. When Slurm cannot be asked, no job-held trial is reaped.

    Args:
        grace_s: Seconds without a heartbeat before a trial is examined. The finalize job
            passes 0: its workers' jobs have ended, and Slurm confirms it trial by trial.
        unchecked_grace_s: Seconds without a heartbeat before a trial that ran outside
            Slurm on another host is reaped, because nothing else can confirm it is lost.
            None means `grace_s`.

    Returns:
        The number of trials reaped.
    """
    stale = silent_trials(engine, study.study_name, grace_s)
    unchecked_grace_s = grace_s if unchecked_grace_s is None else unchecked_grace_s
    if not stale:
        return 0
    workers = tables.worker_rows(engine, {t.worker for t in stale if t.worker is not None})
    live_jobs = _live_jobs(sorted({t.job_id for t in stale if t.job_id}), query_jobs)
    here = socket.gethostname()
    reaped = 0
    lost_workers = set()
    for trial in stale:
        why = _why_lost(trial, workers.get(trial.worker or -1), live_jobs, here, unchecked_grace_s)
        if why is None:
            continue
        frozen = study._storage.get_trial(trial.trial_id)
        if frozen.state != optuna.trial.TrialState.RUNNING:
            continue  # finished meanwhile
        fail_and_retry(study, frozen, LOST_ERROR.format(why=why), max_retries=max_retries)
        reaped += 1
        if trial.worker in workers:
            lost_workers.add(trial.worker)
    if lost_workers:
        tables.mark_ended(engine, lost_workers, "lost: no heartbeat, no live job or process")
    return reaped


def _live_jobs(
    job_ids: list[str], query_jobs: Callable[[Sequence[str]], list] | None
) -> set[str] | None:
    """Return the ids of the jobs that may still run, or None when Slurm cannot be asked."""
    if not job_ids:
        return set()
    if query_jobs is None:
        from hpc import scheduler

        query_jobs = scheduler.active_jobs
    try:
        states = query_jobs(job_ids)
    except Exception as error:  # SchedulerError, a missing squeue, a timeout
        logger.warning(
            "Stale trials of jobs %s are kept: Slurm could not be asked whether the jobs run (%s).",
            ", ".join(job_ids),
            error,
        )
        return None
    return {state.display_id for state in states if state.state.split()[0] in LIVE_JOB_STATES}


def _why_lost(
    trial: SilentTrial,
    worker: tables.WorkerRow | None,
    live_jobs: set[str] | None,
    here: str,
    unchecked_grace_s: float,
) -> str | None:
    """Return why a stale trial is lost, or None when it may still run."""
    if trial.job_id:
        if live_jobs is None:
            return None
        if trial.job_id in live_jobs:
            logger.warning(
                "Trial %d sent no heartbeat for %.0f s but its job %s still runs: kept "
                "(its worker may have lost the database for a while).",
                trial.number,
                trial.silent_s,
                trial.job_id,
                extra={"trial": trial.number},
            )
            return None
        return f"its job run {trial.job_id} no longer runs"
    if worker is not None and worker.hostname == here:
        if tables.process_exists(worker.pid):
            return None
        return f"its process {worker.pid} on {here} is gone"
    if trial.silent_s < unchecked_grace_s:
        return None
    host = worker.hostname if worker is not None else "an unknown host"
    return f"it ran outside Slurm on {host}, where its process cannot be checked"


def reap_lost_trials(
    engine: sqlalchemy.Engine,
    study: optuna.Study,
    sweep_name: str,
    extra_dead: set[int] | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    stopped_by_user: bool = False,
) -> int:
    """Fail the RUNNING trials of dead workers at once, and retry them by the policy.

    With `stopped_by_user` (Ctrl-C, cancel), the trials always run again, without using up a
    retry: the user stopped them, they did not fail.

    Dead workers are this host's workers whose process is gone, plus `extra_dead` (earlier
    runs of a requeued job). Neither can still run, so no heartbeat grace is needed.

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
            error = (
                "Interrupted: the sweep was stopped (Ctrl-C or cancel)"
                if stopped_by_user
                else "WorkerLost: its worker process ended while it ran"
            )
            fail_and_retry(
                study,
                trial,
                error,
                max_retries=max_retries,
                count_attempt=not stopped_by_user,
            )
            reaped += 1
    tables.mark_ended(engine, dead, "process not found")
    return reaped


def fail_and_retry(
    study: optuna.Study,
    trial: optuna.trial.FrozenTrial | optuna.Trial,
    error: str,
    max_retries: int = DEFAULT_MAX_RETRIES,
    count_attempt: bool = True,
) -> bool:
    """Fail a RUNNING trial and, if the retry policy allows, queue a copy with the same
    parameters and seed. One line logs the decision, its reason and the error's first line
    (see `tuner.retry_policy`).

    Args:
        count_attempt: False for a trial stopped by preemption or a time limit, which is
            no fault of the trial itself: it always runs again, without using up a retry.

    Returns:
        Whether the trial runs again.
    """
    live = trial if isinstance(trial, optuna.Trial) else optuna.trial.Trial(study, trial._trial_id)
    user_attrs = trial.user_attrs
    attempt = int(user_attrs.get("attempt", 1))
    if count_attempt:
        decision = retry_policy.decide(error, attempt, max_retries)
    else:
        decision = retry_policy.RetryDecision(True, "stopped by a signal, not counted as a retry")
    live.set_user_attr("error", error[:MAX_ERROR_CHARS])
    live.set_user_attr("retry_decision", decision.reason)
    if decision.retry:
        next_attempt = attempt + 1 if count_attempt else attempt
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
            "Trial %d queued again as attempt %d with the same parameters and seed (%s). Error: %s",
            trial.number,
            next_attempt,
            decision.reason,
            error_line(error),
            extra={"trial": trial.number},
        )
    else:
        logger.error(
            "Trial %d not retried: %s. Error: %s",
            trial.number,
            decision.reason,
            error_line(error),
            extra={"trial": trial.number},
        )
    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return decision.retry


def reap_all(
    engine: sqlalchemy.Engine,
    study: optuna.Study,
    sweep_name: str,
    grace_s: float = DEFAULT_GRACE_S,
    max_retries: int = DEFAULT_MAX_RETRIES,
    jobs_ended: bool = False,
) -> int:
    """Reap what the finalize job, a rerun and `status` can see: trials of dead local
    workers, and stale trials whose job run or process is gone.

    Args:
        jobs_ended: True in the finalize job and on a rerun, which run once the workers'
            jobs have ended: trials held by Slurm jobs are then examined without waiting for
            the grace period (Slurm still confirms each job has ended).
    """
    reaped = reap_lost_trials(engine, study, sweep_name, max_retries=max_retries)
    return reaped + reap_stale_trials(
        engine,
        study,
        sweep_name,
        grace_s=0.0 if jobs_ended else grace_s,
        max_retries=max_retries,
        unchecked_grace_s=grace_s,
    )


def reap_sweep(
    engine: sqlalchemy.Engine, study: optuna.Study, sweep: Sweep, jobs_ended: bool = False
) -> int:
    """Run `reap_all` with the sweep's grace period and retry limit.

    Its lines also go to `checkpoint_dir/jobs/reaper.log`, so that `logs --trial N` finds why
    a trial was failed and queued again, whichever command reaped it.
    """
    with log_file(sweep.paths.jobs_dir / REAPER_LOG):
        return reap_all(
            engine,
            study,
            sweep.name,
            grace_s=sweep.settings.heartbeat_grace_s,
            max_retries=sweep.settings.max_retries,
            jobs_ended=jobs_ended,
        )


def reap_earlier_runs(
    engine: sqlalchemy.Engine,
    study: optuna.Study,
    sweep_name: str,
    job_id: str,
    worker_id: int,
    max_retries: int = DEFAULT_MAX_RETRIES,
) -> int:
    """Reap the trials of earlier runs of this worker's own job at once.

    A requeued job keeps its id and Slurm never runs two runs of one job together, so the
    earlier run is dead even if its heartbeats are recent.
    """
    workers = tables.unfinished_workers_with_jobs(engine, sweep_name)
    earlier = {worker for worker, job in workers.items() if job == job_id and worker != worker_id}
    if not earlier:
        return 0
    tables.mark_ended(engine, earlier, "job requeued")
    return reap_lost_trials(engine, study, sweep_name, extra_dead=earlier, max_retries=max_retries)
