"""libpq's password file (`~/.pgpass` or `PGPASSFILE`): where it is, its lines, its mode.

The rules follow libpq's documentation ("The Password File") and its `passwordFromFile`.
Each line is `HOST:PORT:DATABASE:USER:PASSWORD`, and `*` as a whole field matches anything.
`\\:` and `\\\\` escape a colon and a backslash, and lines starting with `#` are comments.
The first matching line wins. libpq ignores the whole file when group or others have any
permission on it.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

PASSFILE_ENV = "PGPASSFILE"
DEFAULT_PORT = "5432"
# libpq matches `localhost` for a connection through its compiled-in socket folder. Upstream
# builds use /tmp and Debian's use /var/run/postgresql; which one the installed libpq uses
# cannot be read from Python, so both count.
DEFAULT_SOCKET_DIRS = ("/tmp", "/var/run/postgresql", "/run/postgresql")
# A bare `*` field of the password file, which matches any value.
WILDCARD = None


@dataclass(frozen=True)
class ConnectionTarget:
    """The four values that libpq matches against the lines of the password file."""

    host: str
    port: str
    database: str
    user: str

    def line(self) -> str:
        """Return the password file line for this target, with PASSWORD to fill in."""
        fields = (self.host, self.port, self.database, self.user)
        return ":".join(_escape(field) for field in fields) + ":PASSWORD"

    def describe(self) -> str:
        return f"{self.host}:{self.port}:{self.database}:{self.user}"


@dataclass(frozen=True)
class PasswordEntry:
    """The line of the password file that libpq uses for a target (1-based line number)."""

    path: Path
    line_number: int


def password_file(environ: Mapping[str, str] | None = None) -> Path:
    """Return the password file libpq reads: `PGPASSFILE`, else `.pgpass` in the home folder.

    libpq takes the home folder from `HOME` (checked with libpq 17) and falls back to the
    account's home folder when `HOME` is unset, as this function does.
    """
    environ = os.environ if environ is None else environ
    if environ.get(PASSFILE_ENV):
        return Path(environ[PASSFILE_ENV])
    home = environ.get("HOME") or pwd.getpwuid(os.geteuid()).pw_dir
    return Path(home) / ".pgpass"


def connection_target(url: URL, environ: Mapping[str, str] | None = None) -> ConnectionTarget:
    """Resolve host, port, database and user as libpq does for a URL and the environment.

    A value missing from the URL comes from its query (`host=`, `port=`, ...), then from
    `PGHOST`, `PGPORT`, `PGDATABASE` and `PGUSER`. Otherwise libpq's defaults apply: a local
    socket, port 5432, the login name of the process, and a database named like the user.
    NOTE: a URL with several hosts is matched on its first host only.
    """
    environ = os.environ if environ is None else environ
    query = {key: value if isinstance(value, str) else value[0] for key, value in url.query.items()}
    host = url.host or query.get("host") or environ.get("PGHOST") or ""
    host = host.split(",")[0]
    if not host or host in DEFAULT_SOCKET_DIRS:
        host = "localhost"
    port = str(url.port or query.get("port") or environ.get("PGPORT") or DEFAULT_PORT)
    user = (
        url.username
        or query.get("user")
        or environ.get("PGUSER")
        or pwd.getpwuid(os.geteuid()).pw_name
    )
    database = url.database or query.get("dbname") or environ.get("PGDATABASE") or user
    return ConnectionTarget(host, port.split(",")[0], database, user)


def find_entry(path: Path, target: ConnectionTarget) -> PasswordEntry | None:
    """Return the first line of `path` that matches `target`, or None (also when unreadable)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    wanted = (target.host, target.port, target.database, target.user)
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        patterns = _split_line(line)
        if patterns is None:
            continue
        pairs = zip(patterns, wanted, strict=True)
        if all(pattern is WILDCARD or pattern == value for pattern, value in pairs):
            return PasswordEntry(path, number)
    return None


def mode_problem(path: Path) -> str | None:
    """Explain why libpq would ignore the password file at `path`, or return None if it reads it.

    Returns None also when the file does not exist: the caller reports that case.
    """
    try:
        info = path.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a plain file, so libpq ignores it"
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = stat.S_IMODE(info.st_mode)
        return (
            f"{path} has mode {mode:04o}, and libpq ignores a password file that its group or "
            f"other users may access. Run: chmod 0600 {path}"
        )
    return None


def diagnose(target: ConnectionTarget, environ: Mapping[str, str] | None = None) -> str:
    """Explain why the password file gives no password for `target`, and what to change.

    Returns an empty string when the file exists, libpq reads it and a line matches.
    """
    path = password_file(environ)
    add_line = f"add the line '{target.line()}' to {path} (mode 0600)"
    if not path.exists():
        where = f"{PASSFILE_ENV} names {path}" if (environ or os.environ).get(PASSFILE_ENV) else ""
        missing = f"{path} does not exist" + (f" ({where})" if where else "")
        return f"{missing}: create it and {add_line}"
    problem = mode_problem(path)
    if problem is not None:
        return problem
    if find_entry(path, target) is None:
        return f"{path} has no line for {target.describe()}: {add_line}"
    return ""


def _escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace(":", "\\:")


def _split_line(line: str) -> tuple[str | None, ...] | None:
    """Split a line into its 4 match fields, with None for a bare `*`; None if too short.

    Only an unescaped `*` that is the whole field is a wildcard, as in libpq.
    """
    fields: list[str | None] = []
    current: list[str] = []
    raw: list[str] = []
    characters = iter(line)
    for character in characters:
        if character == "\\":
            escaped = next(characters, "")
            current.append(escaped)
            raw.append(character + escaped)
        elif character == ":":
            fields.append(None if "".join(raw) == "*" else "".join(current))
            if len(fields) == 4:
                return tuple(fields)
            current, raw = [], []
        else:
            current.append(character)
            raw.append(character)
    return None
