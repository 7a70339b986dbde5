"""Time `python -m hpc status` on studies of 2,000 and 20,000 trials built by bulk insert.

A local sweep of one synthetic trial creates the study and `sweep.json`; `bulk_study` then
adds finished trials with SQL. For each size it prints the SQL statements of one status
call, the median time of the status data in this process (5 calls), and the wall time of
the command `python -m hpc status --json` (interpreter start included).

Run from the repository root against a PostgreSQL server (no password in the URL):
    .venv/bin/python benchmarks/status_scale.py --storage postgresql+psycopg2://USER@HOST/DB \
        [--sizes 2000 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bulk_study import add_finished_trials, delete_trials  # noqa: E402

from hpc.status import collect_status  # noqa: E402
from hpc.storage import create_engine, optuna_storage, user_schema  # noqa: E402
from hpc.sweep import SweepRequest, close_storage, load_started_sweep, open_storage  # noqa: E402

CONFIG = {
    "model": {"lr": 0.1, "depth": 3},
    "tuning": {
        "output_dir": "results",
        "checkpoint_dir": "checkpoint",
        "n_trials": 1,
        "metric": "ner.micro.f",
        "hyperparameters": {
            "model.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "model.depth": {"type": "int", "low": 1, "high": 8},
        },
    },
    "hpc": {
        "workers": 1,
        "executor": "local",
        "objective": "synthetic",
        "synthetic": {"duration_s": 0.0, "steps": 1},
    },
}
REPEATS = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="PostgreSQL URL without a password")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    args = parser.parse_args()
    repo = Path(__file__).resolve().parents[1]

    with tempfile.TemporaryDirectory(prefix="hpc-bench-status-") as folder:
        config = json.loads(json.dumps(CONFIG))
        config["hpc"]["sweep_name"] = f"bench-status-{int(time.time())}"
        (Path(folder) / "config.yml").write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(repo)}
        subprocess.run(
            [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml",
             "--storage", args.storage],
            cwd=folder, check=True, capture_output=True, env=env,
        )  # fmt: skip
        os.chdir(folder)
        request = SweepRequest(config_path=Path("config.yml"), storage=args.storage)
        sweep = load_started_sweep(request)
        storage = open_storage(sweep, request, create=False)
        engine = create_engine(args.storage, user_schema())
        rdb = optuna_storage(args.storage, user_schema(), create_tables=False)
        distributions = (
            optuna.load_study(study_name=sweep.study_name, storage=rdb).trials[0].distributions
        )
        rows = []
        total = 1
        try:
            for size in sorted(args.sizes):
                started = time.perf_counter()
                add_finished_trials(engine, sweep.study_name, size - total, distributions)
                insert_s = time.perf_counter() - started
                total = size
                statements, data = _count_statements(lambda: collect_status(sweep, storage))
                times = []
                for _ in range(REPEATS):
                    started = time.perf_counter()
                    collect_status(sweep, storage)
                    times.append(time.perf_counter() - started)
                started = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "hpc", "status", "--config", "config.yml", "--json"],
                    check=True, capture_output=True, env=env,
                )  # fmt: skip
                command_s = time.perf_counter() - started
                assert data["trials"]["finished"] == size, data["trials"]
                rows.append((size, statements, statistics.median(times), command_s, insert_s))
        finally:
            # Rows first, in bulk: Optuna deletes a study's trials one by one.
            delete_trials(engine, sweep.study_name)
            optuna.delete_study(study_name=sweep.study_name, storage=rdb)
            engine.dispose()
            close_storage(storage)

    print(f"{'trials':>8} {'statements':>10} {'status data':>12} {'status --json':>14} "
          f"{'bulk insert':>12}")  # fmt: skip
    for size, statements, median_s, command_s, insert_s in rows:
        print(
            f"{size:>8} {statements:>10} {median_s * 1000:>9.0f} ms {command_s:>12.2f} s "
            f"{insert_s:>10.2f} s"
        )
    print(f"status data: median of {REPEATS} calls in this process; status --json: one command")
    print(f"Rerun: .venv/bin/python benchmarks/status_scale.py --storage URL --sizes "
          f"{' '.join(map(str, args.sizes))}")  # fmt: skip


def _count_statements(call: Any) -> tuple[int, Any]:
    seen = []

    def record(*_: Any) -> None:
        seen.append(1)

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    try:
        result = call()
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    return len(seen), result


if __name__ == "__main__":
    main()
