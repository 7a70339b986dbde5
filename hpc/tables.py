"""hpc-tune's own tables, next to Optuna's in the user's schema."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, func

metadata = MetaData()

# One row per worker process start: the row id is the worker number that seeds its sampler.
# Array task ids are not used because requeued and hand-submitted jobs reuse them.
workers_table = Table(
    "hpc_workers",
    metadata,
    Column("worker_id", Integer, primary_key=True, autoincrement=True),
    Column("sweep_name", String(128), nullable=False, index=True),
    Column("phase", Integer, nullable=False),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("started_at", DateTime(timezone=True), server_default=func.now(), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
    Column("exit_reason", String(255), nullable=True),
)


def create_tables(engine: sqlalchemy.Engine) -> None:
    """Create the tables if missing; only the coordinator calls this."""
    metadata.create_all(engine, checkfirst=True)


def register_worker(
    engine: sqlalchemy.Engine, sweep_name: str, phase: int, job_id: str | None
) -> int:
    """Insert a worker row and return its worker number."""
    with engine.begin() as connection:
        result = connection.execute(
            workers_table.insert()
            .values(
                sweep_name=sweep_name,
                phase=phase,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                job_id=job_id,
            )
            .returning(workers_table.c.worker_id)
        )
        return int(result.scalar_one())


def end_worker(engine: sqlalchemy.Engine, worker_id: int, reason: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            workers_table.update()
            .where(workers_table.c.worker_id == worker_id)
            .values(ended_at=func.now(), exit_reason=reason[:255])
        )


def dead_local_workers(engine: sqlalchemy.Engine, sweep_name: str) -> set[int]:
    """Return the numbers of this host's unfinished workers whose process no longer exists."""
    workers = _unfinished_local_workers(engine, sweep_name)
    return {worker_id for worker_id, pid in workers.items() if not process_exists(pid)}


def live_local_workers(engine: sqlalchemy.Engine, sweep_name: str) -> dict[int, int]:
    """Return worker number to pid for this host's unfinished workers that are alive."""
    workers = _unfinished_local_workers(engine, sweep_name)
    return {worker_id: pid for worker_id, pid in workers.items() if process_exists(pid)}


def _unfinished_local_workers(engine: sqlalchemy.Engine, sweep_name: str) -> dict[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.select(workers_table.c.worker_id, workers_table.c.pid).where(
                workers_table.c.sweep_name == sweep_name,
                workers_table.c.hostname == socket.gethostname(),
                workers_table.c.ended_at.is_(None),
            )
        ).all()
    return {int(row.worker_id): int(row.pid) for row in rows}


def mark_ended(engine: sqlalchemy.Engine, worker_ids: set[int], reason: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            workers_table.update()
            .where(workers_table.c.worker_id.in_(sorted(worker_ids)))
            .values(ended_at=func.now(), exit_reason=reason[:255])
        )


def process_exists(pid: int) -> bool:
    """Return whether `pid` is a live process; a zombie, killed but not yet reaped, is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust the signal check
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


@dataclass(frozen=True)
class WorkerRow:
    worker_id: int
    hostname: str
    pid: int
    job_id: str | None


def worker_rows(engine: sqlalchemy.Engine, worker_ids: set[int]) -> dict[int, WorkerRow]:
    """Return the rows of the given workers, by worker number."""
    if not worker_ids:
        return {}
    table = workers_table
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.select(
                table.c.worker_id, table.c.hostname, table.c.pid, table.c.job_id
            ).where(table.c.worker_id.in_(sorted(worker_ids)))
        ).all()
    return {
        int(row.worker_id): WorkerRow(int(row.worker_id), row.hostname, int(row.pid), row.job_id)
        for row in rows
    }


def unfinished_workers_with_jobs(
    engine: sqlalchemy.Engine, sweep_name: str
) -> dict[int, str | None]:
    """Return worker number to Slurm job id (`<array>_<task>` or `<job>`) for unended workers."""
    with engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.select(workers_table.c.worker_id, workers_table.c.job_id).where(
                workers_table.c.sweep_name == sweep_name,
                workers_table.c.ended_at.is_(None),
            )
        ).all()
    return {int(row.worker_id): row.job_id for row in rows}


@dataclass(frozen=True)
class WorkerUsage:
    """The workers of one phase of a sweep, from their rows."""

    workers: int
    hosts: tuple[str, ...]
    jobs: int
    held_s: float


def worker_usage(engine: sqlalchemy.Engine, sweep_name: str, phase: int) -> WorkerUsage:
    """Count a phase's worker runs, hosts and Slurm jobs, and the time they were held.

    A worker that has not ended (still running, or lost before it recorded its end) counts
    until now.
    """
    table = workers_table
    held = func.coalesce(
        func.sum(
            func.extract("epoch", func.coalesce(table.c.ended_at, func.now()) - table.c.started_at)
        ),
        0,
    )
    with engine.connect() as connection:
        row = connection.execute(
            sqlalchemy.select(
                func.count().label("workers"),
                func.array_agg(func.distinct(table.c.hostname)).label("hosts"),
                func.count(func.distinct(table.c.job_id)).label("jobs"),
                held.label("held_s"),
            ).where(table.c.sweep_name == sweep_name, table.c.phase == phase)
        ).one()
    return WorkerUsage(
        workers=int(row.workers),
        hosts=tuple(sorted(host for host in (row.hosts or []) if host)),
        jobs=int(row.jobs),
        held_s=float(row.held_s),
    )


SPACE_EXHAUSTED = "search space exhausted"


def space_exhausted(engine: sqlalchemy.Engine, sweep_name: str, phase: int) -> bool:
    """Return whether a worker of the phase ended because every sample repeated a trial."""
    table = workers_table
    with engine.connect() as connection:
        found = connection.execute(
            sqlalchemy.select(table.c.worker_id)
            .where(
                table.c.sweep_name == sweep_name,
                table.c.phase == phase,
                table.c.exit_reason.startswith(SPACE_EXHAUSTED),
            )
            .limit(1)
        ).first()
    return found is not None
