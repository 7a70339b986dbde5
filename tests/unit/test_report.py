from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from pathlib import Path

import optuna
import pytest
from confit import Config

from tuner.errors import HpcTuneError
from tuner.report import ReportContext, compute_importances, write_report
from tuner.space import Hyperparameter, parse_hyperparameters, suggest_values

PLOTS = (
    "optimization_history.html",
    "edf.html",
    "contour.html",
    "parallel_coordinate.html",
    "timeline.html",
    "param_importances.html",
)

CONFIG = """\
# Small config for report tests
model:
  dropout: 0.1  # tuned
  window: 128
optimizer:
  groups:
    '.*':
      lr: 1e-5
  mode: "fast"
tuning:
  metric: "ner.micro.f"
  hyperparameters:
    "model.dropout":
      alias: "dropout"
      type: "float"
      low: 0.
      high: 0.5
    "optimizer.groups.'.*'.lr":
      alias: "lr"
      type: "float"
      low: 1e-6
      high: 1e-3
      log: True
    "model.window":
      alias: "window"
      type: "int"
      low: 64
      high: 512
    "optimizer.mode":
      alias: "mode"
      type: "ordered_categorical"
      choices: ["slow", "fast", "fastest"]
"""

CONTEXT = ReportContext(sweep_name="demo", metric=("ner.micro.f",), seed=42, n_trials_target=30)


@pytest.fixture()
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


@pytest.fixture()
def hyperparameters(config_path: Path) -> list[Hyperparameter]:
    return parse_hyperparameters(Config.from_disk(config_path)["tuning"]["hyperparameters"])


def _quadratic_study(
    hyperparameters: list[Hyperparameter],
    n_trials: int,
    storage: optuna.storages.BaseStorage | None = None,
    name: str = "demo.phase1",
    trial_root: str = "/checkpoint/trials",
) -> optuna.Study:
    """Return a study of a quadratic with 1 pruned, 1 failed, 1 running and 1 waiting trial."""
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage,
        study_name=name,
    )

    def objective(trial: optuna.Trial) -> float:
        values = suggest_values(trial, hyperparameters)
        trial.set_user_attr("seed", 1000 + trial.number)
        trial.set_user_attr("duration_s", 60.0)
        trial.set_user_attr("trial_dir", f"{trial_root}/{trial.number}")
        return -((values["dropout"] - 0.2) ** 2) - (values["window"] - 300) ** 2 / 1e5

    study.optimize(objective, n_trials=n_trials)
    for state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL):
        trial = study.ask()
        suggest_values(trial, hyperparameters)
        study.tell(trial, state=state)
    suggest_values(study.ask(), hyperparameters)  # left RUNNING
    study.enqueue_trial({"dropout": 0.1})
    return study


def _parse_like_edsnlp(text: str) -> tuple[dict, dict]:
    """Parse a summary with the rules of EDS-NLP 0.22's `_parse_study_summary`.

    A line equal to `Params:` or `Importances:` opens that section, and every later non-empty
    line is `key: json value` in the open section.
    """
    sections: dict[str, dict] = {"Params:": {}, "Importances:": {}}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if line in sections:
            current = sections[line]
        elif current is not None and line:
            key, value = (part.strip() for part in line.split(":", 1))
            current[key] = json.loads(value)
    return sections["Params:"], sections["Importances:"]


