"""`python -m hpc logs --trial N`: one trial's story, wherever its worker ran.

Workers log to files under `checkpoint_dir/jobs/` (Slurm and local alike) and each trial's
training output goes to `checkpoint_dir/trials/<number>/trial.log`, so reading the checkpoint
directory finds a trial's lines whichever node ran it.
"""

from __future__ import annotations

import re
from pathlib import Path

from hpc.sweep import SweepRequest, load_started_sweep
from hpc.trial_host import TRIAL_LOG
from tuner.errors import HpcTuneError

LOG_SUFFIXES = (".err", ".out", ".log")


def print_trial_logs(config_path: Path, number: int) -> int:
    """Print the worker log lines about trial `number`, then the trial's own log."""
    sweep = load_started_sweep(SweepRequest(config_path=config_path))
    lines = worker_lines(sweep.paths.jobs_dir, number)
    trial_log = sweep.paths.trial_dir(number) / TRIAL_LOG
    if not lines and not trial_log.is_file():
        raise HpcTuneError(
            f"No log of trial {number} in {sweep.paths.root}: the trial has not started yet, "
            "or its number is wrong ('python -m hpc status' shows the trials)."
        )
    print(f"== Worker log lines about trial {number} ({sweep.paths.jobs_dir})")
    for line in lines:
        print(line)
    print(f"== {trial_log}")
    if trial_log.is_file():
        print(trial_log.read_text(errors="replace"), end="")
    else:
        print("(no trial.log: the trial's process did not start)")
    return 0


def worker_lines(jobs_dir: Path, number: int) -> list[str]:
    """Return the log lines of every worker log under `jobs_dir` that name trial `number`,
    in time order (lines start with their timestamp)."""
    pattern = re.compile(rf"\bTrial {number}\b")
    found: list[str] = []
    if not jobs_dir.is_dir():
        return found
    for path in sorted(jobs_dir.rglob("*")):
        if not path.is_file() or path.suffix not in LOG_SUFFIXES:
            continue
        with open(path, errors="replace") as file:
            found.extend(line.rstrip("\n") for line in file if pattern.search(line))
    return sorted(found)
