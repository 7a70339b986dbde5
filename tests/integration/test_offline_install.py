"""Offline install: build a wheelhouse, then install hpc-tune from it with pip's index off.

The wheelhouse is built once for this module with this machine's pip configuration (its local
wheels and package indexes, and PyPI). Installs then run `scripts/wheelhouse.sh install`, which
makes pip read no configuration file and no PIP_* variable. This machine's configuration adds
a folder that contains a torch wheel, so the missing-torch case fails only if that isolation works.

Measured on the 2-core development machine: the build takes about 30 s with a warm pip cache,
the full install with torch about 70 s, a failing install about 6 s. The last test runs a
sweep on the real Slurm with hpc.slurm.python set to a script in place of `apptainer exec`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from sweep_helpers import (
    load_trials,
    skip_without_slurm,
    start_sweep,
    wait_for_jobs,
    write_config,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "wheelhouse.sh"
LISTS = ("requirements.lock", "SHA256SUMS", "target.txt")


def run_script(*arguments: str | Path, cwd: Path, timeout_s: int) -> subprocess.CompletedProcess:
    """Run scripts/wheelhouse.sh with this interpreter as PYTHON, from `cwd`."""
    environment = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, arguments)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def run_python(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A wheelhouse for this machine's Python, built once for the module (about 430 MB)."""
    folder = tmp_path_factory.mktemp("offline") / "wheelhouse"
    result = run_script("build", folder, cwd=folder.parent, timeout_s=480)
    assert result.returncode == 0, result.stderr
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def copy_without(wheelhouse: Path, destination: Path, project: str, *, keep_lists: bool) -> str:
    """Hard-link `wheelhouse` into `destination` without the wheel of `project`.

    With `keep_lists` false, the wheel's lines leave requirements.lock and SHA256SUMS too, as
    in a wheelhouse that was built without it. Returns the removed wheel's file name.
    """
    destination.mkdir()
    removed = ""
    for path in wheelhouse.iterdir():
        if path.name.startswith(f"{project}-") and path.suffix == ".whl":
            removed = path.name
        elif path.name not in LISTS or keep_lists:
            os.link(path, destination / path.name)
    assert removed, f"no {project} wheel in {wheelhouse}"
    if not keep_lists:
        version = removed.split("-")[1]
        for name in ("requirements.lock", "SHA256SUMS"):
            lines = (wheelhouse / name).read_text().splitlines(keepends=True)
            kept = [
                line
                for line in lines
                if removed not in line and not line.startswith(f"{project}=={version} ")
            ]
            assert len(kept) == len(lines) - 1, f"{name} should list {removed} once"
            (destination / name).write_text("".join(kept))
        shutil.copy(wheelhouse / "target.txt", destination / "target.txt")
    return removed