def test_report_writes_every_file(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 30)
    output_dir = tmp_path / "results" / "phase_1"

    returned = write_report(study, output_dir, config_path, hyperparameters, CONTEXT)

    assert returned == output_dir
    names = {path.name for path in output_dir.iterdir()}
    assert names == {
        "result_summary.txt",
        "results_summary.txt",
        "config.yml",
        "plotly.min.js",
        *PLOTS,
    }
    assert stat.S_IMODE(output_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(output_dir.parent.stat().st_mode) == 0o700
    link = output_dir / "results_summary.txt"
    assert link.is_symlink()
    assert os.readlink(link) == "result_summary.txt"


def test_summary_states_and_best_trial(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 30)

    write_report(study, tmp_path, config_path, hyperparameters, CONTEXT)

    summary = (tmp_path / "result_summary.txt").read_text()
    best = study.best_trial
    assert f"Best trial: {best.number}\n" in summary
    assert f"Value: {json.dumps(best.value)}\n" in summary
    assert "Metric: ner.micro.f (maximize)" in summary
    counts = {"COMPLETE": 30, "PRUNED": 1, "FAIL": 1, "RUNNING": 1, "WAITING": 1}
    for state, count in counts.items():
        assert f"  {state}: {count}\n" in summary
    assert "Trials covered: 34, numbers 0 to 33" in summary
    assert "Trials requested: 30" in summary
    assert "Sweep: demo" in summary
    assert "Sweep seed: 42" in summary
    assert f"Best trial's training seed: {1000 + best.number}" in summary
    assert f"Best trial's output: /checkpoint/trials/{best.number}" in summary
    versions = r"Versions: hpc-tune \S+, edsnlp \S+, optuna \S+, torch \S+, confit \S+"
    assert re.search(versions, summary)


def test_summary_states_cost_workers_data_and_command(
    tmp_path: Path, config_path: Path, hyperparameters
) -> None:
    study = _quadratic_study(hyperparameters, 10, trial_root=str(tmp_path / "trials"))
    best_dir = tmp_path / "trials" / f"{study.best_trial.number}"
    (best_dir / "model-last").mkdir(parents=True)
    context = dataclasses.replace(
        CONTEXT,
        gpus_per_trial=2,
        allocated_gpu_hours=0.75,
        workers="3 worker runs (slurm) on 2 hosts (gpu01, gpu02), in 3 Slurm job runs",
        data={"train.train_data.data.path": "/data/train: sha256 ab12 (40 files)"},
        train_command="cd /work && python -m edsnlp.train --config /results/config.yml",
    )

    write_report(study, tmp_path / "report", config_path, hyperparameters, context)

    summary = (tmp_path / "report" / "result_summary.txt").read_text()
    # 10 complete trials of 60 s, plus a pruned and a failed one that lasted no time.
    assert (
        "Trial time: 10 min 0 s, summed over 12 finished trials; median 1 min 0 s, max 1 min 0 s\n"
        in summary
    )
    assert "GPU-hours: 0.333 in finished trials (2 per trial), 0.750 held by the workers" in summary
    assert "Workers: 3 worker runs (slurm) on 2 hosts (gpu01, gpu02)" in summary
    assert "Training data:\n  train.train_data.data.path: /data/train: sha256 ab12" in summary
    assert f"Best trial's saved model: {best_dir / 'model-last'}\n" in summary
    seed = study.best_trial.user_attrs["seed"]
    assert (
        "Train the best config from scratch: cd /work && python -m edsnlp.train --config "
        f"/results/config.yml --train.seed {seed}\n"
    ) in summary


def test_summary_parses_like_edsnlp(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 30)

    write_report(study, tmp_path, config_path, hyperparameters, CONTEXT)

    params, importances = _parse_like_edsnlp((tmp_path / "results_summary.txt").read_text())
    expected = dict(study.best_trial.params)
    expected["mode"] = ["slow", "fast", "fastest"][expected["mode"]]
    assert params == expected
    assert list(params) == ["dropout", "lr", "window", "mode"]
    assert set(importances) == set(expected)
    assert list(importances.values()) == sorted(importances.values(), reverse=True)


def test_best_config_has_best_values(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 30)

    write_report(study, tmp_path, config_path, hyperparameters, CONTEXT)

    best = Config.from_disk(tmp_path / "config.yml")
    params = study.best_trial.params
    assert best["model"]["dropout"] == params["dropout"]
    assert best["model"]["window"] == params["window"]
    assert best["optimizer"]["groups"][".*"]["lr"] == params["lr"]
    assert best["optimizer"]["mode"] == ["slow", "fast", "fastest"][params["mode"]]
    assert "  dropout: " in (tmp_path / "config.yml").read_text()
    assert "# tuned" in (tmp_path / "config.yml").read_text()


def test_phase_two_lists_frozen_values(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    tuned_in_phase2 = [hp for hp in hyperparameters if hp.name in ("dropout", "window")]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda trial: -suggest_values(trial, tuned_in_phase2)["dropout"], n_trials=5)
    context = ReportContext(
        sweep_name="demo",
        metric=("ner.micro.f", "ner.micro.p"),
        seed=42,
        n_trials_target=5,
        phase=2,
        frozen_values={"lr": 2.5e-05, "mode": "fastest"},
    )

    write_report(study, tmp_path, config_path, hyperparameters, context)

    summary = (tmp_path / "result_summary.txt").read_text()
    params, _ = _parse_like_edsnlp(summary)
    assert list(params) == ["dropout", "window", "lr", "mode"]
    assert params["lr"] == 2.5e-05
    assert "Phase: 2\n" in summary
    assert "Frozen at their phase-1 best values, listed last under Params: lr, mode" in summary
    assert "Metric: mean of ner.micro.f, ner.micro.p" in summary
    best = Config.from_disk(tmp_path / "config.yml")
    assert best["optimizer"]["groups"][".*"]["lr"] == 2.5e-05
    assert best["optimizer"]["mode"] == "fastest"
    assert best["model"]["dropout"] == study.best_trial.params["dropout"]


def test_html_files_load_local_plotly(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 30)

    write_report(study, tmp_path, config_path, hyperparameters, CONTEXT)

    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000
    for name in PLOTS:
        html = (tmp_path / name).read_text()
        sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]*)\"", html)
        assert sources == ["plotly.min.js"], name
        assert "https://" not in html, name
        assert "Plotly.newPlot" in html, name
        assert (tmp_path / name).stat().st_size < 1_000_000, name


