"""A sweep's life beyond its workers, on the real Slurm: reruns, a killed coordinator, cancel,
finalize jobs that supervise, and a chaos run (`pytest -m chaos`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sweep_helpers import (
    REPO,
    finished,
    job_ids,
    load_trials,
    run_hpc,
    skip_without_slurm,
    start_sweep,
    wait_for_jobs,
    wait_for_running_trial,
    wait_for_sweep_jobs,
    worker_pid,
    write_config,
)

from hpc import scheduler

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNNING = optuna.trial.TrialState.RUNNING


@pytest.fixture(scope="module", autouse=True)
def slurm() -> None:
    skip_without_slurm()


def sweep_state(folder: Path) -> dict:
    return json.loads((folder / "checkpoint" / "sweep.json").read_text())


def finalize_logs(folder: Path) -> str:
    logs = sorted((folder / "checkpoint" / "jobs" / "slurm").glob("*finalize*.err"))
    return "\n".join(log.read_text() for log in logs)


def wait_for_sweep(folder: Path, timeout_s: float = 400) -> None:
    wait_for_sweep_jobs(folder / "checkpoint", timeout_s)


def test_sweep_again_while_running_and_when_finished(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=4, synthetic={"duration_s": 3.0})
    array, finalize = start_sweep(tmp_path, database_url)

    running = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert running.returncode == 0, running.stderr[-3000:]
    assert "is running" in running.stdout
    assert "Nothing submitted" in running.stdout
    wait_for_jobs([array, finalize])

    done = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing left to run: n_trials reached" in done.stdout
    assert "Report:" in done.stdout
    assert len(sweep_state(tmp_path)["submissions"]) == 1
    assert len(load_trials(database_url)) == 4


def test_coordinator_killed_after_submission(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=4, workers=2, synthetic={"duration_s": 2.0})
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml"]
        + ["--storage", database_url],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    state_file = tmp_path / "checkpoint" / "sweep.json"
    while time.monotonic() < deadline:
        if state_file.exists() and "submissions" in state_file.read_text():
            break
        time.sleep(0.05)
    coordinator.kill()
    coordinator.wait()

    wait_for_sweep(tmp_path)
    assert finished(load_trials(database_url)) == 4
    assert (tmp_path / "results" / "result_summary.txt").is_file()


def test_cancel_then_sweep_again(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=6, workers=2, synthetic={"duration_s": 3.0})
    array, finalize = start_sweep(tmp_path, database_url)
    wait_for_running_trial(database_url, tmp_path)

    cancel = run_hpc("cancel", "--config", "config.yml", cwd=tmp_path)
    assert cancel.returncode == 0, cancel.stderr[-3000:]
    assert f"cancelled jobs {finalize}, {array}" in cancel.stdout
    states = wait_for_jobs([array, finalize])
    assert {state.state for state in states} == {"CANCELLED"}
    trials = load_trials(database_url)
    assert not [t for t in trials if t.state == RUNNING]
    assert finished(trials) < 6
    assert "cancel" in sweep_state(tmp_path)

    again = run_hpc("sweep", "--config", "config.yml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "was cancelled" in again.stdout
    wait_for_jobs(list(job_ids(again.stdout)))
    trials = load_trials(database_url)
    assert finished(trials) == 6
    assert "cancel" not in sweep_state(tmp_path)
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    by_number = {t.number: t for t in trials}
    assert all(t.params == by_number[t.user_attrs["retry_of"]].params for t in retries)


def test_finalize_resubmits_dead_workers(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=5, workers=2, synthetic={"duration_s": 3.0})
    array, _ = start_sweep(tmp_path, database_url)
    wait_for_running_trial(database_url, tmp_path)
    # The scheduler, not the user, ends every worker: the finalize job supervises.
    scheduler.cancel_jobs([array])

    wait_for_sweep(tmp_path)
    state = sweep_state(tmp_path)
    assert state["supervisor_resubmits"] == 1
    assert len(state["submissions"]) == 2
    assert "no worker runs: resubmitted workers" in finalize_logs(tmp_path)
    trials = load_trials(database_url)
    assert finished(trials) == 5
    assert not [t for t in trials if t.state == RUNNING]


def test_two_finalize_jobs_do_the_work_once(tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, n_trials=4, workers=1, synthetic={"duration_s": 3.0})
    array, _ = start_sweep(tmp_path, database_url)
    wait_for_running_trial(database_url, tmp_path)
    scheduler.cancel_jobs([array])
    # A finalize job submitted by hand runs beside the original one.
    scheduler.submit_script(tmp_path / "checkpoint" / "sbatch" / "finalize.sbatch")

    wait_for_sweep(tmp_path)
    state = sweep_state(tmp_path)
    assert state["supervisor_resubmits"] == 1
    assert len([entry for entry in state["submissions"] if entry["workers"]]) == 2
    assert finished(load_trials(database_url)) == 4


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """A PostgreSQL server of this test alone, which it may restart."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prefix = Path(f"/tmp/hpc-tune-chaos-pg-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "HPC_TUNE_TEST_PGPORT": str(port), "HPC_TUNE_TEST_PGPREFIX": str(prefix)}
    script = REPO / "scripts" / "test-postgres.sh"
    subprocess.run(["bash", str(script), "start"], env=env, check=True, capture_output=True)
    os.environ["HPC_TUNE_CHAOS_PG_ENV"] = json.dumps(env)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/hpc_tune_test"
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True)
        shutil.rmtree(prefix, ignore_errors=True)


