"""Preflight on the QUAERO example with the tiny random BERT: each broken config fails fast."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from confit import Config
from confit.utils.collections import split_path

from tuner.errors import PreflightError
from tuner.preflight import preflight
from tuner.space import parse_hyperparameters

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quaero"
CONFIG_PATH = EXAMPLE / "config.yml"
TRANSFORMER_ALIASES = (
    "transformer_start_value",
    "transformer_max_value",
    "transformer_warmup_rate",
    "transformer_weight_decay",
)


@pytest.fixture
def config(tiny_bert: Path) -> Any:
    """The example config with absolute data and model paths."""
    loaded = Config.from_yaml_str(CONFIG_PATH.read_text(encoding="utf-8"))
    loaded["vars"]["train"] = str(EXAMPLE / "data" / "train")
    loaded["vars"]["dev"] = str(EXAMPLE / "data" / "dev")
    loaded["vars"]["model"] = str(tiny_bert)
    return loaded


def run_preflight(
    config: Any, metric: tuple[str, ...] = ("ner.micro.f",), path: Path = CONFIG_PATH
) -> None:
    hyperparameters = parse_hyperparameters(config["tuning"]["hyperparameters"])
    preflight(config, hyperparameters, [tuple(split_path(m)) for m in metric], path)


def problems_of(config: Any, **options: Any) -> list[str]:
    """Run preflight, expecting a PreflightError, and return its numbered problems."""
    with pytest.raises(PreflightError) as caught:
        run_preflight(config, **options)
    lines = str(caught.value).splitlines()
    assert re.match(r"Preflight found (1 problem|([2-9]|\d{2,}) problems) in ", lines[0]), lines[0]
    return [line.strip() for line in lines[1:]]


def rename_group(config: Any, old: str, new: str) -> None:
    """Rename an optimizer group and the hyperparameter paths under it, keeping the order."""
    groups = config["optimizer"]["groups"]
    config["optimizer"]["groups"] = Config({new if k == old else k: v for k, v in groups.items()})
    tuned = config["tuning"]["hyperparameters"]
    config["tuning"]["hyperparameters"] = Config(
        {k.replace(f"groups.{old}.", f"groups.{new}."): v for k, v in tuned.items()}
    )


def add_hyperparameter(config: Any, path: str, **spec: Any) -> None:
    config["tuning"]["hyperparameters"][path] = Config(spec)


def test_example_config_passes(config):
    run_preflight(config)


def test_unmatched_group_selector(config):
    rename_group(config, "transformer", "^transformer")

    (problem,) = problems_of(config)

    assert "optimizer.groups.^transformer matches no parameter" in problem
    for alias in TRANSFORMER_ALIASES:
        assert alias in problem
    assert "'ner.embedding.embedding.transformer.embeddings.word_embeddings.weight'" in problem
    assert "'transformer' or '^ner.embedding.embedding.transformer'" in problem


def test_shadowed_group_setting(config):
    groups = config["optimizer"]["groups"]
    config["optimizer"]["groups"] = Config(
        {".*": groups[".*"], "transformer": groups["transformer"]}
    )

    problems = problems_of(config)

    assert len(problems) == 2  # lr and weight_decay of the transformer group
    assert "optimizer.groups.transformer.lr: no parameter takes 'lr' from this group" in problems[0]
    assert "transformer_start_value, transformer_max_value, transformer_warmup_rate" in problems[0]
    assert "take it from '.*'" in problems[0]
    assert "transformer_weight_decay" in problems[1]


def test_unknown_optimizer_option(config):
    add_hyperparameter(
        config, "optimizer.groups.transformer.weight_decai", type="float", low=1e-4, high=1e-2
    )

    (problem,) = problems_of(config)

    assert (
        "optimizer.groups.transformer.weight_decai: AdamW has no option 'weight_decai'" in problem
    )
    assert "weight_decay" in problem


def test_missing_data_folder(config, tmp_path):
    missing = tmp_path / "no-such-folder"
    config["vars"]["train"] = str(missing)

    (problem,) = problems_of(config)

    assert problem.startswith("1. train_data.0.data.path (= ${vars.train}):")
    assert f"looked for {missing}" in problem


def test_relative_data_path_beside_config(config, tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    config["vars"]["train"] = "data/train"

    (problem,) = problems_of(config, path=tmp_path / "config.yml")

    assert "not from the config's folder" in problem
    assert str(tmp_path / "data" / "train") in problem


def test_standoff_folder_without_documents(config, tmp_path):
    config["vars"]["dev"] = str(tmp_path)

    (problem,) = problems_of(config)

    assert problem.startswith("1. val_data.path (= ${vars.dev}):")
    assert "contains no .txt file" in problem


def test_missing_model_folder(config, tmp_path):
    config["vars"]["model"] = str(tmp_path / "no-model")

    (problem,) = problems_of(config)

    assert problem.startswith("1. nlp.components.ner.embedding.embedding.model (= ${vars.model}):")
    assert "model folder" in problem
    assert "not found" in problem


def test_model_id_not_cached_offline(config, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config["vars"]["model"] = "hpc-tune-tests/no-such-model"

    (problem,) = problems_of(config)

    assert "'hpc-tune-tests/no-such-model' is neither a local folder nor in the Hugging" in problem
    assert "hf download hpc-tune-tests/no-such-model" in problem


def test_batch_size_expression(config):
    config["train_data"][0]["batch_size"] = "32 * 128 tokens"

    (problem,) = problems_of(config)

    assert "train_data.0.batch_size: invalid batch size '32 * 128 tokens'" in problem
    assert "Write '4096 tokens'." in problem


def test_unknown_metric(config):
    (problem,) = problems_of(config, metric=("ner.micro.fscore",))

    assert "tuning.metric: Metric 'ner.micro.fscore' not found" in problem
    assert "keys there: f, p, r, tp, support, positives" in problem


def test_metric_of_label_outside_sample(config):
    # LIVB occurs in the dev set but not in the documents scored by the untrained pipeline.
    run_preflight(config, metric=("ner.micro.f", "ner.LIVB.f"))


def test_metric_of_absent_label(config):
    (problem,) = problems_of(config, metric=("ner.DEVI.f",))

    assert "ner has no key 'DEVI'" in problem


def test_argument_not_accepted(config):
    add_hyperparameter(
        config, "nlp.components.ner.embedding.kernel_sizez", type="categorical", choices=[[3], [5]]
    )

    (problem,) = problems_of(config)

    assert "'nlp.components.ner.embedding.kernel_sizez'" in problem
    assert "does not accept an argument 'kernel_sizez'" in problem
    assert "kernel_sizes" in problem


def test_argument_rejected_by_model(config):
    add_hyperparameter(
        config,
        "nlp.components.ner.embedding.embedding.hiden_dropout_prob",
        type="float",
        low=0.0,
        high=0.3,
    )

    (problem,) = problems_of(config)  # one message for the low and the high build

    assert "'nlp.components.ner.embedding.embedding.hiden_dropout_prob'" in problem
    assert "unexpected keyword argument 'hiden_dropout_prob'" in problem


def test_invalid_categorical_choice(config):
    add_hyperparameter(
        config,
        "nlp.components.ner.embedding.embedding.window",
        type="categorical",
        choices=[128, "wide"],
    )

    (problem,) = problems_of(config)

    assert "the value 'wide' is invalid at nlp.components.ner.embedding.embedding.window" in problem


@pytest.mark.parametrize(
    "max_steps, interval, expected",
    [
        (10, 3, "Set max_steps to 12 or validation_interval to 2."),
        (25, None, "validation_interval (2, the default max_steps // 10)"),
        (5, None, "EDS-NLP's default interval, max_steps // 10, is 0"),
    ],
)
def test_last_validation_not_final(config, max_steps, interval, expected):
    config["train"]["max_steps"] = max_steps
    if interval is None:
        del config["train"]["validation_interval"]
    else:
        config["train"]["validation_interval"] = interval

    (problem,) = problems_of(config)

    assert expected in problem


def test_default_interval_dividing_max_steps(config):
    config["train"]["max_steps"] = 20  # validates at steps 2, 4, ..., 20
    del config["train"]["validation_interval"]

    run_preflight(config)


def test_all_problems_in_one_error(config, tmp_path):
    rename_group(config, "transformer", "^transformer")
    config["vars"]["dev"] = str(tmp_path / "missing-dev")
    config["train_data"][0]["batch_size"] = "32 * 16 tokens"
    config["train"]["validation_interval"] = 4

    problems = problems_of(config)

    assert len(problems) == 4
    assert [p.split(".", 1)[0] for p in problems] == ["1", "2", "3", "4"]
    joined = "\n".join(problems)
    for expected in ("'512 tokens'", "not a multiple", "val_data.path", "^transformer matches no"):
        assert expected in joined
