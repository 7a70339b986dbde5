"""The worker's signal handling: a pre-timeout or preemption signal stops the trial and requeues.

Slurm sends the `--signal` (SIGUSR2) before a time-limit kill, and SIGTERM on preemption or
`scancel`. The worker records the first signal only, so a signal delivered twice requeues once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from hpc import scheduler
from hpc.sweep_state import read_json, write_json_atomic

logger = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


@dataclass
class StopRequest:
    """The first stop signal the worker received, if any."""

    signum: int | None = None
    received_at: float | None = None
    names: list[str] = field(default_factory=list)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "none"

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.names.append(signal.Signals(signum).name)
        if self.signum is None:
            self.signum = signum
            self.received_at = time.monotonic()


def install(stop: StopRequest) -> None:
    """Replace any earlier handler (submitit's included) of SIGUSR2 and SIGTERM."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, stop.handle)


@dataclass(frozen=True)
class JobState:
    """A Slurm job's own record in `<checkpoint>/jobs/state/<job id>.json`.

    Attributes:
        job_id: The Slurm job id of this worker (`<array>_<task>` for array tasks).
        requeues: How many times the worker requeued its job; counted by hpc-tune, not by
            submitit or Slurm, so a hand-submitted job starts at 0.
    """

    job_id: str
    requeues: int = 0


def state_path(jobs_dir: Path, job_id: str) -> Path:
    return jobs_dir / "state" / f"{job_id}.json"


def load_job_state(jobs_dir: Path, job_id: str) -> JobState:
    data = read_json(state_path(jobs_dir, job_id)) or {}
    return JobState(job_id=job_id, requeues=int(data.get("requeues", 0)))


def requeue_or_exit(
    stop: StopRequest, jobs_dir: Path, job_id: str | None, max_requeues: int
) -> str:
    """Requeue the Slurm job after a pre-timeout signal, within `max_requeues`.

    SIGTERM alone may be a user's `scancel`, and with `PreemptMode=REQUEUE` Slurm requeues a
    preempted job itself, so only SIGUSR2 requeues here.

    Returns:
        The reason the worker stops, for its log and its row in the database.
    """
    if stop.signum != signal.SIGUSR2 or job_id is None:
        return f"stopped by {stop.name}"
    return requeue_job(jobs_dir, job_id, max_requeues, f"after {stop.name}")


def requeue_job(jobs_dir: Path, job_id: str | None, max_requeues: int, why: str) -> str:
    """Requeue this worker's Slurm job within `max_requeues`; record it in the job's state.

    The state file is written (atomically) before `scontrol requeue`, so a requeue is never
    made without being counted, even if the worker is killed right after.

    Returns:
        The reason the worker stops, for its log and its row in the database.
    """
    if job_id is None:
        return f"stopped {why}"
    state = load_job_state(jobs_dir, job_id)
    if state.requeues >= max_requeues:
        logger.error(
            "Job %s would requeue %s but was requeued %d times already (hpc.max_requeues=%d): "
            "not requeued. Run 'python -m hpc resubmit --config CONFIG' on the login node.",
            job_id,
            why,
            state.requeues,
            max_requeues,
        )
        return f"stopped {why}, max_requeues reached"
    requeues = state.requeues + 1
    write_json_atomic(
        state_path(jobs_dir, job_id),
        {"job_id": job_id, "requeues": requeues, "last_reason": why, "time": time.time()},
    )
    own_job = os.environ.get("SLURM_JOB_ID", job_id)
    result = scheduler.run_scheduler(["scontrol", "requeue", own_job], check=False)
    if result.returncode != 0:
        # Preemption with PreemptMode=REQUEUE requeues the job by itself, and scontrol then
        # refuses; the job runs again either way.
        logger.warning(
            "scontrol requeue %s failed: %s", own_job, (result.stderr or result.stdout).strip()
        )
    logger.warning(
        "Job %s requeued %s (requeue %d of at most %d).", job_id, why, requeues, max_requeues
    )
    return f"requeued {why}"
