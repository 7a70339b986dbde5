"""Faults on the real single-node Slurm and PostgreSQL, with the synthetic plug-in: a killed
worker, preemption, a time limit, a signal sent twice, failing trials, a database outage.

Each test ends with exactly `n_trials` finished trials, a failed trial that ran again counted
once, and no trial left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from sqlalchemy.engine import make_url
from sweep_helpers import (
    TcpProxy,
    assert_trial_events,
    finished,
    load_trials,
    sbatch_all_cpus,
    skip_without_slurm,
    start_sweep,
    wait_for_jobs,
    wait_for_running_trial,
    worker_log_lines,
    worker_pid,
    write_config,
)

from hpc import scheduler

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FAIL = optuna.trial.TrialState.FAIL
COMPLETE = optuna.trial.TrialState.COMPLETE
RUNNING = optuna.trial.TrialState.RUNNING


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    skip_without_slurm()


def retry_of(trials: list[optuna.trial.FrozenTrial], number: int) -> optuna.trial.FrozenTrial:
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == number]
    return retry


def assert_sweep_sound(trials: list[optuna.trial.FrozenTrial], n_trials: int) -> None:
    assert finished(trials) == n_trials
    assert not [t for t in trials if t.state == RUNNING]
    retried = [t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs]
    assert len(retried) == len(set(retried)), "a trial ran again twice"


def test_sigkilled_worker_trial_retried_after_job_ends(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=6, workers=2, synthetic={"duration_s": 3.0})
    array, finalize = start_sweep(tmp_path, database_url)
    victim = wait_for_running_trial(database_url, tmp_path)
    time.sleep(1)
    os.kill(worker_pid(database_url, victim.user_attrs["worker"]), signal.SIGKILL)
    killed_at = datetime.now()
    states = wait_for_jobs([array, finalize])
    killed_task = victim.user_attrs["job_id"]
    assert [s.state for s in states if s.display_id == killed_task] == ["FAILED"]

    trials = load_trials(database_url)
    lost = next(t for t in trials if t.number == victim.number)
    assert lost.state == FAIL
    assert "WorkerLost" in lost.user_attrs["error"]
    assert f"job run {killed_task} no longer runs" in lost.user_attrs["error"]
    retry = retry_of(trials, victim.number)
    assert retry.state == COMPLETE
    assert retry.params == lost.params
    assert retry.user_attrs["seed"] == lost.user_attrs["seed"]
    assert retry.user_attrs["job_id"] != killed_task
    # Stale only after the grace period (5 s) without a heartbeat.
    assert retry.datetime_start is not None
    assert (retry.datetime_start - killed_at).total_seconds() >= 3
    assert_sweep_sound(trials, 6)


def test_preempted_job_requeued_and_retried_first(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=3, synthetic={"duration_s": 1.0, "slow_trials": {"0": 120}})
    array, finalize = start_sweep(tmp_path, database_url)
    wait_for_running_trial(database_url, tmp_path, number=0)
    time.sleep(2)
    # A job in the high partition that needs every CPU of the node preempts the worker.
    high = sbatch_all_cpus("high", tmp_path / "high.out", 5)
    wait_for_jobs([array, finalize, high], timeout_s=400)

    trials = load_trials(database_url)
    first = trials[0]
    assert first.state == FAIL
    assert "Interrupted" in first.user_attrs["error"]
    retry = retry_of(trials, 0)
    assert retry.number == 1  # the retry runs before any new trial
    assert retry.state == COMPLETE
    assert retry.params == first.params
    assert retry.user_attrs["restart_count"] >= 1
    assert_sweep_sound(trials, 3)


def test_time_limit_mid_trial(tmp_path: Path, database_url: str) -> None:
    # A 3-minute limit with the pre-timeout signal 120 s before it: trial 0 takes longer.
    write_config(
        tmp_path,
        n_trials=2,
        synthetic={"duration_s": 1.0, "slow_trials": {"0": 400}},
        slurm={"time_min": 3, "signal_lead_s": 120},
    )
    array, finalize = start_sweep(tmp_path, database_url)
    wait_for_jobs([array, finalize], timeout_s=500)

    trials = load_trials(database_url)
    first = trials[0]
    assert first.state == FAIL
    assert "SIGUSR2" in first.user_attrs["error"]
    retry = retry_of(trials, 0)
    assert retry.number == 1
    assert retry.state == COMPLETE
    assert retry.user_attrs["restart_count"] >= 1
    assert_sweep_sound(trials, 2)
    state_file = tmp_path / "checkpoint" / "jobs" / "state" / f"{array}_0.json"
    assert json.loads(state_file.read_text())["requeues"] >= 1


def test_signal_twice_requeues_once(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=2, synthetic={"duration_s": 8.0})
    array, finalize = start_sweep(tmp_path, database_url)
    task = f"{array}_0"
    trial = wait_for_running_trial(database_url, tmp_path)
    pid = worker_pid(database_url, trial.user_attrs["worker"])
    time.sleep(2)
    # What Slurm sends before a time-limit kill, through the step; then the same again.
    scheduler.run_scheduler(["scancel", "--signal=USR2", task])
    sent = time.monotonic()
    os.kill(pid, signal.SIGUSR2)
    gap_s = time.monotonic() - sent
    assert gap_s < 0.1
    wait_for_jobs([array, finalize], timeout_s=300)

    trials = load_trials(database_url)
    first = trials[0]
    assert first.state == FAIL
    assert "SIGUSR2" in first.user_attrs["error"]
    retry = retry_of(trials, first.number)
    assert retry.state == COMPLETE
    assert retry.params == first.params
    assert retry.user_attrs["seed"] == first.user_attrs["seed"]
    assert retry.user_attrs["restart_count"] == 1
    assert retry.number == first.number + 1  # the retry runs before any new trial
    assert_sweep_sound(trials, 2)
    state_dir = tmp_path / "checkpoint" / "jobs" / "state"
    assert sorted(path.name for path in state_dir.iterdir()) == [f"{task}.json"]
    state = json.loads((state_dir / f"{task}.json").read_text())
    assert state["requeues"] == 1


def test_failing_trials_fail_alone(tmp_path: Path, database_url: str) -> None:
    write_config(
        tmp_path,
        n_trials=6,
        workers=2,
        synthetic={"duration_s": 1.0, "nan_trials": [0], "fail_trials": [1], "crash_trials": [2]},
    )
    array, finalize = start_sweep(tmp_path, database_url)
    states = wait_for_jobs([array, finalize])
    assert all(state.state == "COMPLETED" for state in states)

    trials = load_trials(database_url)
    by_number = {t.number: t for t in trials}
    assert "NonFiniteMetric" in by_number[0].user_attrs["error"]
    assert "no retry" in by_number[0].user_attrs["retry_decision"]
    assert not [t for t in trials if t.user_attrs.get("retry_of") == 0]
    assert "TrialError" in by_number[1].user_attrs["error"]
    assert "SIGKILL" in by_number[2].user_attrs["error"]
    for number in (1, 2):
        assert by_number[number].state == FAIL
        retry = retry_of(trials, number)
        assert retry.state == COMPLETE
        assert retry.params == by_number[number].params
        assert retry.user_attrs["attempt"] == 2
    assert_sweep_sound(trials, 6)

    # Each array task's worker writes its own log file, every line in the fixed shape.
    worker_logs = worker_log_lines(tmp_path / "checkpoint")
    assert len(worker_logs) == 2
    for lines in worker_logs.values():
        first = lines[0]
        assert first["job"] == f"{array}_{first['task']}"
        assert first["message"].startswith(f"Worker {first['worker']} started on host ")
    every_line = [line for lines in worker_logs.values() for line in lines]
    assert_trial_events(every_line, retry_of(trials, 1).number)


def test_database_outage_longer_than_grace(tmp_path: Path, database_url: str) -> None:
    from hpc.reaper import reap_stale_trials, silent_trials
    from hpc.storage import create_engine, optuna_storage, user_schema

    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        write_config(
            tmp_path,
            n_trials=2,
            synthetic={"duration_s": 8.0, "steps": 4},
            heartbeat_s=1,
            heartbeat_grace_s=3,
            db_retry_s=120,
        )
        array, finalize = start_sweep(tmp_path, proxied)
        trial = wait_for_running_trial(database_url, tmp_path, number=0)
        time.sleep(1)
        proxy.cut()
        time.sleep(6)
        # The worker has sent no heartbeat for longer than the grace period, but its job runs:
        # a reaper on the database's side of the cut keeps the trial.
        engine = create_engine(database_url, user_schema())
        storage = optuna_storage(database_url, user_schema(), create_tables=False)
        study = optuna.load_study(study_name=trial_study(storage), storage=storage)
        assert [t.number for t in silent_trials(engine, study.study_name, 3)] == [0]
        assert reap_stale_trials(engine, study, study.study_name.rsplit(".", 1)[0], 3) == 0
        engine.dispose()
        # Trial 0 ends during the cut: its value is recorded once the database is back.
        time.sleep(6)
        proxy.restore()
        states = wait_for_jobs([array, finalize], timeout_s=300)
    finally:
        proxy.close()
    assert all(state.state == "COMPLETED" for state in states)

    trials = load_trials(database_url)
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]
    assert not [t for t in trials if "retry_of" in t.user_attrs]
    assert trials[0].number == trial.number


def trial_study(storage: optuna.storages.BaseStorage) -> str:
    [summary] = optuna.get_all_study_summaries(storage)
    return summary.study_name
