from __future__ import annotations

from pathlib import Path

import pytest
from confit import Config
from ruamel.yaml import YAML

from tuner.best_config import write_best_config
from tuner.errors import ConfigError, HpcTuneError
from tuner.space import Hyperparameter, get_path, parse_hyperparameters

DATA = Path(__file__).parent / "data"
TUTORIAL_CONFIG = DATA / "tutorial_config.yml"
EXAMPLE_CONFIG = Path(__file__).parents[2] / "examples" / "quaero" / "config.yml"

# Comments, quoted keys with dots and regex selectors, a list index path, exponent floats,
# flow lists, booleans and nulls in several spellings.
RICH_CONFIG = """\
# Training config
nlp:
  components:
    ner:
      mode: 'joint'  # or "independent"
      span_setter: [ "ents", "*" ]
      "eds.sentences": {split: true}
      use_crf: True
      window: ~
      stride:
optimizer:
  "@core": optimizer
  groups:
    "^transformer.encoder":
      lr: 1e-5   # transformer rate
      weight_decay: 1.0E-3
    '.*':
      lr: 3e-4
      weight_decay: 0.01
train_data:
  - data: {path: ./train}
    batch_size: 32 tokens
    pipe_names: [ "ner" ]
  - data: {path: ./extra}
    batch_size: 16 tokens
long_comment: "a value whose line is longer than eighty characters, so that ruamel could fold it"
"""

RICH_VALUES = {
    "mode": "independent",
    "use_crf": False,
    "transformer_lr": 2.6166824537825312e-05,
    "other_lr": 1e-05,
    "selector_wd": 0.05,
    "second_batch": "64 tokens",
    "window": 128,
}


def _hp(path: str, name: str, type: str = "float") -> Hyperparameter:
    hyperparameters = parse_hyperparameters(
        {path: {"alias": name, "type": type, "choices": ["x"]}}
        if type == "categorical"
        else {path: {"alias": name, "type": type, "low": 0, "high": 1}}
    )
    return hyperparameters[0]


RICH_HYPERPARAMETERS = [
    _hp("nlp.components.ner.mode", "mode", "categorical"),
    _hp("nlp.components.ner.use_crf", "use_crf", "categorical"),
    _hp('optimizer.groups."^transformer.encoder".lr', "transformer_lr"),
    _hp("optimizer.groups.'.*'.lr", "other_lr"),
    _hp("optimizer.groups.'.*'.weight_decay", "selector_wd"),
    _hp("train_data.1.batch_size", "second_batch", "categorical"),
    _hp("nlp.components.ner.window", "window", "int"),
]


