"""Run one EDS-NLP training for a trial and read its metric from the scorer output.

torch and EDS-NLP are imported inside the functions that train, so that importing this module
(for `metric_value` or `PruneRequested`) stays cheap.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from numbers import Real
from typing import Any

from tuner.errors import TrialError

logger = logging.getLogger(__name__)

MetricPath = tuple[str | int, ...]
ScoreCallback = Callable[[int, float], None]

# Defaults of `edsnlp.training.train` (edsnlp 0.22.0) for keys the config may leave out.
DEFAULT_TRAIN_SEED = 42
DEFAULT_MAX_STEPS = 1000
MAX_KEYS_SHOWN = 15
# Set to 1, they keep huggingface_hub, transformers and datasets from using the network.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


class PruneRequested(Exception):
    """Raised by a score callback to stop the training of a trial that the pruner stopped."""


@dataclass
class TrainTime:
    """Seconds spent inside EDS-NLP's `train()`, summed over the calls that share this object."""

    seconds: float = 0.0


def format_path(parts: Sequence[str | int]) -> str:
    """Join path parts with dots, quoting the parts that contain a dot (confit's syntax)."""
    return ".".join(f"'{part}'" if "." in str(part) else str(part) for part in parts)


def metric_value(validation: Mapping[str, Any], metric_paths: Sequence[MetricPath]) -> float:
    """Read the trial metric from one scorer output: the mean of the values at `metric_paths`.

    Args:
        validation: The scorer output, e.g. `{"ner": {"micro": {"f": 0.5, ...}, ...}, ...}`.
        metric_paths: Paths in that output. The first part of each is a key of the config's
            `scorer:` section (not a pipe name).

    Raises:
        TrialError: A path is missing or does not lead to a number; the message lists the
            paths that exist.
    """
    if not metric_paths:
        raise TrialError("No metric path given: set tuning.metric, for example 'ner.micro.f'.")
    values = [_read_metric(validation, tuple(path)) for path in metric_paths]
    return sum(values) / len(values)


def _read_metric(validation: Mapping[str, Any], path: MetricPath) -> float:
    node: Any = validation
    for depth, part in enumerate(path):
        child = _child(node, part)
        if child is _MISSING:
            where = format_path(path[:depth]) or "the top level"
            keys = (
                ", ".join(str(key) for key in list(node)[:MAX_KEYS_SHOWN])
                if isinstance(node, Mapping)
                else ""
            )
            raise TrialError(
                f"Metric {format_path(path)!r} not found in the scorer output: {where} has no "
                f"key {part!r} (keys there: {keys or 'none'}). Set tuning.metric to an existing "
                f"path{_example(validation)}; its first part is a key of the scorer: section."
            )
        node = child
    if isinstance(node, bool) or not isinstance(node, Real):
        raise TrialError(
            f"Metric {format_path(path)!r} is {_short(node)}, not a number. Set tuning.metric "
            f"to a path that ends at a number{_example(validation)}."
        )
    return float(node)


_MISSING = object()


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, Mapping):
        if part in node:
            return node[part]
        if str(part) in node:
            return node[str(part)]
        return _MISSING
    if isinstance(node, Sequence) and not isinstance(node, str) and isinstance(part, int):
        return node[part] if -len(node) <= part < len(node) else _MISSING
    return _MISSING


def _example(tree: Any) -> str:
    """Return ', such as <path>' for a number in `tree`, preferring a non-speed metric."""
    found: list[tuple[str | int, ...]] = []

    def walk(node: Any, prefix: tuple[str | int, ...]) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, (*prefix, key))
        elif isinstance(node, Real) and not isinstance(node, bool):
            found.append(prefix)

    walk(tree, ())
    preferred = [path for path in found if path[0] != "speed"] or found
    return f", such as {format_path(preferred[0])!r}" if preferred else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def set_offline_environment(offline: bool = True) -> None:
    """Keep Hugging Face libraries off the network in this process when `offline` is true.

    Models already on disk or in the Hugging Face cache still load. The variables are read
    when `huggingface_hub` and `transformers` are imported, so call this before that import.
    With `offline` false the environment is left as it is. Training itself never sets them:
    the job's environment decides (see `hpc.offline`).
    """
    if offline:
        os.environ.update({name: "1" for name in OFFLINE_VARIABLES})


