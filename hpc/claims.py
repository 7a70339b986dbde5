"""Atomic claims: which worker may start the next trial, and when the budget is spent."""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import sqlalchemy
from sqlalchemy import text

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Pauses between tries of a claim lock held by another worker: they double from the first to
# the last, each drawn between half and one and a half times the value. Each try opens a
# connection: with a 0.2 s cap, 128 workers claiming at once opened 640 a second and starved
# the lock's holder of CPU on a 2-core node.
LOCK_RETRY_FIRST_S = 0.01
LOCK_RETRY_MAX_S = 2.0

_COUNTS_SQL = text(
    """
    SELECT t.state AS state,
           (retry.trial_id IS NOT NULL) AS retried,
           (duplicate.trial_id IS NOT NULL) AS duplicate,
           count(*) AS trials,
           coalesce(sum(extract(epoch FROM t.datetime_complete - t.datetime_start)), 0) AS seconds,
           min(t.datetime_start) AS first_start
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    LEFT JOIN trial_user_attributes retry
        ON retry.trial_id = t.trial_id AND retry.key = 'retried_as'
    LEFT JOIN trial_user_attributes duplicate
        ON duplicate.trial_id = t.trial_id AND duplicate.key = 'duplicate_of'
    WHERE s.study_name = :study_name
    GROUP BY t.state, retried, duplicate
    """
)


_BEST_SQL = text(
    """
    SELECT t.number AS number, v.value AS value
    FROM trials t
    JOIN studies s ON s.study_id = t.study_id
    JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0
    WHERE s.study_name = :study_name AND t.state = 'COMPLETE'
    ORDER BY v.value DESC, t.number
    LIMIT 1
    """
)


STATE_FIELDS = {
    "COMPLETE": "complete",
    "PRUNED": "pruned",
    "FAIL": "failed",
    "RUNNING": "running",
    "WAITING": "waiting",
}


@dataclass(frozen=True)
class Budget:
    """Budget of one study's phase.

    Attributes:
        n_trials: Exact number of finished trials, or None.
        gpu_seconds: GPU time for all trials, summed over workers, or None.
        timeout_s: Wall-clock time since the first trial started, or None.
        gpus_per_trial: GPUs each trial uses (1 on a machine without GPUs).
    """

    n_trials: int | None
    gpu_seconds: float | None = None
    timeout_s: float | None = None
    gpus_per_trial: int = 1


@dataclass(frozen=True)
class StudyCounts:
    """Trials of one study by state, with the time spent by finished ones."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    retried: int = 0
    finished_seconds: float = 0.0
    elapsed_s: float = 0.0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def mean_trial_s(self) -> float | None:
        return self.finished_seconds / self.finished if self.finished else None


def count_trials(connection: sqlalchemy.Connection, study_name: str) -> StudyCounts:
    """Count a study's trials by state with one aggregate query.

    A failed trial queued again is counted as `retried`, not as finished. A sample thrown
    away as a duplicate is left out.
    """
    fields: dict[str, int] = {}
    finished_seconds = 0.0
    first_start = None
    for row in connection.execute(_COUNTS_SQL, {"study_name": study_name}):
        if row.duplicate:
            continue
        key = STATE_FIELDS[str(row.state)]
        if key == "failed" and row.retried:
            key = "retried"
        fields[key] = fields.get(key, 0) + int(row.trials)
        if key in ("complete", "pruned", "failed"):
            finished_seconds += float(row.seconds)
        if row.first_start is not None and (first_start is None or row.first_start < first_start):
            first_start = row.first_start
    # Optuna stores naive local datetimes written by the workers' clocks.
    elapsed = (datetime.now() - first_start).total_seconds() if first_start is not None else 0.0
    return StudyCounts(**fields, finished_seconds=finished_seconds, elapsed_s=elapsed)


def best_value(connection: sqlalchemy.Connection, study_name: str) -> tuple[int, float] | None:
    """Return the number and value of a study's best complete trial (studies maximize)."""
    row = connection.execute(_BEST_SQL, {"study_name": study_name}).first()
    return None if row is None else (int(row.number), float(row.value))


