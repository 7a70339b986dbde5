"""`python -m hpc finalize` and `resubmit`: what runs after the workers of a Slurm sweep."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from hpc import scheduler, site_fit, slurm_executor, tables
from hpc.claims import advisory_key, budget_left
from hpc.coordinator import budget_of, write_final_report
from hpc.hints import hpc_command
from hpc.reaper import reap_sweep
from hpc.storage import create_engine, optuna_storage
from hpc.sweep import (
    Storage,
    Sweep,
    SweepRequest,
    close_storage,
    count_sweep_trials,
    load_sweep,
    open_storage,
)
from hpc.sweep_state import SweepPaths, read_sweep_state, write_json_atomic
from tuner.errors import HpcTuneError
from tuner.phases import STOP

logger = logging.getLogger(__name__)


def finalize(sweep_dir: Path) -> int:
    """Supervise the sweep after its workers: reap, then resubmit, follow, or report.

    It runs after every task of the worker array, whatever their exit status, and holds a
    database lock of the sweep, so two finalize jobs running at once do the work once.
    """
    sweep = _sweep_from_dir(sweep_dir)
    storage = open_storage(sweep, SweepRequest(config_path=sweep.loaded.path), create=False)
    stop_server = False
    try:
        with finalize_lock(storage, sweep.name):
            # Read again under the lock: another finalize job may have submitted jobs.
            sweep = _sweep_from_dir(sweep_dir)
            reap_ended_jobs(sweep, storage)
            stop_server = _supervise(sweep, storage)
    finally:
        # The last job of the sweep stops the embedded server it used, unless jobs still
        # need it.
        close_storage(storage, force=storage.server is not None and stop_server)
    return 0


def _supervise(sweep: Sweep, storage: Storage) -> bool:
    """Decide what follows the workers; return whether no job of the sweep needs the server."""
    state = sweep.state or {}
    counts = count_sweep_trials(sweep, storage)
    reason = budget_left(counts, budget_of(sweep))
    if reason is None and _space_exhausted(sweep, storage):
        reason = f"{tables.SPACE_EXHAUSTED} ({counts.finished} trials finished)"
    live = live_jobs(sweep, storage)
    own = os.environ.get("SLURM_JOB_ID")
    other_finalize = [job for job in live.finalize if job != own]
    if state.get("cancel"):
        logger.warning(
            "The sweep was cancelled (%s): nothing is resubmitted. Continue it with '%s'.",
            state["cancel"].get("requested_at", "time unknown"),
            hpc_command("sweep", sweep),
        )
        _report_if_possible(sweep, storage)
        return not live.workers
    if live.workers:
        if other_finalize:
            logger.info(
                "Workers %s still run and finalize job %s follows them: nothing to do here.",
                ", ".join(live.workers),
                ", ".join(other_finalize),
            )
            return False
        follow = slurm_executor.submit_finalize(sweep, live.workers)
        logger.info(
            "Workers %s still run: finalize job %s follows them.", ", ".join(live.workers), follow
        )
        return False
    if reason is None:
        return _resubmit_dead_workers(sweep, storage, counts.finished)
    logger.info("Budget spent: %s.", reason)
    if sweep.loaded.tuning.two_phase_tuning and sweep.phase == 1:
        return _start_phase_two(sweep, storage)
    report_dir = write_final_report(sweep, storage)
    logger.info("Report written to %s", report_dir)
    print(f"Report: {report_dir}")
    return not live.workers and not other_finalize


def _start_phase_two(sweep: Sweep, storage: Storage) -> bool:
    """Promote the sweep to phase 2 and submit its workers and finalize job."""
    from hpc.phases import promote

    plan, sweep = promote(sweep, storage, budget_of(sweep).n_trials)
    if plan.decision == STOP:
        logger.warning("The sweep ends after phase 1: %s.", plan.reason)
        return True
    sweep = site_fit.fit_sweep(sweep)
    slurm_executor.render_scripts(sweep, Path((sweep.state or {})["working_dir"]))
    submission = slurm_executor.submit(sweep)
    logger.info(
        "Phase 2 submitted: workers %s, finalize job %s.",
        submission.array_job_id,
        submission.finalize_job_id,
    )
    return False


def _resubmit_dead_workers(sweep: Sweep, storage: Storage, finished: int) -> bool:
    state = sweep.state or {}
    done = int(state.get("supervisor_resubmits", 0))
    limit = sweep.settings.max_resubmits
    if done >= limit:
        logger.error(
            "Budget left (%d trials finished) but no worker runs, and the workers were "
            "resubmitted %d times already (hpc.max_resubmits=%d). Read the workers' logs in %s, "
            "fix the cause, then run '%s'.",
            finished,
            done,
            limit,
            sweep.paths.jobs_dir / "slurm",
            hpc_command("resubmit", sweep),
        )
        _report_if_possible(sweep, storage)
        return True
    sweep = site_fit.fit_sweep(sweep)
    slurm_executor.render_scripts(sweep, Path(state["working_dir"]))
    submission = slurm_executor.submit(sweep)
    _record_resubmit(sweep, done + 1)
    logger.warning(
        "Budget left (%d trials finished) but no worker runs: resubmitted workers %s and "
        "finalize job %s (resubmission %d of at most %d).",
        finished,
        submission.array_job_id,
        submission.finalize_job_id,
        done + 1,
        limit,
    )
    return False


def _record_resubmit(sweep: Sweep, count: int) -> None:
    state = read_sweep_state(sweep.paths) or {}
    state["supervisor_resubmits"] = count
    write_json_atomic(sweep.paths.sweep_file, state)


def _report_if_possible(sweep: Sweep, storage: Storage) -> None:
    try:
        report_dir = write_final_report(sweep, storage)
    except HpcTuneError as error:
        logger.warning("No report written: %s", error)
        return
    logger.info("Report of the trials so far written to %s", report_dir)


def _space_exhausted(sweep: Sweep, storage: Storage) -> bool:
    engine = create_engine(storage.url, storage.schema)
    try:
        return tables.space_exhausted(engine, sweep.name, sweep.phase)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class LiveJobs:
    """Jobs of the sweep that Slurm lists as pending or running."""

    workers: list[str]
    finalize: list[str]


def live_jobs(sweep: Sweep, storage: Storage) -> LiveJobs:
    """Ask Slurm which recorded and hand-submitted jobs of the sweep are still active."""
    state = sweep.state or {}
    submissions = state.get("submissions", [])
    finalize_ids = {entry["finalize"] for entry in submissions if entry.get("finalize")}
    worker_ids = {entry["workers"] for entry in submissions if entry.get("workers")}
    engine = create_engine(storage.url, storage.schema)
    try:
        hand = tables.unfinished_workers_with_jobs(engine, sweep.name)
    finally:
        engine.dispose()
    worker_ids |= {job.split("_")[0] for job in hand.values() if job}
    ids = sorted(finalize_ids | worker_ids)
    if not ids:
        return LiveJobs([], [])
    active = scheduler.active_jobs(ids)
    return LiveJobs(
        workers=sorted({job.display_id for job in active if job.job_id not in finalize_ids}),
        finalize=sorted({job.job_id for job in active if job.job_id in finalize_ids}),
    )


@contextmanager
def finalize_lock(storage: Storage, sweep_name: str) -> Iterator[None]:
    """Hold a PostgreSQL advisory lock of the sweep's finalize work, waiting for it if needed."""
    engine = create_engine(storage.url, storage.schema)
    key = advisory_key(f"finalize {sweep_name}")
    try:
        with engine.connect() as connection:
            locked = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": key}
            ).scalar_one()
            if not locked:
                logger.info("Another finalize job of sweep %s runs: waiting for it.", sweep_name)
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


