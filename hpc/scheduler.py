"""The one runner for every `sbatch`, `squeue`, `sacct`, `sacctmgr`, `scontrol` and `scancel` call.

Every call goes through `run_scheduler`, which logs the command line, applies a timeout and
turns a failure into a `SchedulerError` that carries the command, the exit code and the tail
of stderr. The parsers of the commands' output live in `hpc.slurm_output` and are re-exported
here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

from hpc.slurm_output import (
    ACTIVE_STATES,
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    JobState,
    SchedulerError,
    parse_sacct,
    parse_sbatch_job_id,
    parse_scontrol_ping,
    parse_slurm_time,
    parse_squeue,
)

__all__ = [
    "ACTIVE_STATES",
    "SACCT_FIELDS",
    "SCHEDULER_COMMANDS",
    "SQUEUE_FORMAT",
    "JobState",
    "SchedulerError",
    "cancel_jobs",
    "controller_answers",
    "job_overview",
    "job_end_time",
    "parse_sacct",
    "parse_sbatch_job_id",
    "parse_scontrol_ping",
    "parse_slurm_time",
    "parse_squeue",
    "query_jobs",
    "run_scheduler",
    "submit_script",
]

logger = logging.getLogger(__name__)

SCHEDULER_COMMANDS = ("sbatch", "squeue", "sacct", "sacctmgr", "scontrol", "scancel")
STDERR_TAIL_CHARS = 2000

# Without these, the clients cut array expressions at 64 bytes (SLURM_BITSTR_LEN) and print
# times in a format the user may have changed (SLURM_TIME_FORMAT).
QUERY_ENV = {"SLURM_BITSTR_LEN": "0", "SLURM_TIME_FORMAT": "standard"}
SACCT_DISABLED_MESSAGE = "Slurm accounting storage is disabled"
INVALID_JOB_ID_MESSAGE = "Invalid job id specified"
# Variables removed from sbatch's own environment: Slurm would store PGPASSWORD with the job if
# a site default or a user's SBATCH_EXPORT exported everything, and SBATCH_EXPORT would replace
# the template's `#SBATCH --export` list.
SUBMIT_ENV_REMOVED = ("PGPASSWORD", "SBATCH_EXPORT")

JOB_ID_PATTERN = re.compile(r"^\d+(_\d+)?$")
_sacct_disabled = False


def run_scheduler(
    args: Sequence[str],
    timeout_s: float = 60.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one Slurm client command and capture its output as text.

    Args:
        args: The command line; the first item must be one of `SCHEDULER_COMMANDS`.
        timeout_s: Seconds after which the command is killed.
        check: Raise on a nonzero exit status.
        env: The complete environment of the command, or None for this process's environment.

    Raises:
        SchedulerError: The command is not installed, timed out, or (with `check`) failed.
        ValueError: `args` does not start with a Slurm client command.
    """
    command = [str(arg) for arg in args]
    if not command or command[0] not in SCHEDULER_COMMANDS:
        raise ValueError(f"Not a Slurm client command: {command!r}")
    command_line = shlex.join(command)
    logger.debug("Running %s (timeout %g s)", command_line, timeout_s)

    start = time.monotonic()
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except FileNotFoundError as error:
        raise SchedulerError(
            f"'{command_line}' failed: {command[0]} was not found on PATH. Install the Slurm "
            "client commands or load their module, or run with hpc.executor: local.",
            command,
        ) from error
    except subprocess.TimeoutExpired as error:
        raise SchedulerError(
            f"'{command_line}' timed out after {timeout_s:g} s. Check that the Slurm "
            "controller answers ('scontrol ping') and retry.",
            command,
            stderr=_text(error.stderr),
        ) from error
    except OSError as error:
        raise SchedulerError(f"'{command_line}' could not start: {error}.", command) from error
    logger.debug(
        "%s exited with %d after %.2f s", command[0], result.returncode, time.monotonic() - start
    )

    if check and result.returncode != 0:
        raise _failure(command, result)
    return result


def controller_answers(timeout_s: float = 10.0) -> bool:
    """Return whether a Slurm controller responds to `scontrol ping` within `timeout_s` seconds.

    A missing `scontrol`, a timeout or a controller reported DOWN all give False.
    """
    try:
        result = run_scheduler(["scontrol", "ping"], timeout_s=timeout_s, check=False)
    except SchedulerError as error:
        logger.debug("No Slurm controller: %s", error)
        return False
    answers = result.returncode == 0 and parse_scontrol_ping(result.stdout)
    if not answers:
        logger.debug("No Slurm controller: 'scontrol ping' printed %r", result.stdout.strip())
    return answers


