"""Embedded PostgreSQL server, started when the user gives no storage URL.

The server listens only on a Unix socket in a private folder (mode 0700, owned by the user
that runs the server), never on TCP. Local connections use ``trust`` authentication, so the
folder's mode is the access control: only that user and root can reach the socket. The data
folder stays on a local file system, because PostgreSQL on NFS or Lustre risks corruption.
Started as root (test machines only), the server runs as an unprivileged user and root
connects through the socket.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2

from hpc.embedded_pg_paths import (
    FALLBACK_DATA_BASE,
    PORT,
    PidFile,
    file_lock,
    find_bin_dir,
    fs_type_for_path,
    is_network_fs,
    read_pid_file,
    select_data_dir,
    socket_dir_for,
    socket_path_for,
)
from tuner.errors import HpcTuneError

logger = logging.getLogger(__name__)

DATABASE = "hpc_tune"
ROOT_FALLBACK_USER = "hpc-tune-pg"
# Appended to postgresql.conf, so that a server started by hand also stays off TCP.
SERVER_SETTINGS = (
    "listen_addresses = ''",
    "unix_socket_permissions = 0700",
    "max_connections = 200",
    "shared_buffers = 32MB",
)
_LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 16_384


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server and how to reach it.

    Attributes:
        data_dir: PostgreSQL data folder. It may lie outside the checkpoint directory, so
            callers record it (in sweep.json) and pass it back on later calls.
        socket_dir: private folder holding the Unix socket.
        bin_dir: folder of the initdb, pg_ctl and postgres executables used.
        os_user: operating-system user that runs the server.
        db_user: database superuser that clients connect as, without password.
        database: database holding the Optuna studies.
        url: SQLAlchemy URL of that database, through the socket.
        log_path: server log file.
    """

    data_dir: Path
    socket_dir: Path
    bin_dir: Path
    os_user: str
    db_user: str
    database: str
    url: str
    log_path: Path


def ensure_running(
    checkpoint_dir: Path,
    sweep_name: str,
    data_dir: Path | None = None,
    *,
    timeout_s: float = 120.0,
) -> EmbeddedServer:
    """Start the sweep's server unless it runs, after creating its data folder and database.

    Safe to call from several threads or processes at once: a file lock next to the data
    folder (``<data_dir>.lock``) lets one caller run initdb and start the server while the
    others wait. A postmaster.pid left by a killed server does not block the start.

    Args:
        checkpoint_dir: the sweep's checkpoint directory.
        sweep_name: the sweep's name, which names a fallback data folder.
        data_dir: data folder returned by an earlier call; None chooses one.
        timeout_s: limit in seconds for each step (lock, initdb, start).

    Raises:
        HpcTuneError: no server binaries, a private folder owned by another user, or a
            command that failed (the message carries the command, exit code and log tail).
    """
    started_at = time.monotonic()
    bin_dir = find_bin_dir()
    account = _server_account()
    if data_dir is None:
        data_dir = _default_data_dir(Path(checkpoint_dir), sweep_name, account)
    # Resolved, so that every caller derives the same socket folder from it.
    data_dir = Path(os.path.realpath(data_dir))
    server = _describe(data_dir, bin_dir, account)
    socket_path_for(server.socket_dir)
    if not data_dir.parent.exists():
        data_dir.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        _chown(data_dir.parent, account)

    with file_lock(_lock_path(data_dir), timeout_s):
        if not (data_dir / "PG_VERSION").exists():
            _initdb(server, account, timeout_s)
        _start_unless_running(server, account, timeout_s)
        _create_database(server)

    logger.info(
        "PostgreSQL ready at %s (data %s, pid %s) in %.2f s",
        server.url,
        data_dir,
        _running_pid(data_dir),
        time.monotonic() - started_at,
    )
    return server


def is_running(data_dir: Path) -> bool:
    """Return whether a live postgres process serves ``data_dir``, per its postmaster.pid."""
    return _running_pid(Path(data_dir)) is not None


def stop(server: EmbeddedServer, timeout_s: float = 60) -> None:
    """Stop the server with a fast shutdown, which rolls back open transactions.

    Does nothing when the server is not running.
    """
    if not server.data_dir.exists():
        return
    account = pwd.getpwnam(server.os_user)
    with file_lock(_lock_path(server.data_dir), timeout_s):
        if _running_pid(server.data_dir) is None:
            logger.info("PostgreSQL in %s is not running", server.data_dir)
            return
        _pg_ctl(server, account, ["stop", "-m", "fast", "-t", str(int(timeout_s))], timeout_s)
    logger.info("Stopped PostgreSQL in %s", server.data_dir)


def _describe(data_dir: Path, bin_dir: Path, account: pwd.struct_passwd) -> EmbeddedServer:
    socket_dir = socket_dir_for(data_dir, account.pw_uid)
    # initdb -U names the superuser after the operating-system user that runs the server.
    db_user = account.pw_name
    # The port names the socket file; it is explicit so that a PGPORT variable cannot change it.
    url = (
        f"postgresql+psycopg2://{quote(db_user, safe='')}@/{DATABASE}?host={socket_dir}&port={PORT}"
    )
    return EmbeddedServer(
        data_dir=data_dir,
        socket_dir=socket_dir,
        bin_dir=bin_dir,
        os_user=account.pw_name,
        db_user=db_user,
        database=DATABASE,
        url=url,
        log_path=data_dir / "server.log",
    )


