"""`python -m hpc cancel`: stop a sweep's jobs and leave a sweep that `make sweep` continues."""

from __future__ import annotations

import fcntl
import getpass
import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path

from hpc import scheduler, tables
from hpc.coordinator import LOCK_FILE
from hpc.finalize import live_jobs, reap_ended_jobs
from hpc.hints import hpc_command
from hpc.storage import create_engine
from hpc.sweep import (
    Storage,
    Sweep,
    SweepRequest,
    close_storage,
    load_started_sweep,
    load_sweep,
    open_storage,
)
from hpc.sweep_state import read_sweep_state, write_json_atomic

logger = logging.getLogger(__name__)

STOP_WAIT_S = 180.0


def cancel(config_path: Path, storage_url: str | None) -> int:
    """Record the cancel, cancel the finalize jobs, then the workers, and reap their trials.

    The cancel is written to `sweep.json` first, so a finalize job that still starts never
    takes the cancelled workers for dead ones and resubmits them.
    """
    request = SweepRequest(config_path=config_path, storage=storage_url)
    sweep = load_started_sweep(request)
    state = read_sweep_state(sweep.paths) or {}
    state["cancel"] = {
        "requested_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "user": getpass.getuser(),
    }
    write_json_atomic(sweep.paths.sweep_file, state)
    sweep = load_sweep(request, use_recorded_overrides=True)

    storage = open_storage(sweep, request, create=False)
    try:
        if state.get("executor") == "slurm":
            stopped = _cancel_slurm_jobs(sweep, storage)
        else:
            stopped = _stop_local_workers(sweep, storage)
        reaped = reap_ended_jobs(sweep, storage)
    finally:
        close_storage(storage, force=True)
    print(f"Sweep {sweep.name} cancelled: {stopped}.")
    if reaped:
        print(f"{reaped} running trials were queued to run again when the sweep continues.")
    print(f"Continue: {hpc_command('sweep', sweep)}")
    return 0


def _cancel_slurm_jobs(sweep: Sweep, storage: Storage) -> str:
    live = live_jobs(sweep, storage)
    if live.finalize:
        # The finalize jobs first: a finalize job must never see the workers end and act.
        scheduler.cancel_jobs(live.finalize)
    workers = sorted({job.split("_")[0] for job in live.workers})
    if workers:
        scheduler.cancel_jobs(workers)
    cancelled = live.finalize + workers
    if not cancelled:
        return "no job was queued or running"
    if not workers:
        logger.warning(
            "The workers had ended: only the finalize job was cancelled, so no report was "
            "written. Run the sweep command again to write it."
        )
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        if not [job for job in scheduler.query_jobs(cancelled) if job.active]:
            break
        time.sleep(2)
    else:
        logger.warning(
            "Jobs %s were still ending after %.0f s; their trials are reaped by the next "
            "'make sweep' or 'make status'.",
            ", ".join(cancelled),
            STOP_WAIT_S,
        )
    return f"cancelled jobs {', '.join(cancelled)} (finalize jobs first)"


def _stop_local_workers(sweep: Sweep, storage: Storage) -> str:
    """Stop a local sweep as Ctrl-C does: interrupt its coordinator, else its workers."""
    coordinator = _coordinator_pid(sweep.paths.root / LOCK_FILE)
    if coordinator is not None:
        os.kill(coordinator, signal.SIGINT)
        _wait_for_exit([coordinator], 120)
        return f"interrupted the coordinator (pid {coordinator}), which stopped its workers"
    engine = create_engine(storage.url, storage.schema)
    try:
        workers = list(tables.live_local_workers(engine, sweep.name).values())
    finally:
        engine.dispose()
    if not workers:
        return "no local worker was running"
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    _wait_for_exit(workers, 60)
    return f"stopped local workers (pids {', '.join(str(pid) for pid in workers)})"


def _coordinator_pid(lock_file: Path) -> int | None:
    """Return the pid of this host's live coordinator that holds the sweep's lock, if any."""
    try:
        words = lock_file.read_text().split()
    except OSError:
        return None
    # The lock file reads "pid <pid> on <host>" while a coordinator holds it.
    if len(words) != 4 or words[0] != "pid" or words[3] != os.uname().nodename:
        return None
    pid = int(words[1])
    if not tables.process_exists(pid) or not _lock_held(lock_file):
        return None
    return pid


def _lock_held(lock_file: Path) -> bool:
    with open(lock_file, encoding="utf-8") as file:
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)
        return False


def _wait_for_exit(pids: list[int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(tables.process_exists(pid) for pid in pids):
        time.sleep(0.5)