def _write_rich(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "config.yml"
    source.write_text(RICH_CONFIG, encoding="utf-8")
    dest = tmp_path / "out" / "config.yml"
    write_best_config(source, dest, RICH_HYPERPARAMETERS, RICH_VALUES)
    return source, dest


def _changed_lines(before: str, after: str) -> dict[int, tuple[str, str]]:
    old_lines, new_lines = before.splitlines(), after.splitlines()
    assert len(old_lines) == len(new_lines), after
    return {
        number: (old, new)
        for number, (old, new) in enumerate(zip(old_lines, new_lines, strict=True))
        if old != new
    }


def test_rich_config_changes_only_value_lines(tmp_path: Path) -> None:
    source, dest = _write_rich(tmp_path)

    changed = _changed_lines(source.read_text(), dest.read_text())

    assert changed == {
        # ruamel keeps a comment's column and, when the new value reaches it, leaves one space.
        4: (
            "      mode: 'joint'  # or \"independent\"",
            "      mode: 'independent' # or \"independent\"",
        ),
        7: ("      use_crf: True", "      use_crf: False"),
        8: ("      window: ~", "      window: 128"),
        14: (
            "      lr: 1e-5   # transformer rate",
            "      lr: 2.6166824537825312e-05 # transformer rate",
        ),
        17: ("      lr: 3e-4", "      lr: 1e-05"),
        18: ("      weight_decay: 0.01", "      weight_decay: 0.05"),
        24: ("    batch_size: 16 tokens", "    batch_size: 64 tokens"),
    }


def test_rich_config_loads_best_values_in_confit(tmp_path: Path) -> None:
    source, dest = _write_rich(tmp_path)

    original = Config.from_disk(source)
    best = Config.from_disk(dest)

    for hp in RICH_HYPERPARAMETERS:
        assert get_path(best, hp.parts) == RICH_VALUES[hp.name], hp.path
    ner, original_ner = best["nlp"]["components"]["ner"], original["nlp"]["components"]["ner"]
    assert ner["stride"] == original_ner["stride"]
    assert ner["span_setter"] == ["ents", "*"]
    assert best["optimizer"]["groups"]["^transformer.encoder"]["weight_decay"] == 1e-3
    assert best["train_data"][0]["batch_size"] == "32 tokens"


def test_new_last_key_is_appended(tmp_path: Path) -> None:
    source = tmp_path / "config.yml"
    source.write_text("model:\n  window: 128  # tokens\n", encoding="utf-8")
    dest = tmp_path / "best.yml"

    write_best_config(source, dest, [_hp("model.stride", "stride", "int")], {"stride": 96})

    assert dest.read_text() == "model:\n  window: 128  # tokens\n  stride: 96\n"


def test_four_space_indent_and_document_start_kept(tmp_path: Path) -> None:
    text = "---\nroot:\n    items:\n        - name: a\n          size: 1\n    rate: 0.5\n"
    source = tmp_path / "config.yaml"
    source.write_text(text, encoding="utf-8")
    dest = tmp_path / "best.yml"

    write_best_config(source, dest, [_hp("root.rate", "rate")], {"rate": 0.25})

    assert dest.read_text() == text.replace("rate: 0.5", "rate: 0.25")


def test_tutorial_config_changes_only_tuned_lines(tmp_path: Path) -> None:
    text = TUTORIAL_CONFIG.read_text(encoding="utf-8")
    hyperparameters = parse_hyperparameters(Config.from_yaml_str(text)["tuning"]["hyperparameters"])
    values = {hp.name: _inside(hp, 0.37) for hp in hyperparameters}
    dest = tmp_path / "config.yml"

    write_best_config(TUTORIAL_CONFIG, dest, hyperparameters, values)

    expected_lines = {_value_line(text, hp) for hp in hyperparameters}
    changed = _changed_lines(text, dest.read_text())
    assert set(changed) == expected_lines
    for old, new in changed.values():
        assert old.split(":")[0] == new.split(":")[0]  # same key, same quotes
    best = Config.from_disk(dest)
    for hp in hyperparameters:
        assert get_path(best, hp.parts) == values[hp.name], hp.path


@pytest.mark.skipif(not EXAMPLE_CONFIG.exists(), reason="examples/quaero/config.yml is missing")
def test_example_config_keeps_comments(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    hyperparameters = parse_hyperparameters(Config.from_yaml_str(text)["tuning"]["hyperparameters"])
    values = {hp.name: _inside(hp, 1.0) for hp in hyperparameters}
    dest = tmp_path / "config.yml"

    write_best_config(EXAMPLE_CONFIG, dest, hyperparameters, values)

    written = dest.read_text(encoding="utf-8")
    comments = [line for line in text.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in written.splitlines() if line.lstrip().startswith("#")] == comments
    best = Config.from_disk(dest)
    for hp in hyperparameters:
        assert get_path(best, hp.parts) == values[hp.name], hp.path


def test_cfg_file_raises(tmp_path: Path) -> None:
    source = tmp_path / "config.cfg"
    source.write_text("[train]\nmax_steps = 10\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="config.cfg.*YAML"):
        write_best_config(source, tmp_path / "out.yml", [_hp("train.lr", "lr")], {"lr": 0.1})


def test_missing_intermediate_key_raises(tmp_path: Path) -> None:
    source = tmp_path / "config.yml"
    source.write_text("optimizer:\n  lr: 0.1\n", encoding="utf-8")
    hp = _hp("optimizer.groups.'.*'.lr", "lr")

    with pytest.raises(ConfigError, match="groups"):
        write_best_config(source, tmp_path / "out.yml", [hp], {"lr": 0.2})


def test_missing_value_raises(tmp_path: Path) -> None:
    source = tmp_path / "config.yml"
    source.write_text("optimizer:\n  lr: 0.1\n", encoding="utf-8")

    with pytest.raises(HpcTuneError, match="'lr'"):
        write_best_config(source, tmp_path / "out.yml", [_hp("optimizer.lr", "lr")], {})


def test_missing_source_raises(tmp_path: Path) -> None:
    source = tmp_path / "moved.yml"

    with pytest.raises(ConfigError, match="moved.yml"):
        write_best_config(source, tmp_path / "out.yml", [_hp("optimizer.lr", "lr")], {"lr": 1})


def test_invalid_yaml_raises(tmp_path: Path) -> None:
    source = tmp_path / "config.yml"
    source.write_text("optimizer: [unclosed\n", encoding="utf-8")

    with pytest.raises(ConfigError, match="invalid YAML"):
        write_best_config(source, tmp_path / "out.yml", [_hp("optimizer.lr", "lr")], {"lr": 1})


def _inside(hp: Hyperparameter, fraction: float) -> float:
    """Return the value at `fraction` of the way from `hp.low` to `hp.high`."""
    assert hp.low is not None and hp.high is not None
    return hp.low + (hp.high - hp.low) * fraction


def _value_line(text: str, hp: Hyperparameter) -> int:
    """Return the 0-based line of the value at `hp.parts` in `text`, as ruamel records it."""
    node = YAML(typ="rt").load(text)
    for part in hp.parts[:-1]:
        node = node[part]
    return node.lc.value(hp.parts[-1])[0]
