"""The fixed shape of every log line of an hpc-tune process, and the worker's own log file.

Each line reads

    2026-12-05 03:40:01,123 INFO job=123_4 task=4 worker=2 trial=7 hpc.worker: Trial 7 ...

where `job` is the Slurm job (`<array job>_<task>` in an array) or `local-<pid>` for a local
worker, `task` the array task id, `worker` the worker number in `hpc_workers` and `trial` the
trial number. A field that does not apply is `-`: `job` outside Slurm jobs and local workers,
`task` outside job arrays, `worker` before the worker is registered and outside workers,
`trial` outside a trial. Values never contain spaces, so `grep -w trial=7` and
`awk '$7 == "trial=7"'` find a trial's lines. A message of several lines, or a traceback,
repeats the fields at the start of each of its lines.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tuner.private_dirs import make_private_dir, match_folder_access

CONTEXT_FIELDS = ("job", "task", "worker", "trial")
UNKNOWN = "-"
HEADER_FORMAT = (
    "%(asctime)s %(levelname)s job=%(job)s task=%(task)s worker=%(worker)s trial=%(trial)s "
    "%(name)s:"
)
LOG_FORMAT = HEADER_FORMAT + " %(message)s"
WORKER_LOG_DIR = "workers"
# Reaping by the finalize job, the coordinator, `status` and `cancel`, for `logs --trial N`.
REAPER_LOG = "reaper.log"
MAX_ERROR_LINE_CHARS = 300
CUT_MARK = " [...]"

# Fields of this process: `job` and `task` for the whole process, `worker` once the worker is
# registered, `trial` while the worker runs a trial.
LOG_CONTEXT: dict[str, str] = {}


class LogLineFormatter(logging.Formatter):
    """Format records in the fixed shape of `LOG_FORMAT`.

    A field comes from the record when the call passed it (`extra={"trial": 3}`), else from
    `LOG_CONTEXT`, else it is `-`.
    """

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = LOG_CONTEXT.get(name)
            setattr(record, name, _field_value(value))
        first, *rest = super().format(record).split("\n")
        if not rest:
            return first
        # `super().format` has set `asctime`, so the header renders from the record.
        header = HEADER_FORMAT % record.__dict__
        return "\n".join([first, *(f"{header} {line}" for line in rest)])


def _field_value(value: object) -> str:
    text = "_".join(str(value).split()) if value is not None else ""
    return text or UNKNOWN


@contextmanager
def trial_context(number: int) -> Iterator[None]:
    """Name trial `number` in the lines logged inside the block, other threads' included."""
    LOG_CONTEXT["trial"] = str(number)
    try:
        yield
    finally:
        LOG_CONTEXT.pop("trial", None)


@contextmanager
def worker_log_file(jobs_dir: Path, worker_id: int) -> Iterator[Path]:
    """Copy this process's log lines to `jobs_dir/workers/worker-<NNNN>.log` inside the block.

    The file is appended to, with mode 0600 in a folder of mode 0700 (0640 in a folder of mode
    2750, in a checkpoint directory shared with a group). The process's standard error keeps
    its copy of each line.
    """
    folder = jobs_dir / WORKER_LOG_DIR
    make_private_dir(folder)
    with log_file(folder / f"worker-{worker_id:04d}.log") as path:
        yield path


@contextmanager
def log_file(path: Path) -> Iterator[Path]:
    """Copy this process's log lines to `path` (appended to) inside the block.

    The file gets mode 0600, or 0640 in a group-shared folder.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    match_folder_access(path)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(LogLineFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        handler.close()


def error_line(error: str, max_chars: int = MAX_ERROR_LINE_CHARS) -> str:
    """Return the first line of `error`, cut to at most `max_chars` characters, for a log line.

    Later lines (a traceback, the input that failed) stay out of the logs because they may
    quote the documents a trial read. The first line itself is logged as it is: the trial host
    has already withheld the messages that may quote a document (`tuner.redaction`).
    """
    lines = error.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) > max_chars:
        first = first[: max_chars - len(CUT_MARK)] + CUT_MARK
    return first
