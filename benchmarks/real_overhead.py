"""Per-trial time outside EDS-NLP's `train()`: hpc-tune's worker beside `python -m edsnlp.tune`.

Both tools run the same config, a copy of the QUAERO example with absolute data paths, no
pruner and `--trials` trials, on the tiny random BERT (10 steps of 512-token batches):

- `hpc`: `python -m hpc sweep --executor local` with one worker. Each trial records
  `train_s`, the seconds its child spent inside `train()`.
- `edsnlp.tune`: `python -m edsnlp.tune` in a runner (this file, `--edsnlp-runner`) that wraps
  `edsnlp.training.trainer.train` to log each call's start and end. The trials' start and end
  come from the study that edsnlp.tune pickles in its checkpoint directory.

Per trial: wall = Optuna's end minus start; overhead = wall - time in `train()`; gap = from the
previous trial's end to this one's start (claim, recording, model deletion, checkpoint). The
overhead per trial is overhead + the gap after it. Start-up is from the command's launch (and,
for hpc, from the worker's first log line) to the first trial's start. edsnlp.tune resolves the
config for the first time in its first trial, so start-up + the first trial's overhead is the
figure that compares the two tools' one-time costs.

Run from the repository root after `make model`, against a PostgreSQL server:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_overhead.py \
        --storage postgresql+psycopg2://USER@HOST/DB [--trials 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "quaero"
MODEL = EXAMPLE / "models" / "tiny-bert"
TOOLS = ("hpc", "edsnlp.tune")
TARGET_OVERHEAD_S = 0.5
LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) ")
TRAIN_CALLS_ENV = "REAL_OVERHEAD_TRAIN_CALLS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--storage",
        default=os.environ.get("HPC_TUNE_TEST_STORAGE"),
        help="PostgreSQL URL without a password (default: $HPC_TUNE_TEST_STORAGE)",
    )
    parser.add_argument("--trials", type=int, default=5, help="trials per tool (default: 5)")
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/real_overhead.json")
    args = parser.parse_args()
    if "hpc" in args.tools and not args.storage:
        parser.error("--storage is missing: pass a PostgreSQL URL or set HPC_TUNE_TEST_STORAGE")
    if args.trials < 2:
        parser.error(f"--trials {args.trials}: at least 2 trials are needed to measure gaps")
    if not (MODEL / "config.json").is_file():
        sys.exit(f"The tiny BERT is missing at {MODEL}: run 'make model' first.")
    if "edsnlp.tune" in args.tools and importlib.util.find_spec("configobj") is None:
        # edsnlp 0.22's tune.py imports configobj, which edsnlp[ml] does not declare.
        sys.exit(
            "python -m edsnlp.tune needs configobj, which is not installed: run "
            "'.venv/bin/pip install configobj', or pass --tools hpc."
        )

    # Other processes on the machine slow both tools: the load average tells how much.
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    rows = []
    for tool in args.tools:
        with tempfile.TemporaryDirectory(prefix="hpc-bench-real-") as folder:
            name = f"bench-real-{uuid.uuid4().hex[:6]}"
            write_config(Path(folder), name, args.trials)
            if tool == "hpc":
                row = run_hpc(Path(folder), name, args.storage, args.trials)
            else:
                row = run_edsnlp_tune(Path(folder), args.trials)
        rows.append(row)
    total_s = time.monotonic() - started

    print_table(rows)
    command = (
        "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/real_overhead.py --storage URL "
        f"--trials {args.trials} --tools {' '.join(args.tools)}"
    )
    load_after = os.getloadavg()[0]
    print(
        f"Benchmark wall time: {total_s:.0f} s. Load average (1 minute): {load_before:.1f} "
        f"at the start, {load_after:.1f} at the end."
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    figures = {
        "commit": commit,
        "trials": args.trials,
        "cpus": os.cpu_count(),
        "wall_s": round(total_s, 1),
        "load_average_1m": [round(load_before, 2), round(load_after, 2)],
        "rows": rows,
    }
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"Figures: {args.json} (commit {commit})")
    print(f"Rerun: {command}")


def write_config(folder: Path, name: str, n_trials: int) -> Path:
    """Copy the example config into `folder`: absolute paths, `n_trials`, no pruner, 1 worker."""
    text = (EXAMPLE / "config.yml").read_text(encoding="utf-8")
    replacements = [
        ("'examples/quaero/", f"'{REPO}/examples/quaero/"),
        ("  n_trials: 6\n", f"  n_trials: {n_trials}\n  pruner: null\n"),
        ("  workers: 2\n", f"  workers: 1\n  sweep_name: {name}\n"),
        ("  executor: auto\n", "  executor: local\n"),
    ]
    for old, new in replacements:
        if old not in text:
            sys.exit(f"{EXAMPLE / 'config.yml'} no longer contains {old!r}: update write_config.")
        text = text.replace(old, new)
    path = folder / "config.yml"
    path.write_text(text, encoding="utf-8")
    return path


def _environment() -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }


def run_hpc(folder: Path, name: str, url: str, n_trials: int) -> dict[str, Any]:
    """Run the sweep with one local worker and return its figures."""
    import optuna

    from hpc.storage import optuna_storage, user_schema

    launched = time.time()
    command = [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml", "--storage", url]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=_environment())
    ended = time.time()
    if result.returncode != 0:
        sys.exit(f"hpc sweep failed (exit {result.returncode}):\n{result.stderr[-3000:]}")

    storage = optuna_storage(url, user_schema(), create_tables=False)
    study = optuna.load_study(study_name=f"{name}.phase1", storage=storage)
    frozen = _finished_trials(study.get_trials(deepcopy=False), n_trials)
    trials = [
        {
            "start": t.datetime_start.timestamp(),
            "end": t.datetime_complete.timestamp(),
            "train_s": t.user_attrs["train_s"],
            "host_s": t.user_attrs["duration_s"],
        }
        for t in frozen
    ]
    optuna.delete_study(study_name=study.study_name, storage=storage)

    [worker_log] = (folder / "checkpoint" / "quaero" / "jobs" / "workers").glob("worker-*.log")
    worker_started = _first_log_time(worker_log)
    row = _figures("hpc", launched, ended, trials)
    row["worker_startup_s"] = round(trials[0]["start"] - worker_started, 2)
    row["before_worker_s"] = round(worker_started - launched, 2)
    # The trial host's time outside train(): fork, config resolution, the child's exit.
    row["host_outside_train_s"] = _spread([t["host_s"] - t["train_s"] for t in trials])
    # The worker's own time in a trial, outside the trial host: sampling, attributes, tell.
    row["worker_in_trial_s"] = _spread([t["end"] - t["start"] - t["host_s"] for t in trials])
    return row


def run_edsnlp_tune(folder: Path, n_trials: int) -> dict[str, Any]:
    """Run `python -m edsnlp.tune` through the timing runner and return its figures."""
    import joblib

    checkpoint = folder / "checkpoint" / "quaero"
    checkpoint.mkdir(parents=True)  # edsnlp.tune does not create it
    calls_file = folder / "train_calls.jsonl"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--edsnlp-runner",
        "--config",
        "config.yml",
        "--keep_checkpoint",
        "true",
    ]
    launched = time.time()
    result = subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        env={**_environment(), TRAIN_CALLS_ENV: str(calls_file)},
    )
    ended = time.time()
    if result.returncode != 0:
        sys.exit(f"edsnlp.tune failed (exit {result.returncode}):\n{result.stderr[-3000:]}")

    study = joblib.load(checkpoint / "study.pkl")
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()]
    trials = []
    for trial in _finished_trials(study.trials, n_trials):
        start = trial.datetime_start.timestamp()
        end = trial.datetime_complete.timestamp()
        inside = [call for call in calls if start <= call["start"] and call["end"] <= end]
        if not inside:
            sys.exit(f"edsnlp.tune trial {trial.number}: no train() call between its start and end")
        trials.append(
            {"start": start, "end": end, "train_s": sum(c["end"] - c["start"] for c in inside)}
        )
    return _figures("edsnlp.tune", launched, ended, trials)


def _finished_trials(trials: list[Any], n_trials: int) -> list[Any]:
    finished = sorted(
        (t for t in trials if t.datetime_start is not None and t.datetime_complete is not None),
        key=lambda t: t.datetime_start,
    )
    if len(finished) != n_trials:
        states = [t.state.name for t in trials]
        sys.exit(f"expected {n_trials} finished trials, found {len(finished)}: {states}")
    return finished


def _figures(tool: str, launched: float, ended: float, trials: list[dict[str, Any]]) -> dict:
    walls = [t["end"] - t["start"] for t in trials]
    inside = [wall - t["train_s"] for wall, t in zip(walls, trials, strict=True)]
    gaps = [b["start"] - a["end"] for a, b in zip(trials, trials[1:], strict=False)]
    # The last trial has no gap after it: its overhead is its own.
    per_trial = [overhead + gap for overhead, gap in zip(inside, [*gaps, 0.0], strict=True)]
    return {
        "tool": tool,
        "trials": len(trials),
        "startup_s": round(trials[0]["start"] - launched, 2),
        # edsnlp.tune resolves the config for the first time inside its first trial.
        "startup_with_first_overhead_s": round(trials[0]["start"] - launched + inside[0], 2),
        "after_last_trial_s": round(ended - trials[-1]["end"], 2),
        "command_wall_s": round(ended - launched, 2),
        "train_s": _spread([t["train_s"] for t in trials]),
        "trial_wall_s": _spread(walls),
        "overhead_in_trial_s": _spread(inside),
        "gap_s": _spread(gaps),
        "overhead_per_trial_s": _spread(per_trial),
        "overhead_per_trial_all_s": [round(value, 3) for value in per_trial],
    }


def _spread(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3), "max": round(max(values), 3)}


def _first_log_time(log: Path) -> float:
    with log.open(encoding="utf-8") as lines:
        match = LOG_TIME.match(lines.readline())
    if match is None:
        sys.exit(f"{log}: the first line does not start with a timestamp")
    return dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'tool':<12} {'start-up':>9} {'+1st':>6} {'train()':>8} {'trial':>7} "
        f"{'in trial':>13} {'gap':>13} {'per trial':>13} {'after':>7}"
    )
    print("Seconds; start-up: launch to first trial; +1st: start-up + first trial's overhead;")
    print("train() and trial wall: p50; in trial: trial wall - train();")
    print("gap: previous trial's end to next start; per trial: in trial + gap after it (p50/max);")
    print("after: last trial's end to the command's exit (report, plots).")
    print(header)
    for row in rows:
        print(
            f"{row['tool']:<12} {row['startup_s']:>9.1f} "
            f"{row['startup_with_first_overhead_s']:>6.1f} {row['train_s']['p50']:>8.2f} "
            f"{row['trial_wall_s']['p50']:>7.2f} {_pair(row['overhead_in_trial_s']):>13} "
            f"{_pair(row['gap_s']):>13} {_pair(row['overhead_per_trial_s']):>13} "
            f"{row['after_last_trial_s']:>7.1f}"
        )
    for row in rows:
        if row["tool"] == "hpc":
            met = "met" if row["overhead_per_trial_s"]["p50"] < TARGET_OVERHEAD_S else "missed"
            print(
                f"hpc: launch to worker start {row['before_worker_s']:.1f} s (coordinator, "
                f"preflight), worker start to first trial {row['worker_startup_s']:.1f} s. "
                "In a trial, "
                f"p50/max: trial host outside train() {_pair(row['host_outside_train_s'])} s, "
                f"worker (sampling, attributes, tell) {_pair(row['worker_in_trial_s'])} s. "
                f"Target: per trial p50 < {TARGET_OVERHEAD_S} s: {met}."
            )


def _pair(spread: dict[str, float]) -> str:
    return f"{spread['p50']:.2f}/{spread['max']:.2f}"


def edsnlp_runner() -> None:
    """Run `python -m edsnlp.tune` with `train()` wrapped to log each call's start and end.

    edsnlp.tune 0.22 imports `train` from `edsnlp.training.trainer` inside each trial, so
    replacing the module's attribute reaches every call.
    """
    import edsnlp.training.trainer as trainer
    from edsnlp.tune import app

    original = trainer.train
    calls_path = os.environ[TRAIN_CALLS_ENV]

    def timed_train(*args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return original(*args, **kwargs)
        finally:
            with open(calls_path, "a", encoding="utf-8") as calls:
                calls.write(json.dumps({"start": start, "end": time.time()}) + "\n")

    trainer.train = timed_train
    sys.argv = ["edsnlp.tune", *sys.argv[2:]]
    app()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--edsnlp-runner":
        edsnlp_runner()
    else:
        main()
