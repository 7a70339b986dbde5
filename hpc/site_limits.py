"""Slurm's site limits, read before a submission: the request is fitted to them or stopped.

Limits read (each one only where Slurm reports it):

- `MaxArraySize` (`scontrol show config`): array indices must be below it, so a sweep requests
  at most that many workers. More is an error.
- `MaxTime` of the workers' and the finalize job's partitions (`scontrol show partition`),
  and `MaxWall` of their QOS. Slurm rejects a job above it where the site sets
  EnforcePartLimits, and otherwise keeps it pending for ever (reason PartitionTimeLimit,
  Slurm 22.05). A time limit the user set is an error; one that hpc-tune chose (derived
  from `gpu_hours`, or the finalize job's default) is lowered to the limit with a warning.
- `MaxSubmitJobs` of the user's association, `MaxSubmitJobsPerUser` of the QOS: every array
  task counts as one job, plus the finalize job and the user's jobs already queued. Workers
  are lowered to what fits, with a warning; the sweep still spends its whole budget.
- GPU limits: `GrpTRES` of the user's association and `MaxTRESPerUser` of the QOS
  (`gres/gpu`) lower the workers (or `hpc.slurm.array_parallelism`) to the GPUs allowed at
  once, with a warning; `MaxTRES` (per job) below `hpc.slurm.gpus_per_task` is an error.
- GPUs per node (`CfgTRES` of `scontrol show node`): a worker runs on one node, so
  `hpc.slurm.gpus_per_task` above the largest node of its partition is an error.
- QOS names (`sacctmgr show qos`): a `hpc.slurm.qos` that sacctmgr does not list is an error.

The parsers are pure functions of the commands' text; `read_site_limits` runs the commands
through the scheduler runner, and a limit it cannot read (no sacctmgr, accounting off, a
query that fails) is skipped with one info line.
"""

from __future__ import annotations

import dataclasses
import getpass
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hpc import scheduler
from hpc.slurm_output import SchedulerError

logger = logging.getLogger(__name__)

QUERY_TIMEOUT_S = 30.0
GPU_TRES = "gres/gpu"
UNLIMITED_WORDS = frozenset({"", "UNLIMITED", "INFINITE", "NONE", "N/A"})
DURATION_PATTERN = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")
# The `sacctmgr show user withassoc` and `show qos` columns this module reads, in order.
ASSOCIATION_FIELDS = (
    "User",
    "DefaultAccount",
    "Account",
    "Partition",
    "MaxSubmit",
    "GrpTRES",
    "MaxTRES",
    "QOS",
    "DefaultQOS",
)
QOS_FIELDS = ("Name", "MaxSubmitPU", "MaxTRESPU", "MaxTRES", "MaxWall")


@dataclass(frozen=True)
class Partition:
    """A partition's limits from `scontrol show partition`.

    Attributes:
        name: The partition's name.
        max_time_s: `MaxTime` in seconds, or None when unlimited.
        default: Whether jobs without `--partition` go to it.
        qos: The partition's own QOS (`QoS=`), or None.
    """

    name: str
    max_time_s: int | None
    default: bool = False
    qos: str | None = None


@dataclass(frozen=True)
class AccountingLimit:
    """The limits of one association or QOS that apply to the sweep's jobs.

    Attributes:
        source: What sets them, for messages: `QOS gpu4` or `association root/root`.
        submit_key: The name of the submit limit in sacctmgr: `MaxSubmitJobs` or
            `MaxSubmitJobsPerUser`.
        max_submit_jobs: Jobs the user may have queued or running at once, or None.
        gpu_key: The name of the GPU limit: `GrpTRES` or `MaxTRESPerUser`.
        max_gpus: GPUs the user's running jobs may hold at once, or None.
        max_gpus_per_job: GPUs one job may hold (`MaxTRES`), or None.
        max_wall_s: Time limit of one job (`MaxWall`, QOS only) in seconds, or None.
        queued_jobs: The user's jobs (array tasks counted one by one) that count against
            `max_submit_jobs` now.
    """

    source: str
    submit_key: str
    max_submit_jobs: int | None = None
    gpu_key: str = "MaxTRESPerUser"
    max_gpus: int | None = None
    max_gpus_per_job: int | None = None
    max_wall_s: int | None = None
    queued_jobs: int = 0