def resubmit(config_path: Path, storage_url: str | None) -> int:
    """Render the scripts again and submit workers plus a finalize job for an existing sweep."""
    request = SweepRequest(config_path=config_path, storage=storage_url)
    sweep = load_sweep(request, use_recorded_overrides=True)
    if sweep.state is None:
        raise HpcTuneError(f"No sweep found in {sweep.paths.root}: start it with 'make sweep'.")
    if sweep.state.get("executor") != "slurm":
        raise HpcTuneError(
            f"Sweep {sweep.name} runs local workers: resubmit is for Slurm sweeps. Continue it "
            f"with '{hpc_command('sweep', sweep)}'."
        )
    if not scheduler.controller_answers():
        raise HpcTuneError(
            "No Slurm controller responds to 'scontrol ping' from this machine: run resubmit on a "
            "login node of the cluster."
        )
    slurm_executor.reject_if_jobs_active(sweep)
    working_dir = Path(sweep.state["working_dir"])
    sweep = site_fit.fit_sweep(sweep)
    slurm_executor.render_scripts(sweep, working_dir)
    slurm_executor.test_scripts(sweep)
    storage = open_storage(sweep, request, create=False)
    try:
        reap_ended_jobs(sweep, storage)
        reason = _budget_reason(sweep, storage)
    finally:
        close_storage(storage)
    if reason is not None:
        print(
            f"Nothing left to run: {reason}. Rebuild the report with "
            f"'{hpc_command('report', sweep)}'."
        )
        return 0
    submission = slurm_executor.submit(sweep)
    slurm_executor.print_submission(sweep, submission)
    return 0


def _budget_reason(sweep: Sweep, storage: Storage) -> str | None:
    counts = count_sweep_trials(sweep, storage)
    if counts.running:
        return None
    return budget_left(counts, budget_of(sweep))


def _sweep_from_dir(sweep_dir: Path) -> Sweep:
    paths = SweepPaths(Path(sweep_dir).resolve())
    state = read_sweep_state(paths)
    if state is None:
        raise HpcTuneError(f"No sweep.json in {paths.root}: start the sweep with 'make sweep'.")
    os.chdir(state["working_dir"])
    return load_sweep(
        SweepRequest(config_path=Path(state["config_path"])), use_recorded_overrides=True
    )


def reap_ended_jobs(sweep: Sweep, storage: Storage) -> int:
    """Reap the trials of the sweep's ended jobs and dead local workers; return how many."""
    import optuna

    engine = create_engine(storage.url, storage.schema)
    try:
        study = optuna.load_study(
            study_name=sweep.study_name,
            storage=optuna_storage(storage.url, storage.schema, create_tables=False),
        )
        # The workers' jobs have ended when this runs (or are checked one by one with Slurm).
        reaped = reap_sweep(engine, study, sweep, jobs_ended=True)
        if reaped:
            logger.warning(
                "%d trials were left running by ended jobs; they run again first.", reaped
            )
        return reaped
    finally:
        engine.dispose()
