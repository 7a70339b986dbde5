"""Parsers of Slurm's site limits and the fitting of a sweep's request to them.

The texts are real output of Slurm 22.05.8 (`scontrol`, `sacctmgr -nP`, `squeue`) from the
local test cluster, cut to the lines that matter.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from hpc.site_fit import (
    SiteLimitError,
    TimeLimit,
    check_node_gpus,
    check_python_command,
    check_qos,
    fit_time_min,
    fit_workers,
    lowest_time_limit,
)
from hpc.site_limits import (
    ASSOCIATION_FIELDS,
    QOS_FIELDS,
    AccountingLimit,
    Partition,
    SiteLimits,
    association_limit,
    count_queued_jobs,
    job_qos,
    parse_duration_s,
    parse_max_array_size,
    parse_node_gpus,
    parse_parsable_rows,
    parse_partitions,
    parse_tres_count,
    pick_association,
    qos_limit,
)
from hpc.slurm_settings import parse_slurm_section

SCONTROL_CONFIG = """\
Configuration data as of 2026-12-05T06:50:14
AccountingStorageType   = accounting_storage/slurmdbd
ClusterName             = hpctune
MaxArraySize            = 101
MaxJobCount             = 10000
"""

PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL "
    "Default=YES QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=30 "
    "Hidden=NO MaxNodes=UNLIMITED MaxTime=UNLIMITED MinNodes=0 LLN=NO Nodes=vm "
    "PriorityJobFactor=1 PriorityTier=1 State=UP TotalCPUs=16 TRES=cpu=16,mem=64G,node=1\n"
    "PartitionName=short AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL "
    "Default=NO QoS=N/A DefaultTime=NONE GraceTime=30 MaxNodes=UNLIMITED MaxTime=00:10:00 "
    "MinNodes=0 Nodes=vm State=UP TotalCPUs=16 TRES=cpu=16,mem=64G,node=1\n"
    "PartitionName=gpu Default=NO QoS=gpulimit MaxTime=2-00:00:00 Nodes=vm State=UP\n"
)

ASSOCIATIONS = (
    "root|root|root||||||normal|\nalice|lab|lab||20|gres/gpu=8|gres/gpu=4|normal,long|long\n"
)
QOS_TABLE = "normal||||\nsltest|3|gres/gpu=2|gres/gpu=2|00:20:00\nlong|||cpu=64|7-00:00:00\n"
SQUEUE = "root|debug|normal\nroot|debug|normal\nroot|debug,low|sltest\nlab|gpu|long\n"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 600),
        ("00:10:00", 600),
        ("10:30", 630),
        ("1-00:00:00", 86400),
        ("2-12", 216000),
        ("1-02:03", 93780),
        ("7-00:00:00", 604800),
        ("UNLIMITED", None),
        ("INFINITE", None),
        ("NONE", None),
        ("", None),
    ],
)
def test_duration_forms(text: str, seconds: int | None) -> None:
    assert parse_duration_s(text) == seconds


def test_duration_rejects_other_text() -> None:
    with pytest.raises(ValueError, match="Invalid Slurm time limit '10 min'"):
        parse_duration_s("10 min")


def test_max_array_size_from_config() -> None:
    assert parse_max_array_size(SCONTROL_CONFIG) == 101
    assert parse_max_array_size("ClusterName = x\n") is None


def test_partitions_from_oneliner() -> None:
    partitions = parse_partitions(PARTITIONS)

    assert set(partitions) == {"debug", "short", "gpu"}
    assert partitions["debug"] == Partition("debug", None, default=True, qos=None)
    assert partitions["short"].max_time_s == 600
    assert partitions["gpu"].max_time_s == 2 * 86400
    assert partitions["gpu"].qos == "gpulimit"
    limits = SiteLimits(partitions=partitions)
    assert limits.partition(None) == partitions["debug"]
    assert limits.partition("missing") is None


@pytest.mark.parametrize(
    ("tres", "gpus"),
    [
        ("gres/gpu=2", 2),
        ("cpu=4,gres/gpu=8,mem=10G", 8),
        ("gres/gpu:a100=2", None),
        ("cpu=64", None),
        ("", None),
    ],
)
def test_gpu_count_in_tres(tres: str, gpus: int | None) -> None:
    assert parse_tres_count(tres) == gpus


def test_association_rows_and_pick() -> None:
    rows = parse_parsable_rows(ASSOCIATIONS, ASSOCIATION_FIELDS)

    root = pick_association(rows[:1], None, "debug")
    assert root is not None
    assert root["Account"] == "root"
    assert job_qos(None, root) == "normal"
    alice = pick_association(rows[1:], None, None)
    assert alice is not None
    limit = association_limit(alice, queued_jobs=3)
    assert limit.max_submit_jobs == 20
    assert limit.max_gpus == 8
    assert limit.max_gpus_per_job == 4
    assert limit.queued_jobs == 3
    assert job_qos(None, alice) == "long"
    assert job_qos("normal", alice) == "normal"
    assert pick_association(rows[1:], "other", None) is None


def test_partition_association_wins() -> None:
    rows = [
        {"User": "bob", "DefaultAccount": "lab", "Account": "lab", "Partition": ""},
        {"User": "bob", "DefaultAccount": "lab", "Account": "lab", "Partition": "gpu"},
    ]

    assert pick_association(rows, None, "gpu") == rows[1]
    assert pick_association(rows, None, "debug") == rows[0]


def test_qos_rows() -> None:
    rows = {row["Name"]: row for row in parse_parsable_rows(QOS_TABLE, QOS_FIELDS)}

    normal = qos_limit(rows["normal"], 0)
    assert (normal.max_submit_jobs, normal.max_gpus, normal.max_wall_s) == (None, None, None)
    sltest = qos_limit(rows["sltest"], 1)
    assert sltest.source == "QOS sltest"
    assert sltest.max_submit_jobs == 3
    assert sltest.max_gpus == 2
    assert sltest.max_gpus_per_job == 2
    assert sltest.max_wall_s == 1200
    assert qos_limit(rows["long"], 0).max_wall_s == 7 * 86400


def test_queued_jobs_by_qos_account_partition() -> None:
    assert count_queued_jobs(SQUEUE) == 4
    assert count_queued_jobs(SQUEUE, qos="normal") == 2
    assert count_queued_jobs(SQUEUE, qos="sltest") == 1
    assert count_queued_jobs(SQUEUE, account="root") == 3
    assert count_queued_jobs(SQUEUE, account="root", partition="low") == 1
    assert count_queued_jobs("") == 0


def qos(**values: Any) -> AccountingLimit:
    return AccountingLimit(source="QOS q", submit_key="MaxSubmitJobsPerUser", **values)


def test_workers_within_limits_unchanged() -> None:
    limits = SiteLimits(max_array_size=101, accounting=(qos(max_gpus=8, max_submit_jobs=10),))

    fit = fit_workers(8, 1, None, limits)

    assert fit.workers == 8
    assert fit.array_parallelism is None
    assert fit.warnings == ()


def test_array_above_max_array_size() -> None:
    with pytest.raises(SiteLimitError) as caught:
        fit_workers(102, 1, None, SiteLimits(max_array_size=101))
    message = str(caught.value)
    assert "MaxArraySize is 101" in message
    assert "Set hpc.workers to 101 or fewer" in message
    assert "sweep command's --workers option overrides it" in message
    assert fit_workers(101, 1, None, SiteLimits(max_array_size=101)).workers == 101


def test_workers_lowered_to_gpu_limit() -> None:
    fit = fit_workers(8, 2, None, SiteLimits(accounting=(qos(max_gpus=6),)))

    assert fit.workers == 3
    [warning] = fit.warnings
    assert "hpc.workers lowered from 8 to 3" in warning
    assert "MaxTRESPerUser=gres/gpu=6" in warning


def test_parallelism_lowered_to_gpu_limit() -> None:
    fit = fit_workers(8, 1, 5, SiteLimits(accounting=(qos(max_gpus=2),)))

    assert fit.workers == 8
    assert fit.array_parallelism == 2
    assert "hpc.slurm.array_parallelism lowered from 5 to 2" in fit.warnings[0]


def test_cpu_workers_ignore_gpu_limit() -> None:
    assert fit_workers(8, 0, None, SiteLimits(accounting=(qos(max_gpus=1),))).workers == 8


def test_gpu_limits_below_one_worker() -> None:
    with pytest.raises(SiteLimitError, match=r"allows 1 per user \(MaxTRESPerUser=gres/gpu=1"):
        fit_workers(2, 2, None, SiteLimits(accounting=(qos(max_gpus=1),)))
    with pytest.raises(SiteLimitError, match=r"allows 2 per job \(MaxTRES=gres/gpu=2"):
        fit_workers(2, 4, None, SiteLimits(accounting=(qos(max_gpus_per_job=2),)))


def test_workers_lowered_to_submit_limit() -> None:
    limit = qos(max_submit_jobs=6, queued_jobs=2)

    fit = fit_workers(8, 1, None, SiteLimits(accounting=(limit,)))

    # 6 allowed, 2 queued already, 1 for the finalize job.
    assert fit.workers == 3
    assert "MaxSubmitJobsPerUser=6" in fit.warnings[0]


def test_submit_limit_leaves_no_room() -> None:
    with pytest.raises(SiteLimitError) as caught:
        fit_workers(4, 1, None, SiteLimits(accounting=(qos(max_submit_jobs=3, queued_jobs=2),)))
    message = str(caught.value)
    assert "MaxSubmitJobsPerUser=3" in message
    assert "you have 2" in message
    assert "hpc.slurm.qos" in message


SHORT = SiteLimits(
    partitions={"short": Partition("short", 600), "debug": Partition("debug", None, True)}
)


def test_lowest_time_limit_partition_and_qos() -> None:
    limit = lowest_time_limit(SHORT, "short", [qos(max_wall_s=300)])

    assert limit == TimeLimit(300, "the MaxWall of QOS q", "sacctmgr show qos q")
    assert lowest_time_limit(SHORT, "short", []) == TimeLimit(
        600, "the MaxTime of partition short", "scontrol show partition short"
    )
    assert lowest_time_limit(SHORT, None, []) is None
    assert lowest_time_limit(SiteLimits(), "short", []) is None


def test_time_set_by_user_above_max_time() -> None:
    limit = lowest_time_limit(SHORT, "short", [])

    with pytest.raises(SiteLimitError) as caught:
        fit_time_min(30, "hpc.slurm.time_min", set_by_user=True, limit=limit)
    message = str(caught.value)
    assert "hpc.slurm.time_min: 30 min is above the MaxTime of partition short (10 min" in message
    assert "Set hpc.slurm.time_min to 10 or less" in message
    assert fit_time_min(10, "hpc.slurm.time_min", set_by_user=True, limit=limit) == (10, None)


def test_derived_time_lowered_to_max_time() -> None:
    limit = lowest_time_limit(SHORT, "short", [])

    time_min, warning = fit_time_min(45, "hpc.slurm.time_min", False, limit, minimum_s=180)

    assert time_min == 10
    assert warning is not None
    assert "hpc.slurm.time_min lowered from 45 to 10 min" in warning
    assert fit_time_min(None, "hpc.slurm.time_min", False, limit) == (None, None)


def test_lowered_time_below_signal_lead() -> None:
    limit = TimeLimit(120, "the MaxTime of partition tiny", "scontrol show partition tiny")

    with pytest.raises(SiteLimitError, match="hpc.slurm.signal_lead_s=180"):
        fit_time_min(45, "hpc.slurm.time_min", False, limit, minimum_s=180)


# `scontrol -o show node`, cut. vm is the local test cluster's node. cpu1 (no GPUs) and big
# (8 GPUs of two types) are made up.
NODES = (
    "NodeName=vm Arch=x86_64 CoresPerSocket=16 CPUAlloc=0 Gres=gpu:4 NodeAddr=127.0.0.1 "
    "State=IDLE Partitions=debug,low,high,short CfgTRES=cpu=16,mem=64G,billing=16,gres/gpu=4 "
    "AllocTRES=\n"
    "NodeName=cpu1 Gres=(null) State=IDLE Partitions=debug,cpu CfgTRES=cpu=64,mem=256G\n"
    "NodeName=big Gres=gpu:a100:4,gpu:v100:4 Partitions=gpu "
    "CfgTRES=cpu=64,mem=1T,gres/gpu=8,gres/gpu:a100=4,gres/gpu:v100=4\n"
)


def test_node_gpus_by_partition() -> None:
    assert parse_node_gpus(NODES) == {
        "debug": 4,
        "low": 4,
        "high": 4,
        "short": 4,
        "cpu": 0,
        "gpu": 8,
    }
    assert parse_node_gpus("") == {}


def node_limits() -> SiteLimits:
    return SiteLimits(partitions=parse_partitions(PARTITIONS), node_gpus=parse_node_gpus(NODES))


def test_gpus_above_largest_node() -> None:
    with pytest.raises(SiteLimitError) as caught:
        check_node_gpus(8, "short", node_limits())
    message = str(caught.value)
    assert message.startswith(
        "hpc.slurm.gpus_per_task: 8 GPUs per worker, but the nodes of partition short have "
        "at most 4 (gres/gpu=4; 'scontrol show node')"
    )
    assert "Set hpc.slurm.gpus_per_task to 4 or fewer" in message


def test_gpus_above_default_partition_nodes() -> None:
    with pytest.raises(SiteLimitError, match="nodes of partition debug have at most 4"):
        check_node_gpus(5, None, node_limits())


def test_gpus_on_partition_without_gpus() -> None:
    with pytest.raises(SiteLimitError, match="nodes of partition cpu have no GPUs"):
        check_node_gpus(1, "cpu", node_limits())


def test_gpus_within_nodes_accepted() -> None:
    check_node_gpus(4, "short", node_limits())
    check_node_gpus(8, "gpu", node_limits())
    check_node_gpus(0, "cpu", node_limits())
    # An unknown partition or unread nodes are left to sbatch --test-only.
    check_node_gpus(8, "nosuch", node_limits())
    check_node_gpus(8, "short", SiteLimits())


def test_unknown_qos_rejected() -> None:
    limits = SiteLimits(qos_names=frozenset({"normal", "long"}))
    with pytest.raises(SiteLimitError) as caught:
        check_qos("nosuchqos", limits)
    message = str(caught.value)
    assert message.startswith("hpc.slurm.qos: 'nosuchqos' is not a QOS of this cluster")
    assert "Known QOS: long, normal." in message


def test_known_or_unread_qos_accepted() -> None:
    check_qos("long", SiteLimits(qos_names=frozenset({"normal", "long"})))
    check_qos(None, SiteLimits(qos_names=frozenset({"normal"})))
    check_qos("nosuchqos", SiteLimits())


def slurm_python(words: list[str]) -> Any:
    return parse_slurm_section({"python": words})


@pytest.mark.parametrize(
    ("words", "where"),
    [
        (["/no/such/python"], "is not an executable file on this host"),
        (["no-such-command-hpc-tune", "exec", "image.sif", "python"], "is not on this host's PATH"),
    ],
)
def test_missing_python_command_rejected(words: list[str], where: str) -> None:
    with pytest.raises(SiteLimitError) as caught:
        check_python_command(slurm_python(words))
    message = str(caught.value)
    assert message.startswith(f"hpc.slurm.python: {words[0]!r} (the first word of {words}) {where}")
    assert "check-node" in message


def test_non_executable_python_rejected(tmp_path: Path) -> None:
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(SiteLimitError, match="is not an executable file on this host"):
        check_python_command(slurm_python([str(script)]))


def test_existing_python_command_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_python_command(slurm_python([]))
    check_python_command(slurm_python([sys.executable]))
    check_python_command(slurm_python(["sh", "-c", "exec python3"]))
    # A relative path is read from the current folder, the jobs' working folder.
    (tmp_path / "bin").mkdir()
    wrapper = tmp_path / "bin" / "python"
    wrapper.write_text("#!/bin/sh\n")
    wrapper.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    check_python_command(slurm_python(["bin/python"]))
