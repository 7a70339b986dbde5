"""The embedded PostgreSQL server, run for real with the installed server binaries.

As root the server runs as the `postgres` user and keeps its data under /var/tmp; as another
user it keeps it in the checkpoint directory. Every server started here is stopped by pid.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pwd
import shutil
import signal
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy
from sqlalchemy.pool import NullPool

from hpc import embedded_pg
from hpc.embedded_pg_paths import fallback_data_dir, read_pid_file, socket_dir_for

pytestmark = pytest.mark.integration


def postmaster_pid(data_dir: Path) -> int:
    pid_file = read_pid_file(data_dir / "postmaster.pid")
    assert pid_file is not None, f"no postmaster.pid in {data_dir}"
    return pid_file.pid


def wait_until(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition still false after the timeout"
        time.sleep(0.02)


def stop_by_pid(data_dir: Path) -> None:
    """Stop the server of ``data_dir`` with SIGINT (fast shutdown), or SIGKILL after 30 s."""
    pid_file = read_pid_file(data_dir / "postmaster.pid")
    if pid_file is None or pid_file.state != "running":
        return
    os.kill(pid_file.pid, signal.SIGINT)
    try:
        wait_until(lambda: not embedded_pg.is_running(data_dir), timeout_s=30)
    except AssertionError:
        os.kill(pid_file.pid, signal.SIGKILL)


@pytest.fixture
def sweep(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A checkpoint directory and a unique sweep name; stops and removes the server after."""
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir(mode=0o700)
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield checkpoint, name

    if os.geteuid() != 0:
        server_users = [pwd.getpwuid(os.geteuid()).pw_name]
    else:
        server_users = ["postgres", embedded_pg.ROOT_FALLBACK_USER]
    fallbacks = [fallback_data_dir(name, user) for user in server_users]
    for data_dir in (checkpoint / "postgres", *fallbacks):
        if data_dir.exists():
            stop_by_pid(data_dir)
            socket_dir = socket_dir_for(data_dir, data_dir.stat().st_uid)
            shutil.rmtree(socket_dir, ignore_errors=True)
            shutil.rmtree(data_dir)
        shutil.rmtree(data_dir.with_name(data_dir.name + ".initdb-tmp"), ignore_errors=True)
        data_dir.with_name(data_dir.name + ".lock").unlink(missing_ok=True)


def test_data_kept_across_restart(sweep: tuple[Path, str]) -> None:
    checkpoint, name = sweep
    started_at = time.monotonic()
    server = embedded_pg.ensure_running(checkpoint, name)
    first_start_s = time.monotonic() - started_at
    if os.geteuid() == 0:
        assert server.os_user == "postgres"
        assert server.data_dir == Path("/var/tmp/hpc-tune-postgres") / name
    else:
        assert server.data_dir == checkpoint / "postgres"
    assert server.url.startswith(f"postgresql+psycopg2://{server.db_user}@/hpc_tune?host=/tmp/")

    engine = sqlalchemy.create_engine(server.url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE kept (x int)"))
        connection.execute(sqlalchemy.text("INSERT INTO kept VALUES (42)"))
    embedded_pg.stop(server)
    assert not embedded_pg.is_running(server.data_dir)
    embedded_pg.stop(server)  # stopping a stopped server does nothing

    started_at = time.monotonic()
    again = embedded_pg.ensure_running(checkpoint, name)
    restart_s = time.monotonic() - started_at
    assert again == server
    with engine.begin() as connection:
        assert connection.execute(sqlalchemy.text("SELECT x FROM kept")).scalar_one() == 42
    print(f"first start {first_start_s:.2f} s, restart {restart_s:.2f} s")


def listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A":  # TCP_LISTEN
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    links = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))
    return {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}