def test_wheelhouse_lists_every_wheel(wheelhouse: Path) -> None:
    wheels = sorted(path.name for path in wheelhouse.glob("*.whl"))
    lock = [
        line
        for line in (wheelhouse / "requirements.lock").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    sums = (wheelhouse / "SHA256SUMS").read_text().splitlines()
    target = (wheelhouse / "target.txt").read_text()

    assert any(name.startswith("hpc_tune-0.1.0-") for name in wheels)
    assert any(name.startswith("torch-2.13.0") for name in wheels)
    assert len(lock) == len(wheels)
    assert all(" --hash=sha256:" in line for line in lock)
    assert sorted(line.split("  ", 1)[1] for line in sums) == wheels
    assert f"python_version={sys.version_info[0]}.{sys.version_info[1]}\n" in target


def test_install_runs_hpc_from_venv(wheelhouse: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    try:
        installed = run_script("install", wheelhouse, venv, cwd=tmp_path, timeout_s=480)
        assert installed.returncode == 0, installed.stderr

        # From tmp_path, not the repository, so Python imports the installed packages.
        help_run = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "hpc", "--help"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert help_run.returncode == 0, help_run.stderr
        assert "sweep" in help_run.stdout

        imports = run_python(
            venv,
            "import json, edsnlp, hpc, torch, tuner, tuner.training\n"
            "from hpc.templates import TEMPLATE_DIR\n"
            "print(json.dumps({'hpc': hpc.__file__, 'tuner': tuner.__file__,\n"
            "    'worker_template': (TEMPLATE_DIR / 'worker.sbatch').is_file(),\n"
            "    'torch': torch.__version__}))",
            cwd=tmp_path,
        )
        assert imports.returncode == 0, imports.stderr
        found = json.loads(imports.stdout)
        site_packages = str(venv / "lib")
        assert found["hpc"].startswith(site_packages)
        assert found["tuner"].startswith(site_packages)
        assert found["worker_template"] is True
        assert found["torch"].startswith("2.13.0")
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # about 2 GB with torch


@pytest.mark.parametrize("project", ["torch", "regex"])
def test_install_fails_without_dependency(wheelhouse: Path, tmp_path: Path, project: str) -> None:
    """torch is a direct dependency, also in this machine's pip find-links folder. regex is a
    dependency of transformers, which edsnlp[ml] requires."""
    partial = tmp_path / "partial"
    copy_without(wheelhouse, partial, project, keep_lists=False)
    venv = tmp_path / "venv"

    result = run_script("install", partial, venv, cwd=tmp_path, timeout_s=300)

    assert result.returncode != 0
    assert f"No matching distribution found for {project}" in result.stderr
    missing = run_python(venv, "import hpc", cwd=tmp_path)
    assert "No module named 'hpc'" in missing.stderr


def test_install_rejects_wheel_missing_from_sums(wheelhouse: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    removed = copy_without(wheelhouse, damaged, "confit", keep_lists=True)
    venv = tmp_path / "venv"

    result = run_script("install", damaged, venv, cwd=tmp_path, timeout_s=120)

    assert result.returncode == 1
    assert removed in result.stderr
    assert "does not match its SHA256SUMS" in result.stderr
    assert not venv.exists()


def test_build_rejects_folder_in_use(tmp_path: Path) -> None:
    folder = tmp_path / "wheelhouse"
    folder.mkdir()
    (folder / "old.whl").write_text("")

    result = run_script("build", folder, cwd=tmp_path, timeout_s=60)

    assert result.returncode == 1
    assert f"{folder} already exists and is not empty" in result.stderr


def test_build_rejects_unknown_platform(tmp_path: Path) -> None:
    result = run_script(
        "build", tmp_path / "wheelhouse", "--platform", "linux_x86_64", cwd=tmp_path, timeout_s=60
    )

    assert result.returncode == 1
    assert "--platform linux_x86_64 is not a manylinux tag" in result.stderr


def test_jobs_run_through_python_command(tmp_path: Path, database_url: str) -> None:
    """hpc.slurm.python on the real Slurm, with a script in place of `apptainer exec`."""
    skip_without_slurm()
    calls = tmp_path / "calls.log"
    wrapper = tmp_path / "container-python"
    job_id = "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}"
    wrapper.write_text(f'#!/bin/bash\necho "{job_id} $*" >> {calls}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    write_config(tmp_path, n_trials=2, slurm={"python": [str(wrapper)]})

    array, finalize = start_sweep(tmp_path, database_url)
    states = wait_for_jobs([array, finalize])

    assert all(state.state == "COMPLETED" for state in states), states
    lines = calls.read_text().splitlines()
    assert any(line.startswith(f"{array} -m hpc worker --sweep-dir ") for line in lines), lines
    assert any(line.startswith(f"{finalize} -m hpc finalize --sweep-dir ") for line in lines)
    complete = [
        trial
        for trial in load_trials(database_url)
        if trial.state == optuna.trial.TrialState.COMPLETE
    ]
    assert len(complete) == 2
    assert (tmp_path / "results" / "result_summary.txt").is_file()
