"""Time the report and the finalize steps on studies of 2,000 and 20,000 trials.

Two local sweeps with the synthetic plug-in create the studies, `sweep.json` and the
checkpoint folders: a one-phase sweep, and a two-phase sweep that is then set back to the
end of its phase 1. `bulk_study` adds finished trials to them with SQL. For each size, each
step runs in a fresh Python process, as the command or the finalize job does:

- `report`: what `python -m hpc report` runs (`write_final_report`: summary, best config,
  every plot);
- `finalize`: `hpc.finalize.finalize` on the one-phase sweep (reap, then the report);
- `promote`: `hpc.finalize.finalize` on the two-phase sweep at the end of phase 1 (reap,
  importance, top half, frozen values, phase-2 study with its enqueued first trial), with
  the Slurm submission of phase 2 replaced by a stub.

Per step it prints the time of the step itself (imports done before) and the wall time of
the whole process. It also prints the SQL statements of the step, the peak resident memory of
the process (`ru_maxrss`), and the size of the largest HTML file of the report, which must
stay under 1 MB.

Run from the repository root against a PostgreSQL server (no password in the URL):
    .venv/bin/python benchmarks/report_scale.py --storage postgresql+psycopg2://USER@HOST/DB \
        [--sizes 2000 20000] [--json benchmarks/results/report_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

HYPERPARAMETERS = {
    "model.lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    "model.depth": {"type": "int", "low": 1, "high": 8},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "model.width": {"type": "int", "low": 64, "high": 1024, "step": 64},
    "model.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True},
    "model.warmup": {"type": "float", "low": 0.0, "high": 0.2},
}
CONFIG = {
    "model": {
        "lr": 0.1,
        "depth": 3,
        "dropout": 0.1,
        "width": 256,
        "weight_decay": 0.01,
        "warmup": 0.1,
    },
    "tuning": {
        "output_dir": "results",
        "checkpoint_dir": "checkpoint",
        "n_trials": 1,
        "metric": "ner.micro.f",
        "hyperparameters": HYPERPARAMETERS,
    },
    "hpc": {
        "workers": 1,
        "executor": "local",
        "objective": "synthetic",
        "synthetic": {"duration_s": 0.0, "steps": 1},
    },
}
HTML_LIMIT_BYTES = 1_000_000
STEPS = ("report", "finalize", "promote")
# The sweep each step runs on: the one-phase sweep, or the two-phase one at the end of phase 1.
STEP_SWEEP = {"report": "one", "finalize": "one", "promote": "two"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="PostgreSQL URL without a password")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument(
        "--json",
        type=Path,
        default=REPO / "benchmarks" / "results" / "report_scale.json",
        help="where to write the figures as JSON",
    )
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.folder, args.storage)
        return

    started = time.perf_counter()
    rows = _measure(args.storage, sorted(args.sizes))
    total_s = time.perf_counter() - started
    _print_table(rows)
    command = (
        f".venv/bin/python benchmarks/report_scale.py --storage URL --sizes "
        f"{' '.join(map(str, args.sizes))}"
    )
    print(f"Total: {total_s:.0f} s. Rerun: {command}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "command": command,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg(),
        "total_s": total_s,
        "rows": rows,
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"Figures written to {args.json}")


def _measure(storage_url: str, sizes: list[int]) -> list[dict[str, Any]]:
    """Create both sweeps, grow their studies to each size and run every step on them."""
    import optuna
    from bulk_study import add_finished_trials, delete_trials

    from hpc.storage import create_engine, optuna_storage, user_schema

    rows = []
    stamp = int(time.time())
    with tempfile.TemporaryDirectory(prefix="hpc-bench-report-") as root:
        folders = {"one": Path(root) / "one", "two": Path(root) / "two"}
        names = {"one": f"bench-report-{stamp}", "two": f"bench-report-two-{stamp}"}
        _start_sweep(folders["one"], names["one"], storage_url, two_phase=False)
        _start_sweep(folders["two"], names["two"], storage_url, two_phase=True)
        engine = create_engine(storage_url, user_schema())
        rdb = optuna_storage(storage_url, user_schema(), create_tables=False)
        studies = {"one": f"{names['one']}.phase1", "two": f"{names['two']}.phase1"}
        distributions = (
            optuna.load_study(study_name=studies["one"], storage=rdb).trials[0].distributions
        )
        total = {"one": 1, "two": 1}
        try:
            for size in sizes:
                for sweep in ("one", "two"):
                    add_finished_trials(engine, studies[sweep], size - total[sweep], distributions)
                    total[sweep] = size
                for step in STEPS:
                    sweep = STEP_SWEEP[step]
                    if step == "promote":
                        _back_to_phase_one(folders["two"], names["two"], rdb)
                    row = _run_child(step, folders[sweep], storage_url)
                    row["trials"] = size
                    row["html_bytes"] = _html_sizes(folders[sweep], two_phase=sweep == "two")
                    rows.append(row)
                    print(_format_row(row), flush=True)
        finally:
            for name in names.values():
                for phase in (1, 2):
                    delete_trials(engine, f"{name}.phase{phase}")
                    try:
                        optuna.delete_study(study_name=f"{name}.phase{phase}", storage=rdb)
                    except KeyError:
                        pass
            engine.dispose()
    return rows


def _start_sweep(folder: Path, name: str, storage_url: str, two_phase: bool) -> None:
    """Run a local sweep of the synthetic plug-in: one trial, or one per phase."""
    folder.mkdir()
    config = json.loads(json.dumps(CONFIG))
    config["hpc"]["sweep_name"] = name
    if two_phase:
        config["tuning"]["two_phase_tuning"] = True
        config["tuning"]["n_trials"] = 2
    (folder / "config.yml").write_text(json.dumps(config))
    subprocess.run(
        [sys.executable, "-m", "hpc", "sweep", "--config", "config.yml", "--storage", storage_url],
        cwd=folder,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _back_to_phase_one(folder: Path, name: str, rdb: Any) -> None:
    """Set the two-phase sweep back to the end of its phase 1: no phase-2 study, no plan."""
    import optuna

    try:
        optuna.delete_study(study_name=f"{name}.phase2", storage=rdb)
    except KeyError:
        pass
    sweep_file = folder / "checkpoint" / "sweep.json"
    state = json.loads(sweep_file.read_text())
    state["phase"] = 1
    state["studies"] = {"1": f"{name}.phase1"}
    state.pop("phase_plan", None)
    sweep_file.write_text(json.dumps(state, indent=2))


def _run_child(step: str, folder: Path, storage_url: str) -> dict[str, Any]:
    """Run one step in a fresh process; return its figures and the process's wall time."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *("--child", step, "--folder", str(folder.resolve()), "--storage", storage_url),
    ]
    started = time.perf_counter()
    result = subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wall_s = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"step {step} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    return {"step": step, **row, "process_s": wall_s}


