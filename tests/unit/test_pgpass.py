"""libpq's password file: matching lines, wildcards, escapes, modes and the fix to print."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from hpc import pgpass
from hpc.pgpass import ConnectionTarget

TARGET = ConnectionTarget("db.example", "5433", "optuna", "alice")


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("line", "matches"),
    [
        ("db.example:5433:optuna:alice:pw", True),
        ("*:*:*:*:pw", True),
        ("db.example:*:optuna:alice:pw", True),
        ("db.example:5432:optuna:alice:pw", False),
        ("db.example:5433:optuna:bob:pw", False),
        ("db.example:5433:other:alice:pw", False),
        # Only a bare `*` is a wildcard: an escaped one is the character itself.
        ("db.example:5433:\\*:alice:pw", False),
        ("db*:5433:optuna:alice:pw", False),
        ("# db.example:5433:optuna:alice:pw", False),
        # A line with no password field is skipped.
        ("db.example:5433:optuna:alice", False),
    ],
)
def test_find_entry_rules(tmp_path: Path, line: str, matches: bool) -> None:
    path = write(tmp_path / "pgpass", line + "\n")
    assert (pgpass.find_entry(path, TARGET) is not None) is matches


def test_escaped_colon_and_backslash(tmp_path: Path) -> None:
    target = ConnectionTarget("localhost", "5432", "a:b", "c\\d")
    path = write(tmp_path / "pgpass", "x:1:y:z:pw\nlocalhost:5432:a\\:b:c\\\\d:pw\n")
    entry = pgpass.find_entry(path, target)
    assert entry is not None
    assert entry.line_number == 2
    assert target.line() == "localhost:5432:a\\:b:c\\\\d:PASSWORD"


def test_target_from_url_and_environment() -> None:
    environ = {"PGHOST": "envhost", "PGPORT": "6000", "PGUSER": "envuser"}
    url = make_url("postgresql+psycopg2://alice@db.example:5433/optuna?sslmode=verify-full")
    assert pgpass.connection_target(url, environ) == TARGET
    bare = pgpass.connection_target(make_url("postgresql+psycopg2:///"), environ)
    assert bare == ConnectionTarget("envhost", "6000", "envuser", "envuser")


def test_default_socket_matches_localhost() -> None:
    url = make_url("postgresql+psycopg2://alice@/optuna?host=/var/run/postgresql")
    assert pgpass.connection_target(url, {}).host == "localhost"
    private = make_url("postgresql+psycopg2://alice@/optuna?host=/srv/pg")
    assert pgpass.connection_target(private, {}).host == "/srv/pg"


def test_password_file_location(tmp_path: Path) -> None:
    assert pgpass.password_file({"PGPASSFILE": "/x/pw", "HOME": "/h"}) == Path("/x/pw")
    assert pgpass.password_file({"HOME": "/h"}) == Path("/h/.pgpass")


def test_wide_mode_is_ignored_by_libpq(tmp_path: Path) -> None:
    path = write(tmp_path / "pgpass", "*:*:*:*:pw\n", mode=0o644)
    problem = pgpass.diagnose(TARGET, {"PGPASSFILE": str(path)})
    assert "mode 0644" in problem
    assert "libpq ignores" in problem
    assert f"chmod 0600 {path}" in problem


def test_diagnose_missing_file_and_line(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    problem = pgpass.diagnose(TARGET, {"PGPASSFILE": str(missing)})
    assert f"{missing} does not exist" in problem
    assert "db.example:5433:optuna:alice:PASSWORD" in problem

    path = write(tmp_path / "pgpass", "other:5433:optuna:alice:hunter2-secret\n")
    problem = pgpass.diagnose(TARGET, {"PGPASSFILE": str(path)})
    assert "has no line for db.example:5433:optuna:alice" in problem
    assert "hunter2-secret" not in problem


def test_diagnose_matching_line_is_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "pgpass", "db.example:5433:optuna:alice:pw\n", mode=0o400)
    assert pgpass.diagnose(TARGET, {"PGPASSFILE": str(path)}) == ""
