from __future__ import annotations

from pathlib import Path

import pytest

from hpc.claims import Budget, StudyCounts, advisory_key, budget_left
from hpc.settings import default_sweep_name, parse_hpc_section
from hpc.storage import hide_password, parse_storage_url, user_schema
from tuner.errors import ConfigError


def test_password_in_url_rejected() -> None:
    with pytest.raises(ConfigError) as error:
        parse_storage_url("postgresql+psycopg2://alice:s3cret@db.example/optuna", "hpc.storage")
    message = str(error.value)
    assert "s3cret" not in message
    assert "~/.pgpass" in message
    assert message.startswith("hpc.storage:")


def test_plain_postgresql_gets_psycopg2() -> None:
    url = parse_storage_url("postgresql://alice@db/optuna", "--storage")
    assert url.drivername == "postgresql+psycopg2"


def test_sqlite_rejected() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        parse_storage_url("sqlite:///study.db", "--storage")


def test_hide_password() -> None:
    assert "pw" not in hide_password("postgresql+psycopg2://a:pw@h/d")


def test_user_schema_is_safe() -> None:
    assert user_schema("Jean.Dupont") == "hpc_tune_jean_dupont"


def test_sweep_name_shape(tmp_path: Path) -> None:
    name = default_sweep_name(tmp_path / "my config.yml", user="alice")
    assert name.startswith("alice-my-config-")
    assert len(name.rsplit("-", 1)[1]) == 8
    assert default_sweep_name(tmp_path / "my config.yml", user="alice") == name
    assert default_sweep_name(tmp_path / "other" / "my config.yml", user="alice") != name


def test_hpc_unknown_key_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as error:
        parse_hpc_section({"worker": 4}, {})
    assert "unknown keys ['worker']" in str(error.value)
    assert "workers (default 2)" in str(error.value)


def test_cli_overrides_hpc_section() -> None:
    settings = parse_hpc_section({"workers": 4}, {"workers": 3, "executor": None})
    assert settings.workers == 3
    assert settings.executor == "auto"


@pytest.mark.parametrize("workers", [0, -1, "two", True])
def test_invalid_workers(workers: object) -> None:
    with pytest.raises(ConfigError, match="hpc.workers"):
        parse_hpc_section({"workers": workers}, {})


def test_n_trials_counts_running() -> None:
    budget = Budget(n_trials=4)
    assert budget_left(StudyCounts(complete=2, running=1), budget) is None
    assert budget_left(StudyCounts(complete=2, running=2), budget) is not None
    assert budget_left(StudyCounts(complete=1, pruned=1, failed=2), budget) is not None


def test_gpu_budget_uses_mean_duration() -> None:
    budget = Budget(n_trials=None, gpu_seconds=100.0)
    assert budget_left(StudyCounts(), budget) is None
    # 2 finished trials of 30 s: 60 s used, one more of 30 s fits, a running one leaves no room.
    assert budget_left(StudyCounts(complete=2, finished_seconds=60.0), budget) is None
    assert (
        budget_left(StudyCounts(complete=2, running=1, finished_seconds=60.0), budget) is not None
    )


def test_advisory_key_is_signed_64_bit() -> None:
    key = advisory_key("alice-config-0123abcd.phase1")
    assert -(2**63) <= key < 2**63
    assert key == advisory_key("alice-config-0123abcd.phase1")


@pytest.mark.parametrize("query", ["password=secret", "PASSWORD=secret", "sslpassword=secret"])
def test_password_in_query_rejected(query: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_storage_url(f"postgresql://alice@db/optuna?{query}", "--storage")
    assert "secret" not in str(error.value)
    assert "PGPASSWORD" in str(error.value)


def test_empty_password_is_no_password() -> None:
    assert parse_storage_url("postgresql://alice:@db/optuna", "--storage").password is None


def test_jobs_need_pgpass_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc.storage import check_jobs_can_authenticate

    pgpass = tmp_path / "pgpass"
    monkeypatch.setenv("PGPASSWORD", "secret")
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    url = "postgresql+psycopg2://alice@db.example:5433/optuna"
    with pytest.raises(ConfigError) as error:
        check_jobs_can_authenticate(url)
    assert "db.example:5433:optuna:alice" in str(error.value)
    assert "secret" not in str(error.value)

    pgpass.write_text("# comment\nother:5432:*:bob:x\ndb.example:*:optuna:alice:secret\n")
    pgpass.chmod(0o600)
    check_jobs_can_authenticate(url)


def test_no_pgpassword_needs_no_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc.storage import check_jobs_can_authenticate

    monkeypatch.delenv("PGPASSWORD", raising=False)
    check_jobs_can_authenticate("postgresql+psycopg2://alice@db.example/optuna")


def test_storage_env_with_password_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpc.sweep import SweepRequest, load_sweep

    config = tmp_path / "config.yml"
    config.write_text(
        "model: {lr: 0.1}\ntuning:\n  output_dir: r\n  checkpoint_dir: c\n  n_trials: 2\n"
        "  hyperparameters: {model.lr: {type: float, low: 0.1, high: 1}}\n"
        "hpc: {storage: 'postgresql://alice@db/optuna'}\n"
    )
    monkeypatch.setenv("HPC_TUNE_STORAGE", "postgresql://alice:secret@db/optuna")
    with pytest.raises(ConfigError) as error:
        load_sweep(SweepRequest(config_path=config))
    assert "HPC_TUNE_STORAGE" in str(error.value)
    assert "secret" not in str(error.value)
