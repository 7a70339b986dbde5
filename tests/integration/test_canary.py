"""Canary: a database password and a sentence of the training data must not leak.

A Slurm sweep trains EDS-NLP for real on a copy of the QUAERO sample that contains one extra
document with a unique marker sentence, against a PostgreSQL server that asks for a password
over verified SSL, the password being in `~/.pgpass`. Afterwards neither the password nor
the marker may appear in any file of the checkpoint and output folders, in what Slurm
keeps about the jobs (batch script, environment, submit line, daemon logs), in the output
of the sweep command or in the server's log.

Real training, not the synthetic plug-in: the marker then goes through EDS-NLP's reader,
tokenizer, data checks and trainer, the paths by which a document's text can reach a log.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import SslPostgres, client_environment, start_server, write_pgpass
from sweep_helpers import skip_without_slurm, sweep_jobs, wait_for_sweep_jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "quaero"
ROLE = "canary"


@pytest.fixture(scope="module")
def site_server() -> Iterator[SslPostgres]:
    skip_without_slurm()
    server = start_server()
    yield server
    server.stop()


def slurm_setting(name: str) -> str:
    """Return one value of `scontrol show config`, such as StateSaveLocation."""
    output = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    match = re.search(rf"^{name}\s*=\s*(.*)$", output, re.MULTILINE)
    return match.group(1).strip() if match else ""


def write_training_data(folder: Path, marker: str) -> Path:
    """Copy the QUAERO sample and add a document whose text contains `marker`."""
    data = folder / "data"
    shutil.copytree(EXAMPLE / "data", data)
    text = f"{marker} Le patient présente une angine de poitrine .\n"
    start = text.index("angine de poitrine")
    end = start + len("angine de poitrine")
    document = data / "train" / "MEDLINE" / "canary"
    document.with_suffix(".txt").write_text(text, encoding="utf-8")
    document.with_suffix(".ann").write_text(
        f"T1\tDISO {start} {end}\tangine de poitrine\n", encoding="utf-8"
    )
    return data


def write_sweep_config(folder: Path, data: Path, model: Path, url: str) -> None:
    text = (EXAMPLE / "config.yml").read_text(encoding="utf-8")
    text = text.replace("examples/quaero/data/", f"{data}/")
    text = text.replace("'examples/quaero/models/tiny-bert'", f"'{model}'")
    text = re.sub(r"n_trials: \d+", "n_trials: 2", text)
    text = text.replace("  workers: 2\n", "", 1)
    text = text.replace(
        "  executor: auto",
        f"  executor: slurm\n  workers: 1\n  storage: '{url}'\n"
        "  slurm: {gpus_per_task: 0, cpus_per_task: 1, mem_gb: 2, time_min: 20}",
    )
    (folder / "config.yml").write_text(text, encoding="utf-8")


class LogTail:
    """The part of a log file written after this object was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0

    def read(self) -> bytes:
        if not self.path.is_file():
            return b""
        with self.path.open("rb") as file:
            file.seek(self.offset)
            return file.read()


def slurm_records(job_ids: list[str], state_dir: Path) -> dict[str, bytes]:
    """Collect what Slurm keeps about the jobs: scripts, environments and submit lines."""
    records: dict[str, bytes] = {}
    for job in sorted({job.split("_")[0] for job in job_ids}):
        script = subprocess.run(
            ["scontrol", "write", "batch_script", job, "-"], capture_output=True, timeout=60
        )
        records[f"scontrol write batch_script {job}"] = script.stdout + script.stderr
        # slurmctld keeps each job's script and environment under StateSaveLocation, in
        # hash.<id % 10>/job.<id>/, until MinJobAge after the job ends.
        for path in state_dir.glob(f"hash.*/job.{job}/*"):
            records[str(path)] = path.read_bytes()
    accounting = subprocess.run(
        ["sacct", "--parsable2", "--noheader", "--jobs", ",".join(job_ids)]
        + ["--format", "JobID,JobName,SubmitLine,WorkDir,Comment"],
        capture_output=True,
        timeout=60,
    )
    records["sacct"] = accounting.stdout + accounting.stderr
    flags = slurm_setting("AccountingStoreFlags")
    for flag, option in (("job_script", "--batch-script"), ("job_env", "--env-vars")):
        if flag in flags:
            stored = subprocess.run(
                ["sacct", option, "--jobs", ",".join(job_ids)], capture_output=True, timeout=60
            )
            records[f"sacct {option}"] = stored.stdout + stored.stderr
    return records


def files_under(*folders: Path) -> dict[str, bytes]:
    return {
        str(path): path.read_bytes()
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def leaks(secrets: dict[str, bytes], sources: dict[str, bytes]) -> list[str]:
    return [
        f"{what} in {where}"
        for where, content in sources.items()
        for what, secret in secrets.items()
        if secret in content
    ]


def test_no_password_or_text_leaks(
    site_server: SslPostgres, tmp_path: Path, tiny_bert: Path
) -> None:
    token = uuid.uuid4().hex
    password = f"canary-pw-{token[:12]}"
    marker = f"Canary{token[12:]} signale une douleur thoracique inhabituelle."
    site_server.create_role(ROLE, password)
    database = site_server.create_database([ROLE])
    url = site_server.verified_url(ROLE, database)

    home = tmp_path / "home"
    home.mkdir()
    write_pgpass(home / ".pgpass", site_server, ROLE, password)
    environ = client_environment(home / ".pgpass", HOME=str(home))
    del environ["PGPASSFILE"]  # libpq reads ~/.pgpass, as on a user's account
    data = write_training_data(tmp_path, marker)
    write_sweep_config(tmp_path, data, tiny_bert, url)
    daemon_logs = [
        LogTail(Path(slurm_setting(name)))
        for name in ("SlurmctldLogFile", "SlurmdLogFile")
        if slurm_setting(name)
    ]
    server_log = LogTail(site_server.prefix / "log" / "server.log")

    result = subprocess.run(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr.decode()[-4000:]
    checkpoint = tmp_path / "checkpoint" / "quaero"
    wait_for_sweep_jobs(checkpoint, timeout_s=480)
    job_ids = sweep_jobs(checkpoint)
    records = slurm_records(job_ids, Path(slurm_setting("StateSaveLocation")))

    # The checks below must have something to look at, or the canary could never fail.
    summary = tmp_path / "results" / "quaero" / "result_summary.txt"
    assert "COMPLETE: 2" in summary.read_text(), summary.read_text()
    environments = [c for where, c in records.items() if where.endswith("/environment")]
    assert environments, f"no job environment found under StateSaveLocation: {sorted(records)}"
    assert all(f"HOME={home}".encode() in content for content in environments)
    scripts = [c for w, c in records.items() if w.startswith("scontrol write batch_script")]
    assert scripts and all(b"srun" in content for content in scripts), scripts
    assert list((checkpoint / "jobs" / "workers").glob("worker-*.log")), "no worker log"
    assert list((checkpoint / "trials").glob("*/trial.log")), "no trial log"
    assert marker.encode() in (data / "train" / "MEDLINE" / "canary.txt").read_bytes()

    secrets = {"password": password.encode(), "marker token": token[12:].encode()}
    sources = files_under(checkpoint, tmp_path / "results")
    sources.update(records)
    sources["sweep command output"] = result.stdout + result.stderr
    sources.update({str(tail.path): tail.read() for tail in daemon_logs})
    sources["PostgreSQL server log"] = server_log.read()
    assert leaks(secrets, sources) == []
    # The password reaches the jobs through ~/.pgpass only: no job received PGPASSWORD.
    assert not [content for content in environments if b"PGPASSWORD=" in content]
