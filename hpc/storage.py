"""Storage URLs, engines and Optuna storages on PostgreSQL."""

from __future__ import annotations

import getpass
import logging
import os
import re
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from tuner.errors import ConfigError

logger = logging.getLogger(__name__)

STORAGE_ENV = "HPC_TUNE_STORAGE"
DRIVER = "postgresql+psycopg2"
# libpq connection parameters that carry a secret when put in a URL's query.
SECRET_QUERY_KEYS = ("password", "passfile", "sslpassword")


def parse_storage_url(url: str, source: str) -> URL:
    """Parse and check a PostgreSQL URL given by the user.

    Args:
        url: The SQLAlchemy URL.
        source: Where it came from, for messages (`hpc.storage`, `--storage`, ...).

    Raises:
        ConfigError: When the URL is malformed, not PostgreSQL, or contains a password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"{source}: invalid storage URL. Expected postgresql+psycopg2://USER@HOST[:PORT]/DATABASE."
        ) from None
    if parsed.password == "":
        parsed = parsed._replace(password=None)  # URL is a named tuple; set() keeps ""
    secret_keys = sorted(key for key in parsed.query if key.lower() in SECRET_QUERY_KEYS)
    if parsed.password is not None or secret_keys:
        where = "a password" if parsed.password is not None else f"the parameter {secret_keys[0]}"
        shown = hide_password(parsed.difference_update_query(secret_keys))
        raise ConfigError(
            f"{source}: the storage URL contains {where} ({shown}). Remove it from the URL and "
            "put the password in ~/.pgpass (mode 0600, line HOST:PORT:DATABASE:USER:PASSWORD) "
            "or in the file named by PGPASSFILE (PGPASSWORD works for local workers only: Slurm "
            "jobs never receive it)."
        )
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(
            f"{source}: {parsed.get_backend_name()!r} is not supported: hpc-tune keeps studies in "
            "PostgreSQL. Use postgresql+psycopg2://USER@HOST[:PORT]/DATABASE, or leave the storage "
            "unset to start the embedded server."
        )
    if parsed.get_driver_name() != "psycopg2":
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3, which is not installed.
        parsed = parsed.set(drivername=DRIVER)
    return parsed


def hide_password(url: URL | str) -> str:
    """Render a URL for logs and messages, with any password masked."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def user_schema(user: str | None = None) -> str:
    """Name of the schema holding one user's studies in a shared database.

    PostgreSQL 15 no longer lets ordinary roles create tables in `public`, and separate
    schemas keep users' studies apart.
    """
    name = re.sub(r"[^a-z0-9_]", "_", (user or getpass.getuser()).lower())
    return f"hpc_tune_{name}"[:63]


CONNECT_TIMEOUT_S = 10


def create_engine(url: URL | str, schema: str) -> sqlalchemy.Engine:
    """Create an engine that keeps no idle connection and works in `schema`.

    NullPool opens a connection per operation, so idle workers keep no connection open.
    """
    return sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=_connect_args(schema))


def ensure_schema(url: URL | str, schema: str) -> None:
    """Create the user's schema if needed; only the coordinator calls this."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    finally:
        engine.dispose()


def optuna_storage(url: URL | str, schema: str, create_tables: bool) -> optuna.storages.RDBStorage:
    """Open Optuna's storage on PostgreSQL in `schema`.

    Args:
        url: Storage URL.
        schema: Schema that contains Optuna's tables.
        create_tables: True in the coordinator only: concurrent first-time schema creation
            races on PostgreSQL, so workers only load existing tables.
    """
    rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    engine_kwargs: dict[str, Any] = {"poolclass": NullPool, "connect_args": _connect_args(schema)}
    return optuna.storages.RDBStorage(
        rendered, engine_kwargs=engine_kwargs, skip_table_creation=not create_tables
    )


def check_connection(url: URL, source: str) -> None:
    """Connect once, failing with the URL (no password) and what to check."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise ConfigError(
            f"{source}: cannot connect to {hide_password(url)}: {reason}. Check that the server "
            "runs and accepts this user, and that ~/.pgpass or PGPASSFILE holds the password."
        ) from None
    finally:
        engine.dispose()


def _connect_args(schema: str) -> dict[str, Any]:
    # A bounded connect and TCP keepalives: a server or network that went away fails the
    # operation within seconds instead of hanging, so the caller's retries can run.
    return {
        "options": f"-c search_path={schema}",
        "application_name": _application_name(),
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }


def _application_name() -> str:
    return f"hpc-tune pid {os.getpid()}"


def check_jobs_can_authenticate(url: URL | str) -> None:
    """Stop a Slurm submission whose jobs could not log in to the database.

    Jobs never receive PGPASSWORD (Slurm stores job environments). When the login node has it
    but no line of the password file matches the URL, every job would fail to connect.

    Raises:
        ConfigError: With the password file to fill and the line to add.
    """
    if not os.environ.get("PGPASSWORD"):
        return
    parsed = make_url(url) if isinstance(url, str) else url
    host = parsed.host or "localhost"
    port = str(parsed.port or 5432)
    user = parsed.username or getpass.getuser()
    database = parsed.database or user
    path = Path(os.environ.get("PGPASSFILE") or Path.home() / ".pgpass")
    if _pgpass_matches(path, (host, port, database, user)):
        return
    raise ConfigError(
        f"PGPASSWORD is set, but Slurm jobs never receive it and {path} has no line for "
        f"{host}:{port}:{database}:{user}, so every job would fail to connect. Add the line "
        f"'{host}:{port}:{database}:{user}:PASSWORD' to {path} (mode 0600), or set PGPASSFILE "
        "to such a file, then submit again."
    )


def _pgpass_matches(path: Path, wanted: tuple[str, str, str, str]) -> bool:
    """Return whether a libpq password file has a line for host, port, database and user."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [
            field.replace("\\:", ":").replace("\\\\", "\\") for field in re.split(r"(?<!\\):", line)
        ]
        if len(fields) < 5:
            continue
        if all(pattern in ("*", value) for pattern, value in zip(fields[:4], wanted, strict=True)):
            return True
    return False
