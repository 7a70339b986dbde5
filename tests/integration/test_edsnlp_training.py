"""Real EDS-NLP trainings of the QUAERO example on the tiny random BERT, a few seconds each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from confit import Config

from tuner.errors import TrialError
from tuner.training import PruneRequested, train_trial, warm_up

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quaero"
METRIC = [("ner", "micro", "f")]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def example_config(model: Path, output_dir: Path, **train: Any) -> Any:
    """Return the example config with absolute paths and the given `train` values."""
    config = Config.from_yaml_str((EXAMPLE / "config.yml").read_text(encoding="utf-8"))
    config["vars"]["train"] = str(EXAMPLE / "data" / "train")
    config["vars"]["dev"] = str(EXAMPLE / "data" / "dev")
    config["vars"]["model"] = str(model)
    config["train"]["output_dir"] = str(output_dir)
    config["train"]["seed"] = 3
    for key, value in train.items():
        config["train"][key] = value
    return config


def test_trial_reports_each_validation(tiny_bert, tmp_path):
    scores: list[tuple[int, float]] = []
    config = example_config(tiny_bert, tmp_path / "trial")

    value = train_trial(config, METRIC, lambda step, score: scores.append((step, score)))

    assert [step for step, _ in scores] == [5, 10]
    assert value == scores[-1][1]
    assert 0.0 <= value <= 1.0
    assert (tmp_path / "trial" / "model-last" / "config.cfg").is_file()


def test_trial_averages_metric_paths(tiny_bert, tmp_path):
    config = example_config(tiny_bert, tmp_path / "trial", max_steps=2, validation_interval=2)
    paths = [("ner", "micro", "f"), ("ner", "micro", "p")]

    value = train_trial(config, paths, lambda step, score: None)

    saved = (tmp_path / "trial" / "val_metrics_last.json").read_text(encoding="utf-8")
    micro = json.loads(saved)["ner"]["micro"]
    assert value == pytest.approx((micro["f"] + micro["p"]) / 2)


def test_prune_request_stops_training(tiny_bert, tmp_path):
    steps: list[int] = []

    def prune_at_first(step: int, score: float) -> None:
        steps.append(step)
        raise PruneRequested(f"pruned at step {step}")

    config = example_config(tiny_bert, tmp_path / "trial")
    with pytest.raises(PruneRequested, match="pruned at step 5"):
        train_trial(config, METRIC, prune_at_first)
    assert steps == [5]


def test_final_model_scored_between_validations(tiny_bert, tmp_path):
    # EDS-NLP 0.22 validates at step 5 only, so the trial scores the step-7 model itself.
    scores: list[tuple[int, float]] = []
    config = example_config(tiny_bert, tmp_path / "trial", max_steps=7, validation_interval=5)

    value = train_trial(config, METRIC, lambda step, score: scores.append((step, score)))

    assert [step for step, _ in scores] == [5, 7]
    assert value == scores[-1][1]


def test_missing_metric_fails_trial(tiny_bert, tmp_path):
    config = example_config(tiny_bert, tmp_path / "trial")
    with pytest.raises(TrialError, match="ner.micro has no key 'fscore'"):
        train_trial(config, [("ner", "micro", "fscore")], lambda step, score: None)


def test_nan_loss_fails_trial(tiny_bert, tmp_path):
    config = example_config(tiny_bert, tmp_path / "trial")
    for group in config["optimizer"]["groups"].values():
        group["lr"]["start_value"] = 1e30
        group["lr"]["max_value"] = 1e30

    with pytest.raises(TrialError, match="NaN loss") as caught:
        train_trial(config, METRIC, lambda step, score: None)
    assert "Lower the learning rates" in str(caught.value)


def test_tuned_dropout_reaches_model(tiny_bert, tmp_path):
    from tuner.training import resolve_training

    config = example_config(tiny_bert, tmp_path / "trial")
    config["nlp"]["components"]["ner"]["embedding"]["embedding"]["hidden_dropout_prob"] = 0.25
    warm_up(config)

    nlp = resolve_training(config)["nlp"]
    transformer = nlp.get_pipe("ner").embedding.embedding.transformer
    assert transformer.config.hidden_dropout_prob == 0.25
