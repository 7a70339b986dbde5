"""The coordinator of `hpc sweep`: validate, create or continue the sweep, run it, report."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import sqlalchemy

from hpc import local_workers, scheduler, site_fit, slurm_executor, tables
from hpc.claims import Budget, budget_left, count_trials
from hpc.hints import hpc_command, plural
from hpc.log_context import REAPER_LOG, log_file
from hpc.reaper import reap_lost_trials, reap_sweep
from hpc.storage import (
    check_jobs_can_authenticate,
    check_jobs_can_connect,
    create_engine,
    hide_password,
    optuna_storage,
)
from hpc.sweep import (
    Storage,
    Sweep,
    SweepRequest,
    check_storage,
    close_storage,
    create_or_load_study,
    load_sweep,
    open_storage,
    storage_setting,
    write_state,
)
from hpc.sweep_state import write_json_atomic
from tuner.errors import ConfigError, HpcTuneError
from tuner.phases import STOP, phase_budget

logger = logging.getLogger(__name__)

# Rounds of local workers: a round after the first runs the trials of workers that died.
MAX_ROUNDS = 3
LOCK_FILE = "coordinator.lock"
WORKER_STOP_TIMEOUT_S = 10.0


def run_sweep(request: SweepRequest) -> int:
    """Create or continue a sweep, run its workers locally, and write the report."""
    sweep = load_sweep(request)
    executor = choose_executor(sweep.settings.executor)
    new_sweep = sweep.state is None
    if executor == "slurm":
        _check_slurm_storage(sweep, request)
        if new_sweep:
            # Before the pipeline is built: a request over a site limit is cheap to reject.
            sweep = site_fit.fit_sweep(sweep)
    if new_sweep:
        # Checked before anything is created, so a broken config leaves nothing behind.
        _preflight(sweep, request)
    # Also before anything is created: a refused connection leaves no folder behind.
    url = check_storage(sweep, request)
    if executor == "slurm" and url is not None:
        check_jobs_can_authenticate(url)
        check_jobs_can_connect(url)

    sweep.paths.create()
    if executor == "slurm":
        with _coordinator_lock(sweep.paths.root):
            return _submit_to_slurm(sweep, request, preflight_done=new_sweep)
    with _coordinator_lock(sweep.paths.root):
        _clear_cancel(sweep)
        storage = open_storage(sweep, request, create=True)
        try:
            report_dir = _run(sweep, storage, request, preflight_done=new_sweep)
        finally:
            # Local workers have ended: nothing needs the embedded server any more.
            close_storage(storage, force=True)
    print(f"Report: {report_dir}")
    return 0


def _run(sweep: Sweep, storage: Storage, request: SweepRequest, preflight_done: bool) -> Path:
    """Run the phases left: rounds of workers until the phase's budget is spent."""
    from hpc.phases import promote, report_dir

    while True:
        reason = _run_phase(sweep, storage, request, preflight_done)
        preflight_done = True
        if reason is None or not sweep.loaded.tuning.two_phase_tuning or sweep.phase > 1:
            return write_final_report(sweep, storage)
        plan, sweep = promote(sweep, storage, budget_of(sweep).n_trials)
        print(f"Phase 1 is over: {plan.reason}.")
        if plan.decision == STOP:
            return report_dir(sweep, 1)


def _run_phase(
    sweep: Sweep, storage: Storage, request: SweepRequest, preflight_done: bool
) -> str | None:
    """Run rounds of local workers on the sweep's phase; return why it ended, if it did."""
    study = create_or_load_study(sweep, storage)
    write_state(sweep, storage)
    engine = create_engine(storage.url, storage.schema)
    budget = budget_of(sweep)
    reason = None
    try:
        reaped = reap_lost_trials(engine, study, sweep.name, max_retries=sweep.settings.max_retries)
        if reaped:
            print(f"{reaped} trials left running by ended workers run again first.")
        print(f"Sweep {sweep.name}: study {sweep.study_name} in {hide_password(storage.url)}")
        print(f"Checkpoint directory: {sweep.paths.root}")

        for round_number in range(1, MAX_ROUNDS + 1):
            reason = _stop_reason(engine, sweep, budget)
            if reason is not None:
                print(f"Nothing left to run: {reason}.")
                break
            if not preflight_done:
                _preflight(sweep, request)
                preflight_done = True
            if round_number > 1:
                print(f"Starting workers again for the trials left (round {round_number}).")
            _run_round(sweep, storage, engine, study)
        else:
            reason = _stop_reason(engine, sweep, budget)
    finally:
        engine.dispose()
    return reason


