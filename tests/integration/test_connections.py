"""Workers keep no database connection open between operations, and share one within a burst."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.pool import NullPool
from sweep_helpers import run_hpc

from hpc.db_bursts import held
from hpc.storage import ensure_schema, optuna_storage, user_schema

pytestmark = pytest.mark.integration

CONFIG = """\
model: {x: 0.5}
tuning:
  output_dir: results
  checkpoint_dir: checkpoint
  n_trials: 6
  metric: "ner.micro.f"
  hyperparameters:
    "model.x": {type: float, low: 0.0, high: 1.0}
hpc:
  workers: 3
  executor: local
  objective: synthetic
  heartbeat_s: 1
  heartbeat_grace_s: 10
  synthetic: {duration_s: 4, steps: 4}
"""

# Connections of hpc-tune processes open and idle for more than a second. A pooled connection
# kept between operations shows here; one being closed after its last statement does not.
_LINGERING_SQL = sqlalchemy.text(
    """
    SELECT application_name, state, left(query, 80) AS query
    FROM pg_stat_activity
    WHERE datname = current_database() AND application_name LIKE 'hpc-tune pid %'
      AND state LIKE 'idle%' AND now() - state_change > interval '1 second'
    """
)


def test_burst_shares_one_connection_and_closes_it(database_url: str) -> None:
    schema = user_schema()
    ensure_schema(database_url, schema)
    storage = optuna_storage(database_url, schema, create_tables=True, bursts=True)
    opened = []
    event.listen(storage.engine, "connect", lambda *_: opened.append(1))
    study = optuna.create_study(study_name="bursts", storage=storage)

    opened.clear()
    with held(storage.engine):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("worker", 1)
        study.tell(trial, 0.5)
    assert len(opened) == 1, "the operations of a burst should share one connection"
    assert _own_connections(database_url) == 0

    opened.clear()
    with held(storage.engine):
        pass
    assert opened == [], "a burst without operations should open nothing"

    opened.clear()
    study.get_trials()
    study.get_trials()
    assert len(opened) == 2, "outside a burst, each operation opens its own connection"
    assert _own_connections(database_url) == 0


def test_sweep_keeps_no_idle_connection(tmp_path: Path, database_url: str) -> None:
    (tmp_path / "config.yml").write_text(CONFIG)
    lingering: list[tuple[str, str, str]] = []
    samples = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal samples
        engine = sqlalchemy.create_engine(database_url, poolclass=NullPool)
        while not stop.is_set():
            with engine.connect() as connection:
                lingering.extend(tuple(row) for row in connection.execute(_LINGERING_SQL))
            samples += 1
            stop.wait(0.3)
        engine.dispose()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_hpc("sweep", "--config", "config.yml", "--storage", database_url, cwd=tmp_path)
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    # Trials of 4 s with a heartbeat every second, watched every 0.3 s.
    assert samples > 20
    assert lingering == []


def _own_connections(url: str) -> int:
    """Count the connections this test process still has open after up to a second.

    A closed connection's server process leaves pg_stat_activity a moment after the close.
    """
    query = sqlalchemy.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = :name AND pid <> pg_backend_pid()"
    )
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        for _ in range(10):
            with engine.connect() as connection:
                count = int(
                    connection.execute(query, {"name": f"hpc-tune pid {os.getpid()}"}).scalar_one()
                )
            if count == 0:
                break
            time.sleep(0.1)
        return count
    finally:
        engine.dispose()
