"""Validation of the `hpc.slurm` section."""

from __future__ import annotations

from typing import Any

import pytest

from hpc.cli import main
from hpc.slurm_settings import (
    FinalizeSettings,
    SlurmSettings,
    parse_slurm_section,
    validate_env_name,
)
from tuner.errors import ConfigError


@pytest.mark.parametrize("section", [None, {}])
def test_defaults(section: dict[str, Any] | None) -> None:
    settings = parse_slurm_section(section)
    assert settings == SlurmSettings()
    assert settings.gpus_per_task == 1
    assert settings.cpus_per_task == 4
    assert settings.mem_gb == 16
    assert settings.time_min is None
    assert settings.signal_lead_s == 180
    assert settings.finalize == FinalizeSettings(None, 1, 4, 60, 0)


def test_full_section() -> None:
    settings = parse_slurm_section(
        {
            "partition": "gpu",
            "account": "nlp-team",
            "qos": "normal",
            "gpus_per_task": 2,
            "cpus_per_task": 8,
            "mem_gb": 64,
            "time_min": 720,
            "constraint": "a100&ib",
            "array_parallelism": 4,
            "signal_lead_s": 300,
            "extra_sbatch": ["--exclusive", "--mail-type=END"],
            "setup": ["module load cuda/12.1", "source /opt/venv/bin/activate"],
            "exported_env": ["WANDB_DIR", "WANDB_DIR", "MY_VAR"],
            "finalize": {"partition": "cpu", "mem_gb": 8, "time_min": None},
        }
    )
    assert settings.partition == "gpu"
    assert settings.constraint == "a100&ib"
    assert settings.extra_sbatch == ("--exclusive", "--mail-type=END")
    assert settings.setup == ("module load cuda/12.1", "source /opt/venv/bin/activate")
    assert settings.exported_env == ("WANDB_DIR", "MY_VAR")
    assert settings.finalize == FinalizeSettings("cpu", 1, 8, None, 0)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_slurm_section({"gpus": 2})
    message = str(caught.value)
    assert message.startswith("hpc.slurm.gpus: unknown key")
    assert "gpus_per_task (default 1)" in message
    assert "signal_lead_s (default 180)" in message
    assert "extra_sbatch (default [])" in message
    assert "finalize (default {partition: None" in message


