"""Check that tuned optimizer-group settings reach parameters, as EDS-NLP applies groups.

EDS-NLP's ScheduledOptimizer (edsnlp 0.22) gives a parameter the groups whose selector (the
group's key) matches its name with `regex.search`, and takes each setting from the first of
those groups, in config order, that sets it. A parameter matched by an `exclude` or `false`
group, or left without `lr`, is not optimized. A tuned setting that no parameter takes has no
effect on training, which the tutorial's `"^transformer"` group shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuner.space import Hyperparameter, get_path
from tuner.training import format_path

MAX_NAMES_SHOWN = 4


def check_optimizer_groups(
    config: Any, hyperparameters: Sequence[Hyperparameter], arguments: Mapping[str, Any]
) -> list[str]:
    """Check that each tuned optimizer-group setting reaches at least one parameter.

    Args:
        config: The unresolved config, where the groups and their selectors are read.
        hyperparameters: The search space; those under an optimizer group are checked.
        arguments: The resolved `train` arguments, for the pipeline and the optimizer.

    Returns:
        One message per group without any parameter, and per setting no parameter takes.
    """
    nlp = arguments.get("nlp")
    if nlp is None or not hasattr(nlp, "named_parameters"):
        return []
    names = [name for name, _ in nlp.named_parameters()]
    optimizer = getattr(arguments.get("optimizer"), "optim", None)
    options = set(getattr(optimizer, "defaults", {})) | {"selector", "exclude"}

    tuned: dict[tuple, list[tuple[Hyperparameter, str]]] = {}
    for hp in hyperparameters:
        found = _optimizer_group(config, hp.parts)
        if found is not None:
            groups_location, selector, key = found
            tuned.setdefault((groups_location, selector), []).append((hp, key))

    problems = []
    for (groups_location, selector), entries in tuned.items():
        groups = _group_entries(get_path(config, groups_location))
        where = format_path((*groups_location, selector))
        matched = [name for name in names if _search(selector, name)]
        if not matched:
            problems.append(_no_match_message(where, selector, entries, names))
            continue
        for key in dict.fromkeys(key for _, key in entries):
            hp_names = ", ".join(hp.name for hp, k in entries if k == key)
            if optimizer is not None and key not in options:
                problems.append(
                    f"{where}.{key}: {type(optimizer).__name__} has no option {key!r}, so "
                    f"{hp_names} has no effect. Valid options: {', '.join(sorted(options))}."
                )
                continue
            sources = {_setting_source(groups, name, key) for name in matched}
            if selector not in sources:
                other = ", ".join(repr(s) for s in sorted(sources - {None}, key=str)) or "none"
                problems.append(
                    f"{where}.{key}: no parameter takes {key!r} from this group, so {hp_names} "
                    f"has no effect. The {len(matched)} parameters it matches take it from "
                    f"{other} (the first group listed that sets a key wins) or are not "
                    f"optimized. Move {selector!r} above the groups that take precedence."
                )
    return problems


def _optimizer_group(config: Any, parts: tuple) -> tuple[tuple, str, str] | None:
    """Return (location of `groups`, selector, setting key) when `parts` is under a group."""
    for depth in range(len(parts) - 3):
        if parts[depth + 1] != "groups":
            continue
        try:
            node = get_path(config, parts[: depth + 1])
            groups = node["groups"]
        except (KeyError, IndexError, ValueError, TypeError):
            return None
        if not (
            isinstance(node, Mapping) and (node.get("@core") == "optimizer" or "optim" in node)
        ):
            continue
        selector: Any = parts[depth + 2]
        if isinstance(groups, Sequence) and not isinstance(groups, str):
            try:
                selector = groups[int(selector)].get("selector")
            except (IndexError, ValueError, AttributeError):
                return None
        return parts[: depth + 2], str(selector), str(parts[depth + 3])
    return None


def _group_entries(groups: Any) -> list[tuple[str, Any]]:
    """Return (selector, settings, or False when excluded) in config order."""
    if isinstance(groups, Mapping):
        return [(str(sel), settings or False) for sel, settings in groups.items()]
    return [
        (str(group.get("selector")), False if group.get("exclude") else group)
        for group in groups
        if isinstance(group, Mapping)
    ]


def _search(selector: str, name: str) -> bool:
    import regex  # the module EDS-NLP's ScheduledOptimizer uses

    try:
        return regex.search(selector, name) is not None
    except regex.error:
        return False


def _setting_source(groups: list[tuple[str, Any]], name: str, key: str) -> str | None:
    hits = [(selector, settings) for selector, settings in groups if _search(selector, name)]
    if any(settings is False for _, settings in hits) or not any("lr" in s for _, s in hits):
        return None
    return next((selector for selector, settings in hits if key in settings), None)


def _no_match_message(
    where: str, selector: str, entries: list[tuple[Hyperparameter, str]], names: list[str]
) -> str:
    hp_names = ", ".join(hp.name for hp, _ in entries)
    examples: dict[str, str] = {}
    for name in names:
        examples.setdefault(".".join(name.split(".")[:4]), name)
    example_names = ", ".join(repr(name) for name in list(examples.values())[:MAX_NAMES_SHOWN])
    suggestion = "Change the selector"
    unanchored = selector.lstrip("^")
    first = next((name for name in names if _search(unanchored, name)), None)
    if unanchored != selector and first is not None:
        import regex

        prefix = first[: regex.search(unanchored, first).start()]
        suggestion = (
            f"Use a selector that matches, such as {unanchored!r} or {'^' + prefix + unanchored!r},"
        )
    return (
        f"optimizer group {where} matches no parameter, so the hyperparameters under it have no "
        f"effect: {hp_names}. EDS-NLP selects a group's parameters with regex.search(selector, "
        f"name) on names such as {example_names}. {suggestion} in the group and in the "
        "hyperparameter paths."
    )
