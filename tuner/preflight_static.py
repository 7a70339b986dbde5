"""Checks of a training config that need no build: data and model paths, batch sizes, steps.

Each check walks the sections that `train` uses, following confit references, and returns a
list of problem messages (empty when all is well) naming the key, the value and the fix.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner.space import get_path
from tuner.training import DEFAULT_MAX_STEPS, format_path

BATCH_SIZE_KEYS = ("batch_size", "sub_batch_size")
UNRESOLVED = object()


def _reachable_sections(config: Any) -> list[tuple[tuple[str | int, ...], Mapping]]:
    """Return (location, mapping) for each mapping that `train` uses, following references."""
    from confit.utils.xjson import Reference

    found: list[tuple[tuple[str | int, ...], Mapping]] = []
    seen: set[int] = set()

    def walk(node: Any, location: tuple[str | int, ...]) -> None:
        if isinstance(node, Reference):
            target = _reference_target(config, node)
            if target is not None:
                walk(target[1], target[0])
        elif isinstance(node, (Mapping, list, tuple)) and id(node) not in seen:
            seen.add(id(node))
            if isinstance(node, Mapping):
                found.append((location, node))
                items = list(node.items())
            else:
                items = list(enumerate(node))
            for key, child in items:
                walk(child, (*location, key))

    if "train" in config:  # a config for a plug-in other than EDS-NLP's training may lack it
        walk(config["train"], ("train",))
    return found


def _reference_target(config: Any, reference: Any) -> tuple[tuple[str | int, ...], Any] | None:
    """Return where a plain `${ a.b }` reference points, or None for an expression."""
    from confit.utils.collections import split_path

    try:
        parts = tuple(split_path(reference.value.strip()))
        return parts, get_path(config, parts)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError):
        return None


def resolved_value(config: Any, value: Any) -> tuple[Any, str | None]:
    """Return a scalar value with its references resolved, and the reference text if any."""
    from confit import Config
    from confit.utils.xjson import Reference

    if not isinstance(value, Reference):
        return value, None
    try:
        return Config({"value": value}).resolve(root=config)["value"], str(value)
    except Exception:  # noqa: BLE001  (the full build reports broken references)
        return UNRESOLVED, str(value)


def data_paths(config: Any) -> list[tuple[str, str, Path]]:
    """List the local data paths of `train`'s readers: (config key, reader, path as written).

    References are resolved; remote paths (`s3://...`) and unresolvable values are left out.
    """
    found = []
    for location, node in _reachable_sections(config):
        reader = next((node[key] for key in node if str(key).startswith("@readers")), None)
        if reader is None or "path" not in node:
            continue
        value, reference = resolved_value(config, node["path"])
        if not isinstance(value, (str, Path)) or "://" in str(value):
            continue  # remote file systems are not checked
        key = format_path((*location, "path")) + (f" (= {reference})" if reference else "")
        found.append((key, str(reader), Path(value).expanduser()))
    return found


def check_data_paths(config: Any, config_path: Path) -> list[str]:
    """Check that every local folder or file read by a data reader of `train` exists."""
    problems = []
    for key, reader, path in data_paths(config):
        value = str(path)
        tried = path if path.is_absolute() else Path.cwd() / path
        if not tried.exists():
            hint = (
                f"Fix the path; relative paths are read from the working directory ({Path.cwd()})."
            )
            beside_config = config_path.parent / path
            if not path.is_absolute() and beside_config.exists():
                hint = (
                    f"Relative paths are read from the working directory ({Path.cwd()}), not "
                    f"from the config's folder: write {str(beside_config)!r} or run from "
                    f"{config_path.parent}."
                )
            problems.append(f"{key}: data path {value!r} not found (looked for {tried}). {hint}")
        elif reader == "standoff" and tried.is_dir() and next(tried.rglob("*.txt"), None) is None:
            problems.append(
                f"{key}: {tried} contains no .txt file. The standoff reader reads .txt/.ann pairs "
                "in that folder and its sub-folders: point it at the folder of the documents."
            )
    return problems


def check_models(config: Any, offline: bool = True) -> list[str]:
    """Check that each `eds.transformer` model is a local folder or, offline, in the HF cache.

    Only the local cache is read, so the check never waits on the network.

    Args:
        config: The whole unresolved config.
        offline: `hpc.offline`. When false, a Hugging Face model id that is not in the cache
            passes: the jobs may download it.
    """
    problems = []
    for location, node in _reachable_sections(config):
        if node.get("@factory") != "eds.transformer" or "model" not in node:
            continue
        value, reference = resolved_value(config, node["model"])
        if not isinstance(value, (str, Path)):
            continue
        key = format_path((*location, "model")) + (f" (= {reference})" if reference else "")
        path = Path(value).expanduser()
        if path.exists():
            continue
        # Hugging Face model ids have the form "name" or "organization/name".
        if path.is_absolute() or str(value).startswith((".", "~")) or str(value).count("/") > 1:
            problems.append(
                f"{key}: model folder {str(value)!r} not found (looked for {Path.cwd() / path}). "
                "Fix the path (relative paths are read from the working directory), or copy the "
                "model folder to the cluster; for a Hugging Face model, `hf download ORG/NAME "
                "--local-dir MODEL_FOLDER` on a machine with network access writes one."
            )
        elif offline and not _in_hub_cache(str(value)):
            problems.append(
                f"{key}: {str(value)!r} is neither a local folder nor in the Hugging Face cache "
                f"({_hub_cache()}), and jobs run offline (hpc.offline). On a machine with "
                f"network access, run `hf download {value} --local-dir MODEL_FOLDER`, copy "
                f"MODEL_FOLDER to the cluster and set the model to its path. Or run "
                f"`hf download {value}` with the HF_HOME that the jobs use, or set hpc.offline: "
                "false if the compute nodes reach the Hugging Face Hub."
            )
    return problems


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repository id
        return False


def parse_batch_size(value: Any) -> tuple[int | None, str]:
    """Parse a batch size as EDS-NLP 0.22 does: `<int>`, `<unit>` or `"<int> <unit>"`.

    Raises:
        ValueError: For any other form, such as the expression `32 * 128 tokens`.
    """
    text = str(value)
    parts = text.split()
    number = int(parts[0]) if parts and re.fullmatch(r"[+-]?\d+", parts[0]) else None
    if len(parts) == 1 and number is not None:
        return number, "docs"
    if len(parts) == 1 and text.isidentifier():
        return None, text
    if len(parts) == 2 and number is not None and parts[1].isidentifier():
        return number, parts[1]
    raise ValueError(f'Invalid batch size: {text}, must be <int> or "<int> <str>"')


_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
}


def suggest_batch_size(value: str) -> str | None:
    """Return the accepted form of an arithmetic batch size (`32 * 128 tokens` -> `4096 tokens`).

    Only integers and `+ - * //` are evaluated; anything else returns None.
    """
    match = re.fullmatch(r"\s*([\d\s()+\-*/]+?)\s*([A-Za-z_]\w*)?\s*", value)
    if match is None:
        return None
    try:
        number = _evaluate(ast.parse(match.group(1).strip(), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None
    if number <= 0:
        return None
    return f"{number} {match.group(2)}" if match.group(2) else str(number)


def _evaluate(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("not an integer expression")


def check_batch_sizes(config: Any) -> list[str]:
    """Check every batch size used by `train`, giving the accepted form of expressions."""
    problems = []
    for location, node in _reachable_sections(config):
        for key in (key for key in BATCH_SIZE_KEYS if key in node):
            value, reference = resolved_value(config, node[key])
            if value is None or value is UNRESOLVED or isinstance(value, int):
                continue
            try:
                parse_batch_size(value)
            except ValueError:
                where = format_path((*location, key)) + (f" (= {reference})" if reference else "")
                suggestion = suggest_batch_size(str(value))
                fix = f"Write {suggestion!r}." if suggestion else "Write for example '4096 tokens'."
                problems.append(
                    f"{where}: invalid batch size {str(value)!r}. EDS-NLP accepts a whole "
                    "number with an optional unit (such as '4096 tokens' or '32 docs'), not an "
                    f"expression. {fix}"
                )
    return problems


def check_validation_steps(config: Any) -> list[str]:
    """Check that the last validation happens at `train.max_steps`, on the final model."""
    train = config["train"]
    max_steps, _ = resolved_value(config, train.get("max_steps", DEFAULT_MAX_STEPS))
    interval, _ = resolved_value(config, train.get("validation_interval"))
    if not isinstance(max_steps, int) or not (interval is None or isinstance(interval, int)):
        return []  # unresolvable values fail the build, which reports them
    effective = interval or max_steps // 10
    if effective <= 0:
        return [
            f"train.validation_interval is not set and train.max_steps ({max_steps}) is below 10: "
            "EDS-NLP's default interval, max_steps // 10, is 0 and training fails. Set "
            f"train.validation_interval to a divisor of {max_steps}, for example {max_steps}."
        ]
    if max_steps % effective == 0:
        return []
    interval_text = (
        f"{effective}, the default max_steps // 10" if interval is None else str(effective)
    )
    divisor = max(d for d in range(1, effective + 1) if max_steps % d == 0)
    return [
        f"train.max_steps ({max_steps}) is not a multiple of train.validation_interval "
        f"({interval_text}). EDS-NLP 0.22 validates only at multiples of the interval, so the "
        f"last validation (step {max_steps - max_steps % effective}) would not score the final "
        f"model. Set max_steps to {max_steps + effective - max_steps % effective} or "
        f"validation_interval to {divisor}."
    ]
