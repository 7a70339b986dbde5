"""The checkpoint directory: its layout and the sweep's `sweep.json` file."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import HpcTuneError
from tuner.private_dirs import group_access, make_private_dir, match_folder_access

SWEEP_FILE = "sweep.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class SweepPaths:
    """Folders and files of one sweep under its checkpoint directory.

    Attributes:
        root: The checkpoint directory.
        group: `hpc.share_with_group`, for the commands that create the folders; None keeps
            them private. Folders created later inside take the access of their parent.
    """

    root: Path
    group: str | None = None

    @property
    def sweep_file(self) -> Path:
        return self.root / SWEEP_FILE

    @property
    def trials_dir(self) -> Path:
        return self.root / "trials"

    @property
    def jobs_dir(self) -> Path:
        return self.root / "jobs"

    @property
    def postgres_dir(self) -> Path:
        return self.root / "postgres"

    def trial_dir(self, number: int) -> Path:
        return self.trials_dir / f"{number:05d}"

    def create(self) -> None:
        """Create the folders: mode 0700, or 2750 and the group of `group`.

        Existing folders are left as they are, with a warning when they are wider.
        """
        access = group_access(self.group)
        for folder in (self.root, self.trials_dir, self.jobs_dir):
            make_private_dir(folder, access)


def study_name(sweep_name: str, phase: int) -> str:
    return f"{sweep_name}.phase{phase}"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file.

    The file gets mode 0600, or 0640 when `path.parent` is shared with a group.
    """
    make_private_dir(path.parent)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2, sort_keys=True)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        match_folder_access(Path(temporary))  # 0600, or 0640 in a group-shared folder
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_sweep_state(paths: SweepPaths) -> dict[str, Any] | None:
    """Return the content of `sweep.json`, or None when the sweep was never started."""
    if not paths.sweep_file.exists():
        return None
    try:
        state = json.loads(paths.sweep_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise HpcTuneError(
            f"{paths.sweep_file}: invalid JSON ({error}). The file is written atomically, so it "
            "was edited by hand: restore it or move the checkpoint directory away to start anew."
        ) from None
    if state.get("version") != STATE_VERSION:
        raise HpcTuneError(
            f"{paths.sweep_file}: state version {state.get('version')!r}, expected "
            f"{STATE_VERSION}. It was written by another hpc-tune version."
        )
    return state


def read_json(path: Path) -> dict[str, Any] | None:
    """Return a JSON file written by `write_json_atomic`, or None when it does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
