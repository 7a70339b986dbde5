"""Local workers: submitit's local executor, CPU and GPU sharing, and progress."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from typing import Any

import submitit

from hpc.claims import Budget, StudyCounts, best_value, count_trials
from hpc.hints import plural
from hpc.log_context import WORKER_LOG_DIR
from hpc.storage import create_engine
from hpc.sweep import Storage, Sweep
from tuner.private_dirs import make_private_dir
from tuner.training import set_offline_environment

logger = logging.getLogger(__name__)

# Local workers run until their budget is spent; submitit's local default is 2 minutes.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
STOP_TIMEOUT_S = 30.0


def launch(sweep: Sweep) -> list[submitit.Job]:
    """Start `hpc.workers` worker processes on this machine through submitit."""
    from hpc.cli import worker_entry

    folder = make_private_dir(sweep.paths.jobs_dir / "phase1")
    share_cpus(sweep.settings.workers)
    # submitit's local jobs inherit this process's environment, trial processes included.
    set_offline_environment(sweep.settings.offline)
    executor = submitit.LocalExecutor(folder=folder)
    gpus = local_gpu_count()
    jobs = []
    for index in range(sweep.settings.workers):
        parameters: dict[str, Any] = {"timeout_min": LOCAL_TIMEOUT_MIN}
        if gpus:
            parameters.update(gpus_per_node=1, visible_gpus=[index % gpus])
        executor.update_parameters(**parameters)
        jobs.append(executor.submit(worker_entry, str(sweep.paths.root)))
    print(
        f"Started {plural(len(jobs), 'local worker')}; their logs are in "
        f"{sweep.paths.jobs_dir / WORKER_LOG_DIR}"
    )
    return jobs


def share_cpus(workers: int) -> None:
    """Give each local worker its share of the CPUs unless the user set thread counts.

    Measured on 2 cores with the QUAERO example: 2 workers with 2 OpenMP threads each took
    43 s a trial, against 2.5 s with 1 thread each.
    """
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for variable in THREAD_VARIABLES:
        if variable not in os.environ:
            os.environ[variable] = threads
            logger.info("Set %s=%s for each of %d local workers.", variable, threads, workers)


def local_gpu_count() -> int:
    """Count this machine's NVIDIA GPUs with nvidia-smi, without importing torch."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def follow(
    sweep: Sweep, storage: Storage, jobs: list[submitit.Job], interval_s: float = 2.0
) -> None:
    """Show a progress bar of finished trials over the budget until every worker has ended.

    On a terminal the bar is redrawn in place; otherwise a line is printed when it changes.

    Raises:
        KeyboardInterrupt: After stopping the workers, when the user pressed Ctrl-C.
    """
    from hpc.coordinator import budget_of

    engine = create_engine(storage.url, storage.schema)
    budget = budget_of(sweep)
    redraw = sys.stdout.isatty()
    last_line = ""
    try:
        while True:
            done = all(job.done() for job in jobs)
            with engine.connect() as connection:
                counts = count_trials(connection, sweep.study_name)
                best = best_value(connection, sweep.study_name)
            line = progress_line(counts, budget, best)
            if line != last_line:
                if redraw:
                    print(f"\r\033[K{line}", end="", flush=True)
                else:
                    print(line, flush=True)
                last_line = line
            if done:
                break
            time.sleep(interval_s)
    except KeyboardInterrupt:
        stop(jobs)
        raise
    finally:
        if redraw and last_line:
            print(flush=True)
        engine.dispose()
    for job in jobs:
        _check_job(job)


def stop(jobs: list[submitit.Job]) -> None:
    """Cancel the workers and wait until their processes have ended."""
    for job in jobs:
        job.cancel(check=False)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and not all(job.done() for job in jobs):
        time.sleep(0.5)


def progress_line(
    counts: StudyCounts, budget: Budget, best: tuple[int, float] | None, width: int = 24
) -> str:
    """Return one line: a bar of the budget used, finished and running trials, the best value.

    With `n_trials` the bar counts finished trials; with `gpu_hours` the GPU-hours of
    finished trials; with neither, there is no bar.
    """
    if budget.n_trials is not None:
        fraction = counts.finished / budget.n_trials if budget.n_trials else 1.0
        done = f"{counts.finished}/{budget.n_trials} trials"
    elif budget.gpu_seconds is not None:
        used = counts.finished_seconds * budget.gpus_per_trial
        fraction = used / budget.gpu_seconds if budget.gpu_seconds else 1.0
        done = (
            f"{used / 3600:.2f}/{budget.gpu_seconds / 3600:g} GPU-hours, {counts.finished} trials"
        )
    else:
        fraction = None
        done = f"{counts.finished} trials"
    filled = round(width * min(max(fraction or 0.0, 0.0), 1.0))
    bar = "" if fraction is None else f"[{'#' * filled}{'.' * (width - filled)}] "
    best_text = "best -" if best is None else f"best {best[1]:.4g} (trial {best[0]})"
    line = (
        f"{bar}{done} (complete {counts.complete}, pruned {counts.pruned}, failed "
        f"{counts.failed}), {best_text}, running {counts.running}"
    )
    if counts.waiting:
        line += f", waiting {counts.waiting}"
    if counts.retried:
        line += f", retried {counts.retried}"
    return line


def _check_job(job: submitit.Job) -> None:
    try:
        job.result()
    except Exception as error:  # submitit re-raises the worker's exception, or reports a kill
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        logger.error(
            "Worker %s ended with an error or was killed: %s (log: %s). Its running trial, if "
            "any, runs again at the next 'make sweep'.",
            job.job_id,
            first_line,
            job.paths.stderr,
        )
