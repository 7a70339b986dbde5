"""The worker loop: claim a trial, run it in the trial host, record it, until the budget ends."""

from __future__ import annotations

import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

from hpc import signals, tables
from hpc.claims import Budget, Claim, StudyCounts, claim
from hpc.db_bursts import held
from hpc.db_retry import DatabaseUnavailable, with_retries
from hpc.hints import plural
from hpc.job_time import JobClock
from hpc.log_context import LOG_CONTEXT, trial_context, worker_log_file
from hpc.reaper import reap_earlier_runs, reap_stale_trials, silent_trials
from hpc.storage import create_engine, hide_password, optuna_storage
from hpc.sweep_state import SweepPaths
from hpc.trial_host import TrialHost
from hpc.trial_run import SEED_MODULUS, run_trial
from hpc.trial_start import SpaceExhausted, retry_own_orphans, start_trial
from tuner.objectives import ObjectiveSpec
from tuner.phases import phase_budget
from tuner.pruners import build_pruner
from tuner.space import Hyperparameter

logger = logging.getLogger(__name__)

T = TypeVar("T")
END_RECORD_WINDOW_S = 30


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, read from `sweep.json` by `python -m hpc worker`.

    Attributes:
        paths: The sweep's checkpoint directory.
        sweep_name: Name of the sweep.
        study_name: Optuna study of the phase this worker serves.
        storage_url: SQLAlchemy URL, without a password.
        schema: PostgreSQL schema holding the study.
        budget: The phase's budget.
        objective: The trial plug-in and its settings.
        seed: Sweep seed.
        keep_models: How many of the best trials keep their saved model.
        job_id: Scheduler job id of this worker, if any.
        max_requeues: How many times the worker's job requeues itself.
        max_retries: How many times a failed parameter set runs again.
        heartbeat_s: Seconds between two heartbeats of the running trial.
        heartbeat_grace_s: Seconds without a heartbeat after which a trial is stale.
        db_retry_s: How long the worker retries the database before it gives up.
        signal_lead_s: Seconds between the pre-timeout signal and the job's time limit.
        tuned: In phase 2, the names of the hyperparameters this phase samples; None for all.
        frozen: In phase 2, the values of the hyperparameters it does not sample.
    """

    paths: SweepPaths
    sweep_name: str
    study_name: str
    phase: int
    storage_url: str
    schema: str
    budget: Budget
    objective: ObjectiveSpec
    seed: int
    keep_models: int
    job_id: str | None = None
    max_requeues: int = 10
    max_retries: int = 2
    heartbeat_s: int = 30
    heartbeat_grace_s: int = 300
    db_retry_s: int = 600
    signal_lead_s: int = 180
    tuned: tuple[str, ...] | None = None
    frozen: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sampled_hyperparameters(self) -> list[Hyperparameter]:
        """The hyperparameters this phase samples."""
        every = self.objective.tuning.hyperparameters
        return [hp for hp in every if self.tuned is None or hp.name in self.tuned]


@dataclass(frozen=True)
class WorkerSummary:
    worker_id: int
    trials: int
    reason: str


def sampler_seed(sweep_seed: int, worker_id: int) -> int:
    """Seed of one worker's sampler: distinct per worker, reproducible per sweep seed."""
    return (sweep_seed * 1_000_003 + worker_id) % SEED_MODULUS


def run_worker(spec: WorkerSpec) -> WorkerSummary:
    """Pull trials from the shared study until the budget is spent; return why it stopped."""
    # The trial host imports and prepares the plug-in while the worker registers and loads
    # the study; the first claim waits until it is ready.
    host = TrialHost(spec.objective)
    host.launch()
    try:
        return _start(spec, host)
    finally:
        host.close()


def _start(spec: WorkerSpec, host: TrialHost) -> WorkerSummary:
    engine = create_engine(spec.storage_url, spec.schema)
    db = _Database(spec)
    worker_id = db.call(
        lambda: tables.register_worker(engine, spec.sweep_name, spec.phase, spec.job_id),
        "register the worker",
    )
    LOG_CONTEXT["worker"] = str(worker_id)
    with worker_log_file(spec.paths.jobs_dir, worker_id) as log_path:
        # The first line of the worker's log file: its header names the job and array task.
        logger.info(
            "Worker %d started on host %s (pid %d) for study %s. Log file: %s",
            worker_id,
            socket.gethostname(),
            os.getpid(),
            spec.study_name,
            log_path,
        )
        return _serve(spec, engine, db, worker_id, host)