def _lock_path(data_dir: Path) -> Path:
    return data_dir.with_name(data_dir.name + ".lock")


def _server_account() -> pwd.struct_passwd:
    """Return the current user; as root, `postgres` or `hpc-tune-pg` (created if missing)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    for name in ("postgres", ROOT_FALLBACK_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    command = [
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        ROOT_FALLBACK_USER,
    ]
    logger.info("Creating user %s to run PostgreSQL", ROOT_FALLBACK_USER)
    result = _run(command, timeout_s=60)
    try:
        # A concurrent caller may have created the user first, making this useradd fail.
        return pwd.getpwnam(ROOT_FALLBACK_USER)
    except KeyError:
        raise _command_error(command, result, None, "create the user by hand") from None


def _default_data_dir(checkpoint_dir: Path, sweep_name: str, account: pwd.struct_passwd) -> Path:
    preferred = Path(os.path.realpath(checkpoint_dir / "postgres"))
    existing = next(path for path in (preferred, *preferred.parents) if path.exists())
    try:
        mounts_text = Path("/proc/mounts").read_text()
    except OSError:
        mounts_text = ""
    fs_type = fs_type_for_path(existing, mounts_text)
    owner_uid = existing.stat().st_uid
    chosen = select_data_dir(
        checkpoint_dir,
        sweep_name,
        fs_type=fs_type,
        owner_uid=owner_uid,
        server_uid=account.pw_uid,
        server_user=account.pw_name,
    )
    if chosen == checkpoint_dir / "postgres":
        return chosen

    logger.info(
        "PostgreSQL data goes to %s: %s is on %s and owned by uid %d, while the server runs as %s",
        chosen,
        existing,
        fs_type,
        owner_uid,
        account.pw_name,
    )
    base_fs_type = fs_type_for_path(os.path.realpath(FALLBACK_DATA_BASE), mounts_text)
    if is_network_fs(base_fs_type):
        raise HpcTuneError(
            f"{FALLBACK_DATA_BASE} is on {base_fs_type}, not a local file system, so the "
            "embedded PostgreSQL has no safe data folder: set hpc.storage to a server URL."
        )
    _ensure_private_dir(chosen.parent, account)
    return chosen


def _ensure_private_dir(path: Path, account: pwd.struct_passwd) -> None:
    """Create ``path`` with mode 0700 owned by ``account``, or check an existing one."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    status = path.lstat()
    if status.st_uid == os.geteuid() != account.pw_uid:
        # Created by this process or a concurrent one of the same (root) user.
        _chown(path, account)
        status = path.lstat()
    if path.is_symlink() or not path.is_dir() or status.st_uid != account.pw_uid:
        raise HpcTuneError(
            f"{path} must be a folder owned by {account.pw_name}, but it is owned by uid "
            f"{status.st_uid} (or is not a folder): it is not hpc-tune's, remove or rename it."
        )
    if status.st_mode & 0o777 != 0o700:
        path.chmod(0o700)


def _chown(path: Path, account: pwd.struct_passwd) -> None:
    if os.geteuid() == 0 and account.pw_uid != 0:
        os.chown(path, account.pw_uid, account.pw_gid)


def _remove_if_stale(path: Path) -> PidFile | None:
    """Remove a lock file whose pid is stale, and return what it contained.

    PostgreSQL refuses to start while the pid in its lock files exists, even as a zombie
    that a slow init process has not reaped yet. Without the files, its shared-memory check
    still refuses to start while backends of a killed server are alive.
    """
    pid_file = read_pid_file(path)
    if pid_file is not None and pid_file.state == "stale":
        logger.warning("Removing stale %s: pid %d is not a running server", path, pid_file.pid)
        path.unlink(missing_ok=True)
    return pid_file


def _running_pid(data_dir: Path) -> int | None:
    pid_file = read_pid_file(data_dir / "postmaster.pid")
    return pid_file.pid if pid_file is not None and pid_file.state == "running" else None


