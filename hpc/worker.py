"""The worker loop: claim a trial, run it in the trial host, record it, until the budget ends."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from hpc import signals, tables
from hpc.claims import Budget, claim
from hpc.log_context import LOG_CONTEXT
from hpc.reaper import fail_and_retry, reap_earlier_runs
from hpc.storage import create_engine, optuna_storage
from hpc.sweep_state import SweepPaths
from hpc.trial_host import TRIAL_LOG, HostDied, TrialHost, TrialOutcome
from tuner.objectives import ObjectiveSpec, TrialRequest
from tuner.pruners import build_pruner
from tuner.space import suggest_values

logger = logging.getLogger(__name__)

SEED_MODULUS = 2**32
MODEL_FOLDERS = ("model-last", "model")


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


@dataclass(frozen=True)
class WorkerSummary:
    worker_id: int
    trials: int
    reason: str


def sampler_seed(sweep_seed: int, worker_id: int) -> int:
    """Seed of one worker's sampler: distinct per worker, reproducible per sweep seed."""
    return (sweep_seed * 1_000_003 + worker_id) % SEED_MODULUS


def trial_seed(sweep_seed: int, trial_number: int) -> int:
    """Training seed of one trial, as EDS-NLP derives it: sweep seed plus trial number."""
    return (sweep_seed + trial_number) % SEED_MODULUS


def run_worker(spec: WorkerSpec) -> WorkerSummary:
    """Pull trials from the shared study until the budget is spent; return why it stopped."""
    engine = create_engine(spec.storage_url, spec.schema)
    worker_id = tables.register_worker(engine, spec.sweep_name, spec.phase, spec.job_id)
    LOG_CONTEXT["worker"] = str(worker_id)
    logger.info("Worker %d started on study %s (pid %d).", worker_id, spec.study_name, os.getpid())

    study = optuna.load_study(
        study_name=spec.study_name,
        storage=optuna_storage(spec.storage_url, spec.schema, create_tables=False),
        sampler=optuna.samplers.TPESampler(
            seed=sampler_seed(spec.seed, worker_id), constant_liar=True
        ),
        pruner=build_pruner(spec.objective.tuning.pruner),
    )
    if spec.job_id:
        reaped = reap_earlier_runs(engine, study, spec.sweep_name, spec.job_id, worker_id)
        if reaped:
            logger.warning(
                "%d trials of an earlier run of job %s run again first.", reaped, spec.job_id
            )
    stop = signals.StopRequest()
    signals.install(stop)
    host = TrialHost(spec.objective)
    trials = 0
    reason = "stopped"
    try:
        host.start()
        while not stop.requested:
            trial, reason_or_none = claim(
                engine, spec.study_name, spec.budget, lambda: _ask(study, spec)
            )
            if trial is None:
                reason = reason_or_none or "budget spent"
                break
            _run_one(study, trial, host, spec, worker_id, stop)
            trials += 1
        if stop.requested:
            logger.warning("Worker %d received %s.", worker_id, " then ".join(stop.names))
            reason = signals.requeue_or_exit(
                stop, spec.paths.jobs_dir, spec.job_id, spec.max_requeues
            )
    finally:
        host.close()
        tables.end_worker(engine, worker_id, reason)
        engine.dispose()
    logger.info("Worker %d stopped after %d trials: %s.", worker_id, trials, reason)
    return WorkerSummary(worker_id=worker_id, trials=trials, reason=reason)


def _ask(study: optuna.Study, spec: WorkerSpec) -> tuple[optuna.Trial, dict[str, Any]]:
    trial = study.ask()
    values = suggest_values(trial, spec.objective.tuning.hyperparameters)
    return trial, values


