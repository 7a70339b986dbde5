"""Local sweeps with the synthetic plug-in: real workers, real PostgreSQL, real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

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
  objective: synthetic
  synthetic: {{duration_s: 0.3, fail_trials: [1], crash_trials: [3], nan_trials: [4]}}
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


def load_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    from hpc.storage import optuna_storage, user_schema

    storage = optuna_storage(url, user_schema(), create_tables=False)
    [summary] = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(
        deepcopy=False
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
    assert len(trials) == 8
    assert states.count(optuna.trial.TrialState.RUNNING) == 0
    by_number = {trial.number: trial for trial in trials}
    assert by_number[1].state == optuna.trial.TrialState.FAIL
    assert "synthetic failure" in by_number[1].user_attrs["error"]
    assert by_number[3].state == optuna.trial.TrialState.FAIL
    assert "exited with code 3" in by_number[3].user_attrs["error"]
    assert by_number[4].state == optuna.trial.TrialState.FAIL
    assert "metric is nan" in by_number[4].user_attrs["error"]
    assert {trial.user_attrs["seed"] for trial in trials} == {5 + n for n in range(8)}
    assert len({trial.user_attrs["worker"] for trial in trials}) == 3
    assert all(Path(trial.user_attrs["trial_dir"]).is_dir() for trial in trials)
    assert "Report:" in result.stdout


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
    assert len(load_trials(database_url)) == 8
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
    assert len(load_trials(database_url)) == 10


def test_changed_space_rejected(sweep_dir: Path, database_url: str) -> None:
    first = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    config = sweep_dir / "config.yml"
    config.write_text(config.read_text().replace("high: 8}", "high: 16}"))
    changed = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=sweep_dir)
    assert changed.returncode == 2
    assert "search space or metric" in changed.stderr
    assert "hpc.sweep_name" in changed.stderr


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
        assert "Trials finished: 3/3" in again.stdout
        assert not embedded_pg.is_running(data_dir)
    finally:
        if data_dir != sweep_dir / "checkpoint" / "postgres":
            shutil.rmtree(data_dir, ignore_errors=True)