def _run_round(
    sweep: Sweep, storage: Storage, engine: sqlalchemy.Engine, study: optuna.Study
) -> None:
    jobs = local_workers.launch(sweep)
    try:
        local_workers.follow(sweep, storage, jobs)
    except KeyboardInterrupt:
        _end_local_workers(engine, sweep)
        with log_file(sweep.paths.jobs_dir / REAPER_LOG):
            reap_lost_trials(
                engine,
                study,
                sweep.name,
                max_retries=sweep.settings.max_retries,
                stopped_by_user=True,
            )
        # Stopped workers queue their own trials again; the reaper queues those of killed ones.
        with engine.connect() as connection:
            waiting = count_trials(connection, sweep.study_name).waiting
        print(
            f"Interrupted: workers stopped, {plural(waiting, 'trial')} queued to run again "
            f"first. Continue with: {hpc_command('sweep', sweep)}",
            flush=True,
        )
        raise
    with log_file(sweep.paths.jobs_dir / REAPER_LOG):
        reaped = reap_lost_trials(engine, study, sweep.name, max_retries=sweep.settings.max_retries)
    if reaped:
        logger.warning("%d trials were left running by workers that ended.", reaped)


def _end_local_workers(engine: sqlalchemy.Engine, sweep: Sweep) -> None:
    """Terminate this sweep's worker processes that outlived their submitit controller."""
    workers = tables.live_local_workers(engine, sweep.name)
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            workers = tables.live_local_workers(engine, sweep.name)
            if not workers:
                return
            time.sleep(0.2)


def budget_of(sweep: Sweep) -> Budget:
    """Return the budget of the sweep's current phase."""
    tuning = sweep.loaded.tuning
    share = phase_budget(
        tuning.n_trials, tuning.gpu_hours, tuning.timeout_s, tuning.two_phase_tuning, sweep.phase
    )
    return Budget(
        n_trials=share.n_trials,
        gpu_seconds=None if share.gpu_hours is None else share.gpu_hours * 3600,
        timeout_s=share.timeout_s,
        gpus_per_trial=sweep.gpus_per_trial,
    )


def _stop_reason(engine: sqlalchemy.Engine, sweep: Sweep, budget: Budget) -> str | None:
    with engine.connect() as connection:
        counts = count_trials(connection, sweep.study_name)
    if counts.running:
        return None
    if tables.space_exhausted(engine, sweep.name, sweep.phase):
        return f"{tables.SPACE_EXHAUSTED} ({counts.finished} trials finished)"
    return budget_left(counts, budget)


def write_final_report(sweep: Sweep, storage: Storage) -> Path:
    """Write the report of the sweep's current phase into `tuning.output_dir`.

    In phase 2, when phase 1's best value stays better, the report states it and its
    `config.yml` holds phase 1's best values.
    """
    from hpc.phases import phase_one_stays_best, report_context, report_dir
    from tuner.best_config import write_text_atomically
    from tuner.report import SUMMARY_NAME, write_report

    study = optuna.load_study(
        study_name=sweep.study_name,
        storage=optuna_storage(storage.url, storage.schema, create_tables=False),
    )
    tuning = sweep.loaded.tuning
    folder = report_dir(sweep)
    context = report_context(sweep, storage, budget_of(sweep).n_trials)
    written = write_report(study, folder, sweep.loaded.path, tuning.hyperparameters, context)
    if sweep.phase > 1:
        note = phase_one_stays_best(sweep, storage)
        first_config = report_dir(sweep, 1) / "config.yml"
        if note is not None and first_config.is_file():
            logger.warning(note)
            summary = written / SUMMARY_NAME
            write_text_atomically(summary, f"{summary.read_text()}\n{note}\n")
            write_text_atomically(written / "config.yml", f"# {note}\n{first_config.read_text()}")
    return written


