"""`python -m hpc status` on real sweeps: queued, cancelled, running with a stale trial,
finished, without sacct, and its database cost at 200 and 2,000 trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from sweep_helpers import (
    REPO,
    run_hpc,
    sbatch_all_cpus,
    skip_without_slurm,
    start_sweep,
    statements_at_200_and_2000,
    wait_for_jobs,
    wait_for_running_trial,
    wait_for_sweep_jobs,
    worker_pid,
    write_config,
)

from hpc import scheduler
from hpc.status import collect_status

pytestmark = pytest.mark.integration
SCHEMA = json.loads((REPO / "docs" / "status.schema.json").read_text())
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def status_json(folder: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run `status --json`, check it against the documented schema, and return it."""
    result = subprocess.run(
        [sys.executable, "-m", "hpc", "status", "--config", "config.yml", "--json"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(result.stdout)
    jsonschema.validate(data, SCHEMA)
    return data


def status_text(folder: Path) -> str:
    result = run_hpc("status", "--config", "config.yml", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def occupy_node(folder: Path) -> str:
    """Submit a job that takes every CPU of the node, so that the sweep's jobs wait."""
    job = sbatch_all_cpus("debug", folder / "blocker.out", 600)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if [j for j in scheduler.query_jobs([job]) if j.state == "RUNNING"]:
            return job
        time.sleep(1)
    raise AssertionError(f"blocker job {job} did not start")


def without_sacct(folder: Path) -> dict[str, str]:
    """Return an environment whose `sacct` fails as on a cluster without accounting."""
    bin_dir = folder / "no-sacct-bin"
    bin_dir.mkdir()
    sacct = bin_dir / "sacct"
    sacct.write_text(
        "#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n"
    )
    sacct.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.slow
def test_status_queued_then_cancelled(tmp_path: Path, database_url: str) -> None:
    skip_without_slurm()
    write_config(tmp_path, n_trials=4, workers=2, synthetic={"duration_s": 1.0})
    blocker = occupy_node(tmp_path)
    array = finalize = None
    try:
        array, finalize = start_sweep(tmp_path, database_url)
        # A user hold, as `scontrol hold` by root would be an administrator's.
        scheduler.run_scheduler(["scontrol", "uhold", array])

        data = status_json(tmp_path)
        assert data["sweep"]["state"] == "queued"
        assert data["sweep"]["executor"] == "slurm"
        assert data["phase"] == {"current": 1, "phases": 1, "plan": None}
        assert set(data["trials"].values()) == {0}
        assert data["best"] is None
        assert data["budget"]["unit"] == "trials"
        assert (data["budget"]["used"], data["budget"]["left"]) == (0, 4)
        assert data["budget"]["eta_s"] is None
        workers = {job["id"]: job for job in data["jobs"] if job["role"] == "workers"}
        assert set(workers) == {f"{array}_0", f"{array}_1"}
        for job_id, job in workers.items():
            assert (job["state"], job["reason"]) == ("PENDING", "JobHeldUser")
            assert job["hint"] == f"held by a user: scontrol release {job_id}"
        [final] = [job for job in data["jobs"] if job["role"] == "finalize"]
        assert (final["id"], final["state"], final["reason"]) == (finalize, "PENDING", "Dependency")

        text = status_text(tmp_path)
        assert f"{array} tasks 0-1 [workers]: PENDING (JobHeldUser)" in text
        assert f"Action:   held by a user: scontrol release {array}\n" in text
        assert "Best:     no complete trial yet" in text

        # Without accounting, squeue still gives every active job and its reason.
        no_sacct = status_json(tmp_path, env=without_sacct(tmp_path))
        assert no_sacct["jobs"] == data["jobs"]
        assert "MinJobAge" in no_sacct["jobs_note"]

        scheduler.run_scheduler(["scontrol", "release", array])
        cancel = run_hpc("cancel", "--config", "config.yml", cwd=tmp_path)
        assert cancel.returncode == 0, cancel.stderr[-3000:]
        wait_for_jobs([array, finalize])
    finally:
        scheduler.cancel_jobs([job for job in (blocker, array, finalize) if job])

    data = status_json(tmp_path)
    assert data["sweep"]["state"] == "cancelled"
    assert data["sweep"]["cancelled_at"]
    assert {job["state"] for job in data["jobs"]} == {"CANCELLED"}
    assert data["trials"]["running"] == 0
    text = status_text(tmp_path)
    assert "cancelled (cancelled at " in text
    assert f"Next:     cd {tmp_path} && {sys.executable} -m hpc sweep --config " in text
    assert "(continues the sweep with the budget left)" in text


@pytest.mark.slow
def test_status_stale_then_finished(
    tmp_path: Path, database_url: str, request: pytest.FixtureRequest
) -> None:
    skip_without_slurm()
    # Trials 4 and 5 are long, so both workers are busy while trial 4's worker is stopped:
    # only `status` can reap trial 4 once its job has ended.
    write_config(
        tmp_path,
        n_trials=6,
        workers=2,
        heartbeat_s=1,
        heartbeat_grace_s=3,
        synthetic={"duration_s": 1.0, "slow_trials": {"4": 25, "5": 25}},
    )
    array, finalize = start_sweep(tmp_path, database_url)
    request.addfinalizer(lambda: scheduler.cancel_jobs([array, finalize]))
    victim = wait_for_running_trial(database_url, tmp_path, number=4)
    wait_for_running_trial(database_url, tmp_path, number=5)
    pid = worker_pid(database_url, victim.user_attrs["worker"])
    os.kill(pid, signal.SIGSTOP)  # its heartbeat thread stops; its job still runs
    try:
        data = _wait_for(tmp_path, lambda d: d["stale"]["silent"], "a silent trial")
        assert data["sweep"]["state"] == "running"
        [silent] = data["stale"]["silent"]
        assert silent["trial"] == 4
        assert silent["job"] == victim.user_attrs["job_id"]
        assert silent["silent_s"] >= 3
        assert data["stale"]["reaped"] == 0
        assert data["trials"]["complete"] == 4
        assert data["trials"]["running"] == 2
        assert data["best"]["trial"] in range(4)
        assert set(data["best"]["params"]) == {"lr", "model.depth"}
        budget = data["budget"]
        assert (budget["used"], budget["left"], budget["workers"]) == (4, 2, 2)
        assert budget["eta_s"] is not None
        assert budget["mean_trial_s"] > 0
        states = {job["id"]: job["state"] for job in data["jobs"]}
        assert states[f"{array}_0"] == states[f"{array}_1"] == "RUNNING"
        assert states[finalize] == "PENDING"
        text = status_text(tmp_path)
        assert "Stale:    trial 4 has sent no heartbeat for" in text
        assert f"kept because job {silent['job']} still runs" in text
        # The report can be rebuilt mid-sweep, and its output names the trials it covers.
        report = run_hpc("report", "--config", "config.yml", cwd=tmp_path)
        assert report.returncode == 0, report.stderr[-3000:]
        assert "Trials covered: 6, numbers 0 to 5\n" in report.stdout
        assert "  RUNNING: 2\n" in (tmp_path / "results" / "result_summary.txt").read_text()
    finally:
        os.kill(pid, signal.SIGKILL)

    # The job has no process left: a status call reaps the trial and queues it again.
    data = _wait_for(tmp_path, lambda d: d["stale"]["reaped"], "the stale trial reaped")
    assert data["stale"]["reaped"] == 1
    assert data["trials"]["retried"] == 1
    assert not data["stale"]["silent"]
    # Why the trial was queued again is in the logs, though `status` reaped it.
    logs = run_hpc("logs", "--config", "config.yml", "--trial", "4", cwd=tmp_path)
    assert logs.returncode == 0, logs.stderr[-3000:]
    assert "Trial 4 queued again as attempt 2" in logs.stdout
    assert "Error: WorkerLost: " in logs.stdout

    wait_for_sweep_jobs(tmp_path / "checkpoint")
    data = status_json(tmp_path)
    assert data["sweep"]["state"] == "finished"
    assert data["trials"]["complete"] == 6
    assert data["trials"]["running"] == 0
    assert data["budget"]["left"] == 0
    assert data["budget"]["spent"]
    assert data["budget"]["eta_s"] is None
    assert all(job["state"] in TERMINAL for job in data["jobs"])
    assert f"Jobs:     {array} task" in status_text(tmp_path)

    # --watch redraws until Ctrl-C, which ends it quietly.
    watch = subprocess.Popen(
        [sys.executable, "-m", "hpc", "status", "--config", "config.yml", "--watch", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6)
    watch.send_signal(signal.SIGINT)
    stdout, stderr = watch.communicate(timeout=30)
    assert watch.returncode == 0, stderr[-3000:]
    assert stdout.count("Sweep:    ") >= 2
    assert "Traceback" not in stderr


def _wait_for(folder: Path, condition: Any, what: str, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = status_json(folder)
        if condition(data):
            return data
        time.sleep(1)
    raise AssertionError(f"status never showed {what} in {timeout_s} s: {data}")


def test_status_statements_do_not_grow_with_trials(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (small, small_data), (large, large_data) = statements_at_200_and_2000(
        tmp_path, database_url, collect_status
    )

    # The inserted trials are 80 % complete, 10 % pruned and 10 % failed.
    counts = ("complete", "pruned", "failed", "finished")
    assert [small_data["trials"][key] for key in counts] == [160, 20, 20, 200]
    assert [large_data["trials"][key] for key in counts] == [1600, 200, 200, 2000]
    assert large_data["best"]["value"] >= small_data["best"]["value"]
    jsonschema.validate(large_data, SCHEMA)
    assert len(small) == len(large), (small, large)
    assert len(large) <= 40, large
    print(f"status issued {len(large)} SQL statements at 200 and at 2,000 trials")
