"""`hpc check-node`: one short job, with the workers' request, that reports what a node offers.

The job reports its host, whether torch sees CUDA (the device names and memory), and whether
the sweep's database answers a `SELECT 1` from the node. The command submits it, waits for it
and prints the report. It exits 1 when a worker on that node could not train: GPUs were
requested but torch sees none (unless HPC_TUNE_ALLOW_CPU=1), the database does not answer,
or the job failed.

The job side runs as `python -m hpc.check_node --report FILE [--storage URL]`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpc import scheduler, templates
from hpc.hints import plural
from hpc.slurm_settings import SlurmSettings
from hpc.storage import hide_password, parse_storage_url
from hpc.sweep import EMBEDDED, SweepRequest, load_sweep, storage_setting
from hpc.sweep_state import write_json_atomic
from tuner.errors import HpcTuneError
from tuner.objectives import ALLOW_CPU_ENV

# The job imports torch and opens one connection: a few minutes is plenty.
JOB_TIME_MIN = 5
POLL_S = 2.0
DEFAULT_TIMEOUT_S = 600.0
FOLDER = "check-node"
SCRIPT = """#!/bin/bash
# hpc-tune check-node job: reports CUDA, the GPUs and the database as a worker sees them.
{options}

set -eo pipefail

# Site setup (hpc.slurm.setup).
{setup}

export SLURM_EXPORT_ENV=ALL
# torch queries NVML for CUDA devices instead of initialising CUDA.
export PYTORCH_NVML_BASED_CUDA_CHECK=1
exec srun --unbuffered -c "$SLURM_CPUS_PER_TASK" {command}
"""


def check_node(config_path: Path, storage: str | None, timeout_s: float) -> int:
    """Submit the check job with the sweep's worker request, wait for it and print its report.

    Returns:
        0 when a worker could train on the node, 1 otherwise.

    Raises:
        HpcTuneError: No Slurm controller responds, the job cannot be submitted, or it did
            not end within `timeout_s` seconds (it is then cancelled).
    """
    request = SweepRequest(config_path=config_path, storage=storage)
    sweep = load_sweep(request)
    if not scheduler.controller_answers():
        raise HpcTuneError(
            "No Slurm controller responds to 'scontrol ping' from this machine: run "
            "check-node on a login node of the cluster."
        )
    url, source = storage_setting(request, sweep.settings)
    if url is None:
        recorded = (sweep.state or {}).get("storage_url")
        url = None if (sweep.state or {}).get("embedded") else recorded
    database = None if url in (None, EMBEDDED) else str(parse_storage_url(url, source))

    folder = sweep.paths.jobs_dir / FOLDER
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    script = folder / "check-node.sbatch"
    settings = sweep.settings.slurm
    script.write_text(render_script(settings, folder, Path.cwd(), database), encoding="utf-8")
    script.chmod(0o700)

    job_id = scheduler.submit_script(script)
    gres = f"--gres=gpu:{settings.gpus_per_task}" if settings.gpus_per_task else "no GPU"
    print(
        f"check-node: job {job_id} submitted to partition {settings.partition or '(default)'} "
        f"({gres}); waiting up to {timeout_s:g} s.",
        flush=True,
    )
    _wait(job_id, timeout_s)

    report_path = folder / f"report-{job_id}.json"
    if not report_path.is_file():
        states = scheduler.query_jobs([job_id])
        state = states[0].state if states else "unknown"
        error_log = folder / f"check-node-{job_id}.err"
        tail = error_log.read_text(errors="replace")[-1500:] if error_log.is_file() else ""
        print(f"check-node: job {job_id} ended ({state}) without a report. Its log {error_log}:")
        print(tail.rstrip() or "(empty)")
        return 1
    report = json.loads(report_path.read_text(encoding="utf-8"))
    return print_report(report, settings.gpus_per_task, os.environ.get(ALLOW_CPU_ENV) == "1")


def render_script(
    settings: SlurmSettings, folder: Path, working_dir: Path, database: str | None
) -> str:
    """Render the check job's script: the workers' resources, setup and Python, a short time
    limit, no array."""
    options: list[tuple[str, str | None]] = [
        ("--job-name", "hpc-check-node"),
        ("--output", templates.filename_pattern(folder, "check-node-%j.out")),
        ("--error", templates.filename_pattern(folder, "check-node-%j.err")),
        ("--chdir", str(working_dir)),
        ("--export", ",".join(templates.job_environment_names(settings.exported_env))),
        ("--nodes", "1"),
        ("--ntasks", "1"),
        ("--cpus-per-task", str(settings.cpus_per_task)),
        ("--time", str(min(JOB_TIME_MIN, settings.time_min or JOB_TIME_MIN))),
    ]
    if settings.mem_gb is not None:
        options.append(("--mem", f"{settings.mem_gb}G"))
    if settings.gpus_per_task > 0:
        options.append(("--gres", f"gpu:{settings.gpus_per_task}"))
    for option, value in (
        ("--partition", settings.partition),
        ("--account", settings.account),
        ("--qos", settings.qos),
        ("--constraint", settings.constraint),
    ):
        if value is not None:
            options.append((option, value))

    # The report's file name contains the job id, which only the job itself can read.
    # The workers' Python: hpc.slurm.python (such as a container command), else this one.
    python = list(settings.python) or [sys.executable]
    command = [*python, "-m", "hpc.check_node", "--report-dir", str(folder)]
    if database is not None:
        # The URL contains no password, because parse_storage_url rejects one.
        command += ["--storage", database]
    return SCRIPT.format(
        options=templates.sbatch_option_lines(options, settings.extra_sbatch),
        setup="\n".join(settings.setup) if settings.setup else "# (none)",
        command=" ".join(templates.shell_quote(part) for part in command),
    )


def _wait(job_id: str, timeout_s: float) -> None:
    """Wait until squeue no longer lists the job; cancel it and raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        active = scheduler.active_jobs([job_id])
        if not active:
            return
        if time.monotonic() > deadline:
            scheduler.cancel_jobs([job_id])
            reason = f" ({active[0].reason})" if active[0].reason else ""
            raise HpcTuneError(
                f"check-node: job {job_id} was still {active[0].state}{reason} after "
                f"{timeout_s:g} s, so it was cancelled. Run check-node again with a longer "
                "--timeout-s, or check the partition with 'sinfo'."
            )
        time.sleep(POLL_S)


