"""Load an EDS-NLP training config and validate its `tuning:` section."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from confit import Config
from confit.utils.collections import split_path

from tuner.errors import ConfigError
from tuner.pruners import DEFAULT_PRUNER, build_pruner
from tuner.space import Hyperparameter, apply_values, has_path, parse_hyperparameters

logger = logging.getLogger(__name__)

# Keys of EDS-NLP's `tuning:` section that have a meaning here.
TUNING_KEYS = (
    "output_dir",
    "checkpoint_dir",
    "gpu_hours",
    "n_trials",
    "two_phase_tuning",
    "metric",
    "hyperparameters",
    "pruner",
    "timeout",
    "seed",
    "seed_path",
    "training_seeds",
    "use_seeds_for_phase_1",
)
# Keys EDS-NLP accepts that describe how it runs trials on one machine: the cluster settings
# in the `hpc:` section replace them.
IGNORED_TUNING_KEYS = {
    "execution": "trials run in worker processes started by hpc-tune",
    "gpu_ids": "each worker uses the GPUs its Slurm job was given",
    "parallel_trials": "set hpc.workers instead",
    "keep_checkpoint": "the study lives in PostgreSQL and is always kept",
}
DEFAULT_SEED = 42
DEFAULT_METRIC = "ner.micro.f"
SUPPORTED_SUFFIXES = (".yml", ".yaml")


@dataclass(frozen=True)
class TuningSettings:
    """The validated `tuning:` section.

    Attributes:
        output_dir: Folder of the report, relative to the working directory at submission.
        checkpoint_dir: Folder of the sweep's state, trials' outputs and logs.
        n_trials: Exact number of finished trials for the whole sweep, or None.
        gpu_hours: GPU-hour budget of the whole sweep, used when n_trials is None.
        timeout_s: EDS-NLP's wall-clock limit in seconds, or None.
        two_phase_tuning: Whether phase 2 tunes the most important half again.
        metric: Metric paths in the scorer output; the trial value is their mean.
        hyperparameters: The search space.
        pruner: EDS-NLP's `pruner` value: a name, a mapping with `type`, or None.
        seed: Sweep seed; sampler and training seeds derive from it.
        seed_path: Config path that receives each trial's training seed.
        training_seeds: EDS-NLP's list of seeds to train each trial with, or None.
        use_seeds_for_phase_1: Whether phase 1 uses `training_seeds`.
    """

    output_dir: Path
    checkpoint_dir: Path
    n_trials: int | None
    gpu_hours: float | None
    timeout_s: float | None
    two_phase_tuning: bool
    metric: tuple[str, ...]
    hyperparameters: tuple[Hyperparameter, ...]
    pruner: Any = None
    seed: int = DEFAULT_SEED
    seed_path: str = "train.seed"
    training_seeds: tuple[int, ...] | None = None
    use_seeds_for_phase_1: bool | None = None

    @property
    def metric_parts(self) -> tuple[tuple[str | int, ...], ...]:
        return tuple(tuple(split_path(path)) for path in self.metric)

    @property
    def seed_parts(self) -> tuple[str | int, ...]:
        return tuple(split_path(self.seed_path))


@dataclass(frozen=True)
class LoadedConfig:
    """A user's config file: its path, raw confit tree and validated sections.

    Attributes:
        path: Absolute path of the file.
        config: The unresolved confit tree, `tuning:` and `hpc:` included.
        tuning: The validated `tuning:` section.
        hpc_section: The raw `hpc:` section (validated by the `hpc` package).
    """

    path: Path
    config: Any
    tuning: TuningSettings
    hpc_section: Mapping[str, Any] = field(default_factory=dict)

    def with_tuning(self, **changes: Any) -> LoadedConfig:
        return replace(self, tuning=replace(self.tuning, **changes))


def parse_yaml_config(text: str) -> Config:
    """Parse a YAML config with confit, without its warning about JSON-like strings.

    confit (0.12) tries to read every scalar as extended JSON, keeps the scalar as a plain
    string when that fails, and warns "Some values may be malformed JSON objects" when the
    string contains a quote, bracket, brace, comma or `$`. Hyperparameter paths such as
    `optimizer.groups.'.*'.lr.warmup_rate` are such strings and are correct, so the warning
    is silenced here. A value of the wrong type is still rejected by the key's validation.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Some values may be malformed JSON objects", category=UserWarning
        )
        return Config.from_yaml_str(text)


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> LoadedConfig:
    """Load a YAML config file and validate its `tuning:` section.

    Args:
        path: The EDS-NLP config file.
        overrides: `tuning:` values from the command line; they win over the file.

    Raises:
        ConfigError: With the key, the value and the fix.
    """
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise ConfigError(f"Config file not found: {file}. Pass an existing file with --config.")
    if file.suffix not in SUPPORTED_SUFFIXES:
        raise ConfigError(
            f"{file}: unsupported config format {file.suffix!r}. hpc-tune reads YAML configs "
            "(.yml or .yaml), the format of EDS-NLP's tuning tutorial."
        )
    try:
        config = parse_yaml_config(file.read_text(encoding="utf-8"))
    except Exception as error:  # YAML and confit parse errors have many types
        raise ConfigError(f"{file}: cannot parse the YAML config: {error}") from error

    tuning_section = dict(config.get("tuning") or {})
    if not tuning_section:
        raise ConfigError(
            f"{file}: no 'tuning:' section. Add one as in EDS-NLP's tuning tutorial "
            "(output_dir, checkpoint_dir, n_trials, metric, hyperparameters)."
        )
    tuning_section.update(
        {key: value for key, value in (overrides or {}).items() if value is not None}
    )
    tuning = parse_tuning(tuning_section)
    check_paths_exist(config, tuning.hyperparameters)

    hpc_section = config.get("hpc") or {}
    if not isinstance(hpc_section, Mapping):
        raise ConfigError(f"{file}: the 'hpc:' section must be a mapping, got {hpc_section!r}.")
    return LoadedConfig(path=file, config=config, tuning=tuning, hpc_section=dict(hpc_section))