def restart_postgres() -> None:
    env = json.loads(os.environ["HPC_TUNE_CHAOS_PG_ENV"])
    script = REPO / "scripts" / "test-postgres.sh"
    subprocess.run(["bash", str(script), "stop"], env=env, check=True, capture_output=True)
    time.sleep(3)
    subprocess.run(["bash", str(script), "start"], env=env, check=True, capture_output=True)


@pytest.mark.chaos
def test_chaos_sweep(tmp_path: Path, own_postgres: str) -> None:
    n_trials = 12
    write_config(
        tmp_path,
        n_trials=n_trials,
        workers=3,
        synthetic={"duration_s": [2.0, 4.0], "fail_trials": [1]},
    )
    array, _ = start_sweep(tmp_path, own_postgres)
    victim = wait_for_running_trial(own_postgres, tmp_path)
    time.sleep(1)
    os.kill(worker_pid(own_postgres, victim.user_attrs["worker"]), signal.SIGKILL)

    # A job of the high partition that needs all but two free CPUs preempts one worker.
    time.sleep(3)
    cpus = int(
        subprocess.run(
            ["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )
    high = scheduler.run_scheduler(
        ["sbatch", "--parsable", "--partition=high", f"--cpus-per-task={cpus - 1}"]
        + ["--mem=100M", "--time=1", f"--output={tmp_path}/high.out", "--wrap=sleep 5"]
    ).stdout.strip()
    time.sleep(4)
    restart_postgres()

    wait_for_sweep(tmp_path, timeout_s=500)
    wait_for_jobs([high])
    trials = load_trials(own_postgres)
    by_number = {t.number: t for t in trials}
    assert finished(trials) == n_trials
    assert not [t for t in trials if t.state == RUNNING]
    retries = [t for t in trials if "retry_of" in t.user_attrs]
    assert {victim.number, 1} <= {t.user_attrs["retry_of"] for t in retries}
    # The preempted job requeued itself; whether its signal came mid-trial or between two
    # trials depends on timing.
    states = [
        json.loads(p.read_text()) for p in (tmp_path / "checkpoint" / "jobs" / "state").iterdir()
    ]
    assert any(state["requeues"] >= 1 for state in states)
    for retry in retries:
        assert retry.params == by_number[retry.user_attrs["retry_of"]].params
    assert (tmp_path / "results" / "result_summary.txt").is_file()
    summary = (tmp_path / "results" / "result_summary.txt").read_text()
    assert f"retried: {len(retries)}" in summary
