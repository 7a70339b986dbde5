from __future__ import annotations

import optuna
import pytest
from confit import Config

from tuner.errors import ConfigError
from tuner.space import (
    apply_values,
    get_path,
    parse_hyperparameters,
    preflight_assignments,
    suggest_values,
    user_values,
)

CONFIG = """
optimizer:
  groups:
    "transformer":
      lr: {max_value: 8e-5}
    ".*":
      weight_decay: 1e-3
      lr: {max_value: 8e-5}
train_data:
  - batch_size: 512 tokens
    data: {path: data}
"""


def test_quoted_path_kept_whole() -> None:
    [hp] = parse_hyperparameters(
        {
            "optimizer.groups.'.*'.lr.max_value": {
                "type": "float",
                "low": 1e-6,
                "high": 1e-3,
                "log": True,
            }
        }
    )
    assert hp.parts == ("optimizer", "groups", ".*", "lr", "max_value")
    assert hp.name == "optimizer.groups.'.*'.lr.max_value"


def test_alias_is_the_name() -> None:
    [hp] = parse_hyperparameters({"a.b": {"alias": "b", "type": "int", "low": 1, "high": 4}})
    assert hp.name == "b"
    assert hp.step == 1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "float", "low": 0.3, "high": 0.1}, "low (0.3) is greater than high (0.1)"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log-scale range needs low > 0"),
        ({"type": "floot", "low": 0, "high": 1}, "invalid value 'floot'"),
        ({"type": "categorical"}, "needs a non-empty list of choices"),
        ({"type": "float", "high": 1}, "low: missing"),
        ({"type": "float", "low": 0, "high": 1, "lo": 2}, "unknown keys ['lo']"),
        ({"type": "int", "low": 0.5, "high": 3}, "expected an integer"),
        ({"type": "float", "low": 1e-3, "high": 1, "log": True, "step": 0.1}, "cannot be combined"),
    ],
)
def test_invalid_entry_rejected(spec: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_hyperparameters({"model.x": spec})
    assert expected in str(error.value)
    assert "'model.x'" in str(error.value)


def test_string_bounds_parsed() -> None:
    # YAML 1.1 loaders read 1e-6 (no dot) as a string.
    [hp] = parse_hyperparameters(
        {"a.b": {"type": "float", "low": "1e-6", "high": "1e-3", "log": True}}
    )
    assert hp.low == pytest.approx(1e-6)


def test_duplicate_alias_rejected() -> None:
    with pytest.raises(ConfigError, match="more than one entry"):
        parse_hyperparameters(
            {
                "a.b": {"alias": "x", "type": "int", "low": 1, "high": 2},
                "a.c": {"alias": "x", "type": "int", "low": 1, "high": 2},
            }
        )


def test_apply_values_copies_config() -> None:
    config = Config.from_yaml_str(CONFIG)
    hps = parse_hyperparameters(
        {
            "optimizer.groups.'.*'.lr.max_value": {
                "alias": "lr",
                "type": "float",
                "low": 1e-5,
                "high": 1e-3,
            },
            "train_data.0.batch_size": {
                "alias": "bs",
                "type": "categorical",
                "choices": ["256 tokens"],
            },
        }
    )
    updated = apply_values(config, hps, {"lr": 5e-4, "bs": "256 tokens"})
    assert get_path(updated, ("optimizer", "groups", ".*", "lr", "max_value")) == 5e-4
    assert updated["train_data"][0]["batch_size"] == "256 tokens"
    assert config["optimizer"]["groups"][".*"]["lr"]["max_value"] == pytest.approx(8e-5)


def test_missing_intermediate_key_named() -> None:
    config = Config.from_yaml_str(CONFIG)
    hps = parse_hyperparameters({"optimizer.grops.x.lr": {"type": "float", "low": 0, "high": 1}})
    with pytest.raises(ConfigError) as error:
        apply_values(config, hps, {hps[0].name: 0.5})
    message = str(error.value)
    assert "'grops' not found under optimizer" in message
    assert "'groups'" in message


def test_list_index_out_of_range() -> None:
    config = Config.from_yaml_str(CONFIG)
    hps = parse_hyperparameters(
        {"train_data.3.batch_size": {"type": "categorical", "choices": [1]}}
    )
    with pytest.raises(ConfigError, match="list of 1 items"):
        apply_values(config, hps, {hps[0].name: 1})


def test_suggest_and_map_back_ordered_categorical() -> None:
    hps = parse_hyperparameters(
        {
            "a.size": {"type": "ordered_categorical", "choices": ["small", "medium", "large"]},
            "a.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        }
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    values = suggest_values(trial, hps)
    assert values["a.size"] in ("small", "medium", "large")
    assert isinstance(trial.params["a.size"], int)
    assert user_values(trial.params, hps)["a.size"] == values["a.size"]
    assert 1e-4 <= values["a.lr"] <= 1e-2


def test_preflight_assignments_cover_bounds_and_choices() -> None:
    hps = parse_hyperparameters(
        {
            "a.x": {"type": "float", "low": 0.0, "high": 1.0},
            "a.c": {"type": "categorical", "choices": ["p", "q", "r"]},
        }
    )
    assignments = preflight_assignments(hps)
    assert assignments[0] == {"a.x": 0.0, "a.c": "p"}
    assert assignments[1] == {"a.x": 1.0, "a.c": "p"}
    assert {"a.x": 0.0, "a.c": "q"} in assignments
    assert {"a.x": 0.0, "a.c": "r"} in assignments
    assert len(assignments) == 4
