"""Write the user's YAML config back with the best hyperparameter values in it.

The file goes through a ruamel.yaml round trip, so comments, key order, key and value quoting,
anchors and block scalars survive. Booleans and nulls keep their spelling (`True`, `~`, empty)
because they are loaded as `_VerbatimScalar`. ruamel.yaml 0.19.1 still writes flow lists
without inner spaces (`[ "ents", "*" ]` becomes `["ents", "*"]`). So each line that differs
from the source only in spaces around `[ ] { } ,` is copied back from the source, and the
result must then load to the same data as ruamel's own output. On a replaced line, a comment
keeps its column unless the new value reaches it. An indentation style other than the few in
`_INDENT_CANDIDATES` is rewritten.
"""

from __future__ import annotations

import difflib
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.constructor import RoundTripConstructor
from ruamel.yaml.error import YAMLError
from ruamel.yaml.representer import RoundTripRepresenter

from tuner.errors import ConfigError, HpcTuneError
from tuner.space import Hyperparameter, get_path, set_path

logger = logging.getLogger(__name__)

YAML_SUFFIXES = (".yml", ".yaml")

# (mapping, sequence, offset) settings of `YAML.indent`: ruamel's default, the style of the
# EDS-NLP tutorial (`  - data:` under its key) and their 4-space variants. The one that
# reproduces the most lines of the unmodified file is used.
_INDENT_CANDIDATES = ((2, 2, 0), (2, 4, 2), (4, 4, 2), (4, 6, 4), (4, 2, 0))

# Wide enough that ruamel never folds a long value onto a second line.
_LINE_WIDTH = 4096

_FLOW_SPACING = re.compile(r"\s*([\[\]{},])\s*")

_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"


class _VerbatimScalar:
    """A boolean or null scalar with its source spelling, for example `True`, `~` or empty."""

    __slots__ = ("tag", "text")

    def __init__(self, tag: str, text: str) -> None:
        self.tag = tag
        self.text = text

    def __repr__(self) -> str:
        return f"_VerbatimScalar({self.tag!r}, {self.text!r})"


class _VerbatimConstructor(RoundTripConstructor):
    def construct_verbatim(self, node: Any) -> _VerbatimScalar:
        return _VerbatimScalar(node.tag, node.value)


_VerbatimConstructor.add_constructor(_BOOL_TAG, _VerbatimConstructor.construct_verbatim)
_VerbatimConstructor.add_constructor(_NULL_TAG, _VerbatimConstructor.construct_verbatim)


class _VerbatimRepresenter(RoundTripRepresenter):
    def represent_verbatim(self, data: _VerbatimScalar) -> Any:
        return self.represent_scalar(data.tag, data.text)

    def represent_none(self, data: Any) -> Any:
        # ruamel writes None as an empty value, which confit reads as the string "".
        return self.represent_scalar(_NULL_TAG, "null")


_VerbatimRepresenter.add_representer(_VerbatimScalar, _VerbatimRepresenter.represent_verbatim)
_VerbatimRepresenter.add_representer(type(None), _VerbatimRepresenter.represent_none)


def write_best_config(
    source: Path,
    dest: Path,
    hyperparameters: Sequence[Hyperparameter],
    values: Mapping[str, Any],
) -> None:
    """Copy the YAML config `source` to `dest` with `values[hp.name]` written at each `hp.parts`.

    Floats are written as Python's `repr` (`2.6166824537825312e-05`). A new string value keeps
    the quoting of the value it replaces, and a new boolean its spelling (`True` or `true`).
    Names in `values` that match no hyperparameter are ignored. `dest` is replaced atomically.

    Raises:
        ConfigError: If `source` is not a `.yml` or `.yaml` file, cannot be read or parsed, or
            lacks an intermediate key of a hyperparameter's path.
        HpcTuneError: If `values` has no value for one of `hyperparameters`.
    """
    source = Path(source)
    if source.suffix.lower() not in YAML_SUFFIXES:
        raise ConfigError(
            f"{source}: cannot write the best config for a '{source.suffix}' file. "
            "Only YAML configs (.yml or .yaml) are supported: convert the config to YAML."
        )
    missing = [hp.name for hp in hyperparameters if hp.name not in values]
    if missing:
        raise HpcTuneError(
            f"Missing values for the hyperparameters {missing} when writing the best config from "
            f"{source}: pass a value for every hyperparameter, tuned or frozen."
        )

    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(
            f"Cannot read the config {source} to write the best config: {error}. Restore the "
            "file at that path, then write the report again."
        ) from error
    yaml = _round_trip_yaml()
    try:
        tree = yaml.load(text)
    except YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML ({error}). Fix the file and rerun.") from error
    _use_source_indentation(yaml, tree, text)
    yaml.explicit_start = _has_explicit_start(text)

    for hp in hyperparameters:
        _write_value(tree, hp, values[hp.name])

    buffer = io.StringIO()
    yaml.dump(tree, buffer)
    write_text_atomically(Path(dest), _restore_flow_spacing(text, buffer.getvalue(), source))