def query_jobs(job_ids: Sequence[str], timeout_s: float = 60.0) -> list[JobState]:
    """Return the state of the given jobs, with one record per array task where Slurm has one.

    Asks sacct first. Where accounting is disabled (`Slurm accounting storage is disabled`),
    logs one warning per process and queries squeue from then on. squeue reports only jobs
    that are active or ended less than MinJobAge ago (300 s by default) and omits the others.

    Args:
        job_ids: Ids such as `12` (a job, or all tasks of array 12) or `12_3`.
        timeout_s: Timeout of each Slurm command.

    Raises:
        SchedulerError: The query failed for another reason.
        ValueError: An id is not of the form `<digits>` or `<digits>_<digits>`.
    """
    global _sacct_disabled
    ids = _checked_ids(job_ids)
    if not ids:
        return []
    env = {**os.environ, **QUERY_ENV}

    if not _sacct_disabled:
        result = run_scheduler(
            [
                "sacct",
                "--parsable2",
                "--noheader",
                "--allocations",
                f"--format={','.join(SACCT_FIELDS)}",
                f"--jobs={','.join(ids)}",
            ],
            timeout_s=timeout_s,
            check=False,
            env=env,
        )
        if result.returncode == 0:
            return parse_sacct(result.stdout)
        if SACCT_DISABLED_MESSAGE not in result.stderr + result.stdout:
            raise _failure(result.args, result)
        _sacct_disabled = True
        logger.warning(
            "sacct is unavailable (%s): job states come from squeue, which forgets jobs that "
            "ended more than MinJobAge ago.",
            SACCT_DISABLED_MESSAGE,
        )

    return _squeue(ids, "all", timeout_s)


def active_jobs(job_ids: Sequence[str], timeout_s: float = 60.0) -> list[JobState]:
    """Return the given jobs that are pending, running or otherwise active, from squeue.

    squeue is the controller's own view: unlike sacct, which learns of a job from the
    accounting daemon a moment later, it lists a job as soon as sbatch returns. Decisions that
    must not miss a job just submitted (the finalize job's supervision, reaping) use it.

    Raises:
        SchedulerError: squeue failed, for instance because the controller does not respond.
    """
    ids = _checked_ids(job_ids)
    if not ids:
        return []
    # Without --states, squeue lists only jobs that have not ended.
    return [job for job in _squeue(ids, None, timeout_s) if job.active]


def job_overview(
    job_ids: Sequence[str], timeout_s: float = 30.0
) -> tuple[list[JobState], str | None]:
    """Return the jobs' records for a status screen, and a note on what could not be seen.

    Active jobs come from squeue, one record per array task with the controller's current
    reason; ended ones from sacct. Without sacct (not installed, or accounting disabled),
    squeue lists ended jobs for MinJobAge only (300 s by default), and the note states it.

    Raises:
        SchedulerError: squeue failed, for instance because the controller does not respond.
    """
    ids = _checked_ids(job_ids)
    if not ids:
        return [], None
    active = [job for job in _squeue(ids, None, timeout_s) if job.active]
    note = None
    try:
        records = query_jobs(ids, timeout_s)
    except SchedulerError as error:
        logger.debug("sacct failed: %s", error)
        records = _squeue(ids, "all", timeout_s)
        note = f"sacct failed ({_first_line(str(error))})"
    if _sacct_disabled and note is None:
        note = SACCT_DISABLED_MESSAGE
    if note is not None:
        note += ": jobs that ended more than MinJobAge ago (300 s by default) are not listed"
    seen = {job.display_id for job in active}
    # sacct keeps the last pending reason (`Dependency`) of an ended job: drop it.
    ended = [
        dataclasses.replace(job, reason=None)
        for job in records
        if not job.active and job.display_id not in seen
    ]
    return active + ended, note


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _squeue(ids: list[str], states: str | None, timeout_s: float) -> list[JobState]:
    state_filter = [] if states is None else [f"--states={states}"]
    result = run_scheduler(
        [
            "squeue",
            "--noheader",
            "--array",
            *state_filter,
            f"--format={SQUEUE_FORMAT}",
            f"--jobs={','.join(ids)}",
        ],
        timeout_s=timeout_s,
        check=False,
        env={**os.environ, **QUERY_ENV},
    )
    if result.returncode != 0:
        # squeue fails like this when the only id it is given is no longer known.
        if INVALID_JOB_ID_MESSAGE in result.stderr:
            return []
        raise _failure(result.args, result)
    return parse_squeue(result.stdout)


