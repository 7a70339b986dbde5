"""`hpc.slurm.python`: the command that runs the jobs' Python, such as a container wrapper."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hpc.slurm_settings import parse_slurm_section
from hpc.templates import render_finalize_script, render_worker_script
from tuner.errors import ConfigError

BASH = shutil.which("bash") or "/bin/bash"
SWEEP_DIR = Path("/scratch/alice/sweep")
APPTAINER = ["apptainer", "exec", "--nv", "/shared/images/hpc tune.sif", "/opt/hpc-tune/bin/python"]
QUOTED_APPTAINER = "apptainer exec --nv '/shared/images/hpc tune.sif' /opt/hpc-tune/bin/python"


def render_both(section: dict[str, Any]) -> tuple[str, str]:
    settings = parse_slurm_section(section)
    common: dict[str, Any] = {
        "sweep_dir": SWEEP_DIR,
        "working_dir": Path("/home/alice/project"),
        "python": "/login/venv/bin/python",
        "log_dir": SWEEP_DIR / "jobs" / "slurm",
        "exported_env": ["PATH", "HOME"],
    }
    worker = render_worker_script(settings, job_name="hpc-x", workers=2, **common)
    finalize = render_finalize_script(settings, job_name="hpc-x-finalize", **common)
    return worker, finalize


def test_default_is_interpreter_of_submission() -> None:
    assert parse_slurm_section({}).python == ()
    worker, finalize = render_both({})

    assert "/login/venv/bin/python -m hpc worker --sweep-dir /scratch/alice/sweep" in worker
    assert "/login/venv/bin/python -m hpc finalize --sweep-dir /scratch/alice/sweep" in finalize


def test_container_command_runs_both_jobs(tmp_path: Path) -> None:
    worker, finalize = render_both({"python": APPTAINER})

    assert f"{QUOTED_APPTAINER} -m hpc worker --sweep-dir" in worker
    assert f"{QUOTED_APPTAINER} -m hpc finalize --sweep-dir" in finalize
    assert "/login/venv/bin/python" not in worker
    assert "/login/venv/bin/python" not in finalize
    for script in (worker, finalize):
        path = tmp_path / "job.sbatch"
        path.write_text(script)
        checked = subprocess.run([BASH, "-n", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("apptainer exec image.sif python", "hpc.slurm.python: expected a list of strings"),
        (["apptainer", ""], "hpc.slurm.python[1]: '' is not one command word"),
        (["python\nrm -rf /"], "hpc.slurm.python[0]"),
        (["apptainer", 3], "hpc.slurm.python[1]: expected a string"),
    ],
)
def test_invalid_command_names_key(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_slurm_section({"python": value})
