"""Two-phase sweeps with the synthetic plug-in on local workers and a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from sweep_helpers import finished

from hpc.storage import optuna_storage, user_schema

pytestmark = pytest.mark.integration

CONFIG = {
    "model": {"lr": 0.1, "depth": 3, "act": "relu", "dropout": 0.1},
    "tuning": {
        "output_dir": "results",
        "checkpoint_dir": "checkpoint",
        "n_trials": 40,
        "two_phase_tuning": True,
        "metric": "ner.micro.f",
        "hyperparameters": {
            "model.lr": {"alias": "lr", "type": "float", "low": 0.0, "high": 1.0},
            "model.depth": {"alias": "depth", "type": "int", "low": 1, "high": 8},
            "model.act": {"alias": "act", "type": "categorical", "choices": ["relu", "gelu"]},
            "model.dropout": {"alias": "dropout", "type": "float", "low": 0.0, "high": 0.5},
        },
    },
    "hpc": {
        "workers": 2,
        "executor": "local",
        "objective": "synthetic",
        # Only lr and depth move the score.
        "synthetic": {"duration_s": 0.1, "weights": {"act": 0, "dropout": 0}},
    },
}


def studies(url: str) -> dict[str, optuna.Study]:
    storage = optuna_storage(url, user_schema(), create_tables=False)
    return {
        summary.study_name.rsplit(".", 1)[1]: optuna.load_study(
            study_name=summary.study_name, storage=storage
        )
        for summary in optuna.get_all_study_summaries(storage)
    }


def summary_section(text: str, title: str) -> list[str]:
    lines = text.split(f"\n{title}:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    return [line.strip().split(":")[0] for line in lines if line.strip()]


def test_phase_two_tunes_the_two_parameters_that_matter(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "config.yml").write_text(json.dumps(CONFIG, indent=2))
    result = subprocess.run(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml", "--storage", database_url],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Phase 1 is over: phase 2 tunes the 2 most important of 4" in result.stdout

    by_phase = studies(database_url)
    first, second = by_phase["phase1"], by_phase["phase2"]
    assert finished(first.get_trials()) == 20
    assert finished(second.get_trials()) == 20
    # Phase 2 samples only the kept parameters; the others stay at phase 1's best values.
    assert {name for t in second.get_trials() for name in t.params} == {"lr", "depth"}
    best_first = first.best_trial
    [start] = [t for t in second.get_trials() if t.user_attrs.get("phase_1_best")]
    assert start.number == 0
    assert start.params == {"lr": best_first.params["lr"], "depth": best_first.params["depth"]}

    phase_1 = (tmp_path / "results" / "phase_1" / "result_summary.txt").read_text()
    # The kept parameters are the top half of the importances the phase-1 report lists.
    assert set(summary_section(phase_1, "Importances")[:2]) == {"lr", "depth"}
    phase_2 = (tmp_path / "results" / "phase_2" / "result_summary.txt").read_text()
    assert "Frozen at their phase-1 best values, listed last under Params: act, dropout" in phase_2
    best_config = yaml.safe_load((tmp_path / "results" / "phase_2" / "config.yml").read_text())
    assert best_config["model"]["act"] == best_first.params["act"]
    assert best_config["model"]["dropout"] == best_first.params["dropout"]
    assert set(best_config["model"]) == {"lr", "depth", "act", "dropout"}

    state = json.loads((tmp_path / "checkpoint" / "sweep.json").read_text())
    assert state["phase"] == 2
    assert state["phase_plan"]["kept"] in (["lr", "depth"], ["depth", "lr"])
