"""Local sweeps with the synthetic plug-in: real workers, real PostgreSQL, real child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from sweep_helpers import (
    assert_trial_events,
    finished,
    load_trials,
    wait_for_running_trial,
    worker_log_lines,
    worker_pid,
)

pytestmark = pytest.mark.integration

CONFIG = """\
# A synthetic sweep: the plug-in sleeps and scores the values.
model:
  lr: 0.1     # learning rate
  depth: 3
  act: relu
tuning:
  output_dir: results
  checkpoint_dir: checkpoint
  n_trials: {n_trials}
  seed: 5
  metric: "ner.micro.f"
  hyperparameters:
    "model.lr": {{alias: lr, type: float, low: 1e-4, high: 1.0, log: true}}
    "model.depth": {{type: int, low: 1, high: 8}}
    "model.act": {{type: categorical, choices: [relu, gelu]}}
hpc:
  workers: {workers}
  executor: local
  objective: synthetic
  synthetic: {{duration_s: 0.3, fail_trials: [1], crash_trials: [2], nan_trials: [0]}}
"""


def run_hpc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.yml").write_text(CONFIG.format(n_trials=8, workers=3))
    return tmp_path


def test_exact_trial_count_with_failures(sweep_dir: Path, database_url: str) -> None:
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]

    trials = load_trials(database_url)
    states = [trial.state for trial in trials]
    assert states.count(optuna.trial.TrialState.RUNNING) == 0
    by_number = {trial.number: trial for trial in trials}
    retries = {t.user_attrs["retry_of"]: t for t in trials if "retry_of" in t.user_attrs}
    # The raising trial and the self-killed one run again by the retry policy; NaN does not.
    assert sorted(retries) == [1, 2]
    assert by_number[1].state == optuna.trial.TrialState.FAIL
    assert "synthetic failure" in by_number[1].user_attrs["error"]
    assert by_number[2].state == optuna.trial.TrialState.FAIL
    assert "SIGKILL" in by_number[2].user_attrs["error"]
    for number, retry in retries.items():
        assert retry.state == optuna.trial.TrialState.COMPLETE
        assert retry.params == by_number[number].params
        assert retry.user_attrs["seed"] == by_number[number].user_attrs["seed"]
        assert by_number[number].user_attrs["retried_as"] == "queued"
    assert by_number[0].state == optuna.trial.TrialState.FAIL
    assert "metric is nan" in by_number[0].user_attrs["error"]
    assert "NonFiniteMetric" in by_number[0].user_attrs["retry_decision"]
    assert "retried_as" not in by_number[0].user_attrs
    # Exactly n_trials finished: a failed trial that ran again is counted once.
    finished = [t for t in trials if t.state.is_finished() and "retried_as" not in t.user_attrs]
    assert len(finished) == 8
    assert len(trials) == 10
    fresh = [t for t in trials if "retry_of" not in t.user_attrs]
    assert all(t.user_attrs["seed"] == 5 + t.number for t in fresh)
    assert len({trial.user_attrs["worker"] for trial in trials}) == 3
    assert all(Path(trial.user_attrs["trial_dir"]).is_dir() for trial in trials)

    logs = run_hpc("logs", "--config", "config.yml", "--trial", "1", cwd=sweep_dir)
    assert logs.returncode == 0, logs.stderr[-3000:]
    assert "Trial 1 started" in logs.stdout
    assert "Trial 1 failed" in logs.stdout
    assert "Trial 1 queued again as attempt 2" in logs.stdout
    assert "trial.log" in logs.stdout
    # The worker's own file and submitit's log contain the same lines: `logs` prints them once.
    printed = logs.stdout.split("\n== ")[0].splitlines()[1:]
    assert len(printed) == len(set(printed))
    missing = run_hpc("logs", "--config", "config.yml", "--trial", "999", cwd=sweep_dir)
    assert missing.returncode == 2
    assert "No log of trial 999" in missing.stderr
    assert "Report:" in result.stdout

    worker_logs = worker_log_lines(sweep_dir / "checkpoint")
    assert len(worker_logs) == 3
    for name, lines in worker_logs.items():
        first = lines[0]
        assert name == f"worker-{int(first['worker']):04d}.log"
        assert first["job"].startswith("local-")
        assert first["task"] == "-"
        assert first["message"].startswith(f"Worker {first['worker']} started on host ")
    every_line = [line for lines in worker_logs.values() for line in lines]
    assert_trial_events(every_line, retries[1].number)


def test_workers_start_with_distinct_values(sweep_dir: Path, database_url: str) -> None:
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    firsts = {}
    for trial in sorted(load_trials(database_url), key=lambda t: t.number):
        firsts.setdefault(trial.user_attrs["worker"], trial.params["lr"])
    assert len(set(firsts.values())) == 3


def test_rerun_continues_same_study(sweep_dir: Path, database_url: str) -> None:
    first = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert finished(load_trials(database_url)) == 8
    assert "Continuing study" in again.stderr

    more = run_hpc(
        "sweep",
        "--config",
        "config.yml",
        "--storage",
        database_url,
        "--n-trials",
        "10",
        cwd=sweep_dir,
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert finished(load_trials(database_url)) == 10


def test_changed_space_rejected(sweep_dir: Path, database_url: str) -> None:
    first = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    config = sweep_dir / "config.yml"
    config.write_text(config.read_text().replace("high: 8}", "high: 16}"))
    changed = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert changed.returncode == 2
    assert "the search space changed" in changed.stderr
    assert "changed 'model.depth'" in changed.stderr
    assert "'high': 16" in changed.stderr
    assert "hpc.sweep_name and another tuning.checkpoint_dir" in changed.stderr


def test_checkpoint_dir_private(sweep_dir: Path, database_url: str) -> None:
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep_dir / "checkpoint").stat().st_mode & 0o777 == 0o700
    assert (sweep_dir / "checkpoint" / "sweep.json").stat().st_mode & 0o777 == 0o600


def test_password_url_rejected_before_anything(sweep_dir: Path) -> None:
    result = run_hpc(
        "sweep",
        "--config",
        "config.yml",
        "--storage",
        "postgresql://u:hunter2@127.0.0.1/x",
        cwd=sweep_dir,
    )
    assert result.returncode == 2
    assert "hunter2" not in result.stderr + result.stdout
    assert "~/.pgpass" in result.stderr
    assert not (sweep_dir / "checkpoint").exists()


def test_embedded_server_without_storage(sweep_dir: Path) -> None:
    import json
    import shutil

    from hpc import embedded_pg

    env_free = {key: value for key, value in os.environ.items() if key != "HPC_TUNE_STORAGE"}
    command = [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml", "--n-trials", "3"]
    first = subprocess.run(
        command, cwd=sweep_dir, capture_output=True, text=True, timeout=300, env=env_free
    )
    state = json.loads((sweep_dir / "checkpoint" / "sweep.json").read_text())
    data_dir = Path(state["embedded"]["data_dir"])
    try:
        assert first.returncode == 0, first.stderr[-3000:]
        assert "@/hpc_tune?host=" in state["storage_url"]
        assert not embedded_pg.is_running(data_dir)

        again = subprocess.run(
            command, cwd=sweep_dir, capture_output=True, text=True, timeout=300, env=env_free
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "Continuing study" in again.stderr
        assert "Nothing left to run: n_trials reached (3 finished, 0 running)" in again.stdout
        assert not embedded_pg.is_running(data_dir)
    finally:
        if data_dir != sweep_dir / "checkpoint" / "postgres":
            shutil.rmtree(data_dir, ignore_errors=True)
            Path(f"{data_dir}.lock").unlink(missing_ok=True)


SLOW_CONFIG = CONFIG.replace(
    "synthetic: {{duration_s: 0.3, fail_trials: [1], crash_trials: [2], nan_trials: [0]}}",
    "synthetic: {{duration_s: 4.0}}",
)


def start_sweep(sweep_dir: Path, url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml", "--storage", url],
        cwd=sweep_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_killed_worker_trial_runs_again(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "config.yml").write_text(SLOW_CONFIG.format(n_trials=4, workers=2))
    sweep = start_sweep(tmp_path, database_url)
    victim = wait_for_running_trial(database_url, tmp_path)
    os.kill(worker_pid(database_url, victim.user_attrs["worker"]), signal.SIGKILL)
    stdout, stderr = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, stderr[-3000:]

    trials = {trial.number: trial for trial in load_trials(database_url)}
    lost = trials[victim.number]
    assert lost.state == optuna.trial.TrialState.FAIL
    assert lost.user_attrs["retried_as"] == "queued"
    [retry] = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert retry.state == optuna.trial.TrialState.COMPLETE
    assert retry.params == lost.params
    assert retry.user_attrs["seed"] == lost.user_attrs["seed"]
    complete = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    # The progress bar ends full, with the best value, and the report path comes last.
    progress = [line for line in stdout.splitlines() if " trials (complete " in line]
    assert progress[-1].startswith(f"[{'#' * 24}] 4/4 trials (complete 4, pruned 0, failed 0)")
    best = max(complete, key=lambda trial: trial.value or 0.0)
    assert f"best {best.value:.4g} (trial {best.number})" in progress[-1]
    assert stdout.rstrip().splitlines()[-1].startswith("Report: ")


def test_interrupted_sweep_resumes(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "config.yml").write_text(SLOW_CONFIG.format(n_trials=4, workers=2))
    sweep = start_sweep(tmp_path, database_url)
    wait_for_running_trial(database_url, tmp_path)
    os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    stdout, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130
    states = [t.state for t in load_trials(database_url)]
    assert optuna.trial.TrialState.RUNNING not in states
    # The count covers every trial queued again, by a stopped worker or by the reaper.
    waiting = states.count(optuna.trial.TrialState.WAITING)
    assert waiting >= 1
    noun = "trial" if waiting == 1 else "trials"
    assert f"Interrupted: workers stopped, {waiting} {noun} queued to run again first." in stdout
    assert f"Continue with: cd {tmp_path} && {sys.executable} -m hpc sweep --config " in stdout
    resubmit = run_hpc("resubmit", "--config", "config.yml", cwd=tmp_path)
    assert resubmit.returncode == 2
    assert "runs local workers: resubmit is for Slurm sweeps" in resubmit.stderr

    again = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = load_trials(database_url)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)


def test_cancel_local_sweep_then_continue(tmp_path: Path, database_url: str) -> None:
    # No retries allowed: a cancel must still queue the stopped trials again.
    config = SLOW_CONFIG.format(n_trials=4, workers=2)
    (tmp_path / "config.yml").write_text(
        config.replace("  workers:", "  max_retries: 0\n  workers:")
    )
    sweep = start_sweep(tmp_path, database_url)
    wait_for_running_trial(database_url, tmp_path)

    cancel = run_hpc("cancel", "--config", "config.yml", cwd=tmp_path)
    assert cancel.returncode == 0, cancel.stderr[-3000:]
    assert "interrupted the coordinator" in cancel.stdout
    sweep.communicate(timeout=120)
    assert sweep.returncode == 130
    stopped = load_trials(database_url)
    assert optuna.trial.TrialState.RUNNING not in [t.state for t in stopped]
    assert all("retried_as" in t.user_attrs for t in stopped if t.state.name == "FAIL")

    again = run_hpc("sweep", "--config", "config.yml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "was cancelled" in again.stdout
    trials = load_trials(database_url)
    assert finished(trials) == 4
    assert not [t for t in trials if t.state.name == "FAIL" and "retried_as" not in t.user_attrs]


def test_second_coordinator_rejected(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "config.yml").write_text(SLOW_CONFIG.format(n_trials=2, workers=1))
    sweep = start_sweep(tmp_path, database_url)
    wait_for_running_trial(database_url, tmp_path)
    second = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    sweep.communicate(timeout=300)
    assert second.returncode == 2
    assert "Another 'hpc sweep' runs this sweep" in second.stderr
    assert sweep.returncode == 0


def test_recorded_storage_reused(sweep_dir: Path, database_url: str) -> None:
    never = run_hpc("status", "--config", "config.yml", cwd=sweep_dir)
    assert never.returncode == 2
    assert "No sweep found" in never.stderr
    first = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    status = run_hpc("status", "--config", "config.yml", cwd=sweep_dir)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "8 of 8 trials finished" in status.stdout
    again = run_hpc("sweep", "--config", "config.yml", cwd=sweep_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Nothing left to run" in again.stdout
    assert finished(load_trials(database_url)) == 8


SMALL_SPACE = """\
model:
  act: relu
  depth: 1
