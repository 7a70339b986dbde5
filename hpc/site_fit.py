"""Fit a Slurm sweep's request to the site limits of `hpc.site_limits`, or stop it.

Errors (`SiteLimitError`) name the limit, its value, where Slurm shows it and the setting to
change. A value the user set is never changed, except the number of workers and
`hpc.slurm.array_parallelism`: the workers share one budget, so fewer of them still spend it
all, and a warning is logged. See
`hpc.site_limits` for the limits and the choice made for each.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hpc.hints import plural
from hpc.site_limits import AccountingLimit, SiteLimits, read_site_limits
from hpc.slurm_settings import SlurmSettings, derived_time_min
from hpc.sweep import Sweep
from tuner.errors import ConfigError

logger = logging.getLogger(__name__)

# A sweep needs at least one worker and its finalize job.
FINALIZE_JOBS = 1


class SiteLimitError(ConfigError):
    """A request that a limit of the Slurm site rejects, found before anything is submitted."""


@dataclass(frozen=True)
class WorkerFit:
    """Workers and array parallelism after the site limits, with a warning per change."""

    workers: int
    array_parallelism: int | None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimeLimit:
    """The lowest time limit that applies to a job: its value and what sets it."""

    seconds: int
    source: str
    command: str


def fit_workers(
    workers: int, gpus_per_task: int, array_parallelism: int | None, limits: SiteLimits
) -> WorkerFit:
    """Check the workers against MaxArraySize and the per-job GPU limits, and fit them to the
    per-user GPU and job-count limits.

    Raises:
        SiteLimitError: The array is larger than MaxArraySize allows, a worker requests
            more GPUs than one job may hold, or not even one worker and the finalize job fit.
    """
    if limits.max_array_size is not None and workers > limits.max_array_size:
        raise SiteLimitError(
            f"hpc.workers: {workers} workers need array indices 0 to {workers - 1}, but this "
            f"cluster's MaxArraySize is {limits.max_array_size} and indices must be below it "
            f"('scontrol show config'). Set hpc.workers to {limits.max_array_size} or fewer "
            "(the sweep command's --workers option overrides it)."
        )
    for limit in limits.accounting:
        if limit.max_gpus_per_job is not None and gpus_per_task > limit.max_gpus_per_job:
            raise SiteLimitError(
                f"hpc.slurm.gpus_per_task: {gpus_per_task} GPUs per worker, but {limit.source} "
                f"allows {limit.max_gpus_per_job} per job "
                f"(MaxTRES={_gpus(limit.max_gpus_per_job)}; '{_command(limit)}'). Set "
                f"hpc.slurm.gpus_per_task to {limit.max_gpus_per_job} or fewer, or choose "
                "another QOS in hpc.slurm.qos."
            )

    warnings = []
    parallelism = array_parallelism
    for limit in limits.accounting:
        if limit.max_gpus is None or gpus_per_task == 0:
            continue
        allowed = limit.max_gpus // gpus_per_task
        if allowed < 1:
            raise SiteLimitError(
                f"hpc.slurm.gpus_per_task: {gpus_per_task} GPUs per worker, but {limit.source} "
                f"allows {limit.max_gpus} per user ({limit.gpu_key}={_gpus(limit.max_gpus)}; "
                f"'{_command(limit)}'). Set hpc.slurm.gpus_per_task to {limit.max_gpus} or fewer."
            )
        running = min(workers, parallelism or workers)
        if running <= allowed:
            continue
        reason = (
            f"{limit.source} allows {plural(limit.max_gpus, 'GPU')} per user at once "
            f"({limit.gpu_key}={_gpus(limit.max_gpus)}) and each worker holds {gpus_per_task} "
            "(hpc.slurm.gpus_per_task)"
        )
        if parallelism is not None:
            warnings.append(
                f"hpc.slurm.array_parallelism lowered from {parallelism} to {allowed}: {reason}."
            )
            parallelism = allowed
        else:
            warnings.append(
                f"hpc.workers lowered from {workers} to {allowed}: {reason}. The workers share "
                f"the budget, so the sweep still spends it all. Set hpc.workers to {allowed} "
                "to silence this warning."
            )
            workers = allowed

    for limit in limits.accounting:
        if limit.max_submit_jobs is None:
            continue
        free = limit.max_submit_jobs - limit.queued_jobs
        if free < 1 + FINALIZE_JOBS:
            raise SiteLimitError(
                f"{limit.source} allows {plural(limit.max_submit_jobs, 'job')} queued or "
                f"running per user ({limit.submit_key}={limit.max_submit_jobs}; "
                f"'{_command(limit)}') "
                f"and you have {limit.queued_jobs}, but a sweep needs {1 + FINALIZE_JOBS}: a "
                "worker and its finalize job. Wait for your jobs to end or cancel some "
                "('squeue --me'), or choose another QOS in hpc.slurm.qos."
            )
        if workers + FINALIZE_JOBS > free:
            warnings.append(
                f"hpc.workers lowered from {workers} to {free - FINALIZE_JOBS}: {limit.source} "
                f"allows {plural(limit.max_submit_jobs, 'job')} queued or running per user "
                f"({limit.submit_key}={limit.max_submit_jobs}; each array task counts), you "
                f"have {limit.queued_jobs}, and the finalize job takes one. The workers share "
                "the budget, so the sweep still spends it all."
            )
            workers = free - FINALIZE_JOBS
    return WorkerFit(workers, parallelism, tuple(warnings))


def check_node_gpus(gpus_per_task: int, partition: str | None, limits: SiteLimits) -> None:
    """Check that one node of the workers' partition has the GPUs that a worker requests.

    Raises:
        SiteLimitError: No node of the partition has `gpus_per_task` GPUs.
    """
    known = limits.partition(partition)
    name = known.name if known is not None else partition
    if gpus_per_task == 0 or name is None or name not in limits.node_gpus:
        return
    max_gpus = limits.node_gpus[name]
    if gpus_per_task <= max_gpus:
        return
    if max_gpus == 0:
        raise SiteLimitError(
            f"hpc.slurm.gpus_per_task: {gpus_per_task} GPUs per worker, but the nodes of "
            f"partition {name} have no GPUs ('scontrol show node'). Choose a partition with "
            "GPUs in hpc.slurm.partition ('sinfo -o \"%P %G\"' lists them)."
        )
    raise SiteLimitError(
        f"hpc.slurm.gpus_per_task: {gpus_per_task} GPUs per worker, but the nodes of partition "
        f"{name} have at most {max_gpus} ({_gpus(max_gpus)}; 'scontrol show node'), and a "
        f"worker runs on one node. Set hpc.slurm.gpus_per_task to {max_gpus} or fewer, or "
        "choose a partition with larger nodes in hpc.slurm.partition."
    )


def check_qos(qos: str | None, limits: SiteLimits) -> None:
    """Check that sacctmgr lists the QOS of `hpc.slurm.qos`, when it lists any.

    Raises:
        SiteLimitError: The QOS is not among those sacctmgr lists.
    """
    if qos is None or limits.qos_names is None or qos in limits.qos_names:
        return
    raise SiteLimitError(
        f"hpc.slurm.qos: {qos!r} is not a QOS of this cluster ('sacctmgr show qos'). Known "
        f"QOS: {', '.join(sorted(limits.qos_names))}. Correct hpc.slurm.qos, or remove it to "
        "use your association's default QOS."
    )


def check_python_command(slurm: SlurmSettings) -> None:
    """Check that the first word of `hpc.slurm.python` exists on this host.

    The login and compute nodes usually share their software, so a command missing here
    would most likely make every job fail at once with 'No such file or directory'. A
    relative path is read from the current folder, which is the jobs' working folder too.

    Raises:
        SiteLimitError: The first word is a path that is not an executable file, or a
            command that is not on PATH.
    """
    if not slurm.python:
        return
    command = slurm.python[0]
    if "/" in command:
        path = os.path.expanduser(command)
        found = os.path.isfile(path) and os.access(path, os.X_OK)
        where = "is not an executable file on this host"
    else:
        found = shutil.which(command) is not None
        where = "is not on this host's PATH"
    if found:
        return
    raise SiteLimitError(
        f"hpc.slurm.python: {command!r} (the first word of {list(slurm.python)}) {where}, so "
        "the jobs would fail at once. hpc-tune checks it on the submitting host because "
        "login and compute nodes usually share their software. Correct the path or install "
        "the command here; 'python -m hpc check-node --config CONFIG' runs it on a compute "
        "node."
    )


def lowest_time_limit(
    limits: SiteLimits, partition: str | None, qos_limits: Iterable[AccountingLimit]
) -> TimeLimit | None:
    """Return the lowest of the partition's MaxTime and the QOS' MaxWall, or None if none."""
    found = []
    known = limits.partition(partition)
    if known is not None and known.max_time_s is not None:
        found.append(
            TimeLimit(
                known.max_time_s,
                f"the MaxTime of partition {known.name}",
                f"scontrol show partition {known.name}",
            )
        )
    # NOTE: the MaxWall of a partition's own QOS is applied to jobs of every partition.
    for limit in qos_limits:
        if limit.max_wall_s is not None:
            found.append(
                TimeLimit(limit.max_wall_s, f"the MaxWall of {limit.source}", _command(limit))
            )
    return min(found, key=lambda item: item.seconds, default=None)


def fit_time_min(
    time_min: int | None,
    key: str,
    set_by_user: bool,
    limit: TimeLimit | None,
    minimum_s: int = 0,
) -> tuple[int | None, str | None]:
    """Fit one job's time limit in minutes to `limit`; return it and a warning, if lowered.

    Args:
        time_min: The time limit the job would get, or None for the partition's default.
        key: The config key that sets it, for messages.
        set_by_user: The user wrote the value: exceeding the limit is then an error.
        limit: The lowest limit for this job, or None.
        minimum_s: A lowered limit must stay above this (the pre-timeout signal's lead).

    Raises:
        SiteLimitError: The user's value exceeds the limit, or the lowered value would not
            leave `minimum_s`.
    """
    if time_min is None or limit is None or time_min * 60 <= limit.seconds:
        return time_min, None
    allowed = limit.seconds // 60
    limit_text = _minutes(limit.seconds)
    if set_by_user:
        raise SiteLimitError(
            f"{key}: {time_min} min is above {limit.source} ({limit_text}; '{limit.command}'), so "
            f"Slurm would reject the job or keep it pending. Set {key} to {allowed} or less, "
            "or choose a partition or QOS with a longer limit."
        )
    if allowed * 60 <= minimum_s:
        raise SiteLimitError(
            f"{key}: {limit.source} is {limit_text} ('{limit.command}'), which leaves no time "
            f"after the pre-timeout signal (hpc.slurm.signal_lead_s={minimum_s}). Choose a "
            "partition with a longer MaxTime in hpc.slurm.partition."
        )
    warning = (
        f"{key} lowered from {time_min} to {allowed} min: {limit.source} is {limit_text}. Set "
        f"{key} to choose the limit yourself. Workers requeue themselves when their time runs "
        "out."
    )
    return allowed, warning


def fit_sweep(sweep: Sweep) -> Sweep:
    """Read the site limits and return the sweep with its Slurm request fitted to them.

    Raises:
        SiteLimitError: A limit rejects the request; nothing has been submitted.
    """
    slurm = sweep.settings.slurm
    finalize = slurm.finalize
    # Inside a Slurm job (a finalize job that submits phase 2 or new workers) the command
    # may run in the container that it starts, where its first word need not exist.
    if not os.environ.get("SLURM_JOB_ID"):
        check_python_command(slurm)
    limits = read_site_limits(
        slurm.partition, slurm.account, slurm.qos, extra_partitions=[finalize.partition]
    )
    check_qos(slurm.qos, limits)
    check_node_gpus(slurm.gpus_per_task, slurm.partition, limits)
    fitted = fit_workers(
        sweep.settings.workers, slurm.gpus_per_task, slurm.array_parallelism, limits
    )
    qos_limits = [limit for limit in limits.accounting if limit.source.startswith("QOS ")]

    worker_time = slurm.time_min
    tuning = sweep.loaded.tuning
    # The same rule as the workers' rendered time limit (hpc.slurm_executor).
    gpu_hours = tuning.gpu_hours
    derived = slurm.time_min is None and tuning.n_trials is None and gpu_hours is not None
    if derived and gpu_hours is not None:
        worker_time = derived_time_min(
            gpu_hours, fitted.workers, slurm.gpus_per_task, slurm.signal_lead_s
        )
    worker_time, time_warning = fit_time_min(
        worker_time,
        "hpc.slurm.time_min",
        set_by_user=not derived,
        limit=lowest_time_limit(limits, slurm.partition, qos_limits),
        minimum_s=slurm.signal_lead_s,
    )
    finalize_set = "time_min" in _finalize_section(sweep)
    finalize_time, finalize_warning = fit_time_min(
        finalize.time_min,
        "hpc.slurm.finalize.time_min",
        set_by_user=finalize_set,
        limit=lowest_time_limit(limits, finalize.partition or slurm.partition, qos_limits),
    )

    for warning in (*fitted.warnings, time_warning, finalize_warning):
        if warning is not None:
            logger.warning(warning)
    new_slurm = dataclasses.replace(
        slurm,
        array_parallelism=fitted.array_parallelism,
        time_min=worker_time if time_warning is not None else slurm.time_min,
        finalize=dataclasses.replace(finalize, time_min=finalize_time),
    )
    settings = dataclasses.replace(sweep.settings, workers=fitted.workers, slurm=new_slurm)
    return dataclasses.replace(sweep, settings=settings)


def _finalize_section(sweep: Sweep) -> Mapping[str, object]:
    slurm = sweep.loaded.hpc_section.get("slurm") or {}
    finalize = slurm.get("finalize") if isinstance(slurm, Mapping) else None
    return finalize if isinstance(finalize, Mapping) else {}


def _command(limit: AccountingLimit) -> str:
    if limit.source.startswith("QOS "):
        return f"sacctmgr show qos {limit.source[4:]}"
    return "sacctmgr show assoc user=$USER"


def _gpus(count: int) -> str:
    return f"gres/gpu={count}"


def _minutes(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"