def job_end_time(job_id: str, timeout_s: float = 30.0) -> datetime | None:
    """Return when the job reaches its time limit, from `squeue -h -j ID -o %e`.

    Slurm 22.05 does not set SLURM_JOB_END_TIME inside jobs, so workers ask squeue.

    Returns:
        An aware datetime, or None when the job has no time limit, has not started, or is
        no longer known to squeue.

    Raises:
        SchedulerError: squeue failed for another reason or printed an unexpected time.
    """
    ids = _checked_ids([job_id])
    result = run_scheduler(
        ["squeue", "--noheader", f"--jobs={ids[0]}", "--format=%e"],
        timeout_s=timeout_s,
        check=False,
        env={**os.environ, **QUERY_ENV},
    )
    if result.returncode != 0:
        if INVALID_JOB_ID_MESSAGE in result.stderr:
            return None
        raise _failure(result.args, result)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return parse_slurm_time(lines[0]) if lines else None


def cancel_jobs(job_ids: Sequence[str], timeout_s: float = 60.0) -> None:
    """Cancel the given jobs or array tasks with one `scancel` call.

    scancel 22.05 exits 0 for unknown ids, so cancelling twice is harmless.

    Raises:
        SchedulerError: scancel failed (for example the controller did not answer).
    """
    ids = _checked_ids(job_ids)
    if ids:
        run_scheduler(["scancel", *ids], timeout_s=timeout_s)


def submit_script(
    script: Path,
    extra_args: Sequence[str] = (),
    timeout_s: float = 60.0,
    parse_job_id: bool = True,
) -> str:
    """Submit a batch script with `sbatch --parsable [extra_args] script`.

    sbatch runs without PGPASSWORD and SBATCH_EXPORT in its environment, so the script's own
    `--export` list decides what the job receives and no password is stored with the job.

    Args:
        script: The rendered batch script.
        extra_args: Options placed before the script, such as `--dependency=afterany:12`.
        timeout_s: Timeout of the sbatch call.

    Returns:
        The job id (without the `;cluster` suffix of federated clusters).

    Raises:
        SchedulerError: sbatch failed or printed no job id.
    """
    # SBATCH_* variables override the script's #SBATCH lines (SBATCH_EXPORT would undo the
    # explicit environment list, SBATCH_NO_REQUEUE the requeue): the script alone decides.
    overrides = sorted(key for key in os.environ if key.startswith("SBATCH_"))
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in SUBMIT_ENV_REMOVED and not key.startswith("SBATCH_")
    }
    if overrides:
        logger.warning(
            "Ignoring %s for this submission: the rendered script sets every option; use "
            "hpc.slurm settings instead.",
            ", ".join(overrides),
        )
    command = ["sbatch", "--parsable", *extra_args, str(script)]
    try:
        result = run_scheduler(command, timeout_s=timeout_s, env=env)
    except SchedulerError as error:
        raise SchedulerError(
            f"{error}. Check the hpc.slurm settings (partition, account, qos, resources) "
            "against 'sinfo' and your site's limits.",
            error.command,
            error.returncode,
            error.stderr,
        ) from error
    if not parse_job_id:
        # `--test-only` prints its estimate on stderr and submits nothing.
        return ""
    job_id = parse_sbatch_job_id(result.stdout)
    logger.info("Submitted %s as job %s", script, job_id)
    return job_id


def _checked_ids(job_ids: Sequence[str]) -> list[str]:
    if isinstance(job_ids, str):
        raise ValueError(f"Expected a sequence of job ids, got the string {job_ids!r}")
    ids = [str(job_id).strip() for job_id in job_ids]
    for job_id in ids:
        if not JOB_ID_PATTERN.match(job_id):
            raise ValueError(f"Invalid Slurm job id {job_id!r}: expected '<id>' or '<id>_<task>'")
    return list(dict.fromkeys(ids))


def _failure(command: Sequence[str], result: subprocess.CompletedProcess[str]) -> SchedulerError:
    output = (result.stderr or result.stdout or "").strip()
    tail = output[-STDERR_TAIL_CHARS:] if output else "(no output)"
    return SchedulerError(
        f"'{shlex.join(command)}' failed with exit code {result.returncode}: {tail}",
        command,
        result.returncode,
        result.stderr,
    )


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""
