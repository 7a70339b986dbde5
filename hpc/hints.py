"""Commands that messages suggest, written so that they work when pasted from any folder."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tuner.text import plural as plural

if TYPE_CHECKING:
    from hpc.sweep import Sweep


def hpc_command(verb: str, sweep: Sweep, *args: str) -> str:
    """Return `python -m hpc VERB --config CONFIG` for this sweep, with this interpreter.

    `make` targets work only from the hpc-tune clone, and `python` may not be the virtual
    environment's. Relative `checkpoint_dir` and `output_dir` are read from the folder the
    sweep was started from, so the command starts with `cd` to it when they are relative.
    """
    tuning = sweep.loaded.tuning
    command = shlex.join(
        [sys.executable, "-m", "hpc", verb, "--config", str(sweep.loaded.path), *args]
    )
    relative = not (tuning.checkpoint_dir.is_absolute() and tuning.output_dir.is_absolute())
    working_dir = (sweep.state or {}).get("working_dir") or str(Path.cwd())
    return f"cd {shlex.quote(working_dir)} && {command}" if relative else command
