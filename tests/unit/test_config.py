from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from confit import Config

from tuner.config import load_config, parse_duration_s, parse_tuning
from tuner.errors import ConfigError

BASE = """\
model:
  lr: 0.1
tuning:
  output_dir: results
  checkpoint_dir: checkpoint
  n_trials: 4
  metric: "ner.micro.f"
  hyperparameters:
    "model.lr": {type: float, low: 1e-4, high: 1.0, log: true}
"""


def write(tmp_path: Path, text: str, name: str = "config.yml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_tutorial_keys_loaded(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, BASE))
    assert loaded.tuning.n_trials == 4
    assert loaded.tuning.metric == ("ner.micro.f",)
    assert loaded.tuning.metric_parts == (("ner", "micro", "f"),)
    assert loaded.tuning.seed == 42
    assert loaded.tuning.seed_parts == ("train", "seed")
    assert loaded.tuning.pruner == {"type": "median", "n_startup_trials": 5, "min_validations": 5}


def test_overrides_win(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, BASE), overrides={"seed": 7, "n_trials": 9})
    assert loaded.tuning.seed == 7
    assert loaded.tuning.n_trials == 9


def test_unknown_key_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, BASE.replace("  n_trials: 4", "  n_trail: 4")))
    assert "unknown keys ['n_trail']" in str(error.value)
    assert "n_trials" in str(error.value)


def test_ignored_keys_warned(caplog: pytest.LogCaptureFixture) -> None:
    section = {
        "output_dir": "r",
        "checkpoint_dir": "c",
        "n_trials": 2,
        "hyperparameters": {"a.b": {"type": "int", "low": 1, "high": 2}},
        "gpu_ids": [0, 1],
        "keep_checkpoint": True,
    }
    with caplog.at_level(logging.WARNING):
        parse_tuning(section)
    assert "tuning.gpu_ids is ignored" in caplog.text
    assert "tuning.keep_checkpoint is ignored" in caplog.text


def test_missing_tuning_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no 'tuning:' section"):
        load_config(write(tmp_path, "model: {lr: 1}\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config("/nonexistent/config.yml")


def test_missing_intermediate_path(tmp_path: Path) -> None:
    text = BASE.replace('"model.lr"', '"modle.lr"')
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, text))
    assert "'modle' not found" in str(error.value)


def test_new_last_key_accepted(tmp_path: Path) -> None:
    # The last part may name an argument the component accepts; preflight checks it.
    loaded = load_config(write(tmp_path, BASE.replace('"model.lr"', '"model.dropout"')))
    assert loaded.tuning.hyperparameters[0].parts == ("model", "dropout")


def test_budget_defaults_to_one_gpu_hour(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, BASE.replace("  n_trials: 4\n", "")))
    assert loaded.tuning.n_trials is None
    assert loaded.tuning.gpu_hours == 1.0


def test_metric_list(tmp_path: Path) -> None:
    text = BASE.replace('metric: "ner.micro.f"', 'metric: ["ner.micro.f", "ner.micro.p"]')
    assert load_config(write(tmp_path, text)).tuning.metric == ("ner.micro.f", "ner.micro.p")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(90, 90.0), ("30s", 30.0), ("10m", 600.0), ("1.5h", 5400.0), ("2d", 172800.0)],
)
def test_duration_parsed(value: object, seconds: float) -> None:
    assert parse_duration_s(value) == seconds


def test_invalid_duration() -> None:
    with pytest.raises(ConfigError, match="tuning.timeout"):
        parse_duration_s("soon")


def test_cfg_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unsupported config format"):
        load_config(write(tmp_path, "[tuning]\n", name="config.cfg"))


def test_quoted_path_keys_load_without_warning(tmp_path: Path) -> None:
    # confit warns "Some values may be malformed JSON objects" for plain scalars with quotes.
    key = "optimizer.groups.'.*'.lr.warmup_rate"
    text = (
        "optimizer:\n  groups:\n    '.*':\n      lr:\n        warmup_rate: 0.1\n"
        + BASE
        + f"    {key}: {{type: float, low: 0.0, high: 0.3}}\n"
    )
    with pytest.warns(UserWarning, match="malformed JSON"):
        Config.from_yaml_str(text)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_config(write(tmp_path, text))
    assert [str(warning.message) for warning in caught] == []
    assert key in loaded.config["tuning"]["hyperparameters"]


def test_malformed_value_still_rejected(tmp_path: Path) -> None:
    # confit keeps "[4" as a string without the warning, and the key's validation rejects it.
    with pytest.raises(ConfigError, match="n_trials"):
        load_config(write(tmp_path, BASE.replace("n_trials: 4", "n_trials: '[4'")))


def test_warning_filter_restored(tmp_path: Path) -> None:
    load_config(write(tmp_path, BASE))
    with pytest.warns(UserWarning, match="malformed JSON"):
        Config.from_yaml_str("key: a,'b'\n")