def budget_left(counts: StudyCounts, budget: Budget) -> str | None:
    """Return why no new trial may start, or None when one may.

    A trial may start when it cannot make the finished count exceed `n_trials`, counting
    running trials as finished. Waiting trials (retries) start first, since Optuna's `ask`
    takes them before sampling. With a GPU-hour budget, the expected duration of the new
    trial (the mean of finished ones) must fit in what finished and running trials leave.
    """
    if budget.n_trials is not None:
        if counts.finished + counts.running >= budget.n_trials:
            return f"n_trials reached ({counts.finished} finished, {counts.running} running)"
        return None
    if budget.timeout_s is not None and counts.elapsed_s >= budget.timeout_s:
        return f"timeout reached ({counts.elapsed_s:.0f} s of {budget.timeout_s:.0f} s)"
    if budget.gpu_seconds is not None:
        expected = counts.mean_trial_s
        if expected is None:
            # No trial has finished: start, so that no worker waits idle. The overshoot this
            # allows is at most one trial per worker.
            return None
        committed = (
            counts.finished_seconds + (counts.running + 1) * expected
        ) * budget.gpus_per_trial
        if committed > budget.gpu_seconds:
            used_h = counts.finished_seconds * budget.gpus_per_trial / 3600
            return f"gpu_hours spent ({used_h:.3f} h used, next trial expected {expected:.0f} s)"
    return None


def advisory_key(study_name: str) -> int:
    """Derive a signed 64-bit advisory lock key from a study name."""
    digest = hashlib.sha256(f"hpc-tune claim {study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class Claim(Generic[T]):
    """The result of a claim: the started trial, or why none started, with the counts seen."""

    started: T | None
    reason: str | None
    counts: StudyCounts


def claim(
    engine: sqlalchemy.Engine,
    study_name: str,
    budget: Budget,
    start_trial: Callable[[], T],
    may_start: Callable[[StudyCounts], str | None] | None = None,
) -> Claim[T]:
    """Start a trial if the budget allows, atomically across all workers.

    The transaction holds a PostgreSQL advisory lock on the study while it counts trials and
    `start_trial` creates the new RUNNING trial, so N workers cannot overshoot `n_trials`.
    A worker that finds the lock taken closes its connection and tries again after a short,
    growing, random pause: waiting on the lock would keep one connection per waiting worker,
    and 128 workers starting together would exceed a server's `max_connections=100`.

    Args:
        may_start: A further check of this worker (time left in its job), given the counts:
            returns why no trial may start here, or None.
    """
    pause_s = LOCK_RETRY_FIRST_S
    while True:
        with engine.begin() as connection:
            if _try_lock(connection, study_name):
                return _claim_locked(connection, study_name, budget, start_trial, may_start)
            # Stopping needs no lock, because the locked check would decide on the same
            # counts. So the workers of a spent phase exit instead of waiting for the lock.
            counts = count_trials(connection, study_name)
            reason = budget_left(counts, budget)
            if reason is not None:
                return Claim(None, reason, counts)
        time.sleep(random.uniform(0.5, 1.5) * pause_s)
        pause_s = min(2 * pause_s, LOCK_RETRY_MAX_S)


def _try_lock(connection: sqlalchemy.Connection, study_name: str) -> bool:
    """Take the study's claim lock until the transaction ends, if no one holds it."""
    taken = connection.execute(
        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": advisory_key(study_name)}
    ).scalar_one()
    return bool(taken)


def _claim_locked(
    connection: sqlalchemy.Connection,
    study_name: str,
    budget: Budget,
    start_trial: Callable[[], T],
    may_start: Callable[[StudyCounts], str | None] | None,
) -> Claim[T]:
    counts = count_trials(connection, study_name)
    reason = budget_left(counts, budget)
    if reason is None and may_start is not None:
        reason = may_start(counts)
    if reason is not None:
        return Claim(None, reason, counts)
    return Claim(start_trial(), None, counts)