@dataclass(frozen=True)
class SiteLimits:
    """The limits that the cluster enforces, as far as this user can read them."""

    max_array_size: int | None = None
    partitions: Mapping[str, Partition] = field(default_factory=dict)
    accounting: tuple[AccountingLimit, ...] = ()
    # The max GPUs (`gres/gpu`) of one node, by partition, or empty when not read.
    node_gpus: Mapping[str, int] = field(default_factory=dict)
    # Every QOS that sacctmgr lists, or None when it was not read.
    qos_names: frozenset[str] | None = None

    def partition(self, name: str | None) -> Partition | None:
        """Return the named partition, or the default one for None; None when unknown."""
        if name is not None:
            return self.partitions.get(name)
        return next((p for p in self.partitions.values() if p.default), None)


def parse_duration_s(value: str) -> int | None:
    """Parse a Slurm time limit into seconds; None for `UNLIMITED`, `INFINITE` or `NONE`.

    Slurm's forms are `minutes`, `minutes:seconds`, `hours:minutes:seconds`, `days-hours`,
    `days-hours:minutes` and `days-hours:minutes:seconds` (sbatch(1), `--time`).

    Raises:
        ValueError: For any other text.
    """
    text = value.strip()
    if text.upper() in UNLIMITED_WORDS:
        return None
    match = DURATION_PATTERN.match(text)
    if match is None:
        raise ValueError(f"Invalid Slurm time limit {value!r}")
    first = int(match["a"])
    second, third = (int(part) if part else None for part in match.group("b", "c"))
    if match["days"] is not None:
        hours, minutes, seconds = first, second or 0, third or 0
        return ((int(match["days"]) * 24 + hours) * 60 + minutes) * 60 + seconds
    if third is not None:
        return (first * 60 + (second or 0)) * 60 + third
    if second is not None:
        return first * 60 + second
    return first * 60


def parse_config_value(text: str, key: str) -> str | None:
    """Return the value of `key` in `scontrol show config` output (`Key = value` lines)."""
    for line in text.splitlines():
        name, separator, value = line.partition("=")
        if separator and name.strip() == key:
            return value.strip()
    return None


def parse_max_array_size(text: str) -> int | None:
    """Return `MaxArraySize` from `scontrol show config`, or None when it is not listed."""
    value = parse_config_value(text, "MaxArraySize")
    return int(value) if value is not None and value.isdigit() else None


def parse_partitions(text: str) -> dict[str, Partition]:
    """Parse `scontrol -o show partition`: one partition per line of `Key=value` words."""
    partitions = {}
    for line in text.splitlines():
        values = dict(word.split("=", 1) for word in line.split() if "=" in word)
        name = values.get("PartitionName")
        if not name:
            continue
        qos = values.get("QoS", "N/A")
        partitions[name] = Partition(
            name=name,
            max_time_s=parse_duration_s(values.get("MaxTime", "UNLIMITED")),
            default=values.get("Default") == "YES",
            qos=None if qos.upper() in UNLIMITED_WORDS else qos,
        )
    return partitions


def parse_node_gpus(text: str) -> dict[str, int]:
    """Return the max GPUs of one node in each partition, from `scontrol -o show node`.

    A node's GPUs are the `gres/gpu` count of its `CfgTRES`, all types together. A node
    without that count has none.
    """
    max_gpus: dict[str, int] = {}
    for line in text.splitlines():
        values = dict(word.split("=", 1) for word in line.split() if "=" in word)
        if not values.get("NodeName"):
            continue
        gpus = parse_tres_count(values.get("CfgTRES", "")) or 0
        for name in values.get("Partitions", "").split(","):
            if name:
                max_gpus[name] = max(max_gpus.get(name, 0), gpus)
    return max_gpus


