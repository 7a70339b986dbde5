"""`python -m hpc finalize` and `resubmit`: what runs after the workers of a Slurm sweep."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hpc import scheduler, slurm_executor, tables
from hpc.claims import budget_left
from hpc.coordinator import budget_of, write_final_report
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
from hpc.sweep_state import SweepPaths, read_sweep_state
from tuner.errors import HpcTuneError

logger = logging.getLogger(__name__)


def finalize(sweep_dir: Path) -> int:
    """Reap trials of ended workers, write the report, stop the embedded server.

    It runs after every task of the worker array, whatever their exit status.
    """
    sweep = _sweep_from_dir(sweep_dir)
    storage = open_storage(sweep, SweepRequest(config_path=sweep.loaded.path), create=False)
    try:
        _reap_ended_jobs(sweep, storage)
        counts = count_sweep_trials(sweep, storage)
        reason = budget_left(counts, budget_of(sweep))
        if reason is None and not counts.running:
            logger.warning(
                "Budget left (%d finished, %d waiting) but no worker runs. Continue with: "
                "make resubmit CONFIG=%s",
                counts.finished,
                counts.waiting,
                sweep.loaded.path,
            )
        report_dir = write_final_report(sweep, storage)
        logger.info("Report written to %s", report_dir)
        print(f"Report: {report_dir}")
    finally:
        # The last job of the sweep stops the embedded server it used, unless workers added
        # by hand still run.
        close_storage(
            storage, force=storage.server is not None and not _workers_active(sweep, storage)
        )
    return 0


def resubmit(config_path: Path, storage_url: str | None) -> int:
    """Render the scripts again and submit workers plus a finalize job for an existing sweep."""
    request = SweepRequest(config_path=config_path, storage=storage_url)
    sweep = load_sweep(request, use_recorded_overrides=True)
    if sweep.state is None:
        raise HpcTuneError(f"No sweep found in {sweep.paths.root}: start it with 'make sweep'.")
    if not scheduler.controller_answers():
        raise HpcTuneError(
            "No Slurm controller responds to 'scontrol ping' from this machine: run resubmit on a "
            "login node of the cluster."
        )
    slurm_executor.reject_if_jobs_active(sweep)
    slurm_executor.render_scripts(sweep, Path(sweep.state["working_dir"]))
    slurm_executor.test_scripts(sweep)
    storage = open_storage(sweep, request, create=False)
    try:
        _reap_ended_jobs(sweep, storage)
        reason = _budget_reason(sweep, storage)
    finally:
        close_storage(storage)
    if reason is not None:
        print(f"Nothing left to run: {reason}. Rebuild the report with 'make report'.")
        return 0
    submission = slurm_executor.submit(sweep)
    slurm_executor.print_submission(sweep, submission)
    return 0


def _budget_reason(sweep: Sweep, storage: Storage) -> str | None:
    counts = count_sweep_trials(sweep, storage)
    if counts.running:
        return None
    return budget_left(counts, budget_of(sweep))


def _workers_active(sweep: Sweep, storage: Storage) -> bool:
    engine = create_engine(storage.url, storage.schema)
    try:
        workers = tables.unfinished_workers_with_jobs(engine, sweep.name)
    finally:
        engine.dispose()
    job_ids = sorted({job for job in workers.values() if job})
    if not job_ids:
        return False
    active = [state for state in scheduler.query_jobs(job_ids) if state.active]
    if active:
        logger.warning(
            "Workers %s still run: the embedded PostgreSQL server stays up for them.",
            ", ".join(state.display_id for state in active),
        )
    return bool(active)


def _sweep_from_dir(sweep_dir: Path) -> Sweep:
    paths = SweepPaths(Path(sweep_dir).resolve())
    state = read_sweep_state(paths)
    if state is None:
        raise HpcTuneError(f"No sweep.json in {paths.root}: start the sweep with 'make sweep'.")
    os.chdir(state["working_dir"])
    return load_sweep(
        SweepRequest(config_path=Path(state["config_path"])), use_recorded_overrides=True
    )


def _reap_ended_jobs(sweep: Sweep, storage: Storage) -> None:
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
    finally:
        engine.dispose()
