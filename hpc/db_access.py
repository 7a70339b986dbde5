"""Hints for a connection or a schema that the site's PostgreSQL refuses: what to change.

The hints match phrases of libpq's first error line, as libpq 17 (the one in psycopg2-binary
2.9.13) words them; an unknown message gets the generic hint.
"""

from __future__ import annotations

import os
import re

from sqlalchemy.engine import URL

from hpc import pgpass

SSL_SETTINGS = (
    "Set sslmode and sslrootcert in the storage URL's query "
    "(?sslmode=verify-full&sslrootcert=/path/to/ca.crt) or in PGSSLMODE and PGSSLROOTCERT"
)


def connection_hint(reason: str, url: URL) -> str:
    """Return what to change for a failed connection, given libpq's first error line."""
    lowered = reason.lower()
    if "no password supplied" in lowered:
        return _password_hint(url)
    if "password authentication failed" in lowered:
        path = pgpass.password_file()
        return (
            f"The server rejected the password of {pgpass.connection_target(url).describe()}. "
            f"Correct it in {path}"
            + (" or in PGPASSWORD" if os.environ.get("PGPASSWORD") else "")
            + "."
        )
    if "certificate verify failed" in lowered:
        return (
            "The server's certificate is not signed by the certificate authority in sslrootcert "
            "(libpq's default is ~/.postgresql/root.crt). Point sslrootcert (URL query or "
            "PGSSLROOTCERT) to the CA certificate of the database's administrators."
        )
    if "does not match host name" in lowered:
        return (
            "With sslmode=verify-full the host of the URL must be a name the server's "
            "certificate lists: use that name as the host, not an alias or an IP address."
        )
    if "root certificate file" in lowered or "certificate file" in lowered:
        return f"{SSL_SETTINGS}, naming files that exist and that you can read."
    if "ssl off" in lowered or "no encryption" in lowered:
        return f"The server accepts this user over SSL only. {SSL_SETTINGS}."
    if "server does not support ssl" in lowered:
        return (
            "The server does not offer SSL. First check that the URL's host and port are the "
            "database's: another server may listen there. If they are, ask the database's "
            "administrators which SSL settings to use before you remove sslmode from the URL "
            "and PGSSLMODE."
        )
    role = re.search(r'role "([^"]*)" does not exist', reason)
    if role:
        return f"The server has no role {role.group(1)}: correct the user in the storage URL."
    if "no pg_hba.conf entry" in lowered or "pg_hba.conf rejects" in lowered:
        return (
            "The server's pg_hba.conf does not let this user log in to this database from "
            "this host: check the URL's user and database, or ask the database's administrators "
            "to allow them."
        )
    return (
        "Check that the server runs and accepts this user, and that ~/.pgpass or PGPASSFILE "
        "holds the password."
    )


def jobs_password_problem(url: URL) -> str:
    """Explain why a Slurm job, which never receives PGPASSWORD, would find no password.

    Returns an empty string when the password file gives one to the URL's user.
    """
    return pgpass.diagnose(pgpass.connection_target(url))


def schema_hint(schema: str, role: str, database: str) -> str:
    """Return what a user does when their role cannot create or use their schema."""
    return (
        f"hpc-tune keeps each user's studies in their own schema, here {schema}. Ask the "
        f"database's administrators to run: CREATE SCHEMA {schema} AUTHORIZATION {role}; "
        f"or to give the right to create schemas: GRANT CREATE ON DATABASE {database} TO {role};"
    )


def owned_schema_hint(schema: str, role: str, owner: str) -> str:
    """Return what a user does when the schema of their login belongs to another role."""
    return (
        f"hpc-tune names the schema after the Unix login (hpc_tune_<login>), so one login must "
        f"always connect as the same role. Use role {owner} in the storage URL, as the earlier "
        f"sweeps of this login did, or run hpc-tune from another Unix login."
    )


# libpq's messages for a refused login: waiting does not help, the settings must change.
AUTHENTICATION_FAILURES = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects",
    "authentication failed",
)


def is_authentication_failure(reason: str) -> bool:
    """Return whether libpq's error line means the server refused this user's login."""
    lowered = reason.lower()
    if any(phrase in lowered for phrase in AUTHENTICATION_FAILURES):
        return True
    return bool(re.search(r'\b(role|database) "[^"]*" does not exist', lowered))


def _password_hint(url: URL) -> str:
    target = pgpass.connection_target(url)
    problem = pgpass.diagnose(target)
    if not problem:
        return (
            f"{pgpass.password_file()} has a line for {target.describe()}, but libpq did not "
            "use it: check that the URL's host, port, database and user are the ones written "
            "in that line."
        )
    return f"The server asks for a password, but {problem}."
