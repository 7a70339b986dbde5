"""Scheduling efficiency of hpc-tune's workers beside plain Optuna workers and a batch loop.

Every mode runs the same trial durations against one PostgreSQL, with `--per-worker` trials
per worker as the target. The durations are lognormal (median 2 s, sigma 0.6, clipped to 0.5
to 10 s) and drawn once from `--seed`, so trial number i sleeps durations[i] in every mode:

- `hpc`: `python -m hpc sweep` on the local executor with the synthetic plug-in: atomic
  claims, heartbeats, duplicate checks, one child process per trial.
- `optuna`: W plain Optuna processes sharing one study, stopping as `MaxTrialsCallback` does
  (after their own trial, once the study has the target's number of complete trials).
- `batch`: one process that asks W trials, runs them in W threads, waits for all, tells W.

Per mode and worker count it prints the efficiency E = trial time / (workers x wall time),
with and without start-up (from the first trial's start to the last one's end), the trials
started against the target, the ask (claim) and tell latencies p50/p99, the peak number of
connections to the database and of those kept idle, and the CPU time per trial spent outside
the objective (the objectives sleep, so all the CPU time of the processes counts). Figures go
to a JSON file.
The wall time of `hpc` ends when its last worker records its end: the report that the command
then writes (the finalize job's work on Slurm, which holds no GPU) is printed apart.

Run from the repository root against a PostgreSQL server (no password in the URL):
    .venv/bin/python benchmarks/scheduling.py --storage postgresql+psycopg2://USER@HOST/DB \
        [--workers 1 4 16] [--modes hpc optuna batch] [--per-worker 8] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
MODES = ("hpc", "optuna", "batch")
PARAMS = {"x": (0.0, 1.0), "y": (0.0, 1.0), "z": (0.0, 1.0)}


def durations(count: int, seed: int) -> list[float]:
    """Draw the trial durations shared by every mode."""
    rng = random.Random(seed)
    return [min(10.0, max(0.5, rng.lognormvariate(0.6931, 0.6))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="PostgreSQL URL without a password")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--per-worker", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/scheduling.json"))
    args = parser.parse_args()

    from hpc.storage import ensure_schema, optuna_storage, user_schema

    # The tables exist before any mode runs, whichever comes first.
    ensure_schema(args.storage, user_schema())
    optuna_storage(args.storage, user_schema(), create_tables=True)
    rows = []
    for workers in args.workers:
        target = workers * args.per_worker
        times = durations(target * 2, args.seed)
        for mode in args.modes:
            row = run_mode(mode, args.storage, workers, target, times)
            rows.append(row)
            print(_line(row), flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    args.json.write_text(json.dumps({"commit": commit, "rows": rows}, indent=2) + "\n")
    print(f"Figures: {args.json} (commit {commit})")
    print(
        "Rerun: .venv/bin/python benchmarks/scheduling.py --storage URL --workers "
        f"{' '.join(map(str, args.workers))} --modes {' '.join(args.modes)} "
        f"--per-worker {args.per_worker} --seed {args.seed}"
    )


def run_mode(mode: str, url: str, workers: int, target: int, times: list[float]) -> dict[str, Any]:
    """Run one mode; return its figures."""
    name = f"bench-{mode}-{workers}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory(prefix="hpc-bench-sched-") as folder:
        monitor = ConnectionMonitor(url)
        monitor.start()
        cpu_before = _children_cpu_s()
        started = time.monotonic()
        if mode == "hpc":
            study, latencies = _run_hpc(url, Path(folder), name, workers, target, times)
        elif mode == "optuna":
            study, latencies = _run_optuna(url, Path(folder), name, workers, target, times)
        else:
            study, latencies = _run_batch(url, name, workers, target, times)
        wall_s = time.monotonic() - started
        # hpc-tune's workers end before the command, which then writes the report (on Slurm,
        # the finalize job does, without a GPU): the GPUs are free from the last worker's end.
        after_s = latencies.pop("after_workers_s", [0.0])[0]
        wall_s -= after_s
        cpu_s = _children_cpu_s() - cpu_before + (latencies.pop("own_cpu_s", [0.0])[0])
        peak = monitor.stop()
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.datetime_start is not None and "duplicate_of" not in t.user_attrs
    ]
    finished = [t for t in trials if t.datetime_complete is not None]
    # Trial time is the objective's own time: a batch's trials stay open in the database
    # until its slowest one ends, which is the waste being measured, not trial time.
    busy_s = sum(times[t.number % len(times)] for t in finished)
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in finished)
    span_s = (last - first).total_seconds()
    complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    optuna.delete_study(study_name=study.study_name, storage=study._storage)
    return {
        "mode": mode,
        "workers": workers,
        "target": target,
        "started": len(trials),
        "complete": complete,
        "wall_s": round(wall_s, 2),
        "after_workers_s": round(after_s, 2),
        "efficiency": round(busy_s / (workers * wall_s), 3),
        "efficiency_without_startup": round(busy_s / (workers * span_s), 3),
        "ask_ms": _percentiles(latencies.get("ask", [])),
        "tell_ms": _percentiles(latencies.get("tell", [])),
        "peak_connections": peak,
        "peak_idle_connections": monitor.peak_idle,
        "cpu_s_per_trial": round(cpu_s / max(1, len(trials)), 3),
    }


def _run_hpc(
    url: str, folder: Path, name: str, workers: int, target: int, times: list[float]
) -> tuple[optuna.Study, dict[str, list[float]]]:
    slow_trials = {str(i): round(d, 3) for i, d in enumerate(times)}
    config = synthetic_config(name, workers, target, {"steps": 1, "slow_trials": slow_trials})
    (folder / "config.yml").write_text(json.dumps(config))
    subprocess.run(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml", "--storage", url],
        cwd=folder,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    ended = time.time()
    study = optuna.load_study(study_name=f"{name}.phase1", storage=_storage(url))
    after_s = ended - last_worker_end(url, name)
    # A claim's latency: from a worker's previous trial end (its result recorded) to its next
    # trial's start; the tell is inside the trial's recorded end.
    by_worker: dict[Any, list[optuna.trial.FrozenTrial]] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.datetime_start):
        by_worker.setdefault(trial.user_attrs.get("worker"), []).append(trial)
    gaps = [
        (b.datetime_start - a.datetime_complete).total_seconds() * 1000
        for runs in by_worker.values()
        for a, b in zip(runs, runs[1:], strict=False)
        if a.datetime_complete is not None
    ]
    return study, {"ask": gaps, "after_workers_s": [after_s]}


def last_worker_end(url: str, sweep_name: str) -> float:
    """Return when the last worker of a sweep recorded its end, as a Unix time."""
    from hpc import tables
    from hpc.storage import create_engine, user_schema

    engine = create_engine(url, user_schema())
    try:
        with engine.connect() as connection:
            ended = connection.execute(
                sqlalchemy.select(sqlalchemy.func.max(tables.workers_table.c.ended_at)).where(
                    tables.workers_table.c.sweep_name == sweep_name
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return float(ended.timestamp())


def synthetic_config(
    name: str, workers: int, target: int, synthetic: dict[str, Any]
) -> dict[str, Any]:
    """Build the config of a local sweep of `target` synthetic trials on PARAMS."""
    return {
        "model": {parameter: 0.5 for parameter in PARAMS},
        "tuning": {
            "output_dir": "results",
            "checkpoint_dir": "checkpoint",
            "n_trials": target,
            "pruner": None,
            "metric": "ner.micro.f",
            "hyperparameters": {
                f"model.{p}": {"type": "float", "low": low, "high": high}
                for p, (low, high) in PARAMS.items()
            },
        },
        "hpc": {
            "sweep_name": name,
            "workers": workers,
            "executor": "local",
            "objective": "synthetic",
            "synthetic": synthetic,
        },
    }


def _run_optuna(
    url: str, folder: Path, name: str, workers: int, target: int, times: list[float]
) -> tuple[optuna.Study, dict[str, list[float]]]:
    optuna.create_study(study_name=name, storage=_storage(url), direction="maximize")
    times_file = folder / "times.json"
    times_file.write_text(json.dumps(times))
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--optuna-worker",
                url,
                name,
                str(target),
                str(times_file),
                str(folder / f"latency-{index}.json"),
            ],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for index in range(workers)
    ]
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"plain Optuna worker exited with {process.returncode}")
    latencies: dict[str, list[float]] = {"ask": [], "tell": []}
    for path in folder.glob("latency-*.json"):
        for key, values in json.loads(path.read_text()).items():
            latencies[key].extend(values)
    return optuna.load_study(study_name=name, storage=_storage(url)), latencies


def optuna_worker(url: str, name: str, target: int, times_file: str, out: str) -> None:
    """Run one plain Optuna process: TPE with constant liar, stop rule of MaxTrialsCallback."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    times = json.loads(Path(times_file).read_text())
    study = optuna.load_study(
        study_name=name,
        storage=_plain_storage(url),
        sampler=optuna.samplers.TPESampler(constant_liar=True, seed=os.getpid()),
    )
    asks, tells = [], []
    complete = (optuna.trial.TrialState.COMPLETE,)
    while len(study.get_trials(deepcopy=False, states=complete)) < target:
        start = time.perf_counter()
        trial = study.ask()
        values = [trial.suggest_float(p, low, high) for p, (low, high) in PARAMS.items()]
        asks.append((time.perf_counter() - start) * 1000)
        time.sleep(times[trial.number % len(times)])
        start = time.perf_counter()
        study.tell(trial, -sum((v - 0.3) ** 2 for v in values))
        tells.append((time.perf_counter() - start) * 1000)
    Path(out).write_text(json.dumps({"ask": asks, "tell": tells}))


