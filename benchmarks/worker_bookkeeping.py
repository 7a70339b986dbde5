"""Measure a worker's database bookkeeping per trial: claim, heartbeats, result, reaping.

Runs a local sweep of near-instant synthetic trials (no sleep, one validation step). The time
around them is then the worker's own cost: the claim under the advisory lock, the first
heartbeat and owner attributes, the stale-trial query, the fork of the trial child, and the
recording of the result. Figures come from the trials' start and end times in the study.

Run from the repository root against a PostgreSQL server (no password in the URL):
    .venv/bin/python benchmarks/worker_bookkeeping.py --storage postgresql+psycopg2://USER@HOST/DB \
        [--trials 100] [--workers 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from hpc.storage import optuna_storage, user_schema

CONFIG = {
    "model": {"lr": 0.1},
    "tuning": {
        "output_dir": "results",
        "checkpoint_dir": "checkpoint",
        "n_trials": 100,
        "metric": "ner.micro.f",
        "hyperparameters": {"model.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
    },
    "hpc": {
        "workers": 1,
        "executor": "local",
        "objective": "synthetic",
        "synthetic": {"duration_s": 0.0, "steps": 1},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="PostgreSQL URL without a password")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hpc-bench-") as folder:
        config = json.loads(json.dumps(CONFIG))
        config["tuning"]["n_trials"] = args.trials
        config["hpc"]["workers"] = args.workers
        config["hpc"]["sweep_name"] = f"bench-bookkeeping-{int(time.time())}"
        (Path(folder) / "config.yml").write_text(json.dumps(config))
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml"]
            + ["--storage", args.storage],
            cwd=folder,
            check=True,
            capture_output=True,
        )
        wall_s = time.monotonic() - started
        storage = optuna_storage(args.storage, user_schema(), create_tables=False)
        study = optuna.load_study(
            study_name=f"{config['hpc']['sweep_name']}.phase1", storage=storage
        )
        trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.datetime_start)

    inside_ms = [
        (t.datetime_complete - t.datetime_start).total_seconds() * 1000
        for t in trials
        if t.datetime_complete and t.datetime_start
    ]
    by_worker: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        by_worker.setdefault(trial.user_attrs["worker"], []).append(trial)
    between_ms = [
        (later.datetime_start - earlier.datetime_complete).total_seconds() * 1000
        for runs in by_worker.values()
        for earlier, later in itertools.pairwise(runs)
        if earlier.datetime_complete and later.datetime_start
    ]
    print(f"trials: {len(trials)}, workers: {args.workers}, whole sweep: {wall_s:.1f} s")
    _print("start to end of a trial (child fork, scores, result)", inside_ms)
    _print("end of a trial to start of the next (reap query, claim)", between_ms)
    print(
        "command: .venv/bin/python benchmarks/worker_bookkeeping.py --storage URL "
        f"--trials {args.trials} --workers {args.workers}"
    )


def _print(label: str, values_ms: list[float]) -> None:
    values = sorted(values_ms)
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    print(f"{label}: median {statistics.median(values):.0f} ms, p95 {p95:.0f} ms")


if __name__ == "__main__":
    main()
