"""Checksums of the training data folders, so a report names the exact data it was tuned on."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner.preflight_static import data_paths

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


def path_checksum(path: Path) -> tuple[str, int]:
    """Return the SHA-256 of a file, or of a folder's files, and the number of files read.

    A folder's digest covers each file's path relative to the folder and its content, in
    sorted order, so renaming, adding or changing any file changes it. Symbolic links are
    followed; hidden files (`.name`, such as editor swap files) are left out.
    """
    digest = hashlib.sha256()
    if path.is_file():
        files = [(Path(path.name), path)]
    else:
        files = sorted(
            (file.relative_to(path), file)
            for file in path.rglob("*")
            if file.is_file()
            and not any(part.startswith(".") for part in file.relative_to(path).parts)
        )
    for relative, file in files:
        digest.update(relative.as_posix().encode() + b"\0")
        with open(file, "rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest(), len(files)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def data_checksums(config: Any, working_dir: Path) -> Mapping[str, str]:
    """Describe each local data path of the config's readers with its checksum.

    Relative paths are read from `working_dir`, the folder the sweep was started from.

    Returns:
        Config key to `<absolute path>: sha256 <digest> (<n> files)`, or to why no checksum.
    """
    described = {}
    for key, _, path in data_paths(config):
        absolute = path if path.is_absolute() else working_dir / path
        if not absolute.exists():
            described[key] = f"{absolute}: not found when the report was written"
            continue
        started = time.monotonic()
        digest, files = path_checksum(absolute)
        logger.debug(
            "Checksum of %s: %d files in %.1f s", absolute, files, time.monotonic() - started
        )
        plural = "file" if files == 1 else "files"
        described[key] = f"{absolute}: sha256 {digest} ({files} {plural})"
    return described
