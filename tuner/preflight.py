"""Preflight: build a sweep's pipeline and optimizer without training, to fail in seconds.

The training config is resolved with every hyperparameter at its low value, at its high value
and at each other categorical choice. Besides the checks of `tuner.preflight_static` (data and
model paths, batch sizes, validation steps) and `tuner.optimizer_groups`, the builds show an
argument a component does not accept and a metric the scorer does not produce.
"""

from __future__ import annotations

import copy
import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from itertools import chain, islice
from pathlib import Path
from typing import Any

from tuner.errors import ConfigError, PreflightError, TrialError
from tuner.optimizer_groups import check_optimizer_groups
from tuner.preflight_static import (
    check_batch_sizes,
    check_data_paths,
    check_models,
    check_validation_steps,
)
from tuner.space import Hyperparameter, apply_values, preflight_assignments
from tuner.text import plural
from tuner.training import format_path, metric_value, resolve_training, set_offline_environment

logger = logging.getLogger(__name__)

SAMPLE_DOCS = 8  # validation documents scored by the untrained pipeline
DATA_KEYS = ("train_data", "val_data")


def preflight(
    config: Any,
    hyperparameters: Sequence[Hyperparameter],
    metric_paths: Sequence[tuple[str | int, ...]],
    config_path: Path,
    offline: bool = True,
) -> None:
    """Build the training config at the edges of the search space and check each build.

    Args:
        config: The whole unresolved config as loaded (a confit `Config`).
        hyperparameters: The search space.
        metric_paths: The `tuning.metric` paths, split.
        config_path: The config file, named in the error.
        offline: `hpc.offline`: build without network access, and require each model to be
            a local folder or in the Hugging Face cache.

    Raises:
        PreflightError: One error listing every problem found, each with the key, the value
            and the fix.
    """
    start_s = time.monotonic()
    set_offline_environment(offline)
    problems: list[str] = []
    checked_optimizer = checked_metric = False
    value_sets = _value_sets(hyperparameters)
    failures: dict[str, list[str]] = {}  # build error naming no hyperparameter -> value sets

    for values in value_sets:
        try:
            trial_config = apply_values(config, hyperparameters, values)
        except ConfigError as error:
            _add(problems, [str(error)])
            continue
        _add(problems, check_batch_sizes(trial_config))
        _add(problems, check_validation_steps(trial_config))
        data_problems = check_data_paths(trial_config, config_path)
        _add(problems, data_problems)
        model_problems = check_models(trial_config, offline)
        _add(problems, model_problems)
        if model_problems:
            continue  # nothing else can be built without the model

        try:
            # The readers fail on a missing folder: build the rest to check it all the same.
            arguments = resolve_training(
                _without_data(trial_config) if data_problems else trial_config
            )
        except Exception as error:  # noqa: BLE001  (a user's config may fail in any way)
            named = describe_build_error(error, hyperparameters, values)
            _add(problems, named)
            if not named:
                text = f"{type(error).__name__}: {' '.join(str(error).split())}"
                failures.setdefault(text, []).append(_label(values, value_sets[0]))
            continue
        if not checked_optimizer:
            checked_optimizer = True
            _add(problems, check_optimizer_groups(config, hyperparameters, arguments))
        if not checked_metric and not data_problems:
            checked_metric = True
            _add(problems, check_metric_paths(arguments, metric_paths))

    for text, labels in failures.items():
        scope = (
            "Every trial would fail the same way: fix the config."
            if len(labels) == len(value_sets)
            else "Trials with these values would fail: fix the config or narrow the search space."
        )
        _add(
            problems,
            [f"Building the training config {' and '.join(labels)} failed: {text} {scope}"],
        )

    logger.info("Preflight of %s took %.1f s", config_path, time.monotonic() - start_s)
    if problems:
        listed = "\n".join(f"  {number}. {text}" for number, text in enumerate(problems, 1))
        raise PreflightError(
            f"Preflight found {plural(len(problems), 'problem')} in {config_path}:\n{listed}"
        )


def _add(problems: list[str], found: Sequence[str]) -> None:
    problems.extend(message for message in found if message not in problems)


def _without_data(config: Any) -> Any:
    """Return a shallow copy of the config whose `train` section has no data readers."""
    reduced = copy.copy(config)
    train = config["train"]
    reduced["train"] = type(train)({key: train[key] for key in train if key not in DATA_KEYS})
    return reduced


def _label(values: Mapping[str, Any], low: Mapping[str, Any]) -> str:
    """Name a value set: the low one, the high one, or the one categorical choice it changes."""
    if not values:
        return "as written"
    if values == low:
        return "with every hyperparameter at its low value"
    changed = [name for name in values if values[name] != low.get(name)]
    return (
        f"with {changed[0]}={values[changed[0]]!r}"
        if len(changed) == 1
        else "with every hyperparameter at its high value"
    )


