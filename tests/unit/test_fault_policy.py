"""The retry policy, the time left in a job, and database retries."""

from __future__ import annotations

from datetime import datetime, timedelta

import optuna
import psycopg2
import pytest
import sqlalchemy

from hpc.claims import StudyCounts
from hpc.db_retry import DatabaseUnavailable, describe, is_connection_error, with_retries
from hpc.job_time import JobClock
from hpc.settings import parse_hpc_section
from tuner.errors import ConfigError
from tuner.retry_policy import decide


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        ("ProcessKilled: the trial process died from SIGKILL (out of memory?)", True),
        ("WorkerLost: its worker stopped sending heartbeats", True),
        ("OSError: [Errno 5] Input/output error", True),
        ("TrialError: synthetic failure requested for trial 1", True),
        ("NonFiniteMetric: the metric is nan", False),
        ("ConfitValidationError: 1 validation error for Optimizer", False),
        ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", False),
        ("RuntimeError: CUDA out of memory. Tried to allocate 20.00 MiB", False),
    ],
)
def test_retry_policy_by_error(error: str, retry: bool) -> None:
    decision = decide(error, attempt=1, max_retries=2)
    assert decision.retry is retry
    assert decision.reason


def test_retry_policy_stops_after_max_retries() -> None:
    error = "ProcessExited: the trial process exited with code 1"
    assert decide(error, attempt=2, max_retries=2).retry
    last = decide(error, attempt=3, max_retries=2)
    assert not last.retry
    assert "hpc.max_retries is 2" in last.reason
    assert not decide(error, attempt=1, max_retries=0).retry


def clock(monkeypatch: pytest.MonkeyPatch, left_s: float, lead_s: float = 120) -> JobClock:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    end = datetime.now().astimezone() + timedelta(seconds=left_s)
    return JobClock("42_0", lead_s, end_time=lambda job_id: end)


def test_trial_that_fits_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = StudyCounts(complete=2, finished_seconds=200.0)  # 100 s per trial
    assert clock(monkeypatch, left_s=400).check(counts) is None


def test_trial_that_would_be_killed_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    counts = StudyCounts(complete=2, finished_seconds=200.0)
    reason = clock(monkeypatch, left_s=200).check(counts)
    assert reason is not None
    assert "time limit near" in reason
    assert "job 42" in reason


def test_first_trial_starts_without_an_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert clock(monkeypatch, left_s=10).check(StudyCounts()) is None


def test_no_limit_outside_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    counts = StudyCounts(complete=1, finished_seconds=1e6)
    assert JobClock(None, 120).check(counts) is None


def test_end_time_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(datetime.now().timestamp()) + 1000))

    def no_squeue(job_id: str) -> datetime:
        raise AssertionError("squeue asked although SLURM_JOB_END_TIME is set")

    left = JobClock("42", 120, end_time=no_squeue).seconds_left()
    assert left is not None and 990 < left <= 1000


def operational_error() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError(
        "SELECT 1", {}, psycopg2.OperationalError("server closed the connection unexpectedly")
    )


def test_database_retried_until_it_answers() -> None:
    calls = []
    sleeps: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise operational_error()
        return "done"

    assert with_retries(flaky, "record a trial", window_s=60, sleep=sleeps.append) == "done"
    assert len(calls) == 4
    # Doubling delays with jitter: 1-1.5 s, 2-3 s, 4-6 s.
    assert [1 <= sleeps[0] <= 1.5, 2 <= sleeps[1] <= 3, 4 <= sleeps[2] <= 6] == [True] * 3


def test_database_gone_for_longer_fails_loudly() -> None:
    def down() -> None:
        raise operational_error()

    with pytest.raises(DatabaseUnavailable) as caught:
        with_retries(
            down,
            "claim a trial",
            window_s=0,
            where="postgresql+psycopg2://u@db/x",
            sleep=pytest.fail,
        )
    message = str(caught.value)
    assert "postgresql+psycopg2://u@db/x" in message
    assert "claim a trial" in message
    assert "server closed the connection unexpectedly" in message


def test_other_errors_are_not_retried() -> None:
    def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        with_retries(broken, "claim a trial", window_s=60, sleep=pytest.fail)


def test_optuna_wrapped_connection_errors_are_recognised() -> None:
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = operational_error()
    assert is_connection_error(wrapped)
    assert describe(wrapped) == ("OperationalError: server closed the connection unexpectedly")
    assert not is_connection_error(optuna.exceptions.StorageInternalError("other"))


def test_grace_must_cover_several_heartbeats() -> None:
    with pytest.raises(ConfigError, match="hpc.heartbeat_grace_s"):
        parse_hpc_section({"heartbeat_s": 10, "heartbeat_grace_s": 20}, {})
    settings = parse_hpc_section({"heartbeat_s": 10, "heartbeat_grace_s": 30, "max_retries": 0}, {})
    assert settings.max_retries == 0