def test_unknown_finalize_key() -> None:
    with pytest.raises(ConfigError, match=r"hpc.slurm.finalize.gpus_per_task: unknown key"):
        parse_slurm_section({"finalize": {"gpus_per_task": 0}})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"partition": ""}, r"hpc.slurm.partition: expected a non-empty string without spaces"),
        ({"partition": "gpu a100"}, r"hpc.slurm.partition: .* got 'gpu a100'"),
        ({"account": 12}, r"hpc.slurm.account: .* got 12"),
        ({"qos": ["normal"]}, r"hpc.slurm.qos"),
        ({"constraint": "a b"}, r"hpc.slurm.constraint"),
        ({"gpus_per_task": -1}, r"hpc.slurm.gpus_per_task: expected an integer >= 0, got -1"),
        ({"gpus_per_task": True}, r"hpc.slurm.gpus_per_task: .* got True"),
        ({"cpus_per_task": 0}, r"hpc.slurm.cpus_per_task: expected an integer >= 1, got 0"),
        ({"cpus_per_task": "4"}, r"hpc.slurm.cpus_per_task: .* got '4'"),
        ({"mem_gb": 1.5}, r"hpc.slurm.mem_gb: expected an integer >= 1, or null"),
        ({"mem_gb": 0}, r"hpc.slurm.mem_gb"),
        ({"time_min": "1:00:00"}, r"hpc.slurm.time_min: expected an integer >= 1, or null"),
        ({"array_parallelism": 0}, r"hpc.slurm.array_parallelism"),
        ({"signal_lead_s": 60}, r"hpc.slurm.signal_lead_s: expected an integer from 120 to 65535"),
        ({"signal_lead_s": 70000}, r"hpc.slurm.signal_lead_s"),
        ({"signal_lead_s": 180.0}, r"hpc.slurm.signal_lead_s"),
        ({"extra_sbatch": "--exclusive"}, r"hpc.slurm.extra_sbatch: expected a list of strings"),
        ({"extra_sbatch": [3]}, r"hpc.slurm.extra_sbatch\[0\]: expected a string, got 3"),
        ({"setup": "module load cuda"}, r"hpc.slurm.setup: expected a list of strings"),
        ({"exported_env": "MY_VAR"}, r"hpc.slurm.exported_env: expected a list of strings"),
        ({"finalize": "cpu"}, r"hpc.slurm.finalize: expected a mapping"),
        ({"finalize": {"cpus_per_task": 0}}, r"hpc.slurm.finalize.cpus_per_task"),
        ({"finalize": {"gpus": -1}}, r"hpc.slurm.finalize.gpus: expected an integer >= 0"),
        ({"finalize": {"partition": "a b"}}, r"hpc.slurm.finalize.partition"),
        ({"finalize": {"time_min": 0}}, r"hpc.slurm.finalize.time_min"),
        ([("partition", "gpu")], r"hpc.slurm: expected a mapping"),
    ],
)
def test_invalid_values(section: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_slurm_section(section)


def test_signal_lead_must_fit_time_limit() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_slurm_section({"time_min": 3, "signal_lead_s": 180})
    assert "hpc.slurm.signal_lead_s: 180 s is not shorter than hpc.slurm.time_min (3 min)" in str(
        caught.value
    )
    assert parse_slurm_section({"time_min": 4, "signal_lead_s": 180}).time_min == 4


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("exclusive", r"is not an sbatch option"),
        ("#SBATCH --exclusive", r"is not an sbatch option"),
        ("--exclusive\n--export=ALL", r"spans several lines"),
        ("--export=ALL", r"sets --export, which hpc-tune controls. Use hpc.slurm.exported_env"),
        ("--export-file=/tmp/env", r"sets --export-file"),
        ("--array=0-99", r"Use hpc.workers and hpc.slurm.array_parallelism"),
        ("-a 0-3", r"sets -a"),
        ("--output=/tmp/x.out", r"sets --output"),
        ("-o/tmp/x.out", r"sets -o"),
        ("-e /tmp/x.err", r"sets -e"),
        ("--chdir=/tmp", r"sets --chdir"),
        ("-D /tmp", r"sets -D"),
        ("--signal=B:USR2@60", r"Use hpc.slurm.signal_lead_s"),
        ("--no-requeue", r"sets --no-requeue"),
        ("--wait", r"sets --wait"),
        ("-W", r"sets -W"),
    ],
)
def test_extra_sbatch_rejected(option: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_slurm_section({"extra_sbatch": [option]})


@pytest.mark.parametrize(
    "option", ["--exclusive", "--gres=gpu:a100:1", "-C a100", "--mail-type=END,FAIL", "--nice=10"]
)
def test_extra_sbatch_accepted(option: str) -> None:
    assert parse_slurm_section({"extra_sbatch": [option]}).extra_sbatch == (option,)


def test_exported_env_rejects_password() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_slurm_section({"exported_env": ["HOME", "PGPASSWORD"]})
    message = str(caught.value)
    assert message.startswith("hpc.slurm.exported_env[1]: PGPASSWORD cannot be passed to jobs")
    assert "~/.pgpass" in message
    assert "PGPASSFILE" in message


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("MY VAR", r"invalid environment variable name"),
        ("A=1", r"no '='"),
        ("1ABC", r"invalid environment variable name"),
        ("ALL", r"is an sbatch --export mode"),
        ("NONE", r"is an sbatch --export mode"),
        ("", r"invalid environment variable name"),
    ],
)
def test_exported_env_invalid_names(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_slurm_section({"exported_env": [name]})


def test_setup_rejects_password() -> None:
    with pytest.raises(ConfigError, match=r"hpc.slurm.setup\[1\]: the line mentions a password"):
        parse_slurm_section({"setup": ["module load cuda", "export PGPASSWORD=hunter2"]})


def test_validate_env_name_names_its_source() -> None:
    assert validate_env_name("PGPASSFILE", "here") == "PGPASSFILE"
    with pytest.raises(ConfigError, match=r"^somewhere: PGPASSWORD cannot be passed"):
        validate_env_name("PGPASSWORD", "somewhere")


@pytest.mark.parametrize("option", ["--sig=KILL@1", "--no-req", "--out=/tmp/leak-%A.out"])
def test_abbreviated_reserved_option_rejected(option: str) -> None:
    with pytest.raises(ConfigError, match="which hpc-tune controls"):
        parse_slurm_section({"extra_sbatch": [option]})


def test_time_limit_derived_from_gpu_hours() -> None:
    from hpc.slurm_settings import derived_time_min

    # 4 GPU-hours over 4 one-GPU workers: 60 min each, 90 with the margin, plus 10 min of
    # start-up and the 3 min signal lead, rounded up to 105.
    assert derived_time_min(4.0, workers=4, gpus_per_task=1, signal_lead_s=180) == 105
    # Two GPUs per worker spend the budget twice as fast.
    assert derived_time_min(4.0, workers=4, gpus_per_task=2, signal_lead_s=180) == 60
    assert derived_time_min(0.01, workers=1, gpus_per_task=0, signal_lead_s=120) == 15


def test_empty_python_means_default() -> None:
    # README: `python: []` runs the jobs with the interpreter that runs hpc-tune.
    assert parse_slurm_section({"python": []}).python == ()
    assert parse_slurm_section({"python": []}) == SlurmSettings()


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_check_node_timeout_must_be_positive(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check-node", "--config", "missing.yml", "--timeout-s", value])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert f"--timeout-s: must be a positive number of seconds, got '{value}'" in error


def test_check_node_timeout_must_be_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["check-node", "--config", "missing.yml", "--timeout-s", "ten"])
    assert "--timeout-s: expected a number of seconds, got 'ten'" in capsys.readouterr().err
