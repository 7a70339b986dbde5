"""Privacy of a sweep: folder modes, failure messages without document text, offline jobs.

The sweeps run the synthetic plug-in with real local workers and a real PostgreSQL. The
offline test submits rendered job scripts to the real local Slurm.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import time
from pathlib import Path

import pytest
from sweep_helpers import load_trials, run_hpc, skip_without_slurm, write_config

from hpc import scheduler, templates
from hpc.slurm_settings import parse_slurm_section

pytestmark = pytest.mark.integration

# A sentence as a clinical note would hold it, with a word found nowhere else.
MARKER_WORD = "Zorglubine7f3a"
MARKER = f"Le patient présente une douleur thoracique sous {MARKER_WORD} depuis trois jours"
# A note's header: a patient number (IPP), a social security number (NIR), a birth date, a
# document id and a file named after the patient. Each string is found nowhere else.
IDENTIFIERS = ("80012345", "1610375123456", "12/03/1961", "DOC-2024-000123", "dupont_jean")
NOTE_HEADER = (
    "IPP 80012345 NIR 1610375123456 né le 12/03/1961, note_id=DOC-2024-000123, "
    "fichier /data/notes/dupont_jean.txt"
)
SECRETS = (MARKER_WORD, *IDENTIFIERS)
JOB_TIMEOUT_S = 120


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def files_under(*folders: Path) -> list[Path]:
    return [path for folder in folders for path in folder.rglob("*") if path.is_file()]


def run_synthetic_sweep(folder: Path, database_url: str, **hpc: object) -> str:
    """Run 3 trials of which 0 and 1 fail on a data error that quotes a note of `folder/data`.

    Returns the standard output and error of `hpc sweep`.
    """
    document = folder / "data" / "note.txt"
    document.parent.mkdir()
    document.write_text(f"{NOTE_HEADER}\n{MARKER}", encoding="utf-8")
    synthetic = {"duration_s": 0.2, "fail_trials": [0, 1], "fail_document": str(document)}
    write_config(folder, 3, executor="local", max_retries=0, synthetic=synthetic, **hpc)
    result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    return result.stdout + result.stderr


def test_failure_text_nowhere(tmp_path: Path, database_url: str) -> None:
    run_synthetic_sweep(tmp_path, database_url)
    checkpoint, results = tmp_path / "checkpoint", tmp_path / "results"

    files = files_under(checkpoint, results)
    assert len(files) > 10
    for secret in SECRETS:
        leaking = [str(path) for path in files if secret.encode() in path.read_bytes()]
        assert leaking == [], secret

    trials = load_trials(database_url)
    assert [trial.state.name for trial in trials] == ["FAIL", "FAIL", "COMPLETE"]
    for trial in trials[:2]:
        error = trial.user_attrs["error"]
        assert error.startswith("ValueError: message withheld")
        assert "characters; raised at " in error
        assert "tuner/synthetic.py:" in error
        assert "it contains" not in error
    for trial in trials:
        for secret in SECRETS:
            assert secret not in json.dumps(trial.user_attrs, default=str)
            assert secret not in json.dumps(trial.system_attrs, default=str)

    trial_log = (checkpoint / "trials" / "00000" / "trial.log").read_text()
    assert "Traceback (most recent call last):" in trial_log
    assert "ValueError: message withheld" in trial_log
    worker_logs = "".join(path.read_text() for path in (checkpoint / "jobs").rglob("*.log"))
    assert "Trial 0 failed after" in worker_logs
    assert "ValueError: message withheld" in worker_logs


def test_private_modes(tmp_path: Path, database_url: str) -> None:
    run_synthetic_sweep(tmp_path, database_url)
    checkpoint, results = tmp_path / "checkpoint", tmp_path / "results"

    for folder in _made_folders(checkpoint, results):
        assert mode_of(folder) == 0o700, folder
    for name in ("result_summary.txt", "config.yml", "plotly.min.js", "timeline.html"):
        assert mode_of(results / name) == 0o600, name
    for path in (checkpoint / "sweep.json", checkpoint / "trials" / "00000" / "trial.log"):
        assert mode_of(path) == 0o600, path


def test_group_shared_modes(tmp_path: Path, database_url: str) -> None:
    group = grp.getgrgid(os.getegid()).gr_name

    output = run_synthetic_sweep(tmp_path, database_url, share_with_group=group)
    checkpoint, results = tmp_path / "checkpoint", tmp_path / "results"

    for folder in _made_folders(checkpoint, results):
        assert mode_of(folder) == 0o2750, folder
        assert folder.stat().st_gid == os.getegid(), folder
    for name in ("result_summary.txt", "config.yml", "plotly.min.js", "timeline.html"):
        assert mode_of(results / name) == 0o640, name
    assert "already exists with mode" not in output  # the folders have the requested access
    # The files hpc-tune writes are readable by the group, so a colleague can read the logs.
    trial_log = checkpoint / "trials" / "00000" / "trial.log"
    worker_logs = list((checkpoint / "jobs" / "workers").glob("worker-*.log"))
    assert worker_logs
    for path in (checkpoint / "sweep.json", trial_log, *worker_logs):
        assert mode_of(path) == 0o640, path
        assert path.stat().st_gid == os.getegid(), path


def _made_folders(checkpoint: Path, results: Path) -> tuple[Path, ...]:
    """Folders that hpc-tune creates during a sweep, one of each kind."""
    return (
        checkpoint,
        checkpoint / "trials",
        checkpoint / "trials" / "00002",
        checkpoint / "jobs",
        checkpoint / "jobs" / "workers",
        results,
    )


def render_env_job(folder: Path, offline: bool) -> Path:
    """Render a worker script whose Python is a stub that writes the job's environment."""
    stub = folder / "python-stub"
    # Called as `<python> -m hpc worker --sweep-dir DIR`, so $5 is DIR.
    stub.write_text('#!/bin/bash\nenv > "$5/env.tmp" && mv "$5/env.tmp" "$5/env.txt"\n')
    stub.chmod(0o755)
    settings = parse_slurm_section(
        {"partition": "debug", "gpus_per_task": 0, "cpus_per_task": 1, "mem_gb": 1, "time_min": 5}
    )
    script = templates.render_worker_script(
        settings,
        sweep_dir=folder,
        working_dir=folder,
        python=str(stub),
        job_name="hpc-privacy-env",
        workers=1,
        log_dir=folder,
        offline=offline,
    )
    path = folder / "worker.sbatch"
    path.write_text(script)
    return path


def job_environment(folder: Path, offline: bool) -> dict[str, str]:
    folder.mkdir()
    job_id = scheduler.submit_script(render_env_job(folder, offline))
    env_file = folder / "env.txt"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not env_file.is_file():
        if time.monotonic() > deadline:
            errors = "".join(path.read_text() for path in folder.glob("*.err"))
            pytest.fail(f"job {job_id} wrote no environment in {JOB_TIMEOUT_S} s: {errors}")
        time.sleep(1)
    lines = env_file.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.mark.parametrize("offline", [True, False])
def test_slurm_job_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: bool):
    skip_without_slurm()
    # The submitting shell's values must not matter: hpc.offline alone decides.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1" if not offline else "0")

    environment = job_environment(tmp_path / "job", offline)

    assert environment.get("SLURM_JOB_ID")  # it ran as a Slurm job step
    offline_values = {
        name: environment.get(name)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    }
    if offline:
        assert offline_values == dict.fromkeys(offline_values, "1")
    else:
        assert offline_values == dict.fromkeys(offline_values)