tuning:
  output_dir: results
  checkpoint_dir: checkpoint
  n_trials: {n_trials}
  metric: "ner.micro.f"
  hyperparameters:
    "model.act": {{type: categorical, choices: [relu, gelu]}}
    "model.depth": {{type: int, low: 1, high: 3}}
hpc:
  workers: 8
  executor: local
  objective: synthetic
  synthetic: {{duration_s: 0.5}}
"""


def test_eight_workers_never_train_a_set_twice(tmp_path: Path, database_url: str) -> None:
    # 6 parameter sets and a budget of 10 trials: the space runs out before the budget.
    (tmp_path / "config.yml").write_text(SMALL_SPACE.format(n_trials=10))
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    trials = load_trials(database_url)
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    sets = [tuple(sorted(t.params.items())) for t in trained]
    assert len(sets) == len(set(sets))
    assert len(sets) == 6
    assert "Nothing left to run: search space exhausted (6 trials finished)" in result.stdout
    assert finished(trials) == 6
    summary = (tmp_path / "results" / "result_summary.txt").read_text()
    assert "Trials covered: 6," in summary


def test_gpu_hours_shared_by_four_workers(tmp_path: Path, database_url: str) -> None:
    trial_s, budget_s, workers = 2.0, 24.0, 4
    config = CONFIG.format(n_trials=1, workers=workers).replace(
        "  n_trials: 1\n", f"  gpu_hours: {budget_s / 3600}\n"
    )
    config = config.replace(
        "synthetic: {duration_s: 0.3, fail_trials: [1], crash_trials: [2], nan_trials: [0]}",
        f"synthetic: {{duration_s: {trial_s}}}",
    )
    (tmp_path / "config.yml").write_text(config)
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    trials = load_trials(database_url)
    spent_s = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    print(f"{len(trials)} trials spent {spent_s:.1f} s of a {budget_s:.0f} s budget")
    assert budget_s - trial_s <= spent_s <= budget_s + workers * trial_s
    assert "gpu_hours spent" in result.stdout
