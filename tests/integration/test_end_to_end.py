"""End to end: `python -m hpc sweep` on the QUAERO example with real EDS-NLP training."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quaero"
PLOTS = (
    "optimization_history",
    "edf",
    "contour",
    "parallel_coordinate",
    "timeline",
    "param_importances",
)


def example_config(tmp_path: Path, tiny_bert: Path, n_trials: int) -> Path:
    text = (EXAMPLE / "config.yml").read_text()
    text = text.replace("examples/quaero/data/", f"{EXAMPLE / 'data'}/")
    text = re.sub(r"model: 'examples/quaero/models/tiny-bert'", f"model: '{tiny_bert}'", text)
    text = re.sub(r"n_trials: \d+", f"n_trials: {n_trials}", text)
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def run_sweep(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "hpc",
            "sweep",
            "--config",
            "config.yml",
            "--executor",
            "local",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_example_sweep_writes_report(tmp_path: Path, tiny_bert: Path, database_url: str) -> None:
    example_config(tmp_path, tiny_bert, n_trials=3)
    result = run_sweep(tmp_path, "--storage", database_url, "--workers", "2")
    assert result.returncode == 0, result.stderr[-4000:]

    report = tmp_path / "results" / "quaero"
    assert f"Report: {report}" in result.stdout
    summary = (report / "result_summary.txt").read_text()
    assert "COMPLETE: 3" in summary
    assert "Trials covered: 3" in summary
    assert (report / "results_summary.txt").resolve() == (report / "result_summary.txt").resolve()
    for name in PLOTS:
        html = report / f"{name}.html"
        assert html.is_file(), name
        assert html.stat().st_size < 1_000_000
    best_config = (report / "config.yml").read_text()
    assert "# 🤖 PIPELINE DEFINITION" in best_config
    assert "\"optimizer.groups.'.*'.lr.max_value\":" in best_config

    trials = sorted((tmp_path / "checkpoint" / "quaero" / "trials").iterdir())
    assert len(trials) == 3
    assert all((trial / "metrics.json").is_file() for trial in trials)
    models = [trial for trial in trials if (trial / "model-last").is_dir()]
    assert len(models) == 1


def test_preflight_stops_tutorial_mistakes(
    tmp_path: Path, tiny_bert: Path, database_url: str
) -> None:
    config = example_config(tmp_path, tiny_bert, n_trials=2)
    text = config.read_text().replace('"transformer":\n', '"^transformer":\n', 1)
    text = text.replace("optimizer.groups.transformer.", "optimizer.groups.^transformer.")
    text = re.sub(r"batch_size: \d+ tokens", "batch_size: 32 * 128 tokens", text)
    config.write_text(text)
    result = run_sweep(tmp_path, "--storage", database_url)
    assert result.returncode == 2, result.stderr[-4000:]
    assert "'4096 tokens'" in result.stderr
    assert "^transformer" in result.stderr
    assert not (tmp_path / "checkpoint" / "quaero" / "trials").exists()


def test_data_loader_workers_in_trials(tmp_path: Path, tiny_bert: Path, database_url: str) -> None:
    # EDS-NLP's num_workers > 0 starts data loader processes from the trial process.
    config = example_config(tmp_path, tiny_bert, n_trials=1)
    config.write_text(re.sub(r"num_workers: \d+", "num_workers: 1", config.read_text()))
    result = run_sweep(tmp_path, "--storage", database_url, "--workers", "1")
    assert result.returncode == 0, result.stderr[-4000:]
    summary = (tmp_path / "results" / "quaero" / "result_summary.txt").read_text()
    assert "COMPLETE: 1" in summary
    log = (tmp_path / "checkpoint" / "quaero" / "trials" / "00000" / "trial.log").read_text()
    assert "daemonic" not in log


def test_two_phase_on_slurm(tmp_path: Path, tiny_bert: Path, database_url: str) -> None:
    """Phase 1 on Slurm, then its finalize job promotes the sweep and phase 2 runs there."""
    from sweep_helpers import skip_without_slurm, wait_for_sweep_jobs

    skip_without_slurm()
    # 3 trials per phase: the fewest with which fANOVA ranks the parameters.
    config = example_config(tmp_path, tiny_bert, n_trials=6)
    text = config.read_text().replace("two_phase_tuning: False", "two_phase_tuning: True")
    text = text.replace(
        "  executor: auto",
        "  executor: slurm\n  workers: 1\n"
        "  slurm: {gpus_per_task: 0, cpus_per_task: 1, mem_gb: 2, time_min: 20}",
    )
    text = text.replace("  workers: 2\n", "", 1)
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml"]
        + ["--storage", database_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    wait_for_sweep_jobs(tmp_path / "checkpoint" / "quaero", timeout_s=800)

    report = tmp_path / "results" / "quaero"
    assert (report / "phase_1" / "result_summary.txt").is_file()
    summary = (report / "phase_2" / "result_summary.txt").read_text()
    assert "Frozen at their phase-1 best values" in summary
    best = (report / "phase_2" / "config.yml").read_text()
    for alias in ("hidden_dropout", "attention_dropout", "classifier_dropout"):
        assert f"{alias}:" in summary
    assert "hidden_dropout_prob:" in best
    assert "classifier_dropout:" in best
    check_training_command(tmp_path, report / "phase_2")


def check_training_command(workdir: Path, report: Path) -> None:
    """Run the summary's training command; check it trains with every tuned and frozen value."""
    from confit import Config
    from confit.utils.collections import split_path

    from tuner.config import load_config
    from tuner.space import get_path

    summary = (report / "result_summary.txt").read_text()
    prefix = "Train the best config from scratch: "
    [command] = [line[len(prefix) :] for line in summary.splitlines() if line.startswith(prefix)]
    assert f"--config {report / 'config.yml'}" in command
    assert "--train.seed " in command
    # Users run it with their environment's python; here that is the test's interpreter.
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    trained = subprocess.run(
        command,
        shell=True,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": path},
    )
    assert trained.returncode == 0, trained.stderr[-4000:]

    used = Config.from_disk(workdir / "artifacts" / "train_config.yml")
    best = Config.from_disk(report / "config.yml")
    hyperparameters = load_config(report / "config.yml").tuning.hyperparameters
    assert len(hyperparameters) == 11
    for hp in hyperparameters:
        parts = tuple(split_path(hp.path))
        assert get_path(used, parts) == get_path(best, parts), hp.path
        assert f"  {hp.name}: " in summary, hp.name
    assert str(used["train"]["seed"]) == command.rsplit(" ", 1)[1]
    assert (workdir / "artifacts" / "model-last").is_dir()
