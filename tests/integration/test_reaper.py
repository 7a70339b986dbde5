"""Stale-trial reaping on a real PostgreSQL with real processes (jobs are covered on Slurm)."""

from __future__ import annotations

import socket
import subprocess
import sys

import optuna
import pytest
import sqlalchemy

from hpc import tables
from hpc.reaper import reap_stale_trials, silent_trials
from hpc.storage import create_engine, ensure_schema, optuna_storage, user_schema

pytestmark = pytest.mark.integration
SWEEP = "reaper-test"


@pytest.fixture
def study_and_engine(database_url: str) -> tuple[optuna.Study, sqlalchemy.Engine]:
    schema = user_schema()
    ensure_schema(database_url, schema)
    storage = optuna_storage(database_url, schema, create_tables=True)
    engine = create_engine(database_url, schema)
    tables.create_tables(engine)
    study = optuna.create_study(study_name=f"{SWEEP}.phase1", storage=storage)
    return study, engine


def start_trial(
    study: optuna.Study, engine: sqlalchemy.Engine, worker: int, silent_s: float
) -> optuna.Trial:
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("worker", worker)
    study._storage.record_heartbeat(trial._trial_id)
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "UPDATE trial_heartbeats SET heartbeat = heartbeat - make_interval(secs => :s) "
                "WHERE trial_id = :id"
            ),
            {"s": silent_s, "id": trial._trial_id},
        )
    return trial


def set_worker(engine: sqlalchemy.Engine, worker: int, pid: int, hostname: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            tables.workers_table.update()
            .where(tables.workers_table.c.worker_id == worker)
            .values(pid=pid, hostname=hostname)
        )


def test_stale_trial_reaped_when_process_gone(
    study_and_engine: tuple[optuna.Study, sqlalchemy.Engine],
) -> None:
    study, engine = study_and_engine
    dead_pid = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_pid.wait()
    alive, dead, remote, fresh = (tables.register_worker(engine, SWEEP, 1, None) for _ in range(4))
    set_worker(engine, dead, dead_pid.pid, socket.gethostname())
    set_worker(engine, remote, 1, "another-node")

    kept_alive = start_trial(study, engine, alive, silent_s=60)
    lost_dead = start_trial(study, engine, dead, silent_s=60)
    lost_remote = start_trial(study, engine, remote, silent_s=60)
    kept_fresh = start_trial(study, engine, fresh, silent_s=0)

    stale = {t.number: t for t in silent_trials(engine, study.study_name, 30)}
    assert sorted(stale) == [kept_alive.number, lost_dead.number, lost_remote.number]
    assert stale[lost_dead.number].worker == dead
    assert stale[lost_dead.number].silent_s >= 59

    # A longer grace for trials outside Slurm on another host keeps the remote one.
    assert reap_stale_trials(engine, study, SWEEP, grace_s=30, unchecked_grace_s=120) == 1
    assert reap_stale_trials(engine, study, SWEEP, grace_s=30) == 1

    by_number = {t.number: t for t in study.get_trials()}
    running = optuna.trial.TrialState.RUNNING
    assert by_number[kept_alive.number].state == running
    assert by_number[kept_fresh.number].state == running
    for lost in (lost_dead, lost_remote):
        assert by_number[lost.number].state == optuna.trial.TrialState.FAIL
        assert "WorkerLost" in by_number[lost.number].user_attrs["error"]
    assert "is gone" in by_number[lost_dead.number].user_attrs["error"]
    assert "another-node" in by_number[lost_remote.number].user_attrs["error"]
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(
        [lost_dead.number, lost_remote.number]
    )
    engine.dispose()
