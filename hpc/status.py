"""`python -m hpc status`: one screen about a sweep, or the same data as JSON.

The data is collected once (`collect_status`) and rendered as text
(`hpc.status_screen.render_status`) or printed as JSON (schema in docs/status.schema.json).
Its database cost does not grow with the number of trials: one aggregate count, one query
for silent trials, and Optuna's best-trial lookup per phase.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna

from hpc import scheduler, tables
from hpc.claims import StudyCounts, budget_left
from hpc.coordinator import budget_of
from hpc.hints import hpc_command
from hpc.reaper import reap_sweep, silent_trials
from hpc.scheduler import JobState, SchedulerError
from hpc.status_screen import render_status
from hpc.storage import create_engine, hide_password, optuna_storage
from hpc.sweep import (
    Storage,
    Sweep,
    SweepRequest,
    close_storage,
    count_sweep_trials,
    load_started_sweep,
    open_storage,
)
from hpc.sweep_state import study_name
from tuner.phases import phase_budget
from tuner.space import user_values

SCHEMA_VERSION = 1
DEFAULT_WATCH_S = 30.0
# Reasons of pending jobs that need the user; `{job}` is the job or array task id.
HELD_HINTS = {
    "launch failed requeued held": (
        "the job failed to start on its node and Slurm held it; once the node is fixed, "
        "release it: scontrol release {job}"
    ),
    "JobHeldUser": "held by a user: scontrol release {job}",
    "JobHeldAdmin": "held by an administrator: ask them to run scontrol release {job}",
    "DependencyNeverSatisfied": (
        "its dependency can no longer be met: scancel {job}, then run the sweep command again"
    ),
    "PartitionTimeLimit": (
        "its time limit exceeds the partition's: lower hpc.slurm.time_min, then "
        "'scancel {job}' and run the sweep command again"
    ),
    "BadConstraints": "no node can satisfy it: check hpc.slurm against 'sinfo'",
}
HELD_STATES = {"REQUEUE_HOLD": "held after a requeue: scontrol release {job}"}


@dataclass(frozen=True)
class JobLine:
    """One record of the sweep's jobs: a job, an array task or a group of pending tasks."""

    job: JobState
    role: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.job.display_id,
            "role": self.role,
            "state": self.job.state,
            "reason": self.job.reason,
            "hint": job_hint(self.job),
        }


def job_hint(job: JobState) -> str | None:
    """Return what the user can do about a job stuck in a held or impossible state."""
    template = HELD_STATES.get(job.state)
    if template is None and job.reason is not None:
        template = HELD_HINTS.get(job.reason)
    return None if template is None else template.format(job=job.display_id)


def print_status(
    config_path: Path,
    storage_url: str | None,
    as_json: bool = False,
    watch_s: float | None = None,
) -> int:
    """Print the status of the sweep of `config_path`, once or every `watch_s` seconds."""
    request = SweepRequest(config_path=config_path, storage=storage_url)
    sweep = load_started_sweep(request)
    storage = open_storage(sweep, request, create=False)
    try:
        while True:
            # Read sweep.json again: the phase, submissions and cancel change during a sweep.
            sweep = load_started_sweep(request)
            data = collect_status(sweep, storage)
            if as_json:
                # Watching prints JSON Lines: one document per line, one line per refresh.
                text = json.dumps(data) if watch_s is not None else json.dumps(data, indent=2)
            else:
                text = render_status(data)
            if watch_s is not None and not as_json and sys.stdout.isatty():
                print("\033[H\033[2J", end="")
            print(text, flush=True)
            if watch_s is None:
                return 0
            time.sleep(watch_s)
    except KeyboardInterrupt:
        return 0
    finally:
        close_storage(storage)