def _round_trip_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Constructor = _VerbatimConstructor
    yaml.Representer = _VerbatimRepresenter
    yaml.preserve_quotes = True
    yaml.width = _LINE_WIDTH
    return yaml


def _use_source_indentation(yaml: YAML, tree: Any, text: str) -> None:
    """Set `yaml.indent` to the candidate whose dump of `tree` best matches `text`."""
    source_lines = text.splitlines()
    best_setting, best_ratio = _INDENT_CANDIDATES[0], -1.0
    for mapping, sequence, offset in _INDENT_CANDIDATES:
        yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
        buffer = io.StringIO()
        yaml.dump(tree, buffer)
        matcher = difflib.SequenceMatcher(None, source_lines, buffer.getvalue().splitlines())
        ratio = matcher.ratio()
        if ratio > best_ratio:
            best_setting, best_ratio = (mapping, sequence, offset), ratio

    mapping, sequence, offset = best_setting
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    logger.debug("YAML indentation (mapping, sequence, offset) = %s", best_setting)


def _has_explicit_start(text: str) -> bool:
    """Return whether the first line that is not blank or a comment is a `---` marker."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            return stripped == "---" or stripped.startswith("--- ")
    return False


def _restore_flow_spacing(source_text: str, dumped_text: str, source: Path) -> str:
    """Copy back the source lines that `dumped_text` only respaced around flow indicators."""
    source_lines = source_text.splitlines(keepends=True)
    dumped_lines = dumped_text.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, source_lines, dumped_lines, autojunk=False)
    merged: list[str] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "replace" or i2 - i1 != j2 - j1:
            merged.extend(dumped_lines[j1:j2])
            continue
        for source_line, dumped_line in zip(source_lines[i1:i2], dumped_lines[j1:j2], strict=True):
            same = _without_flow_spacing(source_line) == _without_flow_spacing(dumped_line)
            merged.append(source_line if same else dumped_line)
    if merged and not merged[-1].endswith("\n"):
        merged[-1] += "\n"
    restored = "".join(merged)

    # Respacing a quoted string such as '[ a ]' would change a value: the check below catches it.
    safe = YAML(typ="safe", pure=True)
    try:
        same_data = safe.load(restored) == safe.load(dumped_text)
    except YAMLError:
        same_data = False
    if not same_data:
        logger.warning(
            "Kept ruamel's formatting for the best config of %s: copying the original "
            "flow-list spacing back changed a value.",
            source,
        )
        return dumped_text
    return restored


def _without_flow_spacing(line: str) -> str:
    return _FLOW_SPACING.sub(r"\1", line)


def _write_value(tree: Any, hp: Hyperparameter, value: Any) -> None:
    try:
        old = get_path(tree, hp.parts)
    except (KeyError, IndexError, ValueError, TypeError):
        old = None
    set_path(tree, hp.parts, _styled_like(value, old), label=hp.path)


def _styled_like(value: Any, old: Any) -> Any:
    """Return `value` spelled like the boolean or null `old` it replaces, when both are."""
    if not isinstance(old, _VerbatimScalar):
        return value
    if value is None and old.tag == _NULL_TAG:
        return old
    if isinstance(value, bool) and old.tag == _BOOL_TAG:
        # confit reads true and True as booleans but TRUE as a string, so only the capital
        # first letter is copied.
        text = "true" if value else "false"
        if old.text in ("True", "False"):
            text = text.capitalize()
        return _VerbatimScalar(_BOOL_TAG, text)
    return value


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so readers never see half.

    The file gets the mode that the process umask gives a new file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