def print_report(report: dict[str, Any], gpus_requested: int, allow_cpu: bool) -> int:
    """Print the job's report; return 0 when a worker could train there, 1 otherwise."""
    problems = []
    print(f"  host:      {report['host']} (job {report['job_id']})")
    print(f"  torch:     {report['torch']}")
    visible = report.get("cuda_visible_devices") or "(unset)"
    if report["cuda_available"]:
        print(f"  CUDA:      available, CUDA_VISIBLE_DEVICES={visible}")
        for device in report["devices"]:
            print(f"  GPU:       {device['name']}, {device['memory_gib']:.1f} GiB")
    elif gpus_requested > 0:
        print(
            f"  CUDA:      NOT AVAILABLE: the job holds {plural(gpus_requested, 'GPU')} "
            f"(CUDA_VISIBLE_DEVICES={visible}) but torch sees no CUDA device"
        )
        if allow_cpu:
            print(f"             accepted because {ALLOW_CPU_ENV}=1: workers would train on CPU")
        else:
            problems.append(
                "torch sees no CUDA device: install a CUDA build of torch that matches the "
                "node's driver, or load the site's CUDA module in hpc.slurm.setup"
            )
    else:
        print("  CUDA:      not available (hpc.slurm.gpus_per_task is 0: CPU workers)")

    database = report.get("database")
    if database is None:
        print("  database:  not checked: the sweep uses the embedded server on this host")
    elif database["ok"]:
        print(f"  database:  answers ({database['url']}, SELECT 1 in {database['ms']:.0f} ms)")
    else:
        print(f"  database:  FAILED ({database['url']}): {database['error']}")
        if database.get("hint"):
            print(f"             {database['hint']}")
        problems.append("the node cannot connect to the database")

    if problems:
        print("Result:    FAILED: " + "; ".join(problems) + ".")
        return 1
    print("Result:    OK: a worker can run on this node.")
    return 0


def collect_report(storage: str | None) -> dict[str, Any]:
    """Collect the job side's report: host, torch and CUDA, and the result of `SELECT 1`."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    available = torch.cuda.is_available()
    devices = []
    if available:
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            devices.append({"name": properties.name, "memory_gib": properties.total_memory / 2**30})
    return {
        "host": socket.gethostname(),
        "job_id": os.environ.get("SLURM_JOB_ID", "-"),
        "torch": torch.__version__,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "cuda_available": available,
        "devices": devices,
        "database": None if storage is None else _database_answer(storage),
    }


def _database_answer(storage: str) -> dict[str, Any]:
    import sqlalchemy

    from hpc import db_access
    from hpc.storage import create_engine, user_schema

    url = parse_storage_url(storage, "--storage")
    engine = create_engine(url, user_schema())
    started = time.monotonic()
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.SQLAlchemyError as error:
        lines = str(getattr(error, "orig", None) or error).strip().splitlines()
        reason = lines[0] if lines else "?"
        # The same fix as 'sweep' gives, worked out on the node, with the node's password file.
        hint = db_access.connection_hint(reason, url)
        return {"url": hide_password(url), "ok": False, "error": reason, "hint": hint}
    finally:
        engine.dispose()
    elapsed_ms = (time.monotonic() - started) * 1000
    return {"url": hide_password(url), "ok": True, "ms": elapsed_ms}


def job_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the check job: write the report as JSON into `--report-dir`."""
    parser = argparse.ArgumentParser(prog="python -m hpc.check_node")
    parser.add_argument("--report-dir", required=True, type=Path)
    parser.add_argument("--storage", help="PostgreSQL URL without password")
    args = parser.parse_args(argv)
    report = collect_report(args.storage)
    write_json_atomic(args.report_dir / f"report-{report['job_id']}.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(job_main())