def resolve_training(config: Any) -> dict[str, Any]:
    """Resolve the `train` section with the whole config as root, into `train()` arguments.

    This builds the pipeline (the transformer is loaded from disk), the data readers, the
    scorer settings and the optimizer. The first call in a process takes seconds, mostly for
    lazy imports of the transformers model code. Later calls take a fraction of a second
    with the tiny example model.
    """
    import edsnlp
    from confit import Config

    return dict(Config.resolve(config["train"], registry=edsnlp.registry, root=config))


def warm_up(config: Any) -> None:
    """Import torch and EDS-NLP and resolve the training config once, discarding the result.

    A process that forks trial processes afterwards pays the imports once instead of once
    per trial.
    """
    start_s = time.monotonic()
    import edsnlp.training  # noqa: F401  (imports torch, transformers and accelerate)

    resolve_training(config)
    logger.info("EDS-NLP imported and the config resolved in %.1f s", time.monotonic() - start_s)


def train_trial(
    config: Any,
    metric_paths: Sequence[MetricPath],
    on_score: ScoreCallback,
    train_time: TrainTime | None = None,
) -> float:
    """Train the pipeline of one trial and return its metric at the last validation.

    Args:
        config: The whole unresolved config, with the trial's hyperparameter values,
            `train.output_dir` and `train.seed` already written in.
        metric_paths: Paths in the scorer output; the trial value is their mean.
        on_score: Called with (step, value) after each validation. It may raise (for example
            PruneRequested) to stop the training; the exception propagates unchanged.
        train_time: If given, the seconds spent inside EDS-NLP's `train()` are added to it,
            also when the training raises.

    Returns:
        The metric of the final model.

    Raises:
        TrialError: The loss or the metric became NaN, or validation produced no metric.
    """
    from confit.utils.random import set_seed
    from edsnlp.training import train

    # The new layers of the pipeline get their random weights during resolution, before
    # train() seeds its loop, so seed here too: without it, two trials with the same seed
    # started from different weights.
    # NOTE: on CPU, runs with one seed still differ slightly (about 1e-4 in ner.micro.f on
    # the QUAERO example); the source of that noise was not isolated.
    set_seed(int(config["train"].get("seed", DEFAULT_TRAIN_SEED)))
    start_s = time.monotonic()
    arguments = resolve_training(config)
    max_steps = int(arguments.get("max_steps", DEFAULT_MAX_STEPS))
    logger.info("Training config resolved in %.1f s", time.monotonic() - start_s)

    scores: list[tuple[int, float]] = []

    def on_validation(metrics: Mapping[str, Any]) -> None:
        step = int(metrics["step"])
        value = _validated_value(metrics.get("validation") or {}, metric_paths, step)
        scores.append((step, value))
        on_score(step, value)

    arguments["on_validation_callback"] = on_validation
    train_start_s = time.monotonic()
    try:
        nlp = train(**arguments)
    except ValueError as error:
        if str(error).startswith("NaN loss"):
            last = f"after step {scores[-1][0]}" if scores else "before the first validation"
            raise TrialError(
                f"Training diverged {last}: {error}. Lower the learning rates or their upper "
                "bounds in tuning.hyperparameters."
            ) from error
        raise
    finally:
        if train_time is not None:
            train_time.seconds += time.monotonic() - train_start_s

    # EDS-NLP 0.22 validates only at multiples of validation_interval, so the last validation
    # may have scored an earlier model: score the final one.
    if not scores or scores[-1][0] != max_steps:
        logger.info(
            "Scoring the model of step %d: the last validation was not at that step", max_steps
        )
        value = _validated_value(_score_final_model(nlp, arguments), metric_paths, max_steps)
        scores.append((max_steps, value))
        on_score(max_steps, value)
    return scores[-1][1]


def _validated_value(
    validation: Mapping[str, Any], metric_paths: Sequence[MetricPath], step: int
) -> float:
    if not validation:
        raise TrialError(
            f"Validation at step {step} produced no metrics: train.val_data yielded no "
            "document. Point val_data at a folder with annotated documents."
        )
    value = metric_value(validation, metric_paths)
    if math.isnan(value) or math.isinf(value):
        paths = ", ".join(format_path(path) for path in metric_paths)
        raise TrialError(f"Metric {paths} is {value} at step {step}: the training diverged.")
    return value


def _score_final_model(nlp: Any, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
    from edsnlp.training.trainer import GenericScorer

    val_data = arguments.get("val_data") or []
    streams = val_data if isinstance(val_data, (list, tuple)) else [val_data]
    docs = list(chain.from_iterable(streams))
    scorer = arguments.get("scorer") or {}
    if isinstance(scorer, Mapping):
        scorer = GenericScorer(**scorer)
    return scorer(nlp, docs) if docs else {}