def collect_status(sweep: Sweep, storage: Storage, reap: bool = True) -> dict[str, Any]:
    """Gather the status of a sweep as plain data, the content of `status --json`.

    Args:
        reap: Reap stale trials first, as workers and the finalize job do, so that a sweep
            whose workers all died is cleaned up by looking at it.
    """
    engine = create_engine(storage.url, storage.schema)
    try:
        rdb = optuna_storage(storage.url, storage.schema, create_tables=False)
        study = optuna.load_study(study_name=sweep.study_name, storage=rdb)
        reaped = reap_sweep(engine, study, sweep) if reap else 0
        silent = silent_trials(engine, sweep.study_name, sweep.settings.heartbeat_grace_s)
        counts = count_sweep_trials(sweep, storage)
        exhausted = tables.space_exhausted(engine, sweep.name, sweep.phase)
        jobs, jobs_note = _jobs(sweep, engine)
    finally:
        engine.dispose()

    state = sweep.state or {}
    budget = _budget(sweep, counts, _worker_count(counts, jobs))
    best = _best(sweep, rdb)
    sweep_state = _sweep_state(sweep, counts, jobs, budget, exhausted)
    return {
        "schema_version": SCHEMA_VERSION,
        "time": datetime.now().astimezone().isoformat(timespec="seconds"),
        "sweep": {
            "name": sweep.name,
            "state": sweep_state,
            "executor": state.get("executor", "local"),
            "study": sweep.study_name,
            "storage": hide_password(storage.url),
            "checkpoint_dir": str(sweep.paths.root),
            "cancelled_at": (state.get("cancel") or {}).get("requested_at"),
        },
        "phase": {
            "current": sweep.phase,
            "phases": 2 if sweep.loaded.tuning.two_phase_tuning else 1,
            "plan": sweep.phase_plan.get("reason"),
        },
        "trials": {
            "complete": counts.complete,
            "pruned": counts.pruned,
            "failed": counts.failed,
            "running": counts.running,
            "waiting": counts.waiting,
            "retried": counts.retried,
            "finished": counts.finished,
        },
        "best": best,
        "budget": budget,
        "jobs": [line.as_dict() for line in jobs],
        "jobs_note": jobs_note,
        "stale": {
            "reaped": reaped,
            "silent": [
                {"trial": trial.number, "job": trial.job_id, "silent_s": round(trial.silent_s)}
                for trial in silent
            ],
            "grace_s": sweep.settings.heartbeat_grace_s,
        },
        "next": _next_step(sweep, sweep_state),
    }


def _next_step(sweep: Sweep, sweep_state: str) -> str | None:
    """Return the command that continues a cancelled or stopped sweep, or None."""
    if sweep_state not in ("cancelled", "stopped"):
        return None
    command = hpc_command("sweep", sweep)
    if sweep_state == "cancelled":
        return f"{command}  (continues the sweep with the budget left)"
    if (sweep.state or {}).get("executor") == "slurm":
        return (
            f"{command}  (no job runs and budget is left; "
            f"{hpc_command('resubmit', sweep)} submits workers without the config checks)"
        )
    return f"{command}  (no worker runs and budget is left)"


def _jobs(sweep: Sweep, engine: Any) -> tuple[list[JobLine], str | None]:
    """List the sweep's Slurm jobs, or its local worker processes."""
    state = sweep.state or {}
    if state.get("executor") != "slurm":
        local = tables.live_local_workers(engine, sweep.name)
        return [
            JobLine(JobState(f"{pid}", None, "RUNNING", None, None), f"local worker {worker}")
            for worker, pid in sorted(local.items())
        ], None
    submissions = state.get("submissions", [])
    roles = {}
    for entry in submissions:
        if entry.get("workers"):
            roles[str(entry["workers"])] = "workers"
        if entry.get("finalize"):
            roles[str(entry["finalize"])] = "finalize"
    for job in tables.unfinished_workers_with_jobs(engine, sweep.name).values():
        if job:
            roles.setdefault(job.split("_")[0], "workers (submitted by hand)")
    if not roles:
        return [], None
    try:
        records, note = scheduler.job_overview(sorted(roles, key=int))
    except SchedulerError as error:
        return [], f"Slurm did not answer: {error}"
    lines = [JobLine(job, roles.get(job.job_id, "workers")) for job in records]
    lines.sort(key=lambda line: (int(line.job.job_id), _task_key(line.job.array_task_id)))
    return lines, note


