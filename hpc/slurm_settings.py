"""The `hpc.slurm` section of the config: resources and site setup of the Slurm jobs."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from tuner.errors import ConfigError

# Slurm handles time-limit events only every 30 to 60 s (sbatch(1) says the --signal may come up
# to 60 s early), so a lead of at least 120 s keeps the signal well ahead of the kill and leaves
# the worker time to record its trial and requeue.
MIN_SIGNAL_LEAD_S = 120
# sbatch(1): "sig_time must have an integer value between 0 and 65535".
MAX_SIGNAL_LEAD_S = 65535

ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Words that `--export` reads as modes, not as variable names.
EXPORT_MODE_WORDS = frozenset({"ALL", "NONE", "NIL"})
# Slurm stores a job's environment in its state files, so these never go to a job.
SECRET_ENV_NAMES = frozenset({"PGPASSWORD"})

# sbatch options that the templates set themselves; changing them through `extra_sbatch` would
# break a guarantee, so each maps to the setting to use instead.
RESERVED_SBATCH_OPTIONS = {
    "--array": "hpc.workers and hpc.slurm.array_parallelism",
    "-a": "hpc.workers and hpc.slurm.array_parallelism",
    "--export": "hpc.slurm.exported_env (PGPASSWORD must never reach a job)",
    "--export-file": "hpc.slurm.exported_env (PGPASSWORD must never reach a job)",
    "--output": "nothing: logs always go to the sweep's jobs/ folder",
    "-o": "nothing: logs always go to the sweep's jobs/ folder",
    "--error": "nothing: logs always go to the sweep's jobs/ folder",
    "-e": "nothing: logs always go to the sweep's jobs/ folder",
    "--chdir": "nothing: jobs run in the directory the sweep was started from",
    "-D": "nothing: jobs run in the directory the sweep was started from",
    "--signal": "hpc.slurm.signal_lead_s",
    "--no-requeue": "nothing: workers must be requeued after preemption",
    "--wait": "nothing: submission must return at once",
    "-W": "nothing: submission must return at once",
    "--wrap": "nothing: the templates hold the job's command",
}


@dataclass(frozen=True)
class FinalizeSettings:
    """Resources of the finalize job, which needs no GPU by default.

    Attributes:
        partition: Partition of the finalize job, or None for the workers' partition.
        cpus_per_task: CPUs of the finalize job.
        mem_gb: Memory of the finalize job in GiB (`--mem=<n>G`), or None for the site default.
        time_min: Time limit in minutes, or None for the partition's default.
        gpus: GPUs of the finalize job (`--gres=gpu:<n>` when > 0).
    """

    partition: str | None = None
    cpus_per_task: int = 1
    mem_gb: int | None = 4
    time_min: int | None = 60
    gpus: int = 0


@dataclass(frozen=True)
class SlurmSettings:
    """Resources and site setup of the worker array and the finalize job.

    Attributes:
        partition: `--partition`, or None for the cluster's default partition.
        account: `--account`, or None.
        qos: `--qos`, or None.
        gpus_per_task: GPUs per worker (`--gres=gpu:<n>`, one task per job); 0 for CPU workers.
        cpus_per_task: CPUs per worker; also the worker's `OMP_NUM_THREADS`.
        mem_gb: Memory per worker in GiB (`--mem=<n>G`), or None for the site default.
        time_min: Time limit of a worker in minutes, or None for the partition's default.
        constraint: `--constraint` (node features), or None.
        array_parallelism: Maximum number of array tasks running at once (`--array=...%<n>`),
            or None for no limit.
        signal_lead_s: Seconds before the time limit at which Slurm sends SIGUSR2 to the worker.
        extra_sbatch: Raw sbatch options written as `#SBATCH <option>` lines, e.g. `--exclusive`.
        setup: Shell lines run at the top of every job (module loads, environment activation).
        python: Command words that run the jobs' Python, such as `apptainer exec --nv IMAGE
            python`; empty for the interpreter that runs hpc-tune (`sys.executable`).
        exported_env: Names of extra environment variables passed to the jobs.
        finalize: Resources of the finalize job.
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int = 4
    mem_gb: int | None = 16
    time_min: int | None = None
    constraint: str | None = None
    array_parallelism: int | None = None
    signal_lead_s: int = 180
    extra_sbatch: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    python: tuple[str, ...] = ()
    exported_env: tuple[str, ...] = ()
    finalize: FinalizeSettings = field(default_factory=FinalizeSettings)


def parse_slurm_section(section: Mapping[str, Any] | None) -> SlurmSettings:
    """Validate the `hpc.slurm` section and build its settings.

    Args:
        section: The mapping under `hpc.slurm` in the config; None or empty for the defaults.

    Raises:
        ConfigError: For an unknown key or an invalid value, naming `hpc.slurm.<key>`.
    """
    section = _mapping_or_empty(section, "hpc.slurm")
    _reject_unknown_keys(section, SlurmSettings, "hpc.slurm")
    defaults = SlurmSettings()

    def get(key: str) -> Any:
        return section.get(key, getattr(defaults, key))

    settings = SlurmSettings(
        partition=_optional_name(get("partition"), "hpc.slurm.partition"),
        account=_optional_name(get("account"), "hpc.slurm.account"),
        qos=_optional_name(get("qos"), "hpc.slurm.qos"),
        gpus_per_task=_integer(get("gpus_per_task"), "hpc.slurm.gpus_per_task", minimum=0),
        cpus_per_task=_integer(get("cpus_per_task"), "hpc.slurm.cpus_per_task", minimum=1),
        mem_gb=_optional_integer(get("mem_gb"), "hpc.slurm.mem_gb", minimum=1),
        time_min=_optional_integer(get("time_min"), "hpc.slurm.time_min", minimum=1),
        constraint=_optional_name(get("constraint"), "hpc.slurm.constraint"),
        array_parallelism=_optional_integer(
            get("array_parallelism"), "hpc.slurm.array_parallelism", minimum=1
        ),
        signal_lead_s=_signal_lead(get("signal_lead_s")),
        extra_sbatch=_extra_sbatch(get("extra_sbatch")),
        setup=_setup_lines(get("setup")),
        python=_python_command(get("python")),
        exported_env=_exported_env(get("exported_env")),
        finalize=_finalize(section.get("finalize")),
    )
    if settings.time_min is not None and settings.signal_lead_s >= settings.time_min * 60:
        raise ConfigError(
            f"hpc.slurm.signal_lead_s: {settings.signal_lead_s} s is not shorter than "
            f"hpc.slurm.time_min ({settings.time_min} min), so the worker would be told to stop "
            "as soon as it starts. Raise time_min or lower signal_lead_s "
            f"(at least {MIN_SIGNAL_LEAD_S})."
        )
    return settings


def validate_env_name(name: Any, where: str) -> str:
    """Check that `name` can be listed in `sbatch --export` and is not a secret.

    Raises:
        ConfigError: For a non-string, a malformed name, an `--export` mode word or PGPASSWORD.
    """
    if not isinstance(name, str) or not ENV_NAME_PATTERN.match(name):
        raise ConfigError(
            f"{where}: invalid environment variable name {name!r}. Use a name made of letters, "
            "digits and '_' (no '=', values are taken from the submitting shell)."
        )
    if name in EXPORT_MODE_WORDS:
        raise ConfigError(
            f"{where}: {name!r} is an sbatch --export mode, not a variable name. "
            "List variable names only."
        )
    if name in SECRET_ENV_NAMES:
        raise ConfigError(
            f"{where}: {name} cannot be passed to jobs, because Slurm stores job environments "
            "in its state files. Put the password in ~/.pgpass or in the file named by "
            "PGPASSFILE (mode 0600) instead."
        )
    return name


def _finalize(value: Any) -> FinalizeSettings:
    section = _mapping_or_empty(value, "hpc.slurm.finalize")
    _reject_unknown_keys(section, FinalizeSettings, "hpc.slurm.finalize")
    defaults = FinalizeSettings()

    def get(key: str) -> Any:
        return section.get(key, getattr(defaults, key))

    return FinalizeSettings(
        partition=_optional_name(get("partition"), "hpc.slurm.finalize.partition"),
        cpus_per_task=_integer(get("cpus_per_task"), "hpc.slurm.finalize.cpus_per_task", minimum=1),
        mem_gb=_optional_integer(get("mem_gb"), "hpc.slurm.finalize.mem_gb", minimum=1),
        time_min=_optional_integer(get("time_min"), "hpc.slurm.finalize.time_min", minimum=1),
        gpus=_integer(get("gpus"), "hpc.slurm.finalize.gpus", minimum=0),
    )


def _mapping_or_empty(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {value!r}.")
    return value


def _reject_unknown_keys(section: Mapping[str, Any], settings_type: type, where: str) -> None:
    valid = {item.name: item for item in fields(settings_type)}
    unknown = sorted(str(key) for key in section if key not in valid)
    if not unknown:
        return
    defaults = settings_type()
    listing = ", ".join(
        f"{name} (default {_describe_default(getattr(defaults, name))})" for name in valid
    )
    named = ", ".join(f"{where}.{key}" for key in unknown)
    noun = "unknown key" if len(unknown) == 1 else "unknown keys"
    raise ConfigError(f"{named}: {noun}. Valid keys: {listing}.")


def _describe_default(value: Any) -> str:
    if isinstance(value, FinalizeSettings):
        return "{" + ", ".join(f"{f.name}: {getattr(value, f.name)!r}" for f in fields(value)) + "}"
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def _integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}.")
    return value


def _optional_integer(value: Any, where: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{where}: expected an integer >= {minimum}, or null for the site default, "
            f"got {value!r}."
        )
    return value


def _optional_name(value: Any, where: str) -> str | None:
    """Check a partition, account, QOS or constraint: one word, because sbatch reads one word."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or any(char.isspace() for char in value):
        raise ConfigError(
            f"{where}: expected a non-empty string without spaces, or null, got {value!r}."
        )
    return value


def _signal_lead(value: Any) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not MIN_SIGNAL_LEAD_S <= value <= MAX_SIGNAL_LEAD_S
    ):
        raise ConfigError(
            f"hpc.slurm.signal_lead_s: expected an integer from {MIN_SIGNAL_LEAD_S} to "
            f"{MAX_SIGNAL_LEAD_S} seconds, got {value!r}. Slurm checks time limits only every "
            "30 to 60 s, so a shorter lead can leave the worker no time to save its trial."
        )
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{where}: expected a list of strings, got {value!r}.")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"{where}[{index}]: expected a string, got {item!r}.")
    return list(value)


def _extra_sbatch(value: Any) -> tuple[str, ...]:
    options = _string_list(value, "hpc.slurm.extra_sbatch")
    for index, option in enumerate(options):
        where = f"hpc.slurm.extra_sbatch[{index}]"
        if "\n" in option or "\r" in option or "\0" in option:
            raise ConfigError(f"{where}: {option!r} spans several lines. Give one option per item.")
        if not option.startswith("-"):
            raise ConfigError(
                f"{where}: {option!r} is not an sbatch option. Write the option itself, "
                "e.g. '--exclusive', without the '#SBATCH' prefix."
            )
        name = _option_name(option)
        # sbatch accepts any unambiguous prefix of a long option (--sig for --signal).
        reserved = [
            full
            for full in RESERVED_SBATCH_OPTIONS
            if full == name or (name.startswith("--") and len(name) > 2 and full.startswith(name))
        ]
        if reserved:
            raise ConfigError(
                f"{where}: {option!r} sets {reserved[0]}, which hpc-tune controls. "
                f"Use {RESERVED_SBATCH_OPTIONS[reserved[0]]}."
            )
    return tuple(options)


def _option_name(option: str) -> str:
    """Return the option's name: `--time=5` gives `--time`, `-o out` and `-oout` give `-o`."""
    word = option.split()[0]
    if word.startswith("--"):
        return word.split("=", 1)[0]
    return word[:2]


def _setup_lines(value: Any) -> tuple[str, ...]:
    lines = _string_list(value, "hpc.slurm.setup")
    for index, line in enumerate(lines):
        if any(secret in line for secret in SECRET_ENV_NAMES):
            raise ConfigError(
                f"hpc.slurm.setup[{index}]: the line mentions a password variable "
                f"({', '.join(sorted(SECRET_ENV_NAMES))}), which would be written into every "
                "job script. Put the password in ~/.pgpass or in the file named by PGPASSFILE."
            )
    return tuple(lines)


def _python_command(value: Any) -> tuple[str, ...]:
    words = _string_list(value, "hpc.slurm.python")
    for index, word in enumerate(words):
        if not word.strip() or "\n" in word:
            raise ConfigError(
                f"hpc.slurm.python[{index}]: {word!r} is not one command word. List the "
                "words one per item, such as [apptainer, exec, --nv, /path/to/hpc-tune.sif, "
                "/opt/hpc-tune/bin/python]."
            )
    return tuple(words)


def _exported_env(value: Any) -> tuple[str, ...]:
    names = _string_list(value, "hpc.slurm.exported_env")
    for index, name in enumerate(names):
        validate_env_name(name, f"hpc.slurm.exported_env[{index}]")
    return tuple(dict.fromkeys(names))


# Margins of a time limit derived from a GPU-hour budget: workers do not share the budget
# evenly, each may overshoot by one trial, and the job starts Python and the trial host first.
SHARE_MARGIN = 1.5
START_UP_MIN = 10


def derived_time_min(gpu_hours: float, workers: int, gpus_per_task: int, signal_lead_s: int) -> int:
    """Return a worker's time limit in minutes for a sweep that spends `gpu_hours`.

    A worker's share of the budget is `gpu_hours / (workers * GPUs per worker)`. The limit
    adds half of the share again, the start-up and the pre-timeout signal's lead, rounded up
    to 5 minutes.
    """
    share_min = gpu_hours * 60 / (workers * max(1, gpus_per_task))
    total = share_min * SHARE_MARGIN + START_UP_MIN + signal_lead_s / 60
    return int(5 * math.ceil(total / 5))