def test_socket_only_in_private_folder(sweep: tuple[Path, str]) -> None:
    server = embedded_pg.ensure_running(*sweep)
    status = server.socket_dir.lstat()
    assert stat.S_IMODE(status.st_mode) == 0o700
    assert status.st_uid == server.data_dir.stat().st_uid
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700

    engine = sqlalchemy.create_engine(server.url, poolclass=NullPool)
    with engine.connect() as connection:
        listen = connection.execute(sqlalchemy.text("SHOW listen_addresses")).scalar_one()
        socket_dirs = connection.execute(
            sqlalchemy.text("SHOW unix_socket_directories")
        ).scalar_one()
    assert listen == ""
    assert socket_dirs == str(server.socket_dir)

    # The postmaster has the Unix socket open, and no listening TCP socket.
    server_sockets = socket_inodes(postmaster_pid(server.data_dir))
    with open("/proc/net/unix") as unix_table:
        unix_inodes = {line.split()[6] for line in unix_table if str(server.socket_dir) in line}
    assert unix_inodes & server_sockets
    assert not listening_tcp_inodes() & server_sockets


def call_ensure_running(
    barrier: threading.Barrier, checkpoint: Path, name: str, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    barrier.wait(timeout=30)
    try:
        results.put(embedded_pg.ensure_running(checkpoint, name).url)
    except Exception as error:  # noqa: BLE001 - sent to the test, which fails on it
        results.put(repr(error))


def test_concurrent_calls_start_one_server(sweep: tuple[Path, str]) -> None:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    results = context.Queue()
    processes = [
        context.Process(target=call_ensure_running, args=(barrier, *sweep, results))
        for _ in range(3)
    ]
    for process in processes:
        process.start()
    urls = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)

    assert len(set(urls)) == 1, urls
    assert urls[0].startswith("postgresql+psycopg2://")
    server = embedded_pg.ensure_running(*sweep)
    log = server.log_path.read_text()
    assert log.count("database system is ready to accept connections") == 1


def test_concurrent_threads_start_one_server(sweep: tuple[Path, str]) -> None:
    servers: list[embedded_pg.EmbeddedServer] = []
    threads = [
        threading.Thread(target=lambda: servers.append(embedded_pg.ensure_running(*sweep)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(servers) == 3
    assert servers[0] == servers[1] == servers[2]
    log = servers[0].log_path.read_text()
    assert log.count("database system is ready to accept connections") == 1


def test_recovers_after_kill_9(sweep: tuple[Path, str]) -> None:
    server = embedded_pg.ensure_running(*sweep)
    engine = sqlalchemy.create_engine(server.url, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text("CREATE TABLE kept (x int)"))
        connection.execute(sqlalchemy.text("INSERT INTO kept VALUES (7)"))
    killed_pid = postmaster_pid(server.data_dir)

    os.kill(killed_pid, signal.SIGKILL)
    wait_until(lambda: not embedded_pg.is_running(server.data_dir))
    assert (server.data_dir / "postmaster.pid").exists()
    started_at = time.monotonic()
    recovered = embedded_pg.ensure_running(*sweep)
    print(f"restart after kill -9: {time.monotonic() - started_at:.2f} s")

    assert recovered == server
    assert postmaster_pid(server.data_dir) != killed_pid
    with engine.begin() as connection:
        assert connection.execute(sqlalchemy.text("SELECT x FROM kept")).scalar_one() == 7


def test_restart_waits_for_old_backends(
    sweep: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    server = embedded_pg.ensure_running(*sweep)
    connection = psycopg2.connect(
        host=str(server.socket_dir), port=5432, user=server.db_user, dbname=server.database
    )
    # A busy loop never waits on a latch, so this backend outlives its killed postmaster by
    # about 2 s and keeps the old shared memory attached.
    busy = threading.Thread(
        target=run_ignoring_errors,
        args=(
            connection,
            "DO $$ BEGIN WHILE clock_timestamp() < now() + interval '2 s' LOOP END LOOP; END $$",
        ),
    )
    busy.start()
    time.sleep(0.3)
    os.kill(postmaster_pid(server.data_dir), signal.SIGKILL)
    wait_until(lambda: not embedded_pg.is_running(server.data_dir))

    with caplog.at_level(logging.WARNING, logger="hpc.embedded_pg"):
        embedded_pg.ensure_running(*sweep)
    busy.join(timeout=30)
    assert "Backends of a killed server still run" in caplog.text
    assert embedded_pg.is_running(server.data_dir)


def run_ignoring_errors(connection: psycopg2.extensions.connection, statement: str) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    except psycopg2.Error:
        pass  # the server may end the session when it recovers
    finally:
        connection.close()
