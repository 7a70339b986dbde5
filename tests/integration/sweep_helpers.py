"""Helpers of the integration tests that run sweeps: configs, jobs, trials, a cuttable relay."""

from __future__ import annotations

import copy
import json
import re
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy

from hpc import scheduler

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}

# The fixed shape of every hpc-tune log line (docs/checkpoint-dir.md).
LOG_LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ job=(?P<job>\S+) task=(?P<task>\S+) "
    r"worker=(?P<worker>\S+) trial=(?P<trial>\S+) (?P<name>[\w.]+): (?P<message>.*)$"
)

BASE_CONFIG: dict[str, Any] = {
    "model": {"lr": 0.1, "depth": 3},
    "tuning": {
        "output_dir": "results",
        "checkpoint_dir": "checkpoint",
        "n_trials": 4,
        "pruner": None,
        "metric": "ner.micro.f",
        "hyperparameters": {
            "model.lr": {"alias": "lr", "type": "float", "low": 1e-4, "high": 1.0, "log": True},
            "model.depth": {"type": "int", "low": 1, "high": 8},
        },
    },
    "hpc": {
        "workers": 1,
        "executor": "slurm",
        "objective": "synthetic",
        "synthetic": {"duration_s": 1.0},
        "heartbeat_s": 1,
        "heartbeat_grace_s": 5,
        "slurm": {
            "partition": "debug",
            "gpus_per_task": 1,
            "cpus_per_task": 1,
            "mem_gb": 1,
            "time_min": 10,
            "finalize": {"cpus_per_task": 1, "mem_gb": 1, "time_min": 10},
        },
    },
}


def skip_without_slurm() -> None:
    if not scheduler.controller_answers():
        pytest.skip("no Slurm controller answers: 'make test' starts one when run as root")


def write_config(folder: Path, n_trials: int, **hpc: Any) -> Path:
    """Write a synthetic sweep's config (JSON, which is YAML) with `hpc` keys overridden."""
    config = copy.deepcopy(BASE_CONFIG)
    config["tuning"]["n_trials"] = n_trials
    slurm = hpc.pop("slurm", {})
    config["hpc"].update(hpc)
    config["hpc"]["slurm"].update(slurm)
    path = folder / "config.yml"
    path.write_text(json.dumps(config, indent=2))
    return path