def _run_batch(
    url: str, name: str, workers: int, target: int, times: list[float]
) -> tuple[optuna.Study, dict[str, list[float]]]:
    cpu_start = time.process_time()
    study = optuna.create_study(
        study_name=name,
        storage=_plain_storage(url),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(constant_liar=True, seed=0),
    )
    asks, tells = [], []
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while done < target:
            batch = []
            for _ in range(min(workers, target - done)):
                start = time.perf_counter()
                trial = study.ask()
                values = [trial.suggest_float(p, low, high) for p, (low, high) in PARAMS.items()]
                asks.append((time.perf_counter() - start) * 1000)
                batch.append((trial, values))
            list(pool.map(lambda item: time.sleep(times[item[0].number]), batch))
            for trial, values in batch:
                start = time.perf_counter()
                study.tell(trial, -sum((v - 0.3) ** 2 for v in values))
                tells.append((time.perf_counter() - start) * 1000)
            done += len(batch)
    return study, {"ask": asks, "tell": tells, "own_cpu_s": [time.process_time() - cpu_start]}


class ConnectionMonitor:
    """Sample the connections to the benchmark's database every 0.2 s.

    `peak` is the maximum number of connections seen at once. `peak_idle` is the maximum of
    those idle for over a second, as a pool keeps them between operations; a connection being
    closed after its last statement is idle for milliseconds only. `at_peak` counts the
    states of the connections at the peak.
    """

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        self.peak = 0
        self.peak_idle = 0
        self.at_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()
        return self.peak

    def _run(self) -> None:
        query = sqlalchemy.text(
            "SELECT coalesce(state, 'starting') AS state, left(query, 60) AS query, "
            "state = 'idle' AND now() - state_change > interval '1 second' AS kept "
            "FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        while not self._stop.is_set():
            with self.engine.connect() as connection:
                rows = connection.execute(query).all()
            self.peak_idle = max(self.peak_idle, sum(bool(row.kept) for row in rows))
            if len(rows) > self.peak:
                self.peak = len(rows)
                self.at_peak = {}
                for row in rows:
                    key = f"{row.state}: {row.query}"
                    self.at_peak[key] = self.at_peak.get(key, 0) + 1
            self._stop.wait(0.2)


def _storage(url: str) -> optuna.storages.RDBStorage:
    """hpc-tune's storage: no connection pool, the user's schema."""
    from hpc.storage import optuna_storage, user_schema

    return optuna_storage(url, user_schema(), create_tables=False)


def _plain_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's storage as a plain user opens it (its default pool), in the same schema."""
    from hpc.storage import user_schema

    separator = "&" if "?" in url else "?"
    return optuna.storages.RDBStorage(
        f"{url}{separator}options=-csearch_path%3D{user_schema()}", skip_table_creation=True
    )


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"p50": round(statistics.median(ordered), 1), "p99": round(p99, 1)}


def _line(row: dict[str, Any]) -> str:
    ask = row["ask_ms"] or {"p50": float("nan"), "p99": float("nan")}
    tell = row["tell_ms"] or {"p50": float("nan"), "p99": float("nan")}
    return (
        f"{row['mode']:>6} W={row['workers']:<3} E={row['efficiency']:.2f} "
        f"(no start-up {row['efficiency_without_startup']:.2f}) "
        f"trials {row['started']}/{row['target']} complete {row['complete']} "
        f"ask p50/p99 {ask['p50']:.0f}/{ask['p99']:.0f} ms "
        f"tell p50/p99 {tell['p50']:.0f}/{tell['p99']:.0f} ms "
        f"peak connections {row['peak_connections']} (idle {row['peak_idle_connections']}) "
        f"CPU/trial {row['cpu_s_per_trial']:.2f} s wall {row['wall_s']:.0f} s"
        + (f" (then report {row['after_workers_s']:.0f} s)" if row["after_workers_s"] else "")
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--optuna-worker":
        optuna_worker(*sys.argv[2:4], int(sys.argv[4]), *sys.argv[5:7])
    else:
        main()
