"""Site limits read from the real local Slurm before a sweep submits anything, and check-node.

scripts/local-slurm.sh sets MaxArraySize=101 and a partition `short` with MaxTime=10 (minutes);
the QOS test creates its own QOS with sacctmgr and removes it at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sweep_helpers import run_hpc, skip_without_slurm, sweep_jobs, write_config

from hpc import scheduler
from hpc.site_limits import parse_config_value, parse_max_array_size, parse_partitions

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TEST_CLUSTER = "hpctune"
SHORT_MAX_TIME_MIN = 10


@pytest.fixture(scope="module")
def max_array_size() -> int:
    """MaxArraySize of the local test cluster, which must have the partition `short` too."""
    skip_without_slurm()
    config = scheduler.run_scheduler(["scontrol", "show", "config"]).stdout
    if parse_config_value(config, "ClusterName") != TEST_CLUSTER:
        pytest.skip("these tests need the local test cluster of scripts/local-slurm.sh")
    partitions = parse_partitions(
        scheduler.run_scheduler(["scontrol", "-o", "show", "partition"]).stdout
    )
    size = parse_max_array_size(config)
    short = partitions.get("short")
    if size is None or size > 1000 or short is None or short.max_time_s != 600:
        pytest.fail(
            "The running test cluster was started from an older slurm.conf (MaxArraySize "
            f"{size}, partition short {short}). Restart it: scripts/local-slurm.sh stop, then "
            "start."
        )
    return size


def sweep_name() -> str:
    return f"site-limits-{uuid.uuid4().hex[:8]}"


def queued_jobs_named(name: str) -> list[str]:
    output = scheduler.run_scheduler(["squeue", "-h", f"--name={name}", "--format=%i"]).stdout
    return output.split()


def assert_nothing_submitted(folder: Path, name: str) -> None:
    assert queued_jobs_named(f"hpc-{name}") == []
    assert queued_jobs_named(f"hpc-{name}-finalize") == []
    sweep_file = folder / "checkpoint" / "sweep.json"
    assert not sweep_file.exists() or not sweep_jobs(folder / "checkpoint")


def cancel_sweep(folder: Path, url: str) -> None:
    """Cancel a submitted sweep and wait until Slurm lists none of its jobs."""
    result = run_hpc("cancel", "--config", "config.yml", "--storage", url, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sweep_jobs(folder / "checkpoint")
    deadline = time.monotonic() + 60
    while scheduler.active_jobs(jobs) and time.monotonic() < deadline:
        time.sleep(1)


def test_workers_above_max_array_size(
    max_array_size: int, tmp_path: Path, database_url: str
) -> None:
    name = sweep_name()
    write_config(tmp_path, 4, workers=max_array_size + 1, sweep_name=name)

    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"MaxArraySize is {max_array_size}" in result.stderr
    assert f"Set hpc.workers to {max_array_size} or fewer" in result.stderr
    assert_nothing_submitted(tmp_path, name)


def test_time_above_partition_max_time(
    max_array_size: int, tmp_path: Path, database_url: str
) -> None:
    name = sweep_name()
    write_config(tmp_path, 4, sweep_name=name, slurm={"partition": "short", "time_min": 30})

    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "hpc.slurm.time_min: 30 min is above the MaxTime of partition short" in result.stderr
    assert f"Set hpc.slurm.time_min to {SHORT_MAX_TIME_MIN} or less" in result.stderr
    assert_nothing_submitted(tmp_path, name)


def test_derived_time_lowered_on_short(
    max_array_size: int, tmp_path: Path, database_url: str
) -> None:
    # 0.05 GPU-hours over 1 worker derive a limit of 20 min; the finalize job's default is 60.
    config = write_config(
        tmp_path, 4, sweep_name=sweep_name(), slurm={"partition": "short", "time_min": None}
    )
    data = json.loads(config.read_text())
    del data["tuning"]["n_trials"]
    data["tuning"]["gpu_hours"] = 0.05
    del data["hpc"]["slurm"]["finalize"]["time_min"]
    config.write_text(json.dumps(data))

    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    try:
        assert "hpc.slurm.time_min lowered from 20 to 10 min" in result.stderr
        assert "hpc.slurm.finalize.time_min lowered from 60 to 10 min" in result.stderr
        sbatch = tmp_path / "checkpoint" / "sbatch"
        assert "#SBATCH --time=10\n" in (sbatch / "worker.sbatch").read_text()
        assert "#SBATCH --time=10\n" in (sbatch / "finalize.sbatch").read_text()
    finally:
        cancel_sweep(tmp_path, database_url)


@pytest.fixture
def test_qos(max_array_size: int) -> Iterator[str]:
    """A QOS that allows 3 queued jobs and 2 GPUs per user, deleted after the test."""
    name = f"hpctune_{uuid.uuid4().hex[:8]}"
    scheduler.run_scheduler(
        [
            "sacctmgr",
            "-i",
            "add",
            "qos",
            name,
            "MaxSubmitJobsPerUser=3",
            "MaxTRESPerUser=gres/gpu=2",
        ]
    )
    try:
        yield name
    finally:
        scheduler.run_scheduler(["sacctmgr", "-i", "delete", "qos", name], check=False)


def test_qos_limits_read_and_enforced(test_qos: str, tmp_path: Path, database_url: str) -> None:
    first = tmp_path / "first"
    first.mkdir()
    write_config(
        first,
        40,
        workers=4,
        sweep_name=sweep_name(),
        synthetic={"duration_s": 2.0},
        slurm={"qos": test_qos},
    )

    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=first)

    assert result.returncode == 0, result.stderr[-3000:]
    try:
        assert "hpc.workers lowered from 4 to 2" in result.stderr
        assert f"QOS {test_qos} allows 2 GPUs per user" in result.stderr
        assert "MaxTRESPerUser=gres/gpu=2" in result.stderr
        state = json.loads((first / "checkpoint" / "sweep.json").read_text())
        assert state["workers"] == 2
        worker_script = (first / "checkpoint" / "sbatch" / "worker.sbatch").read_text()
        assert "#SBATCH --array=0-1\n" in worker_script

        # The first sweep's 2 workers and finalize job fill MaxSubmitJobsPerUser=3.
        second = tmp_path / "second"
        second.mkdir()
        name = sweep_name()
        write_config(second, 4, workers=1, sweep_name=name, slurm={"qos": test_qos})
        refused = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=second)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "MaxSubmitJobsPerUser=3" in refused.stderr
        assert "you have 3" in refused.stderr
        assert_nothing_submitted(second, name)
    finally:
        cancel_sweep(first, database_url)


def run_check_node(folder: Path, url: str, allow_cpu: bool) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "HPC_TUNE_ALLOW_CPU"}
    if allow_cpu:
        env["HPC_TUNE_ALLOW_CPU"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "hpc", "check-node", "--config", "config.yml", "--storage", url],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_node_runs_a_job(max_array_size: int, tmp_path: Path, database_url: str) -> None:
    write_config(tmp_path, 4, sweep_name=sweep_name())

    strict = run_check_node(tmp_path, database_url, allow_cpu=False)
    print(strict.stdout)

    # The local cluster's GPUs are fake devices: torch sees no CUDA.
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert f"host:      {socket.gethostname()} (job " in strict.stdout
    assert "CUDA:      NOT AVAILABLE: the job holds 1 GPU" in strict.stdout
    assert "database:  answers (postgresql+psycopg2://" in strict.stdout
    assert "Result:    FAILED: torch sees no CUDA device" in strict.stdout

    allowed = run_check_node(tmp_path, database_url, allow_cpu=True)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "accepted because HPC_TUNE_ALLOW_CPU=1" in allowed.stdout
    assert "Result:    OK" in allowed.stdout


def test_gpus_above_node_gres(max_array_size: int, tmp_path: Path, database_url: str) -> None:
    # The local cluster's only node has Gres=gpu:4 (scripts/local-slurm.sh).
    name = sweep_name()
    write_config(tmp_path, 4, sweep_name=name, slurm={"partition": "short", "gpus_per_task": 8})

    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert (
        "hpc.slurm.gpus_per_task: 8 GPUs per worker, but the nodes of partition short have at "
        "most 4 (gres/gpu=4; 'scontrol show node')"
    ) in result.stderr
    assert "Requested node configuration is not available" not in result.stderr
    assert_nothing_submitted(tmp_path, name)


def test_unknown_qos_rejected(max_array_size: int, tmp_path: Path, database_url: str) -> None:
    name = sweep_name()
    write_config(tmp_path, 4, sweep_name=name, slurm={"qos": "nosuchqos"})

    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "hpc.slurm.qos: 'nosuchqos' is not a QOS of this cluster" in result.stderr
    assert "Known QOS: " in result.stderr
    assert "normal" in result.stderr
    assert_nothing_submitted(tmp_path, name)


@pytest.mark.parametrize(
    "python",
    [["/no/such/python"], ["no-such-apptainer", "exec", "--nv", "/no/image.sif", "python"]],
)
def test_missing_slurm_python_rejected(
    max_array_size: int, tmp_path: Path, database_url: str, python: list[str]
) -> None:
    name = sweep_name()
    write_config(tmp_path, 4, sweep_name=name, slurm={"python": python})

    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert f"hpc.slurm.python: {python[0]!r} (the first word of {python})" in result.stderr
    assert "check-node" in result.stderr
    assert_nothing_submitted(tmp_path, name)
    assert not (tmp_path / "checkpoint").exists()