def test_contour_of_many_trials_stays_small(tmp_path: Path, config_path: Path) -> None:
    # Continuous parameters give the contour grid one row per trial: the worst case for size.
    continuous = parse_hyperparameters(
        {
            "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "optimizer.groups.'.*'.lr": {"type": "float", "low": 1e-6, "high": 1e-3, "log": True},
            "model.window": {"type": "float", "low": 64, "high": 512},
        }
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=2))
    study.optimize(lambda trial: sum(suggest_values(trial, continuous).values()), n_trials=150)

    write_report(study, tmp_path, config_path, continuous, CONTEXT, importances={})

    assert (tmp_path / "contour.html").stat().st_size < 1_000_000


def test_contour_skipped_with_one_parameter(
    tmp_path: Path, config_path: Path, hyperparameters
) -> None:
    dropout = [hp for hp in hyperparameters if hp.name == "dropout"]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    study.optimize(lambda trial: suggest_values(trial, dropout)["dropout"], n_trials=4)
    (tmp_path / "contour.html").write_text("stale contour of an earlier report")

    write_report(study, tmp_path, config_path, dropout, CONTEXT)

    assert not (tmp_path / "contour.html").exists()
    assert (tmp_path / "timeline.html").exists()


def test_report_covers_only_its_study(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    storage = optuna.storages.InMemoryStorage()
    _quadratic_study(hyperparameters, 12, storage=storage, name="demo.phase1")
    phase2 = _quadratic_study(hyperparameters, 5, storage=storage, name="demo.phase2")

    write_report(phase2, tmp_path, config_path, hyperparameters, CONTEXT)

    summary = (tmp_path / "result_summary.txt").read_text()
    assert "  COMPLETE: 5\n" in summary
    assert "Trials covered: 9, numbers 0 to 8" in summary


def test_retried_trial_counted_once(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 4)
    failed = study.ask()
    failed.set_user_attr("retried_as", "queued")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    lost = study.ask()
    study.tell(lost, state=optuna.trial.TrialState.FAIL)

    write_report(study, tmp_path, config_path, hyperparameters, CONTEXT)

    summary = (tmp_path / "result_summary.txt").read_text()
    assert "  FAIL: 2\n" in summary  # one of the helper, one not retried here
    assert "  retried: 1 (failed or stopped, then run again" in summary


def test_report_written_twice(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 10)

    write_report(study, tmp_path, config_path, hyperparameters, CONTEXT)
    first = (tmp_path / "result_summary.txt").read_text()
    write_report(study, tmp_path, config_path, hyperparameters, CONTEXT)

    assert (tmp_path / "results_summary.txt").read_text() == first
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_report_without_complete_trial_raises(
    tmp_path: Path, config_path: Path, hyperparameters
) -> None:
    study = optuna.create_study(direction="maximize")
    for state in (optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL):
        trial = study.ask()
        suggest_values(trial, hyperparameters)
        study.tell(trial, state=state)

    with pytest.raises(HpcTuneError, match="is COMPLETE .*PRUNED 1, FAIL 1"):
        write_report(study, tmp_path / "out", config_path, hyperparameters, CONTEXT)
    # Only a summary that explains why: no best config, no plot.
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "result_summary.txt",
        "results_summary.txt",
    ]
    summary = (tmp_path / "out" / "result_summary.txt").read_text()
    assert "so there is no best config and no plot" in summary


def test_unknown_frozen_value_raises(tmp_path: Path, config_path: Path, hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 3)
    context = ReportContext("demo", ("ner.micro.f",), 42, 3, phase=2, frozen_values={"typo": 1})

    with pytest.raises(HpcTuneError, match="typo"):
        write_report(study, tmp_path, config_path, hyperparameters, context)


def test_importances_rank_the_dominant_parameter(hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 30)

    importances = compute_importances(study, n_seeds=2)

    assert list(importances)[0] in ("dropout", "window")
    assert sum(importances.values()) == pytest.approx(1.0)
    assert list(importances.values()) == sorted(importances.values(), reverse=True)


def test_importances_of_one_trial_are_empty(hyperparameters) -> None:
    study = _quadratic_study(hyperparameters, 1)

    assert compute_importances(study) == {}


def test_importances_of_equal_values_are_empty(hyperparameters) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=4))
    study.optimize(lambda trial: len(suggest_values(trial, hyperparameters)), n_trials=5)

    assert compute_importances(study) == {}


def test_importances_use_the_best_trials(hyperparameters) -> None:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=5))
    # "dropout" separates the best trials from the rest, and among them only "window" matters.
    study.optimize(
        lambda trial: (
            (values := suggest_values(trial, hyperparameters))["window"] / 1e4
            + (10 if values["dropout"] < 0.25 else 0)
        ),
        n_trials=40,
    )
    n_best = sum(trial.params["dropout"] < 0.25 for trial in study.trials)

    importances = compute_importances(study, n_seeds=2, max_trials=n_best)

    assert list(importances)[0] == "window"
