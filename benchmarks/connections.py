"""Many lightweight workers against a PostgreSQL server left at `max_connections=100`.

Plain Optuna keeps two pooled connections per process, so about 50 workers use up such a
server. hpc-tune's workers keep none between operations and take the claim lock without
waiting on a connection, so 128 of them should run without a connection error. This runs a
local sweep of `--workers` workers with the synthetic plug-in (each trial sleeps
`--duration` seconds, `--per-worker` trials per worker), samples the server's connections every
0.2 s, and checks the trial count, the workers' logs and their exit reasons.

Run from the repository root against a server of its own (no password in the URL):
    HPC_TUNE_TEST_PGPORT=55433 HPC_TUNE_TEST_PGPREFIX=/tmp/hpc-tune-bench-pg \\
        HPC_TUNE_TEST_PGMAXCONN=100 bash scripts/test-postgres.sh start
    .venv/bin/python benchmarks/connections.py \\
        --storage postgresql+psycopg2://postgres@127.0.0.1:55433/hpc_tune_test [--workers 128]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduling import (  # noqa: E402
    REPO,
    ConnectionMonitor,
    _storage,
    last_worker_end,
    synthetic_config,
)

# Error messages of PostgreSQL and psycopg2 when the server has no connection slot left.
SLOT_ERRORS = re.compile(r"too many clients|remaining connection slots|connection slots are")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="PostgreSQL URL without a password")
    parser.add_argument("--workers", type=int, default=128)
    parser.add_argument("--per-worker", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per trial")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/connections.json"))
    args = parser.parse_args()

    from hpc.storage import ensure_schema, optuna_storage, user_schema

    ensure_schema(args.storage, user_schema())
    optuna_storage(args.storage, user_schema(), create_tables=True)
    max_connections = _setting(args.storage, "max_connections")
    reserved = _setting(args.storage, "superuser_reserved_connections")
    name = f"bench-connections-{uuid.uuid4().hex[:6]}"
    target = args.workers * args.per_worker
    with tempfile.TemporaryDirectory(prefix="hpc-bench-conn-") as folder:
        synthetic = {"steps": 1, "duration_s": args.duration}
        config = synthetic_config(name, args.workers, target, synthetic)
        (Path(folder) / "config.yml").write_text(json.dumps(config))
        monitor = ConnectionMonitor(args.storage)
        monitor.start()
        started = time.time()
        command = subprocess.run(
            [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml"]
            + ["--storage", args.storage],
            cwd=folder,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        peak = monitor.stop()
        logs = list((Path(folder) / "checkpoint" / "jobs").rglob("*.log"))
        logs += list((Path(folder) / "checkpoint" / "jobs").rglob("*.err"))
        texts = [path.read_text(errors="replace") for path in logs]
        slot_errors = sum(len(SLOT_ERRORS.findall(text)) for text in texts)
        slot_errors += len(SLOT_ERRORS.findall(command.stdout + command.stderr))
    wall_s = last_worker_end(args.storage, name) - started
    study = optuna.load_study(study_name=f"{name}.phase1", storage=_storage(args.storage))
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    reasons = _exit_reasons(args.storage, name)
    row = {
        "workers": args.workers,
        "max_connections": max_connections,
        "superuser_reserved_connections": reserved,
        "peak_connections": peak,
        "peak_idle_connections": monitor.peak_idle,
        "connections_at_peak": monitor.at_peak,
        "target": target,
        "trials": len(states),
        "complete": complete,
        "connection_slot_errors": slot_errors,
        "sweep_exit_code": command.returncode,
        "worker_exit_reasons": reasons,
        "wall_s": round(wall_s, 1),
    }
    optuna.delete_study(study_name=study.study_name, storage=study._storage)
    print(
        f"{args.workers} workers, server max_connections={max_connections} "
        f"({reserved} reserved for superusers): peak {peak} connections "
        f"({monitor.peak_idle} idle for over a second at most), "
        f"trials {len(states)}/{target} complete {complete}, "
        f"connection-slot errors {slot_errors}, sweep exit code {command.returncode}, "
        f"worker ends {reasons}, workers' wall {wall_s:.0f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(row, indent=2) + "\n")
    print(f"Figures: {args.json}")
    print(
        "Rerun: .venv/bin/python benchmarks/connections.py --storage URL "
        f"--workers {args.workers} --per-worker {args.per_worker} --duration {args.duration:g}"
    )
    ok = command.returncode == 0 and slot_errors == 0 and complete == target
    if not ok:
        sys.stderr.write(command.stdout[-3000:] + command.stderr[-3000:])
        sys.exit(1)


def _setting(url: str, name: str) -> int:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return int(connection.execute(sqlalchemy.text(f"SHOW {name}")).scalar_one())
    finally:
        engine.dispose()


def _exit_reasons(url: str, sweep_name: str) -> dict[str, int]:
    from hpc import tables
    from hpc.storage import create_engine, user_schema

    engine = create_engine(url, user_schema())
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.select(tables.workers_table.c.exit_reason).where(
                    tables.workers_table.c.sweep_name == sweep_name
                )
            ).all()
    finally:
        engine.dispose()
    counts: dict[str, int] = {}
    for (reason,) in rows:
        key = (reason or "not recorded").split(" (")[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


if __name__ == "__main__":
    main()
