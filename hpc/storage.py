"""Storage URLs, engines and Optuna storages on PostgreSQL."""

from __future__ import annotations

import getpass
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool, QueuePool

from hpc import db_access, pgpass
from hpc.db_bursts import close_between_bursts
from tuner.errors import ConfigError

logger = logging.getLogger(__name__)

STORAGE_ENV = "HPC_TUNE_STORAGE"
DRIVER = "postgresql+psycopg2"
# libpq connection parameters that carry a secret when put in a URL's query.
SECRET_QUERY_KEYS = ("password", "passfile", "sslpassword")
# Connection parameters of libpq 17 (the one in psycopg2-binary 2.9.13), less the secret ones;
# libpq itself rejects any other name with 'invalid connection option'.
LIBPQ_PARAMETERS = (
    "host", "hostaddr", "port", "dbname", "user", "connect_timeout", "client_encoding",
    "options", "application_name", "fallback_application_name", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout",
    "replication", "gssencmode", "sslmode", "sslnegotiation", "sslcompression", "sslcert",
    "sslkey", "sslcertmode", "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer",
    "require_auth", "ssl_min_protocol_version", "ssl_max_protocol_version", "krbsrvname",
    "gsslib", "gssdelegation", "service", "target_session_attrs", "load_balance_hosts",
    "channel_binding",
)  # fmt: skip
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


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
    _check_query(parsed, source)
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


def _check_query(parsed: URL, source: str) -> None:
    """Reject query parameters that libpq does not know, and an invalid sslmode."""
    for key, value in parsed.query.items():
        if key not in LIBPQ_PARAMETERS:
            raise ConfigError(
                f"{source}: unknown connection parameter {key!r} in the storage URL's query. "
                f"libpq's parameters are: {', '.join(LIBPQ_PARAMETERS)}."
            )
        if key == "sslmode" and value not in SSLMODES:
            raise ConfigError(
                f"{source}: sslmode={value!r} in the storage URL is not a valid sslmode. Use one "
                f"of: {', '.join(SSLMODES)}."
            )


def hide_password(url: URL | str) -> str:
    """Render a URL for logs, messages and `sweep.json`, with any password masked.

    The query is shown decoded (`sslrootcert=/path/ca.crt`, not `%2Fpath%2Fca.crt`) when the
    decoded text parses back to the same URL, so the result stays a valid URL.
    """
    parsed = make_url(url) if isinstance(url, str) else url
    rendered = parsed.render_as_string(hide_password=True)
    base, question_mark, query = rendered.partition("?")
    if not question_mark:
        return rendered
    decoded = f"{base}?{unquote(query)}"
    try:
        same = make_url(decoded).query == parsed.query
    except ArgumentError:
        same = False
    return decoded if same else rendered


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
    """Create the user's schema if needed, closed to other roles; only the coordinator calls this.

    Raises:
        ConfigError: The role may not create the schema, or the schema exists and the role
            may not use it (another role owns it).
    """
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            role, database = connection.execute(
                sqlalchemy.text("SELECT current_user, current_database()")
            ).one()
            exists = connection.execute(
                sqlalchemy.text(
                    "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = :schema"
                ),
                {"schema": schema},
            ).first()
            connection.execute(sqlalchemy.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            if exists is None:
                # Other roles of a shared database get no access to this user's studies.
                connection.execute(sqlalchemy.text(f'REVOKE ALL ON SCHEMA "{schema}" FROM PUBLIC'))
            allowed = connection.execute(
                sqlalchemy.text(
                    "SELECT has_schema_privilege(:schema, 'USAGE')"
                    " AND has_schema_privilege(:schema, 'CREATE')"
                ),
                {"schema": schema},
            ).scalar_one()
    except sqlalchemy.exc.ProgrammingError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise ConfigError(
            f"Cannot create schema {schema} in {hide_password(url)}: {reason}. "
            + db_access.schema_hint(schema, _role_of(url), make_url(url).database or "")
        ) from None
    finally:
        engine.dispose()
    if not allowed:
        owner = exists[0] if exists is not None else "another role"
        raise ConfigError(
            f"Schema {schema} in {hide_password(url)} exists, and role {role} may not use it: "
            f"role {owner} owns it. " + db_access.owned_schema_hint(schema, role, owner)
        )


def optuna_storage(
    url: URL | str, schema: str, create_tables: bool, bursts: bool = False
) -> optuna.storages.RDBStorage:
    """Open Optuna's storage on PostgreSQL in `schema`.

    Args:
        url: Storage URL.
        schema: Schema that contains Optuna's tables.
        create_tables: True in the coordinator only: concurrent first-time schema creation
            races on PostgreSQL, so workers only load existing tables.
        bursts: Share one connection among the operations of a `db_bursts.held` block (the
            workers' claims and trial ends); outside such blocks, each operation still opens
            and closes its own connection.
    """
    rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
    engine_kwargs: dict[str, Any] = {"poolclass": NullPool, "connect_args": _connect_args(schema)}
    if bursts:
        # Overflow connections (a heartbeat during a burst) close when they return.
        engine_kwargs.update(poolclass=QueuePool, pool_size=1, max_overflow=-1)
    storage = optuna.storages.RDBStorage(
        rendered, engine_kwargs=engine_kwargs, skip_table_creation=not create_tables
    )
    if bursts:
        close_between_bursts(storage.engine)
    return storage


def check_connection(url: URL, source: str) -> None:
    """Connect once, failing with the URL (no password) and what to check."""
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 10})
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except sqlalchemy.exc.OperationalError as error:
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        raise ConfigError(
            f"{source}: cannot connect to {hide_password(url)}: {reason}. "
            + db_access.connection_hint(reason, url)
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

    Jobs never receive PGPASSWORD (Slurm stores job environments). When the login node has it,
    the jobs need a line for the URL in a password file that libpq reads.

    Raises:
        ConfigError: With the password file to fill, the line to add, or the mode to set.
    """
    if not os.environ.get("PGPASSWORD"):
        return
    parsed = make_url(url) if isinstance(url, str) else url
    problem = db_access.jobs_password_problem(parsed)
    if not problem:
        return
    raise ConfigError(
        "PGPASSWORD is set, but Slurm jobs never receive it and read the password file "
        f"instead, and {problem}. Without it every job would fail to connect to "
        f"{hide_password(parsed)}. Fix the password file, then submit again."
    )


def check_jobs_can_connect(url: URL) -> None:
    """Connect as a Slurm job will, without PGPASSWORD, to test the password file's password.

    Does nothing when PGPASSWORD is unset, because the login node's own check then used the
    password file already.

    Raises:
        ConfigError: The connection failed, with libpq's reason and the fix.
    """
    if not os.environ.get("PGPASSWORD"):
        return
    with _without_pgpassword():
        try:
            check_connection(url, "the password file")
        except ConfigError as error:
            raise ConfigError(
                "PGPASSWORD is set, but Slurm jobs never receive it and read the password file "
                f"instead, and connecting that way failed. {error}"
            ) from None


@contextmanager
def _without_pgpassword() -> Iterator[None]:
    """Hide PGPASSWORD from libpq for the block, so that it reads the password file."""
    saved = os.environ.pop("PGPASSWORD", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["PGPASSWORD"] = saved


def _role_of(url: URL | str) -> str:
    parsed = make_url(url) if isinstance(url, str) else url
    return pgpass.connection_target(parsed).user