def _task_key(task: str | None) -> tuple[int, str]:
    if task is None:
        return (-1, "")
    return (int(task), "") if task.isdigit() else (1 << 30, task)


def _worker_count(counts: StudyCounts, jobs: list[JobLine]) -> int:
    """Count the workers running now: running trials, or running worker jobs if more."""
    running_jobs = sum(
        1
        for line in jobs
        if line.role.startswith(("workers", "local")) and line.job.state == "RUNNING"
    )
    return max(counts.running, running_jobs)


def _budget(sweep: Sweep, counts: StudyCounts, workers: int) -> dict[str, Any]:
    """Budget of the current phase: used, left, and an estimate of the time to finish it."""
    tuning = sweep.loaded.tuning
    share = phase_budget(
        tuning.n_trials, tuning.gpu_hours, tuning.timeout_s, tuning.two_phase_tuning, sweep.phase
    )
    mean = counts.mean_trial_s
    spent = budget_left(counts, budget_of(sweep))
    result: dict[str, Any] = {
        "unit": None,
        "total": None,
        "used": None,
        "left": None,
        "spent": spent,
        "mean_trial_s": None if mean is None else round(mean, 1),
        "workers": workers,
        "eta_s": None,
    }
    if share.n_trials is not None:
        left = max(share.n_trials - counts.finished, 0)
        result.update(unit="trials", total=share.n_trials, used=counts.finished, left=left)
        if mean is not None and workers and left:
            result["eta_s"] = round(math.ceil(left / workers) * mean)
    elif share.gpu_hours is not None:
        gpus = sweep.gpus_per_trial
        used_h = counts.finished_seconds * gpus / 3600
        left_h = max(share.gpu_hours - used_h, 0.0)
        result.update(
            unit="gpu_hours", total=share.gpu_hours, used=round(used_h, 4), left=round(left_h, 4)
        )
        if spent is not None:
            # No new trial fits: what is left is the running trials' end.
            result["eta_s"] = round(mean) if mean is not None and counts.running else None
        elif workers and left_h:
            result["eta_s"] = round(left_h * 3600 / gpus / workers)
    return result


def _best(sweep: Sweep, rdb: optuna.storages.RDBStorage) -> dict[str, Any] | None:
    """Return the best complete trial over the sweep's phases, with its user-facing values.

    Phase 1's best stays the sweep's best when phase 2 does not beat it.
    """
    found: list[tuple[float, int, optuna.trial.FrozenTrial]] = []
    for phase in range(1, sweep.phase + 1):
        try:
            study_id = rdb.get_study_id_from_name(study_name(sweep.name, phase))
            trial = rdb.get_best_trial(study_id)
        except (KeyError, ValueError):
            continue  # no such study, or no complete trial in it
        if trial.value is not None:
            found.append((trial.value, phase, trial))
    if not found:
        return None
    # Studies maximize the metric (EDS-NLP's scores are higher-is-better).
    value, phase, trial = max(found, key=lambda item: item[0])
    params = user_values(trial.params, sweep.loaded.tuning.hyperparameters)
    return {
        "value": value,
        "trial": trial.number,
        "phase": phase,
        "metric": list(sweep.loaded.tuning.metric),
        "params": {key: _plain(item) for key, item in params.items()},
    }


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _sweep_state(
    sweep: Sweep, counts: StudyCounts, jobs: list[JobLine], budget: dict[str, Any], exhausted: bool
) -> str:
    """Return one word for the sweep: running, queued, finishing, finished, cancelled, stopped."""
    done = (budget["spent"] is not None and not budget["left"]) or exhausted
    active = [line for line in jobs if line.job.active]
    if counts.running or any(line.job.state == "RUNNING" for line in active):
        return "running"
    if active and all(line.role == "finalize" for line in active):
        return "finishing" if done else "queued"
    if active:
        return "queued"
    if done:
        return "finished"
    if (sweep.state or {}).get("cancel"):
        return "cancelled"
    return "stopped"
