"""The local single-node Slurm cluster of scripts/local-slurm.sh, used for real.

The fixture reuses a cluster whose controller already responds with the script's environment.
Otherwise it starts one as root, which installs the Debian packages when they are missing. It
never stops the cluster, because the test runner does that with `scripts/local-slurm.sh stop`.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "local-slurm.sh"
# Exit status of the script when the packages are missing and apt-get could not install them.
EXIT_NO_PACKAGES = 3
START_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 30


def run(
    command: list[str], env: Mapping[str, str], timeout_s: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Run a Slurm client command, and fail the test if it exits non-zero or times out."""
    try:
        result = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{' '.join(command)} timed out after {timeout_s} s\nstderr: {error.stderr!r}")
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} exited with {result.returncode}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


def controller_responds(env: Mapping[str, str]) -> bool:
    # Without its config file, scontrol retries for 60 s before it gives up.
    if not Path(env.get("SLURM_CONF", "")).is_file():
        return False
    try:
        result = subprocess.run(
            ["scontrol", "ping"], env=env, capture_output=True, timeout=15, check=False
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """The environment of a shell that ran `eval "$(scripts/local-slurm.sh env)"`."""
    eval_env = subprocess.run(
        ["bash", "-c", f'eval "$(bash {SCRIPT} env)" && env -0'],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    env = dict(item.split("=", 1) for item in eval_env.stdout.split("\0") if "=" in item)
    assert env.get("SLURM_CONF", "").endswith("/etc/slurm.conf"), eval_env.stdout
    if controller_responds(env):
        return env

    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster must be started as root: scripts/local-slurm.sh start")
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"],
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
    )
    if started.returncode == EXIT_NO_PACKAGES:
        pytest.skip(f"apt-get could not install the Slurm packages:\n{started.stderr[-2000:]}")
    if started.returncode != 0:
        pytest.fail(
            f"scripts/local-slurm.sh start exited with {started.returncode}:\n{started.stderr}"
        )
    return env


def submit(env: Mapping[str, str], *options: str, script: str) -> str:
    """Submit a batch job with sbatch and return its job id."""
    result = run(["sbatch", "--parsable", *options, "--wrap", script], env)
    return result.stdout.strip().split(";")[0]


def accounting_rows(env: Mapping[str, str], job_id: str, count: int) -> dict[str, list[str]]:
    """Return `sacct -X --parsable2` rows of the job by JobID, once `count` rows have ended.

    slurmctld sends job records to slurmdbd asynchronously, so sacct may lag for a moment.
    """
    deadline = time.monotonic() + 30
    while True:
        output = run(
            ["sacct", "-X", "--parsable2", "-n", "-j", job_id, "-o", "JobID,State,ExitCode"], env
        ).stdout
        rows = {line.split("|")[0]: line.split("|")[1:] for line in output.splitlines() if line}
        ended = [row for row in rows.values() if row[0] not in ("PENDING", "RUNNING")]
        if len(ended) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_gpu_array_completes(slurm_env: dict[str, str], tmp_path: Path) -> None:
    job_id = submit(
        slurm_env,
        "--wait",
        "--array=0-1",
        "--gres=gpu:1",
        f"--chdir={tmp_path}",
        "--output=task-%a.out",
        script='echo "$SLURM_ARRAY_TASK_ID $CUDA_VISIBLE_DEVICES"',
    )

    for task in (0, 1):
        output = (tmp_path / f"task-{task}.out").read_text()
        fields = output.split()
        assert fields[:1] == [str(task)], f"task {task} printed {output!r}"
        # Each task gets one fake GPU, and Slurm numbers them from 0.
        assert fields[1:] in (["0"], ["1"], ["2"], ["3"]), f"task {task} printed {output!r}"

    rows = accounting_rows(slurm_env, job_id, count=2)
    assert rows.get(f"{job_id}_0") == ["COMPLETED", "0:0"], rows
    assert rows.get(f"{job_id}_1") == ["COMPLETED", "0:0"], rows


def test_afterany_runs_after_failed_task(slurm_env: dict[str, str], tmp_path: Path) -> None:
    # Task 1 fails after 2 s. Each job writes the time it ended or started, in seconds.
    array_id = submit(
        slurm_env,
        "--array=0-1",
        f"--chdir={tmp_path}",
        "--output=task-%a.out",
        script='[ "$SLURM_ARRAY_TASK_ID" = 1 ] || exit 0; sleep 2; date +%s.%N >failed-end; exit 1',
    )
    dependent_id = submit(
        slurm_env,
        "--wait",
        f"--dependency=afterany:{array_id}_1",
        f"--chdir={tmp_path}",
        "--output=dependent.out",
        script="date +%s.%N > dependent-start",
    )

    failed_end_s = float((tmp_path / "failed-end").read_text())
    dependent_start_s = float((tmp_path / "dependent-start").read_text())
    assert dependent_start_s >= failed_end_s

    array_rows = accounting_rows(slurm_env, array_id, count=2)
    assert array_rows.get(f"{array_id}_0") == ["COMPLETED", "0:0"], array_rows
    assert array_rows.get(f"{array_id}_1") == ["FAILED", "1:0"], array_rows
    dependent_rows = accounting_rows(slurm_env, dependent_id, count=1)
    assert dependent_rows.get(dependent_id) == ["COMPLETED", "0:0"], dependent_rows
