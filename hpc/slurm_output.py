"""Parsers of Slurm client output, and the error raised when a Slurm command fails.

Formats were checked against the Slurm 22.05.8 clients (Debian bookworm): squeue, sacct,
scontrol ping and sbatch, including their errors when the controller is down.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from tuner.errors import HpcTuneError

# `%i` is the id as users type it (`12`, `12_3`, `12_[4-7%2]`), `%A` the job's own id, which
# matches SLURM_JOB_ID inside the job, `%T` the long state name and `%r` the reason. The reason
# is free text (e.g. "ReqNodeNotAvail, UnavailableNodes:vm"), so it comes last.
SQUEUE_FORMAT = "%i|%A|%T|%r"
# sacct 22.05 has no per-task expansion of pending arrays: those come as `12_[4-7%2]`.
SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Reason")
# States in which a job has, or waits for, an allocation (squeue(1), JOB STATE CODES).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "SPECIAL_EXIT",
        "RESV_DEL_HOLD",
    }
)

_DISPLAY_ID_PATTERN = re.compile(
    r"^(?P<job>\d+(?:\+\d+)?)(?:_(?P<task>\d+|\[(?P<range>[^\]]*)\]))?$"
)
_PING_PATTERN = re.compile(r"^Slurmctld\((?P<role>[^)]*)\) at (?P<host>\S+) is (?P<state>UP|DOWN)")
_SUBMITTED_PATTERN = re.compile(r"^Submitted batch job (?P<id>\d+)")
_PARSABLE_PATTERN = re.compile(r"^(?P<id>\d+)(;\S+)?$")
_NO_TIME_WORDS = frozenset({"", "N/A", "NONE", "Unknown", "INVALID"})


class SchedulerError(HpcTuneError):
    """A Slurm client command that was not found, timed out, failed, or printed no usable output.

    Attributes:
        command: The command line, as a list of arguments.
        returncode: Exit status, or None when the command did not run to its end.
        stderr: Standard error of the command (possibly empty).
    """

    def __init__(
        self,
        message: str,
        command: Sequence[str] = (),
        returncode: int | None = None,
        stderr: str = "",
    ) -> None:
        super().__init__(message)
        self.command = list(command)
        self.returncode = returncode
        self.stderr = stderr


@dataclass(frozen=True)
class JobState:
    """One line of `squeue` or `sacct` output about a job or a group of array tasks.

    Attributes:
        job_id: The job id, or for an array the array's job id (`12` in `12_3`).
        array_task_id: The task index (`3`), a task expression for pending tasks that Slurm
            still groups (`4-7%2`, `0,2-3`), or None for a job that is not an array.
        state: Long state name such as PENDING, RUNNING or CANCELLED; the ` by <uid>` that
            sacct adds to CANCELLED is dropped.
        reason: Slurm's reason for the state, or None when Slurm reports "None".
        exit_code: `<exit status>:<signal>` from sacct (e.g. `0:15`), or None from squeue.
        raw_job_id: The record's own job id, equal to SLURM_JOB_ID inside a running task.
    """

    job_id: str
    array_task_id: str | None
    state: str
    reason: str | None
    exit_code: str | None
    raw_job_id: str | None = None

    @property
    def display_id(self) -> str:
        """The id as squeue prints it: `12`, `12_3` or `12_[4-7%2]`."""
        if self.array_task_id is None:
            return self.job_id
        if self.array_task_id.isdigit():
            return f"{self.job_id}_{self.array_task_id}"
        return f"{self.job_id}_[{self.array_task_id}]"

    @property
    def active(self) -> bool:
        """Whether the job is pending, running or about to run again (not ended)."""
        return self.state in ACTIVE_STATES


def parse_scontrol_ping(text: str) -> bool:
    """Return whether `scontrol ping` output reports at least one controller UP.

    Lines look like `Slurmctld(primary) at vm is UP`; a DOWN primary prints a banner after it.
    """
    states = [match["state"] for match in map(_PING_PATTERN.match, text.splitlines()) if match]
    return "UP" in states


def parse_sbatch_job_id(text: str) -> str:
    """Extract the job id from sbatch's standard output.

    Accepts `Submitted batch job 123` (optionally followed by ` on cluster NAME`) and the
    `--parsable` forms `123` and `123;NAME`.

    Raises:
        SchedulerError: No line contains a job id.
    """
    for line in text.splitlines():
        line = line.strip()
        match = _SUBMITTED_PATTERN.match(line) or _PARSABLE_PATTERN.match(line)
        if match:
            return match["id"]
    raise SchedulerError(f"sbatch printed no job id; its output was {text.strip()!r}.")


def parse_squeue(text: str) -> list[JobState]:
    """Parse `squeue --noheader --format=SQUEUE_FORMAT` output.

    Raises:
        SchedulerError: A line does not have the fields of `SQUEUE_FORMAT`.
    """
    states = []
    for line in _content_lines(text):
        parts = line.split("|", 3)
        if len(parts) != 4:
            raise SchedulerError(f"Unexpected squeue line {line!r}: expected {SQUEUE_FORMAT!r}.")
        display_id, raw_id, state, reason = parts
        job_id, task_id = _split_display_id(display_id, "squeue")
        states.append(
            JobState(
                job_id=job_id,
                array_task_id=task_id,
                state=state.strip(),
                reason=_reason(reason),
                exit_code=None,
                raw_job_id=raw_id.strip() or None,
            )
        )
    return states


def parse_sacct(text: str) -> list[JobState]:
    """Parse `sacct --parsable2` output with the fields of `SACCT_FIELDS`.

    A header line (`JobID|...`) is used when present, so other field orders work too. Step lines
    (`12.batch`, `12_3.0`, `12.extern`) are skipped: only whole jobs are returned.

    Raises:
        SchedulerError: A line has fewer fields than the header, or JobID or State is missing.
    """
    lines = list(_content_lines(text))
    header = list(SACCT_FIELDS)
    if lines and lines[0].split("|", 1)[0] == "JobID":
        header = lines.pop(0).split("|")
    if "JobID" not in header or "State" not in header:
        raise SchedulerError(f"sacct output lacks JobID or State: header {header!r}.")

    states = []
    for line in lines:
        values = line.split("|")
        if len(values) < len(header):
            raise SchedulerError(f"Unexpected sacct line {line!r}: expected fields {header!r}.")
        row = dict(zip(header, values, strict=False))
        if "." in row["JobID"]:
            continue
        job_id, task_id = _split_display_id(row["JobID"], "sacct")
        states.append(
            JobState(
                job_id=job_id,
                array_task_id=task_id,
                state=row["State"].split(" by ", 1)[0].strip(),
                reason=_reason(row.get("Reason", "")),
                exit_code=row.get("ExitCode") or None,
                raw_job_id=row.get("JobIDRaw") or None,
            )
        )
    return states


def parse_slurm_time(text: str) -> datetime | None:
    """Parse a time printed by squeue or sacct with SLURM_TIME_FORMAT=standard.

    Returns:
        The time as an aware datetime in the local time zone (Slurm prints local times), or
        None for `N/A`, `NONE` (no time limit), `Unknown` or an empty field.

    Raises:
        SchedulerError: The text is neither a time nor one of the words above.
    """
    text = text.strip()
    if text in _NO_TIME_WORDS:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").astimezone()
    except ValueError as error:
        raise SchedulerError(
            f"Unexpected Slurm time {text!r}: expected YYYY-MM-DDTHH:MM:SS."
        ) from error


def _split_display_id(display_id: str, source: str) -> tuple[str, str | None]:
    match = _DISPLAY_ID_PATTERN.match(display_id.strip())
    if not match:
        raise SchedulerError(f"Unexpected job id {display_id!r} in {source} output.")
    if match["range"] is not None:
        return match["job"], match["range"]
    return match["job"], match["task"]


def _reason(text: str) -> str | None:
    text = text.strip()
    return None if text in ("", "None") else text


def _content_lines(text: str) -> list[str]:
    return [line.rstrip("\r") for line in text.splitlines() if line.strip()]
