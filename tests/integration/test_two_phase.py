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


def run_sweep(folder: Path, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml", "--storage", url],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


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
    result = run_sweep(tmp_path, database_url)
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


def edge_config(**changes: object) -> dict:
    config = json.loads(json.dumps(CONFIG))
    config["tuning"]["n_trials"] = changes.pop("n_trials", 6)
    config["hpc"]["synthetic"] = {"duration_s": 0.1, **changes.pop("synthetic", {})}
    config["hpc"]["max_retries"] = 0
    if "pruner" in changes:
        config["tuning"]["pruner"] = changes.pop("pruner")
    if "extra_hyperparameter" in changes:
        config["model"]["norm"] = "layer"
        config["tuning"]["hyperparameters"]["model.norm"] = changes.pop("extra_hyperparameter")
    assert not changes
    return config


@pytest.mark.parametrize(
    ("config", "words", "reports"),
    [
        (
            edge_config(synthetic={"fail_trials": [0, 1, 2]}),
            "no trial completed (trial states: FAIL)",
            ["phase_1"],
        ),
        (
            edge_config(pruner={"type": "threshold", "lower": 2.0}),
            "no trial completed (trial states: PRUNED)",
            ["phase_1"],
        ),
        (edge_config(n_trials=2), "only 1 complete trial", ["phase_1", "phase_2"]),
        (
            edge_config(synthetic={"weights": {"lr": 0, "depth": 0, "act": 0, "dropout": 0}}),
            "fANOVA could not rank the parameters",
            ["phase_1", "phase_2"],
        ),
        (
            edge_config(extra_hyperparameter={"type": "categorical", "choices": ["layer"]}),
            "phase 2 tunes the 2 most important of 4",
            ["phase_1", "phase_2"],
        ),
    ],
    ids=["all-failed", "all-pruned", "one-complete", "constant-metric", "single-choice"],
)
def test_edge_cases_decide_and_report(
    tmp_path: Path, database_url: str, config: dict, words: str, reports: list[str]
) -> None:
    (tmp_path / "config.yml").write_text(json.dumps(config, indent=2))
    result = run_sweep(tmp_path, database_url)
    assert "Traceback" not in result.stderr
    assert f"Phase 1 is over: {words}" in result.stdout
    for phase in reports:
        assert (tmp_path / "results" / phase / "result_summary.txt").is_file()
    if reports == ["phase_1"]:
        assert result.returncode == 0, result.stderr[-3000:]
        summary = (tmp_path / "results" / "phase_1" / "result_summary.txt").read_text()
        assert "The sweep stops after phase 1" in summary
        assert not (tmp_path / "results" / "phase_2").exists()
    state = json.loads((tmp_path / "checkpoint" / "sweep.json").read_text())
    if "norm" in config["model"]:
        assert state["phase_plan"]["frozen"]["model.norm"] == "layer"
        assert "model.norm" not in state["phase_plan"]["kept"]