def _serve(
    spec: WorkerSpec, engine: sqlalchemy.Engine, db: _Database, worker_id: int, host: TrialHost
) -> WorkerSummary:
    """Run trials as worker `worker_id` until the budget is spent, the job ends or a stop signal."""
    rdb = db.call(
        lambda: optuna_storage(spec.storage_url, spec.schema, create_tables=False, bursts=True),
        "open the study storage",
    )
    study = db.call(
        lambda: optuna.load_study(
            study_name=spec.study_name,
            storage=rdb,
            sampler=optuna.samplers.TPESampler(
                seed=sampler_seed(spec.seed, worker_id), constant_liar=True
            ),
            pruner=build_pruner(spec.objective.tuning.pruner),
        ),
        "load the study",
    )
    if spec.job_id:
        job_id = spec.job_id
        reaped = db.call(
            lambda: reap_earlier_runs(
                engine, study, spec.sweep_name, job_id, worker_id, spec.max_retries
            ),
            "reap the trials of earlier runs of this job",
        )
        if reaped:
            logger.warning("%d trials of an earlier run of job %s run again first.", reaped, job_id)
    stop = signals.StopRequest()
    signals.install(stop)
    clock = JobClock(spec.job_id, spec.signal_lead_s)
    loop = _Loop(spec, engine, study, rdb, worker_id, db, clock)
    trials = 0
    reason = "stopped"
    try:
        host.wait_ready()
        while not stop.requested:
            result = loop.claim()
            if result.started is None:
                reason = result.reason or "budget spent"
                if loop.time_limited:
                    reason = _time_limit_reached(spec, reason, trials)
                    break
                if loop.should_wait_for_lost(result.counts):
                    time.sleep(spec.heartbeat_s)
                    continue
                break
            loop.waited_s = 0.0
            with trial_context(result.started[0].number):
                run_trial(study, result.started, host, spec, worker_id, stop, db, rdb)
            trials += 1
        if stop.requested:
            logger.warning("Worker %d received %s.", worker_id, " then ".join(stop.names))
            reason = signals.requeue_or_exit(
                stop, spec.paths.jobs_dir, spec.job_id, spec.max_requeues
            )
    finally:
        host.close()
        try:
            # Short: after a long outage the worker already waited `db_retry_s` once.
            with_retries(
                lambda: tables.end_worker(engine, worker_id, reason),
                "record the worker's end",
                min(END_RECORD_WINDOW_S, spec.db_retry_s),
                db.where,
            )
        except DatabaseUnavailable as error:
            logger.error("Worker %d: its end was not recorded: %s", worker_id, error)
        finally:
            engine.dispose()
    logger.info("Worker %d stopped after %s: %s.", worker_id, plural(trials, "trial"), reason)
    return WorkerSummary(worker_id=worker_id, trials=trials, reason=reason)


