"""Time inside EDS-NLP's train(): measured in the trial, sent by the trial host to the worker."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from confit import Config

from hpc.trial_host import TrialHost
from tuner.config import load_config
from tuner.objectives import ObjectiveSpec, TrialRequest
from tuner.training import PruneRequested, TrainTime, train_trial

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quaero"
METRIC = [("ner", "micro", "f")]


def example_config_file(folder: Path, model: Path) -> Path:
    """Write the example config with absolute data and model paths into `folder`."""
    text = (EXAMPLE / "config.yml").read_text(encoding="utf-8")
    text = text.replace("'examples/quaero/data/", f"'{EXAMPLE / 'data'}/")
    text = re.sub(r"model: 'examples/quaero/models/tiny-bert'", f"model: '{model}'", text)
    path = folder / "config.yml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def test_train_time_sums_calls(tiny_bert: Path, tmp_path: Path) -> None:
    config = Config.from_yaml_str(example_config_file(tmp_path, tiny_bert).read_text())
    train_time = TrainTime()
    walls = []
    for number in range(2):
        config["train"]["output_dir"] = str(tmp_path / f"trial-{number}")
        started = time.monotonic()
        train_trial(config, METRIC, lambda step, score: None, train_time)
        walls.append(time.monotonic() - started)
        if number == 0:
            first_s = train_time.seconds

    assert 0 < first_s < walls[0]
    assert first_s < train_time.seconds < sum(walls)


def test_train_time_kept_when_pruned(tiny_bert: Path, tmp_path: Path) -> None:
    config = Config.from_yaml_str(example_config_file(tmp_path, tiny_bert).read_text())
    config["train"]["output_dir"] = str(tmp_path / "trial")
    train_time = TrainTime()

    def prune(step: int, score: float) -> None:
        raise PruneRequested(f"pruned at step {step}")

    with pytest.raises(PruneRequested):
        train_trial(config, METRIC, prune, train_time)
    assert train_time.seconds > 0


def test_host_returns_train_time(tiny_bert: Path, tmp_path: Path) -> None:
    loaded = load_config(example_config_file(tmp_path, tiny_bert))
    spec = ObjectiveSpec(kind="edsnlp", config_path=loaded.path, tuning=loaded.tuning)
    host = TrialHost(spec)
    host.start()
    try:
        started = time.monotonic()
        outcome = host.run(TrialRequest(0, {}, 42, str(tmp_path / "trial")), lambda s, v: False)
        wall_s = time.monotonic() - started
    finally:
        host.close()

    assert outcome.state == "complete", outcome.error
    assert outcome.train_s is not None
    assert 0 < outcome.train_s < wall_s