def parse_tres_count(tres: str, name: str = GPU_TRES) -> int | None:
    """Return the count of `name` in a TRES list such as `cpu=4,gres/gpu=2`, or None.

    A typed entry (`gres/gpu:a100=2`) limits one GPU type only, so only the untyped entry
    counts.
    """
    for item in tres.split(","):
        key, separator, value = item.strip().partition("=")
        if separator and key == name and value.isdigit():
            return int(value)
    return None


def parse_parsable_rows(text: str, fields: Iterable[str]) -> list[dict[str, str]]:
    """Parse `sacctmgr -nP` output (one `|`-separated row per line) into dicts by field."""
    names = list(fields)
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        values = line.split("|")
        rows.append(dict(zip(names, values + [""] * (len(names) - len(values)), strict=False)))
    return rows


def pick_association(
    rows: list[dict[str, str]], account: str | None, partition: str | None
) -> dict[str, str] | None:
    """Return the association a job of `account` in `partition` runs under, or None.

    The account is `account`, else the user's default account. An association for the
    partition wins over the account's association for every partition.
    """
    if not rows:
        return None
    wanted = account or rows[0].get("DefaultAccount") or None
    candidates = [row for row in rows if wanted is None or row.get("Account") == wanted]
    for row in candidates:
        if partition and row.get("Partition") == partition:
            return row
    return next((row for row in candidates if not row.get("Partition")), None)


def job_qos(qos: str | None, association: Mapping[str, str] | None) -> str | None:
    """Return the QOS a job gets: `qos`, else the association's default or only QOS."""
    if qos is not None:
        return qos
    if association is None:
        return None
    if association.get("DefaultQOS"):
        return association["DefaultQOS"]
    allowed = [name for name in association.get("QOS", "").split(",") if name]
    return allowed[0] if len(allowed) == 1 else None


def count_queued_jobs(
    text: str, account: str | None = None, partition: str | None = None, qos: str | None = None
) -> int:
    """Count lines of `squeue -h -r -o %a|%P|%q` that match the given account, partition and QOS.

    A pending job may list several partitions (`debug,low`); it matches when one is
    `partition`.
    """
    count = 0
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        job_account, job_partitions, job_qos_name = parts
        if account is not None and job_account != account:
            continue
        if partition is not None and partition not in job_partitions.split(","):
            continue
        if qos is not None and job_qos_name != qos:
            continue
        count += 1
    return count


def association_limit(row: Mapping[str, str], queued_jobs: int) -> AccountingLimit:
    """Build the limits of one `sacctmgr show user withassoc` row."""
    source = f"association {row.get('User', '?')}/{row.get('Account', '?')}"
    if row.get("Partition"):
        source += f" (partition {row['Partition']})"
    max_submit = row.get("MaxSubmit", "")
    return AccountingLimit(
        source=source,
        submit_key="MaxSubmitJobs",
        max_submit_jobs=int(max_submit) if max_submit.isdigit() else None,
        gpu_key="GrpTRES",
        max_gpus=parse_tres_count(row.get("GrpTRES", "")),
        max_gpus_per_job=parse_tres_count(row.get("MaxTRES", "")),
        queued_jobs=queued_jobs,
    )


def qos_limit(row: Mapping[str, str], queued_jobs: int) -> AccountingLimit:
    """Build the limits of one `sacctmgr show qos` row."""
    max_submit = row.get("MaxSubmitPU", "")
    return AccountingLimit(
        source=f"QOS {row.get('Name', '?')}",
        submit_key="MaxSubmitJobsPerUser",
        max_submit_jobs=int(max_submit) if max_submit.isdigit() else None,
        gpu_key="MaxTRESPerUser",
        max_gpus=parse_tres_count(row.get("MaxTRESPU", "")),
        max_gpus_per_job=parse_tres_count(row.get("MaxTRES", "")),
        max_wall_s=parse_duration_s(row.get("MaxWall", "")),
        queued_jobs=queued_jobs,
    )


