"""Trial plug-ins: what a worker runs for one trial.

A plug-in is prepared once per worker in a long-lived trial host process (imports, config
resolution), then each trial runs `run` in a child forked from that host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tuner.config import TuningSettings, parse_yaml_config
from tuner.errors import HpcTuneError
from tuner.space import apply_values, set_path

if TYPE_CHECKING:
    from tuner.training import TrainTime

ScoreCallback = Callable[[int, float], None]
ALLOW_CPU_ENV = "HPC_TUNE_ALLOW_CPU"


@dataclass(frozen=True)
class TrialRequest:
    """One trial to run.

    Attributes:
        number: Optuna trial number.
        values: User-facing hyperparameter values by name.
        seed: Training seed of the trial.
        trial_dir: The trial's own training output folder.
    """

    number: int
    values: Mapping[str, Any]
    seed: int
    trial_dir: str


class Objective(Protocol):
    """A trial plug-in.

    A plug-in may also set a `train_s` attribute in `run`: the seconds it spent training,
    inside EDS-NLP's `train()`. The worker records it as the trial's `train_s` user attribute.
    """

    def prepare(self) -> None:
        """Pay the per-process costs (imports, first config resolution) once."""

    def run(self, request: TrialRequest, on_score: ScoreCallback) -> float:
        """Train one trial and return its metric; `on_score` may raise PruneRequested."""


@dataclass(frozen=True)
class ObjectiveSpec:
    """Description of a plug-in, picklable so that a spawned trial host can build it.

    Attributes:
        kind: `edsnlp` or `synthetic`.
        config_path: The user's config file.
        tuning: The validated tuning settings, command-line overrides applied.
        options: Options of the synthetic objective.
        phase: The phase the trials belong to (it decides whether `training_seeds` apply).
    """

    kind: str
    config_path: Path
    tuning: TuningSettings
    options: Mapping[str, Any] = field(default_factory=dict)
    phase: int = 1


def build_objective(spec: ObjectiveSpec) -> Objective:
    if spec.kind == "synthetic":
        from tuner.synthetic import SyntheticObjective

        return SyntheticObjective(spec.tuning, spec.options)
    return EdsnlpObjective(spec.config_path, spec.tuning, spec.phase)


class EdsnlpObjective:
    """Train the user's EDS-NLP config with the trial's values."""

    def __init__(self, config_path: Path, tuning: TuningSettings, phase: int = 1) -> None:
        self.config = parse_yaml_config(Path(config_path).read_text(encoding="utf-8"))
        self.tuning = tuning
        self.phase = phase
        self.train_s: float | None = None

    def prepare(self) -> None:
        from tuner import training

        check_gpu_visible()
        training.warm_up(self.config)

    def run(self, request: TrialRequest, on_score: ScoreCallback) -> float:
        from tuner import training

        train_time = training.TrainTime()
        try:
            return self._train(request, on_score, train_time)
        finally:
            self.train_s = train_time.seconds

    def _train(
        self, request: TrialRequest, on_score: ScoreCallback, train_time: TrainTime
    ) -> float:
        from tuner import training

        metric = self.tuning.metric_parts
        seeds = training_seeds(self.tuning, phase=self.phase)
        if not seeds:
            config = trial_config(self.config, self.tuning, request)
            return training.train_trial(config, metric, on_score, train_time)

        # EDS-NLP's training_seeds: train once per seed and score the mean. Only the first
        # seed's validations reach the pruner, so steps are reported once.
        scores = []
        for index, seed in enumerate(seeds):
            seed_dir = f"{request.trial_dir}/seed_{seed}"
            config = trial_config(
                self.config, self.tuning, replace(request, seed=seed, trial_dir=seed_dir)
            )
            callback = on_score if index == 0 else _ignore_score
            scores.append(training.train_trial(config, metric, callback, train_time))
        return sum(scores) / len(scores)


def training_seeds(tuning: TuningSettings, phase: int) -> tuple[int, ...]:
    """Return the seeds each trial trains with in `phase`, or () for the trial's own seed.

    As in EDS-NLP, phase 1 uses `training_seeds` only when `use_seeds_for_phase_1` is true,
    which it is by default for one-phase sweeps.
    """
    if not tuning.training_seeds:
        return ()
    use_in_phase_1 = tuning.use_seeds_for_phase_1
    if use_in_phase_1 is None:
        use_in_phase_1 = not tuning.two_phase_tuning
    if phase == 1 and not use_in_phase_1:
        return ()
    return tuning.training_seeds


def _ignore_score(step: int, value: float) -> None:
    return None


def trial_config(config: Any, tuning: TuningSettings, request: TrialRequest) -> Any:
    """Return the config of one trial: values, training seed and output folder written in."""
    updated = apply_values(config, tuning.hyperparameters, request.values)
    set_path(updated, tuning.seed_parts, request.seed, label=f"tuning.seed_path={tuning.seed_path}")
    set_path(updated, ("train", "output_dir"), request.trial_dir)
    return updated


def check_gpu_visible() -> None:
    """Stop a worker that was given GPUs but cannot use them, instead of training on CPU.

    Slurm and submitit set CUDA_VISIBLE_DEVICES for jobs that hold GPUs. If torch then finds no
    CUDA device, every trial would run on CPU while GPU-hours are charged. The test suite's
    fake GPUs set HPC_TUNE_ALLOW_CPU=1 to skip this check.

    Raises:
        HpcTuneError: When GPUs were given but torch cannot use them.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if not visible or visible == "NoDevFiles" or os.environ.get(ALLOW_CPU_ENV) == "1":
        return
    # Ask NVML instead of initialising CUDA, so that forked trial processes can still use it.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    if not torch.cuda.is_available():
        raise HpcTuneError(
            f"This worker was given GPUs (CUDA_VISIBLE_DEVICES={visible}) but torch "
            f"{torch.__version__} finds no CUDA device, so trials would train on CPU. Install a "
            "CUDA build of torch that matches the node's driver (check 'nvidia-smi'), or load the "
            "site's CUDA module in hpc.slurm.setup."
        )