def _child(step: str, folder: Path, storage_url: str) -> None:
    """Run one step in this process and print its figures as one JSON line."""
    # The step's own lazy imports are done here, so its time is the work on the trials.
    import optuna.visualization  # noqa: F401
    import plotly.io  # noqa: F401
    import plotly.offline  # noqa: F401
    import sqlalchemy

    from hpc import finalize, site_fit, slurm_executor
    from hpc.coordinator import write_final_report
    from hpc.sweep import SweepRequest, close_storage, load_started_sweep, open_storage

    os.chdir(folder)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    # The phase-2 workers of `promote` are not submitted: the step ends where Slurm begins.
    site_fit.fit_sweep = _same_sweep
    slurm_executor.render_scripts = _no_scripts
    slurm_executor.submit = _no_submission
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    started = time.perf_counter()
    if step == "report":
        request = SweepRequest(config_path=Path("config.yml"), storage=storage_url)
        sweep = load_started_sweep(request)
        storage = open_storage(sweep, request, create=False)
        try:
            write_final_report(sweep, storage)
        finally:
            close_storage(storage)
    else:
        finalize.finalize(folder / "checkpoint")
    step_s = time.perf_counter() - started
    sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    if step == "promote":
        state = json.loads((folder / "checkpoint" / "sweep.json").read_text())
        if state.get("phase") != 2:
            raise RuntimeError(f"phase 1 was not promoted: sweep.json contains {state}")
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "step_s": step_s,
                "statements": len(statements),
                "peak_rss_mb": peak_kb / 1024,
                "rss_before_step_mb": before_kb / 1024,
            }
        )
    )


def _same_sweep(sweep: Any) -> Any:
    return sweep


def _no_scripts(sweep: Any, working_dir: Path) -> Any:
    return None


def _no_submission(sweep: Any) -> Any:
    return SimpleNamespace(array_job_id="not submitted", finalize_job_id="not submitted")


def _html_sizes(folder: Path, two_phase: bool) -> dict[str, int]:
    report = folder / "results" / ("phase_1" if two_phase else "")
    return {path.name: path.stat().st_size for path in sorted(report.glob("*.html"))}


HEADER = (
    f"{'trials':>7} {'step':<9} {'step':>8} {'process':>8} {'statements':>10} {'peak RSS':>9} "
    f"{'largest HTML':>13}"
)


def _format_row(row: dict[str, Any]) -> str:
    largest = max(row["html_bytes"].items(), key=lambda item: item[1], default=("none", 0))
    flag = "" if largest[1] < HTML_LIMIT_BYTES else "  OVER 1 MB"
    return (
        f"{row['trials']:>7} {row['step']:<9} {row['step_s']:>6.1f} s {row['process_s']:>6.1f} s "
        f"{row['statements']:>10} {row['peak_rss_mb']:>6.0f} MB {largest[1] / 1000:>6.0f} KB "
        f"({largest[0]}){flag}"
    )


def _print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(HEADER)
    for row in rows:
        print(_format_row(row))
    print(
        "step: the step in its process, imports done; process: the whole process, interpreter "
        "start included; peak RSS: ru_maxrss of that process."
    )


if __name__ == "__main__":
    main()
