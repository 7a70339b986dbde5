"""hpc.offline: the environment of jobs and preflight, and the check of model paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpc.templates import offline_env_lines
from tuner.preflight_static import check_models
from tuner.training import OFFLINE_VARIABLES, set_offline_environment

MODEL_KEY = "train.nlp.components.ner.embedding.model"


def config_with_model(model: str) -> dict:
    embedding = {"@factory": "eds.transformer", "model": model}
    return {"train": {"nlp": {"components": {"ner": {"embedding": embedding}}}}}


def fake_hub_cache(cache: Path, repo_id: str) -> None:
    """Lay out `repo_id` in `cache` as huggingface_hub does after a download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_offline_sets_three_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFFLINE_VARIABLES:
        monkeypatch.setenv(name, "0")

    set_offline_environment(True)

    assert {name: os.environ[name] for name in OFFLINE_VARIABLES} == {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }


def test_opt_out_leaves_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    set_offline_environment(False)

    assert [name for name in OFFLINE_VARIABLES if name in os.environ] == []


def test_job_script_lines() -> None:
    assert offline_env_lines(True).splitlines()[1:] == [
        "export HF_HUB_OFFLINE=1",
        "export TRANSFORMERS_OFFLINE=1",
        "export HF_DATASETS_OFFLINE=1",
    ]
    assert "export" not in offline_env_lines(False)
    assert offline_env_lines(False).startswith("# hpc.offline is false")


def test_uncached_model_id_offline(hub_cache: Path) -> None:
    (problem,) = check_models(config_with_model("some-org/no-such-model"), offline=True)

    assert problem.startswith(f"{MODEL_KEY}: 'some-org/no-such-model' is neither a local folder")
    assert str(hub_cache) in problem
    assert "hf download some-org/no-such-model --local-dir MODEL_FOLDER" in problem
    assert "copy MODEL_FOLDER to the cluster" in problem
    assert "hpc.offline: false" in problem


def test_uncached_model_id_online(hub_cache: Path) -> None:
    assert check_models(config_with_model("some-org/no-such-model"), offline=False) == []


def test_cached_model_id_offline(hub_cache: Path) -> None:
    fake_hub_cache(hub_cache, "some-org/cached-model")

    assert check_models(config_with_model("some-org/cached-model"), offline=True) == []


def test_local_model_folder(tmp_path: Path, hub_cache: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()

    assert check_models(config_with_model(str(folder)), offline=True) == []


@pytest.mark.parametrize("offline", [True, False])
def test_missing_model_folder(tmp_path: Path, hub_cache: Path, offline: bool) -> None:
    missing = str(tmp_path / "models" / "camembert")

    (problem,) = check_models(config_with_model(missing), offline=offline)

    assert problem.startswith(f"{MODEL_KEY}: model folder {missing!r} not found")
    assert "copy the model folder to the cluster" in problem
