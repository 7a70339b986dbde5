"""Sweeps on a real single-node Slurm (scripts/local-slurm.sh) with the synthetic plug-in."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from sweep_helpers import job_ids, load_trials, run_hpc, skip_without_slurm, wait_for_jobs

from hpc import scheduler

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = """\
model:
  lr: 0.1
  depth: 3
tuning:
  output_dir: results
  checkpoint_dir: checkpoint
  n_trials: {n_trials}
  pruner: null
  metric: "ner.micro.f"
  hyperparameters:
    "model.lr": {{alias: lr, type: float, low: 1e-4, high: 1.0, log: true}}
    "model.depth": {{type: int, low: 1, high: 8}}
hpc:
  workers: 4
  executor: slurm
  objective: synthetic
  synthetic: {{duration_s: {duration_s}, fail_array_tasks: [2]}}
  slurm:
    partition: debug
    gpus_per_task: 1
    cpus_per_task: 1
    mem_gb: 1
    time_min: 10
    finalize: {{cpus_per_task: 1, mem_gb: 1, time_min: 10}}
"""


@pytest.fixture(scope="module")
def slurm() -> None:
    skip_without_slurm()


def test_array_sweep_with_failed_task(slurm: None, tmp_path: Path, database_url: str) -> None:
    (tmp_path / "config.yml").write_text(CONFIG.format(n_trials=8, duration_s=1.0))
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    array, finalize = job_ids(result.stdout)
    assert "scancel" in result.stdout

    states = wait_for_jobs([array, finalize])
    by_task = {
        state.array_task_id: state.state for state in states if state.job_id.startswith(array)
    }
    assert len(by_task) == 4
    assert by_task["2"].startswith("FAILED")
    assert [s.state for s in states if s.job_id == finalize] == ["COMPLETED"]

    trials = load_trials(database_url)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 8
    assert all(t.user_attrs["job_id"].startswith(f"{array}_") for t in trials)
    assert not any(t.user_attrs["job_id"] == f"{array}_2" for t in trials)
    assert (tmp_path / "results" / "result_summary.txt").is_file()

    logs = list((tmp_path / "checkpoint" / "jobs" / "slurm").glob("*.err"))
    worker_lines = [
        line for log in logs for line in log.read_text().splitlines() if "hpc.worker: Trial" in line
    ]
    assert worker_lines
    assert all(f" job={array}_" in line for line in worker_lines)
    assert all(" task=" in line for line in worker_lines)
    assert not [line for line in worker_lines if " worker=- " in line]


def test_hand_submitted_workers_join(slurm: None, tmp_path: Path, database_url: str) -> None:
    # One worker and no GPU: the 4 hand-submitted tasks find free resources and budget left,
    # even when other jobs hold the cluster's GPUs.
    config = CONFIG.format(n_trials=16, duration_s=3.0)
    config = config.replace("workers: 4", "workers: 1").replace(
        "gpus_per_task: 1", "gpus_per_task: 0"
    )
    (tmp_path / "config.yml").write_text(config)
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    array, finalize = job_ids(result.stdout)

    script = tmp_path / "checkpoint" / "sbatch" / "worker.sbatch"
    assert "PGPASSWORD" not in script.read_text()
    hand = scheduler.submit_script(script)
    wait_for_jobs([array, finalize, hand], timeout_s=400)

    trials = load_trials(database_url)
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) == 16
    by_hand = [t for t in trials if t.user_attrs["job_id"].startswith(f"{hand}_")]
    print(f"hand-submitted workers ran {len(by_hand)} of 16 trials")
    assert by_hand


def test_embedded_server_on_one_node(slurm: None, tmp_path: Path) -> None:
    import json
    import shutil

    from hpc import embedded_pg

    (tmp_path / "config.yml").write_text(CONFIG.format(n_trials=4, duration_s=0.5))
    result = run_hpc("sweep", "--config", "config.yml", "--storage", "embedded", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "checkpoint" / "sweep.json").read_text())
    data_dir = Path(state["embedded"]["data_dir"])
    try:
        array, finalize = job_ids(result.stdout)
        wait_for_jobs([array, finalize])
        assert (tmp_path / "results" / "result_summary.txt").is_file()
        summary = (tmp_path / "results" / "result_summary.txt").read_text()
        assert "COMPLETE: 4" in summary
        # The finalize job, the last job of the sweep, stops the server.
        deadline = time.monotonic() + 30
        while embedded_pg.is_running(data_dir) and time.monotonic() < deadline:
            time.sleep(1)
        logs = sorted((tmp_path / "checkpoint" / "jobs" / "slurm").glob(f"*{finalize}*"))
        finalize_log = "\n".join(log.read_text()[-2000:] for log in logs)
        assert not embedded_pg.is_running(data_dir), finalize_log
    finally:
        if not str(data_dir).startswith(str(tmp_path)):
            shutil.rmtree(data_dir, ignore_errors=True)
            Path(f"{data_dir}.lock").unlink(missing_ok=True)


def test_resubmit_adds_jobs(slurm: None, tmp_path: Path, database_url: str) -> None:
    import json

    (tmp_path / "config.yml").write_text(CONFIG.format(n_trials=4, duration_s=0.5))
    first = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    wait_for_jobs(list(job_ids(first.stdout)))

    # The budget is spent: resubmit submits nothing.
    done = run_hpc("resubmit", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Nothing left to run" in done.stdout

    # With a larger budget, resubmit adds workers and a finalize job that run the rest.
    config = tmp_path / "config.yml"
    config.write_text(config.read_text().replace("n_trials: 4", "n_trials: 6"))
    more = run_hpc("resubmit", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    array, finalize = job_ids(more.stdout)
    wait_for_jobs([array, finalize])
    state = json.loads((tmp_path / "checkpoint" / "sweep.json").read_text())
    assert [entry["workers"] for entry in state["submissions"]][-1] == array
    assert len(state["submissions"]) == 2
    assert len(load_trials(database_url)) == 6