def _value_sets(hyperparameters: Sequence[Hyperparameter]) -> list[dict[str, Any]]:
    unique: list[dict[str, Any]] = []
    for values in preflight_assignments(hyperparameters) if hyperparameters else [{}]:
        if values not in unique:
            unique.append(values)
    return unique


# --- Build errors -------------------------------------------------------------------------


def describe_build_error(
    error: Exception, hyperparameters: Sequence[Hyperparameter], values: Mapping[str, Any]
) -> list[str]:
    """Turn a failed resolution into messages naming the hyperparameter at fault.

    Returns:
        The messages, or an empty list when the error names no tuned hyperparameter.
    """
    entries = getattr(error, "errors", None)
    if hasattr(error, "raw_errors") and callable(entries):
        # confit's ConfitValidationError: one entry per invalid argument, with its location,
        # and the validated callable as `model`.
        model = getattr(error, "model", None)
        return [_describe_invalid(e, model, hyperparameters, values) for e in entries()]

    message = " ".join(str(error).split())
    for hp in hyperparameters:
        if f"'{hp.parts[-1]}'" in message:
            # Name the value only when the error is about it, so that the low and high builds
            # of a rejected key give one message.
            value = values.get(hp.name)
            with_value = f" with {hp.name}={value!r}" if str(value) in message else ""
            return [
                f"tuning.hyperparameters.{hp.path!r}: building the pipeline{with_value} failed: "
                f"{type(error).__name__}: {message}. Fix the key or the range of this "
                "hyperparameter."
            ]
    return []


def _describe_invalid(
    entry: Mapping[str, Any],
    model: Any,
    hyperparameters: Sequence[Hyperparameter],
    values: Mapping[str, Any],
) -> str:
    location = tuple(entry["loc"])
    text = " ".join(str(entry["msg"]).split())
    hp = next((h for h in hyperparameters if location[: len(h.parts)] == h.parts), None)
    if hp is None:
        return f"{format_path(location)}: {text}. Fix this value in the config."
    if "unexpected keyword argument" in text and location == hp.parts:
        return (
            f"tuning.hyperparameters.{hp.path!r}: {format_path(hp.parts[:-1])} does not accept "
            f"an argument {hp.parts[-1]!r}{_accepted_arguments(model)}. Fix the last part of "
            "the path or remove the hyperparameter."
        )
    return (
        f"tuning.hyperparameters.{hp.path!r}: the value {values.get(hp.name)!r} is invalid at "
        f"{format_path(location)}: {text}. Change the range or choices of {hp.name}."
    )


def _accepted_arguments(model: Any) -> str:
    """Return ' (accepted: a, b, ...)' from the signature confit validated against, or ''."""
    hidden = {"self", "nlp", "name", "args", "kwargs", "v__duplicate_kwargs"}
    try:
        names = [name for name in inspect.signature(model).parameters if name not in hidden]
    except (TypeError, ValueError):
        return ""
    return f" (accepted: {', '.join(names)})" if names else ""


# --- Metric -------------------------------------------------------------------------------


def check_metric_paths(
    arguments: Mapping[str, Any], metric_paths: Sequence[tuple[str | int, ...]]
) -> list[str]:
    """Score a few validation documents with the untrained pipeline and look up each path.

    The untrained pipeline predicts few labels, so a per-label path missing from that output
    is looked up again in the metric computed with the gold annotations as predictions.
    """
    from edsnlp.training.trainer import GenericScorer

    val_data = arguments.get("val_data") or []
    streams = list(val_data) if isinstance(val_data, (list, tuple)) else [val_data]
    sample = list(islice(chain.from_iterable(streams), SAMPLE_DOCS))
    if not sample:
        return [
            "train.val_data yields no document, so no trial can be scored. Point it at "
            "a folder of annotated documents."
        ]

    nlp = arguments["nlp"]
    for _, pipe in nlp.torch_components():
        pipe.post_init(iter(sample), exclude=set())
    scorer = arguments.get("scorer") or {}
    metrics = dict(scorer) if isinstance(scorer, Mapping) else {}
    try:
        output = (GenericScorer(**scorer) if isinstance(scorer, Mapping) else scorer)(nlp, sample)
    except Exception as error:  # noqa: BLE001
        return [
            f"scorer: scoring {len(sample)} validation documents with the untrained pipeline "
            f"failed: {type(error).__name__}: {error}. Fix the scorer: section."
        ]

    problems = []
    for path in metric_paths:
        try:
            metric_value(output, [path])
        except TrialError as error:
            if not _in_gold_metric(metrics, path, streams):
                problems.append(f"tuning.metric: {error}")
    return problems


def _in_gold_metric(metrics: Mapping[str, Any], path: tuple, streams: list) -> bool:
    metric = metrics.get(str(path[0]))
    if not callable(metric):
        return False
    docs = list(chain.from_iterable(streams))
    try:
        metric_value({path[0]: metric(docs, docs)}, [path])
    except Exception:  # noqa: BLE001  (any failure means the path is not produced)
        return False
    return True