def read_site_limits(
    partition: str | None,
    account: str | None,
    qos: str | None,
    extra_partitions: Iterable[str | None] = (),
    user: str | None = None,
) -> SiteLimits:
    """Read the cluster's limits for this user's jobs; each unreadable one is left out.

    Args:
        partition: The workers' partition, None for the default one.
        account: `--account` of the jobs, None for the user's default account.
        qos: `--qos` of the jobs, None for the association's default.
        extra_partitions: Other partitions whose QOS applies (the finalize job's).
        user: The submitting user; the login name when None.
    """
    user = user or getpass.getuser()
    config = _query(["scontrol", "show", "config"], "MaxArraySize")
    partitions = _query(["scontrol", "-o", "show", "partition"], "partition MaxTime")
    nodes = _query(["scontrol", "-o", "show", "node"], "GPUs per node")
    limits = SiteLimits(
        max_array_size=parse_max_array_size(config) if config is not None else None,
        partitions=parse_partitions(partitions) if partitions is not None else {},
        node_gpus=parse_node_gpus(nodes) if nodes is not None else {},
    )
    storage = parse_config_value(config or "", "AccountingStorageType") or ""
    if config is not None and "slurmdbd" not in storage:
        logger.info("Accounting limits not read: AccountingStorageType is %r.", storage or "unset")
        return limits
    cluster = parse_config_value(config or "", "ClusterName")
    qos_text = _query(
        ["sacctmgr", "-nP", "show", "qos", f"format={','.join(QOS_FIELDS)}"], "QOS limits"
    )
    qos_rows = {row["Name"]: row for row in parse_parsable_rows(qos_text or "", QOS_FIELDS)}
    accounting = _read_accounting(
        limits, user, cluster, partition, account, qos, extra_partitions, qos_text, qos_rows
    )
    # An empty list means that the query returned nothing usable, not that no QOS exists.
    qos_names = frozenset(qos_rows) if qos_rows else None
    return dataclasses.replace(limits, accounting=accounting, qos_names=qos_names)


def _read_accounting(
    limits: SiteLimits,
    user: str,
    cluster: str | None,
    partition: str | None,
    account: str | None,
    qos: str | None,
    extra_partitions: Iterable[str | None],
    qos_text: str | None,
    qos_rows: Mapping[str, Mapping[str, str]],
) -> tuple[AccountingLimit, ...]:
    fields = ",".join(ASSOCIATION_FIELDS)
    # One slurmdbd may serve several clusters, each with its own associations.
    where = [f"user={user}"] + ([f"cluster={cluster}"] if cluster else [])
    assoc_text = _query(
        ["sacctmgr", "-nP", "show", "user", "withassoc", "where", *where, f"format={fields}"],
        "association limits",
    )
    queued = _query(
        ["squeue", "-h", "-r", f"--user={user}", "--format=%a|%P|%q"], "the user's queued jobs"
    )
    if assoc_text is None and qos_text is None:
        return ()
    queued = queued or ""
    partition_name = partition or getattr(limits.partition(None), "name", None)
    rows = parse_parsable_rows(assoc_text or "", ASSOCIATION_FIELDS)
    association = pick_association(rows, account, partition_name)
    result = []
    if association is not None:
        own_partition = association.get("Partition") or None
        count = count_queued_jobs(queued, association.get("Account"), own_partition)
        result.append(association_limit(association, count))

    names = [job_qos(qos, association)]
    for name in (partition, *extra_partitions):
        found = limits.partition(name)
        names.append(found.qos if found else None)
    for name in dict.fromkeys(n for n in names if n):
        if name in qos_rows:
            result.append(qos_limit(qos_rows[name], count_queued_jobs(queued, qos=name)))
        else:
            logger.info("QOS %s not found by sacctmgr: its limits are not checked.", name)
    return tuple(result)


def _query(command: list[str], subject: str) -> str | None:
    """Run a Slurm query; on any failure log one info line and return None."""
    try:
        result = scheduler.run_scheduler(command, timeout_s=QUERY_TIMEOUT_S, check=False)
    except SchedulerError as error:
        logger.info("%s not checked: %s", subject[0].upper() + subject[1:], error)
        return None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        logger.info(
            "%s not checked: '%s' failed (%s).",
            subject[0].upper() + subject[1:],
            " ".join(command[:3]),
            message[0] if message else f"exit code {result.returncode}",
        )
        return None
    return result.stdout