def choose_executor(setting: str) -> str:
    """Resolve `hpc.executor`: `auto` uses Slurm only when a controller responds.

    An installed `sbatch` alone is not enough: login nodes of other clusters and CI machines
    have the client without a reachable controller.
    """
    if setting != "auto":
        if setting == "slurm" and not scheduler.controller_answers():
            raise ConfigError(
                "hpc.executor: 'slurm', but no Slurm controller responds to 'scontrol ping' from "
                "this machine. Run the command on a login node of the cluster, or use 'local'."
            )
        return setting
    executor = "slurm" if scheduler.controller_answers() else "local"
    logger.info("hpc.executor auto: %s.", executor)
    return executor


def _check_slurm_storage(sweep: Sweep, request: SweepRequest) -> None:
    url, _ = storage_setting(request, sweep.settings)
    recorded = (sweep.state or {}).get("storage_url")
    if url is None and recorded is None:
        raise ConfigError(
            "hpc.storage: Slurm workers need a PostgreSQL server that every node reaches. Set "
            "hpc.storage (or --storage) to postgresql+psycopg2://USER@HOST[:PORT]/DATABASE, or to "
            "'embedded' on a single-node cluster where every job runs on this host."
        )


def _submit_to_slurm(sweep: Sweep, request: SweepRequest, preflight_done: bool) -> int:
    active = slurm_executor.active_jobs(sweep)
    if active:
        print(f"Sweep {sweep.name} is running: jobs {', '.join(active)} are queued or running.")
        print("Nothing submitted: the running jobs go on with the same study and budget.")
        print(f"Follow:   {hpc_command('status', sweep)}")
        print(f"More:     sbatch {slurm_executor.sbatch_dir(sweep) / 'worker.sbatch'}")
        return 0
    if not preflight_done:
        sweep = site_fit.fit_sweep(sweep)
    _clear_cancel(sweep)
    # Rendered and checked by sbatch --test-only before the study exists, so a wrong
    # partition or resource request leaves nothing behind.
    slurm_executor.render_scripts(sweep, Path.cwd())
    slurm_executor.test_scripts(sweep)

    storage = open_storage(sweep, request, create=True)
    study = create_or_load_study(sweep, storage)
    write_state(sweep, storage, executor="slurm")

    engine = create_engine(storage.url, storage.schema)
    try:
        reaped = reap_sweep(engine, study, sweep, jobs_ended=True)
        if reaped:
            print(f"{reaped} trials left running by ended jobs run again first.")
        reason = _stop_reason(engine, sweep, budget_of(sweep))
    finally:
        engine.dispose()
    if reason is not None:
        print(f"Nothing left to run: {reason}.")
        print(f"Report: {write_final_report(sweep, storage)}")
        close_storage(storage)
        return 0

    if not preflight_done:
        _preflight(sweep, request)
    submission = slurm_executor.submit(sweep)
    logger.info("Study %s has %d trials.", study.study_name, len(study.trials))
    slurm_executor.print_submission(sweep, submission)
    # The embedded server, if any, keeps running for the jobs; the finalize job stops it.
    return 0


def _clear_cancel(sweep: Sweep) -> None:
    """Continue a cancelled sweep: forget the cancel and the supervisor's resubmissions."""
    state = sweep.state or {}
    if not state.get("cancel") and not state.get("supervisor_resubmits"):
        return
    if state.get("cancel"):
        print(
            f"Sweep {sweep.name} was cancelled at {state['cancel']['requested_at']}: continuing it."
        )
    state.pop("cancel", None)
    state.pop("supervisor_resubmits", None)
    write_json_atomic(sweep.paths.sweep_file, state)


def _preflight(sweep: Sweep, request: SweepRequest) -> None:
    if request.skip_preflight or sweep.settings.objective != "edsnlp":
        return
    from tuner.preflight import preflight

    started = time.monotonic()
    tuning = sweep.loaded.tuning
    preflight(
        sweep.loaded.config,
        tuning.hyperparameters,
        tuning.metric_parts,
        sweep.loaded.path,
        offline=sweep.settings.offline,
    )
    logger.info("Preflight passed in %.1f s.", time.monotonic() - started)


@contextmanager
def _coordinator_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock so that one `hpc sweep` at a time runs a given sweep."""
    path = root / LOCK_FILE
    with open(path, "a+", encoding="utf-8") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            raise HpcTuneError(
                f"Another 'hpc sweep' runs this sweep ({holder}). Wait for it to end, or follow "
                "it with 'make status'."
            ) from None
        file.seek(0)
        file.truncate()
        file.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        file.flush()
        yield
