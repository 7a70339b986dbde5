"""The `hpc:` section of the config and the command-line flags that override it."""

from __future__ import annotations

import getpass
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpc.slurm_settings import SlurmSettings, parse_slurm_section
from tuner.errors import ConfigError
from tuner.private_dirs import group_access

EXECUTORS = ("auto", "local", "slurm")
OBJECTIVES = ("edsnlp", "synthetic")
DEFAULTS: dict[str, Any] = {
    "storage": None,
    "workers": 2,
    "executor": "auto",
    "sweep_name": None,
    "objective": "edsnlp",
    "synthetic": {},
    "keep_models": 1,
    "max_requeues": 10,
    "max_retries": 2,
    "heartbeat_s": 30,
    "heartbeat_grace_s": 300,
    "db_retry_s": 600,
    "max_resubmits": 3,
    "offline": True,
    "share_with_group": None,
    "slurm": {},
}
SWEEP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class HpcSettings:
    """Settings of the workers and the storage.

    Attributes:
        storage: SQLAlchemy URL of the PostgreSQL server, `embedded` to ask for the embedded
            server explicitly (required with Slurm), or None for the embedded server locally.
        workers: Number of worker processes (local) or array tasks (Slurm).
        executor: `auto`, `local` or `slurm`.
        sweep_name: Name of the sweep, or None to derive it from the config path.
        objective: Trial plug-in: `edsnlp` trains for real, `synthetic` sleeps and returns
            scripted scores (tests and benchmarks).
        synthetic: Options of the synthetic objective.
        keep_models: How many of the best trials keep their saved model.
        max_requeues: How many times a worker's job requeues itself after pre-timeout signals.
        max_retries: How many times a failed parameter set runs again (errors that would
            fail the same way are not retried; see `tuner.retry_policy`).
        heartbeat_s: Seconds between two heartbeats of a running trial.
        heartbeat_grace_s: Seconds without a heartbeat after which a trial is stale; it is
            then retried only if its job or process no longer runs.
        db_retry_s: How long a worker keeps retrying the database before it gives up.
        max_resubmits: How many times finalize jobs resubmit workers that all died while
            budget is left.
        offline: Whether jobs and preflight run with HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and
            HF_DATASETS_OFFLINE set to 1, and preflight requires each model on disk.
        share_with_group: Group that may read the checkpoint and output folders (mode 2750,
            report files 0640), or None to keep them private to the user (0700).
        slurm: Resources and site setup of Slurm jobs.
    """

    storage: str | None
    workers: int
    executor: str
    sweep_name: str | None
    objective: str
    synthetic: Mapping[str, Any]
    keep_models: int
    max_requeues: int = 10
    max_retries: int = 2
    heartbeat_s: int = 30
    heartbeat_grace_s: int = 300
    db_retry_s: int = 600
    max_resubmits: int = 3
    offline: bool = True
    share_with_group: str | None = None
    slurm: SlurmSettings = field(default_factory=SlurmSettings)


def parse_hpc_section(section: Mapping[str, Any], overrides: Mapping[str, Any]) -> HpcSettings:
    """Validate the `hpc:` section, with command-line overrides applied over it.

    Raises:
        ConfigError: For an unknown key or an invalid value.
    """
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        valid = ", ".join(f"{key} (default {value!r})" for key, value in DEFAULTS.items())
        raise ConfigError(f"hpc: unknown keys {unknown}. Valid keys: {valid}.")
    merged = {**DEFAULTS, **dict(section)}
    merged.update({key: value for key, value in overrides.items() if value is not None})

    workers = merged["workers"]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"hpc.workers: expected an integer >= 1, got {workers!r}.")
    if merged["executor"] not in EXECUTORS:
        raise ConfigError(
            f"hpc.executor: invalid value {merged['executor']!r}. "
            f"Use one of {', '.join(EXECUTORS)}."
        )
    if merged["objective"] not in OBJECTIVES:
        raise ConfigError(
            f"hpc.objective: invalid value {merged['objective']!r}. "
            f"Use one of {', '.join(OBJECTIVES)}."
        )
    name = merged["sweep_name"]
    if name is not None and not SWEEP_NAME_PATTERN.match(str(name)):
        raise ConfigError(
            f"hpc.sweep_name: invalid value {name!r}. Use 1 to 63 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit."
        )
    keep_models = merged["keep_models"]
    if isinstance(keep_models, bool) or not isinstance(keep_models, int) or keep_models < 0:
        raise ConfigError(f"hpc.keep_models: expected an integer >= 0, got {keep_models!r}.")
    heartbeat_s = _non_negative_int(merged["heartbeat_s"], "hpc.heartbeat_s")
    grace_s = _non_negative_int(merged["heartbeat_grace_s"], "hpc.heartbeat_grace_s")
    if heartbeat_s < 1:
        raise ConfigError("hpc.heartbeat_s: expected an integer >= 1, got 0.")
    if grace_s < 3 * heartbeat_s:
        raise ConfigError(
            f"hpc.heartbeat_grace_s: {grace_s} s is shorter than 3 heartbeats "
            f"(hpc.heartbeat_s={heartbeat_s}): one slow database write would make a live trial "
            f"look lost. Set it to at least {3 * heartbeat_s}."
        )
    if not isinstance(merged["offline"], bool):
        raise ConfigError(
            f"hpc.offline: expected true or false, got {merged['offline']!r}. Leave it unset "
            "(true) so that jobs never download models; false lets them use the network."
        )
    group = merged["share_with_group"]
    group_access(group)  # the group must exist and the user must belong to it
    if not isinstance(merged["synthetic"], Mapping):
        raise ConfigError(f"hpc.synthetic: expected a mapping, got {merged['synthetic']!r}.")
    return HpcSettings(
        storage=merged["storage"],
        workers=workers,
        executor=merged["executor"],
        sweep_name=None if name is None else str(name),
        objective=merged["objective"],
        synthetic=dict(merged["synthetic"]),
        keep_models=keep_models,
        max_requeues=_non_negative_int(merged["max_requeues"], "hpc.max_requeues"),
        max_retries=_non_negative_int(merged["max_retries"], "hpc.max_retries"),
        heartbeat_s=heartbeat_s,
        heartbeat_grace_s=grace_s,
        db_retry_s=_non_negative_int(merged["db_retry_s"], "hpc.db_retry_s"),
        max_resubmits=_non_negative_int(merged["max_resubmits"], "hpc.max_resubmits"),
        offline=merged["offline"],
        share_with_group=group,
        slurm=parse_slurm_section(merged["slurm"] or {}),
    )


def default_sweep_name(config_path: Path, user: str | None = None) -> str:
    """Build `<user>-<config stem>-<8 hex of the config's absolute path>`."""
    user = user or getpass.getuser()
    digest = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", config_path.stem).strip("-") or "config"
    return f"{_safe(user)}-{stem[:40]}-{digest}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "user"


def _non_negative_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{key}: expected an integer >= 0, got {value!r}.")
    return value
