"""`python -m hpc logs --trial N`: one trial's story, wherever its worker ran.

Workers log to files under `checkpoint_dir/jobs/` (Slurm and local alike): each worker's own
`jobs/workers/worker-<NNNN>.log`, and the standard error that Slurm or submitit keeps, which
contains the same lines. Each trial's training output goes to
`checkpoint_dir/trials/<number>/trial.log`, so reading the checkpoint directory finds a
trial's lines whichever node ran it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from hpc.sweep import SweepRequest, load_started_sweep
from hpc.trial_host import TRIAL_LOG
from tuner.errors import HpcTuneError

LOG_SUFFIXES = (".err", ".out", ".log")
# The timestamp that starts each log line, `2026-12-05 03:40:01,123`.
TIMESTAMP_CHARS = 23


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
    text = trial_log.read_text(errors="replace") if trial_log.is_file() else None
    if text:
        print(text, end="")
    elif text is not None:
        print("(empty: the trial's process wrote nothing)")
    else:
        print("(no trial.log: the trial's process did not start)")
    return 0


def worker_lines(jobs_dir: Path, number: int) -> list[str]:
    """Return the log lines under `jobs_dir` that name trial `number`, in time order.

    A line names the trial by its `trial=N` field or by the words `Trial N`. The start line
    of a retry of the trial (`retry of trial N`) is included too. A line found in
    several files (a worker's own log and its standard error) is returned once, but a line
    that one file repeats is kept as often as that file has it.
    """
    pattern = re.compile(rf"\btrial={number}\b|\b[Tt]rial {number}\b")
    found: Counter[str] = Counter()
    if not jobs_dir.is_dir():
        return []
    for path in sorted(jobs_dir.rglob("*")):
        if not path.is_file() or path.suffix not in LOG_SUFFIXES:
            continue
        with open(path, errors="replace") as file:
            found |= Counter(line.rstrip("\n") for line in file if pattern.search(line))
    # Lines start with their timestamp. The sort is stable, so lines of the same millisecond
    # keep the order of their file.
    return sorted(found.elements(), key=lambda line: line[:TIMESTAMP_CHARS])