def _start_unless_running(
    server: EmbeddedServer, account: pwd.struct_passwd, timeout_s: float
) -> None:
    socket_path = socket_path_for(server.socket_dir)
    pid_file = _remove_if_stale(server.data_dir / "postmaster.pid")
    _remove_if_stale(Path(f"{socket_path}.lock"))
    running = pid_file is not None and pid_file.state == "running"

    # postmaster.pid lines 5 and 6 hold the socket folder and the first TCP listen address.
    # A server started by hand elsewhere, or whose socket a /tmp cleaner removed, restarts.
    if (
        running
        and pid_file is not None
        and not (pid_file.lines[4:6] == (str(server.socket_dir), "") and socket_path.exists())
    ):
        logger.warning(
            "Restarting PostgreSQL in %s: it does not serve %s alone, without TCP",
            server.data_dir,
            socket_path,
        )
        _pg_ctl(server, account, ["stop", "-m", "fast", "-t", str(int(timeout_s))], timeout_s)
        running = False
    if running:
        return

    _ensure_private_dir(server.socket_dir, account)
    options = shlex.join(["-h", "", "-k", str(server.socket_dir), "-p", str(PORT)])
    arguments = [
        "start",
        "-w",
        "-t",
        str(int(timeout_s)),
        "-l",
        str(server.log_path),
        "-o",
        options,
    ]
    deadline = time.monotonic() + timeout_s
    while True:
        log_size = server.log_path.stat().st_size if server.log_path.exists() else 0
        try:
            _pg_ctl(server, account, arguments, timeout_s)
            return
        except HpcTuneError:
            # After a kill -9 of the postmaster, its backends exit within moments; until then
            # PostgreSQL reports "pre-existing shared memory block ... is still in use".
            try:
                with open(server.log_path, "rb") as log:
                    log.seek(log_size)
                    new_lines = log.read().decode(errors="replace")
            except OSError:
                new_lines = ""
            if "shared memory block" not in new_lines or time.monotonic() > deadline:
                raise
            logger.warning(
                "Backends of a killed server still run in %s; retrying in 1 s", server.data_dir
            )
            time.sleep(1)


def _initdb(server: EmbeddedServer, account: pwd.struct_passwd, timeout_s: float) -> None:
    """Create the cluster in a temporary sibling folder, then rename it into place, so that a
    killed initdb leaves no half-made data folder."""
    temporary = server.data_dir.with_name(server.data_dir.name + ".initdb-tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(mode=0o700)
    _chown(temporary, account)
    command = [
        str(server.bin_dir / "initdb"),
        "-D",
        str(temporary),
        "-U",
        server.db_user,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
    ]
    result = _run(command, account=account, timeout_s=timeout_s)
    if result.returncode != 0:
        raise _command_error(
            command,
            result,
            None,
            f"check that user {account.pw_name} can enter every parent folder of {server.data_dir}",
        )

    # Appending and truncating keep the files' owner, the server user.
    with open(temporary / "postgresql.conf", "a") as conf:
        conf.write("\n# Set by hpc-tune: Unix socket only, sized for small machines.\n")
        conf.write("\n".join(SERVER_SETTINGS) + "\n")
    # Only the local socket is accepted; the socket folder's mode 0700 limits who reaches it.
    (temporary / "pg_hba.conf").write_text("local all all trust\n")
    temporary.rename(server.data_dir)
    logger.info("Initialized a PostgreSQL data folder in %s", server.data_dir)


def _pg_ctl(
    server: EmbeddedServer, account: pwd.struct_passwd, arguments: list[str], timeout_s: float
) -> None:
    command = [str(server.bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-s", *arguments]
    # pg_ctl gives up after its own -t; the margin lets it report before it is killed.
    result = _run(command, account=account, timeout_s=timeout_s + 15)
    if result.returncode != 0:
        raise _command_error(command, result, server.log_path, "read the server log above")


def _create_database(server: EmbeddedServer) -> None:
    try:
        connection = psycopg2.connect(
            host=str(server.socket_dir),
            port=PORT,
            user=server.db_user,
            dbname="postgres",
            connect_timeout=10,
        )
    except psycopg2.OperationalError as error:
        tail = _log_tail(server.log_path)
        raise HpcTuneError(
            f"Could not connect to PostgreSQL at {server.socket_dir}: {error}"
            f"\nLast lines of {server.log_path}:\n" + "\n".join(tail)
        ) from error
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (server.database,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{server.database}"')
                logger.info("Created database %s", server.database)
    finally:
        connection.close()


def _run(
    command: list[str], *, account: pwd.struct_passwd | None = None, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as ``account`` (when it is another user), capturing its output.

    PG* variables are removed, so that the caller's PGPORT or PGDATA cannot change the server.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    as_user: dict[str, object] = {}
    if account is not None and os.geteuid() != account.pw_uid:
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    logger.debug("Running %s", shlex.join(command))
    try:
        # A new session keeps the server alive when the caller's terminal sends SIGINT.
        return subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
            cwd="/",
            start_new_session=True,
            **as_user,
        )  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as error:
        raise HpcTuneError(f"Timed out after {timeout_s:.0f} s: {shlex.join(command)}") from error
    except OSError as error:
        raise HpcTuneError(f"Could not run {shlex.join(command)}: {error}") from error


def _log_tail(log_path: Path) -> list[str]:
    try:
        with open(log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            return log.read().decode(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
    except OSError as error:
        return [f"(unreadable: {error})"]


def _command_error(
    command: list[str], result: subprocess.CompletedProcess[str], log_path: Path | None, fix: str
) -> HpcTuneError:
    output = (result.stdout + result.stderr).strip().splitlines()[-_LOG_TAIL_LINES:]
    lines = [f"Command failed with exit code {result.returncode}: {shlex.join(command)}", *output]
    if log_path is not None:
        lines += [f"Last lines of {log_path}:", *_log_tail(log_path)]
    lines.append(f"Fix: {fix}.")
    return HpcTuneError("\n".join(lines))