class _Database:
    """The worker's database calls, retried through short outages (see `hpc.db_retry`)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.window_s = spec.db_retry_s
        self.where = hide_password(spec.storage_url)

    def call(self, operation: Callable[[], T], what: str) -> T:
        return with_retries(operation, what, self.window_s, self.where)


class _Loop:
    """Claims of one worker: reaping, the time left in its job, waiting for lost trials."""

    def __init__(
        self,
        spec: WorkerSpec,
        engine: sqlalchemy.Engine,
        study: optuna.Study,
        rdb: RDBStorage,
        worker_id: int,
        db: _Database,
        clock: JobClock,
    ) -> None:
        self.spec = spec
        self.engine = engine
        self.study = study
        self.rdb = rdb
        self.worker_id = worker_id
        self.db = db
        self.clock = clock
        self.time_limited = False
        self.waited_s = 0.0

    def claim(self) -> Claim[tuple[optuna.Trial, dict[str, Any]]]:
        """Reap stale trials, then claim the next trial if the budget allows."""
        spec = self.spec
        self.db.call(
            lambda: reap_stale_trials(
                self.engine,
                self.study,
                spec.sweep_name,
                grace_s=spec.heartbeat_grace_s,
                max_retries=spec.max_retries,
            ),
            "reap stale trials",
        )
        attempts = itertools.count()

        def claim_once() -> Claim[tuple[optuna.Trial, dict[str, Any]]]:
            if next(attempts):
                # A claim cut by the outage may have left a trial started for this worker.
                retry_own_orphans(self.study, self.worker_id)
            try:
                return claim(
                    self.engine,
                    spec.study_name,
                    spec.budget,
                    self._start_trial,
                    may_start=self._may_start,
                )
            except SpaceExhausted as exhausted:
                logger.warning("Phase %d ends: %s.", spec.phase, exhausted)
                return Claim(None, str(exhausted), StudyCounts())

        return self.db.call(claim_once, "claim a trial")

    def _start_trial(self) -> tuple[optuna.Trial, dict[str, Any]]:
        # Under the claim's lock only: the storage operations of the new trial share one
        # connection (see hpc.db_bursts), and no connection waits idle for the lock.
        with held(self.rdb.engine):
            return start_trial(self.study, self.spec, self.rdb, self.worker_id)

    def _may_start(self, counts: StudyCounts) -> str | None:
        reason = self.clock.check(counts)
        self.time_limited = reason is not None
        return reason

    def should_wait_for_lost(self, counts: StudyCounts) -> bool:
        """Return whether to wait for trials that look lost, instead of exiting.

        The budget counts running trials, so a worker would exit while a trial lost with a
        killed worker still has to run again. When a running trial has missed two
        heartbeats, this worker waits (at most the grace period and three heartbeats) until
        it beats again or is reaped and queued for retry.
        """
        spec = self.spec
        if not counts.running or self.waited_s > spec.heartbeat_grace_s + 3 * spec.heartbeat_s:
            return False
        silent = self.db.call(
            lambda: silent_trials(self.engine, spec.study_name, 2 * spec.heartbeat_s + 5),
            "look for silent trials",
        )
        if not silent:
            return False
        if self.waited_s == 0:
            logger.info(
                "No budget left for a new trial, but trials %s sent no heartbeat for %.0f s: "
                "waiting up to %d s in case they must run again.",
                ", ".join(str(trial.number) for trial in silent),
                max(trial.silent_s for trial in silent),
                spec.heartbeat_grace_s + 3 * spec.heartbeat_s,
            )
        self.waited_s += spec.heartbeat_s
        return True


def _time_limit_reached(spec: WorkerSpec, reason: str, trials: int) -> str:
    """End the worker before its job's time limit: requeue the job if a fresh run helps."""
    if trials == 0:
        logger.error(
            "No trial fits in this job: %s. Raise hpc.slurm.time_min (or lower "
            "hpc.slurm.signal_lead_s) and run 'python -m hpc resubmit --config CONFIG'.",
            reason,
        )
        return reason
    logger.warning("%s: this job stops here and requeues itself for a full time limit.", reason)
    return signals.requeue_job(spec.paths.jobs_dir, spec.job_id, spec.max_requeues, reason)


def spec_from_state(state: dict[str, Any], paths: SweepPaths, job_id: str | None) -> WorkerSpec:
    """Build a worker's spec from `sweep.json`."""
    from tuner.config import load_config

    loaded = load_config(Path(state["config_path"]), overrides=state.get("tuning_overrides", {}))
    tuning = loaded.tuning
    phase = int(state["phase"])
    share = phase_budget(
        tuning.n_trials, tuning.gpu_hours, tuning.timeout_s, tuning.two_phase_tuning, phase
    )
    budget = Budget(
        n_trials=share.n_trials,
        gpu_seconds=None if share.gpu_hours is None else share.gpu_hours * 3600,
        timeout_s=share.timeout_s,
        gpus_per_trial=int(state.get("gpus_per_trial", 1)),
    )
    plan = state.get("phase_plan") or {} if phase > 1 else {}
    return WorkerSpec(
        paths=paths,
        sweep_name=state["sweep_name"],
        study_name=state["studies"][str(phase)],
        phase=phase,
        storage_url=state["storage_url"],
        schema=state["schema"],
        budget=budget,
        objective=ObjectiveSpec(
            kind=state["objective"],
            config_path=loaded.path,
            tuning=tuning,
            options=state.get("synthetic", {}),
            phase=phase,
        ),
        seed=tuning.seed,
        keep_models=int(state.get("keep_models", 1)),
        job_id=job_id,
        max_requeues=int(state.get("max_requeues", 10)),
        max_retries=int(state.get("max_retries", 2)),
        heartbeat_s=int(state.get("heartbeat_s", 30)),
        heartbeat_grace_s=int(state.get("heartbeat_grace_s", 300)),
        db_retry_s=int(state.get("db_retry_s", 600)),
        signal_lead_s=int(state.get("signal_lead_s", 180)),
        tuned=tuple(plan["kept"]) if plan else None,
        frozen=dict(plan.get("frozen", {})),
    )