def run_hpc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpc", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def start_sweep(folder: Path, url: str) -> tuple[str, str]:
    """Run `hpc sweep` on Slurm and return the worker array's and the finalize job's ids."""
    result = run_hpc("sweep", "--config", "config.yml", "--storage", url, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return job_ids(result.stdout)


def job_ids(stdout: str) -> tuple[str, str]:
    array = stdout.split("array job ", 1)[1].split()[0]
    finalize = stdout.split("finalize: job ", 1)[1].split()[0]
    return array, finalize


def wait_for_jobs(ids: list[str], timeout_s: float = 300) -> list[scheduler.JobState]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = scheduler.query_jobs(ids)
        # sacct may list a job only a moment after its submission: wait until all are known.
        known = {state.job_id for state in states} | {state.display_id for state in states}
        if set(ids) <= known and all(state.state.split()[0] in TERMINAL for state in states):
            return states
        time.sleep(2)
    raise AssertionError(f"jobs {ids} did not end in {timeout_s} s: {scheduler.query_jobs(ids)}")


def load_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    from hpc.storage import optuna_storage, user_schema

    storage = optuna_storage(url, user_schema(), create_tables=False)
    [summary] = optuna.get_all_study_summaries(storage)
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    return sorted(trials, key=lambda trial: trial.number)


def finished(trials: list[optuna.trial.FrozenTrial]) -> int:
    """Count finished trials as budgets do: a failed trial that ran again counts once."""
    return sum(
        t.state.is_finished()
        and "retried_as" not in t.user_attrs
        and "duplicate_of" not in t.user_attrs
        for t in trials
    )


def wait_for_running_trial(
    url: str, folder: Path, number: int | None = None, timeout_s: float = 180
) -> optuna.trial.FrozenTrial:
    """Wait until a trial (trial `number` if given) runs in its worker, and return it."""
    deadline = time.monotonic() + timeout_s
    # Opening Optuna's storage writes version rows, which races with the tables' creation:
    # wait until the coordinator has written sweep.json after creating them.
    while not (folder / "checkpoint" / "sweep.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    while time.monotonic() < deadline:
        try:
            running = [
                t
                for t in load_trials(url)
                if t.state == optuna.trial.TrialState.RUNNING
                and (number is None or t.number == number)
                # Written last by the worker: the trial's owner and job are recorded.
                and "trial_dir" in t.user_attrs
            ]
        except (
            ValueError,
            KeyError,
            sqlalchemy.exc.SQLAlchemyError,
            optuna.exceptions.OptunaError,
        ):
            running = []
        if running:
            return running[0]
        time.sleep(0.5)
    raise AssertionError(f"no trial started running in {timeout_s} s")


def worker_pid(url: str, worker_id: int) -> int:
    from hpc.storage import create_engine, user_schema

    engine = create_engine(url, user_schema())
    with engine.connect() as connection:
        pid = connection.execute(
            sqlalchemy.text("SELECT pid FROM hpc_workers WHERE worker_id = :id"), {"id": worker_id}
        ).scalar_one()
    engine.dispose()
    return int(pid)


class TcpProxy:
    """A TCP relay on 127.0.0.1 in front of the test PostgreSQL, which a test can cut.

    While cut, open connections are closed and new ones are accepted and closed at once: to
    the workers behind it, the database is unreachable.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cut_off = threading.Event()
        self.closed = threading.Event()
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def cut(self) -> None:
        self.cut_off.set()
        with self.lock:
            for sock in self.sockets:
                _close(sock)
            self.sockets.clear()

    def restore(self) -> None:
        self.cut_off.clear()

    def close(self) -> None:
        self.closed.set()
        self.cut()
        _close(self.listener)

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.cut_off.is_set():
                _close(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            with self.lock:
                self.sockets.update((client, server))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        pair = {client: server, server: client}
        try:
            while not self.cut_off.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.2)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self.lock:
                self.sockets.discard(client)
                self.sockets.discard(server)
            _close(client)
            _close(server)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def sweep_jobs(checkpoint: Path) -> list[str]:
    """Return every job id the sweep recorded in `checkpoint/sweep.json`."""
    state = json.loads((checkpoint / "sweep.json").read_text())
    entries = state.get("submissions", [])
    return [job for entry in entries for job in (entry["workers"], entry["finalize"]) if job]


def wait_for_sweep_jobs(checkpoint: Path, timeout_s: float = 400) -> None:
    """Wait until every job the sweep recorded, including later submissions, has ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = sweep_jobs(checkpoint)
        states = scheduler.query_jobs(jobs)
        # sacct may list a job only a moment after its submission: wait until all are known.
        known = {state.job_id for state in states}
        if set(jobs) <= known and not [state for state in states if state.active]:
            time.sleep(1)
            if sweep_jobs(checkpoint) == jobs:
                return
        time.sleep(2)
    raise AssertionError(f"the sweep's jobs did not end in {timeout_s} s")


def worker_log_lines(checkpoint: Path) -> dict[str, list[re.Match[str]]]:
    """Parse each worker's own log file, asserting that every line has the fixed shape."""
    parsed = {}
    for path in sorted((checkpoint / "jobs" / "workers").glob("worker-*.log")):
        lines = path.read_text().splitlines()
        bad = [line for line in lines if not LOG_LINE.match(line)]
        assert not bad, f"{path}: lines not in the fixed shape: {bad[:3]}"
        parsed[path.name] = [match for line in lines if (match := LOG_LINE.match(line))]
    return parsed


def assert_trial_events(lines: list[re.Match[str]], retry_of_1: int) -> None:
    """Check the one line of each event of the synthetic failing trials 0, 1 and 2."""
    events = [
        (0, "Trial 0 failed after "),
        (0, "Trial 0 not retried: NonFiniteMetric"),
        (1, "Trial 1 started: "),
        (1, "Trial 1 failed after "),
        (1, "Trial 1 queued again as attempt 2 "),
        (retry_of_1, f"Trial {retry_of_1} started (attempt 2, retry of trial 1): "),
        (retry_of_1, f"Trial {retry_of_1} finished with value "),
        (2, "Trial 2 failed after "),
        (2, "Trial 2 queued again as attempt 2 "),
    ]
    for number, start in events:
        found = [m for m in lines if m["trial"] == str(number) and m["message"].startswith(start)]
        assert len(found) == 1, f"expected one line of trial {number} starting {start!r}"


def sbatch_all_cpus(partition: str, output: Path, seconds: int) -> str:
    """Submit a job that needs every CPU of the node (to preempt or hold off other jobs)."""
    cpus = subprocess.run(
        ["sinfo", "--noheader", "--format=%c"], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    return scheduler.run_scheduler(
        [
            "sbatch",
            "--parsable",
            f"--partition={partition}",
            f"--cpus-per-task={cpus}",
            "--mem=100M",
            f"--time={max(1, -(-seconds // 60))}",
            f"--output={output}",
            f"--wrap=sleep {seconds}",
        ]
    ).stdout.strip()


def statements_of(call: Any) -> tuple[list[str], Any]:
    """Run `call` and return the SQL statements every engine executed, with its result."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(" ".join(statement.split()))

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    try:
        result = call()
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", record)
    return seen, result


def statements_at_200_and_2000(
    folder: Path, url: str, call: Any
) -> tuple[tuple[list[str], Any], tuple[list[str], Any]]:
    """Run `call(sweep, storage)` on a sweep of 200, then 2,000 trials; return both statements.

    A local sweep of one synthetic trial in `folder` creates the study; the other trials are
    added by bulk insert (80 % complete, 10 % pruned, 10 % failed). The caller has changed
    into `folder`.
    """
    if str(REPO / "benchmarks") not in sys.path:
        sys.path.insert(0, str(REPO / "benchmarks"))
    from bulk_study import add_finished_trials

    from hpc.storage import create_engine, optuna_storage, user_schema
    from hpc.sweep import SweepRequest, close_storage, load_started_sweep, open_storage

    write_config(folder, n_trials=1, executor="local", synthetic={"duration_s": 0.1})
    result = run_hpc("sweep", "--config", "config.yml", "--storage", url, cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    request = SweepRequest(config_path=Path("config.yml"), storage=url)
    sweep = load_started_sweep(request)
    storage = open_storage(sweep, request, create=False)
    engine = create_engine(url, user_schema())
    study = optuna.load_study(
        study_name=sweep.study_name,
        storage=optuna_storage(url, user_schema(), create_tables=False),
    )
    distributions = study.trials[0].distributions
    try:
        add_finished_trials(engine, sweep.study_name, 199, distributions)
        small = statements_of(lambda: call(sweep, storage))
        add_finished_trials(engine, sweep.study_name, 1800, distributions)
        large = statements_of(lambda: call(sweep, storage))
    finally:
        engine.dispose()
        close_storage(storage)
    return small, large
