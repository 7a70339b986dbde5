"""Time left in the worker's Slurm job, so that no trial starts that its time limit would kill."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime

from hpc.claims import StudyCounts

logger = logging.getLogger(__name__)

REFRESH_S = 600.0


class JobClock:
    """The end time of the worker's job, read once and again every 10 minutes.

    `SLURM_JOB_END_TIME` (Slurm 23.02 and later) is used when set; Slurm 22.05 does not set
    it, so `squeue -o %e` is asked (an administrator may also change a running job's limit).
    Outside Slurm, or when neither source gives an end time, there is no limit.
    """

    def __init__(
        self,
        job_id: str | None,
        signal_lead_s: float,
        end_time: Callable[[str], datetime | None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.job_id = os.environ.get("SLURM_JOB_ID") if job_id else None
        self.signal_lead_s = signal_lead_s
        self._end_time = end_time
        self._now = now
        self._end: float | None = None
        self._read_at: float | None = None

    def seconds_left(self) -> float | None:
        """Seconds until the job's time limit, or None when it has none."""
        if self.job_id is None:
            return None
        if self._read_at is None or self._now() - self._read_at > REFRESH_S:
            self._end = self._read_end()
            self._read_at = self._now()
        return None if self._end is None else self._end - self._now()

    def check(self, counts: StudyCounts) -> str | None:
        """Return why no trial may start in this job, or None when the next one fits.

        A trial fits when its expected duration (the mean of the phase's finished trials)
        ends before the pre-timeout signal, which comes `signal_lead_s` before the limit.
        Before any trial has finished, the duration is unknown and the trial starts.
        """
        expected = counts.mean_trial_s
        if expected is None:
            return None
        left = self.seconds_left()
        if left is None:
            return None
        usable = left - self.signal_lead_s
        if expected <= usable:
            return None
        return (
            f"time limit near: {left:.0f} s left in job {self.job_id}, a trial takes about "
            f"{expected:.0f} s and the pre-timeout signal comes {self.signal_lead_s:.0f} s "
            "before the limit"
        )

    def _read_end(self) -> float | None:
        value = os.environ.get("SLURM_JOB_END_TIME")
        if value and value.isdigit():
            return float(value)
        assert self.job_id is not None
        reader = self._end_time
        if reader is None:
            from hpc import scheduler

            reader = scheduler.job_end_time
        try:
            end = reader(self.job_id)
        except Exception as error:  # squeue missing, slow or failing: start the trial
            logger.warning("The time limit of job %s is unknown (%s).", self.job_id, error)
            return None
        return None if end is None else end.timestamp()