def parse_tuning(section: Mapping[str, Any]) -> TuningSettings:
    """Validate the `tuning:` mapping."""
    for key in sorted(set(section) & set(IGNORED_TUNING_KEYS)):
        logger.warning("tuning.%s is ignored: %s.", key, IGNORED_TUNING_KEYS[key])
    unknown = sorted(set(section) - set(TUNING_KEYS) - set(IGNORED_TUNING_KEYS))
    if unknown:
        raise ConfigError(
            f"tuning: unknown keys {unknown}. Valid keys: {', '.join(TUNING_KEYS)}. "
            "Cluster settings belong in the top-level 'hpc:' section."
        )
    for key in ("output_dir", "checkpoint_dir", "hyperparameters"):
        if section.get(key) in (None, ""):
            raise ConfigError(f"tuning.{key}: missing. EDS-NLP's tuning tutorial shows an example.")

    n_trials = _optional_int(section, "n_trials", minimum=1)
    gpu_hours = _optional_float(section, "gpu_hours")
    timeout_s = parse_duration_s(section.get("timeout"))
    if n_trials is None and gpu_hours is None and timeout_s is None:
        gpu_hours = 1.0  # EDS-NLP's default budget

    pruner = section.get("pruner", dict(DEFAULT_PRUNER))
    build_pruner(pruner)  # an invalid pruner fails here, before any job is submitted

    return TuningSettings(
        output_dir=Path(str(section["output_dir"])),
        checkpoint_dir=Path(str(section["checkpoint_dir"])),
        n_trials=n_trials,
        gpu_hours=gpu_hours,
        timeout_s=timeout_s,
        two_phase_tuning=_bool(section, "two_phase_tuning", False),
        metric=_metric(section.get("metric", DEFAULT_METRIC)),
        hyperparameters=tuple(parse_hyperparameters(section["hyperparameters"])),
        pruner=pruner,
        seed=_optional_int(section, "seed", minimum=0)
        if section.get("seed") is not None
        else DEFAULT_SEED,  # type: ignore[arg-type]
        seed_path=str(section.get("seed_path") or "train.seed"),
        training_seeds=_seeds(section.get("training_seeds")),
        use_seeds_for_phase_1=section.get("use_seeds_for_phase_1"),
    )


def check_paths_exist(config: Any, hyperparameters: tuple[Hyperparameter, ...]) -> None:
    """Check that every hyperparameter's parent section exists in the config.

    The last part may be a new key that names an argument the config does not set yet.
    Preflight checks that the component accepts it.
    """
    for hp in hyperparameters:
        if not has_path(config, hp.parts[:-1]):
            # set_path builds the error message naming the missing part and the keys around it.
            apply_values(config, [hp], {hp.name: None})
        if hp.parts[0] in ("tuning", "hpc"):
            raise ConfigError(
                f"tuning.hyperparameters.{hp.path!r}: tuned paths must point into the training "
                "config, not into the tuning: or hpc: sections."
            )


def parse_duration_s(value: Any) -> float | None:
    """Parse EDS-NLP's `timeout`: seconds as a number, or "30s", "10m", "1.5h", "2d"."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower()
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        try:
            seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
        except ValueError:
            raise ConfigError(
                f"tuning.timeout: invalid duration {value!r}. Use seconds or a number with "
                "s, m, h or d, for example '1.5h'."
            ) from None
    if seconds <= 0 or math.isnan(seconds):
        raise ConfigError(f"tuning.timeout: must be positive, got {value!r}.")
    return seconds


def _metric(value: Any) -> tuple[str, ...]:
    paths = [value] if isinstance(value, str) else value
    if (
        not isinstance(paths, (list, tuple))
        or not paths
        or not all(isinstance(path, str) and path for path in paths)
    ):
        raise ConfigError(
            f"tuning.metric: expected a path in the scorer output such as 'ner.micro.f', or a "
            f"list of them, got {value!r}."
        )
    return tuple(paths)


def _seeds(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(seed, int) for seed in value):
        raise ConfigError(f"tuning.training_seeds: expected a list of integers, got {value!r}.")
    return tuple(value)


def _bool(section: Mapping[str, Any], key: str, default: bool) -> bool:
    value = section.get(key, default)
    if value is None:
        return default
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"tuning.{key}: expected true or false, got {value!r}.")
    return value


def _optional_int(section: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = section.get(key)
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"tuning.{key}: expected an integer >= {minimum}, got {value!r}.")
    return value


def _optional_float(section: Mapping[str, Any], key: str) -> float | None:
    value = section.get(key)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"tuning.{key}: expected a positive number, got {value!r}.") from None
    if not number > 0 or math.isinf(number):
        raise ConfigError(f"tuning.{key}: expected a positive number, got {value!r}.")
    return number