def _run_one(
    study: optuna.Study,
    claimed: tuple[optuna.Trial, dict[str, Any]],
    host: TrialHost,
    spec: WorkerSpec,
    worker_id: int,
    stop: signals.StopRequest,
) -> None:
    trial, values = claimed
    trial_dir = spec.paths.trial_dir(trial.number)
    trial_dir.mkdir(parents=True, exist_ok=True)
    # A retried trial carries the seed of the trial it repeats.
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seed = trial_seed(spec.seed, trial.number)
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("worker", worker_id)
    trial.set_user_attr("trial_dir", str(trial_dir))
    if spec.job_id:
        trial.set_user_attr("job_id", spec.job_id)
        # A requeued job keeps its id, so the restart count identifies the run that ran the trial.
        trial.set_user_attr("restart_count", int(os.environ.get("SLURM_RESTART_COUNT", "0")))
    logger.info("Trial %d started: %s", trial.number, _format_values(values))

    request = TrialRequest(number=trial.number, values=values, seed=seed, trial_dir=str(trial_dir))
    started = time.monotonic()
    try:
        outcome = host.run(
            request, lambda step, value: _report(trial, step, value), lambda: stop.requested
        )
    except HostDied as error:
        outcome = TrialOutcome("failed", error=f"HostDied: {error}")
    duration_s = time.monotonic() - started
    trial.set_user_attr("duration_s", round(duration_s, 3))
    if outcome.state == "interrupted":
        _retry_interrupted(study, trial, stop)
        _delete_model(spec, trial.number)
        return
    _record(study, trial, outcome, duration_s)
    _keep_best_models(study, spec, trial.number, complete=outcome.state == "complete")


def _report(trial: optuna.Trial, step: int, value: float) -> bool:
    trial.report(value, step)
    return trial.should_prune()


def _retry_interrupted(study: optuna.Study, trial: optuna.Trial, stop: signals.StopRequest) -> None:
    error = f"Interrupted: the worker received {stop.name}"
    fail_and_retry(study, trial, error, count_attempt=False)


def _record(
    study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome, duration_s: float
) -> None:
    if outcome.state == "complete":
        study.tell(trial, outcome.value)
        logger.info(
            "Trial %d finished with value %s in %.1f s.", trial.number, outcome.value, duration_s
        )
    elif outcome.state == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        logger.info(
            "Trial %d pruned after %.1f s (last score %s).", trial.number, duration_s, outcome.value
        )
    else:
        trial.set_user_attr("error", outcome.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        log_path = Path(trial.user_attrs["trial_dir"]) / TRIAL_LOG
        logger.error(
            "Trial %d failed after %.1f s: %s (log: %s)",
            trial.number,
            duration_s,
            outcome.error,
            log_path,
        )


def _keep_best_models(study: optuna.Study, spec: WorkerSpec, number: int, complete: bool) -> None:
    """Delete saved models of all trials but the `keep_models` best complete ones.

    A trial that did not complete deletes its own model. A complete trial reads only the
    complete trials, and deletes the models of those outside the best `keep_models`: pruned
    and failed trials were handled when they ended, so they are not listed again.
    """
    if not complete:
        _delete_model(spec, number)
        return
    ranked = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=lambda t: t.value,  # type: ignore[arg-type, return-value]
        reverse=True,
    )
    for frozen in ranked[spec.keep_models :]:
        _delete_model(spec, frozen.number)


def _delete_model(spec: WorkerSpec, number: int) -> None:
    for name in MODEL_FOLDERS:
        folder = spec.paths.trial_dir(number) / name
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            logger.debug("Deleted the model of trial %d: %s", number, folder)


def _format_values(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in values.items())


def spec_from_state(state: dict[str, Any], paths: SweepPaths, job_id: str | None) -> WorkerSpec:
    """Build a worker's spec from `sweep.json`."""
    from tuner.config import load_config

    loaded = load_config(Path(state["config_path"]), overrides=state.get("tuning_overrides", {}))
    tuning = loaded.tuning
    phase = int(state["phase"])
    budget = Budget(
        n_trials=tuning.n_trials,
        gpu_seconds=None if tuning.gpu_hours is None else tuning.gpu_hours * 3600,
        timeout_s=tuning.timeout_s,
        gpus_per_trial=int(state.get("gpus_per_trial", 1)),
    )
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
        ),
        seed=tuning.seed,
        keep_models=int(state.get("keep_models", 1)),
        job_id=job_id,
        max_requeues=int(state.get("max_requeues", 10)),
    )
