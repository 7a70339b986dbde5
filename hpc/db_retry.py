"""Bounded, jittered retries of database operations, so a worker rides out a short outage.

A worker's connections are opened per operation (NullPool), so after a server restart or a
`pg_terminate_backend` the next attempt simply connects again. A trial that finished while
the database was away records its value once the database responds. An outage longer than
`hpc.db_retry_s` ends the worker with an error that names the server and what to check. A
refused login (wrong password, unknown role, pg_hba.conf) ends it at once, with the fix.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from hpc import db_access
from tuner.errors import HpcTuneError

logger = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0


class DatabaseUnavailable(HpcTuneError):
    """The database did not respond within the worker's retry window."""


class DatabaseLoginRefused(DatabaseUnavailable):
    """The server refused the worker's login (password, role or pg_hba.conf): never retried."""


def is_authentication_error(error: BaseException) -> bool:
    """Return whether `error` is a refused login, which retrying cannot fix."""
    return is_connection_error(error) and db_access.is_authentication_failure(_first_line(error))


def is_connection_error(error: BaseException) -> bool:
    """Return whether `error` means the database could not be reached or dropped the link."""
    if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, optuna.exceptions.StorageInternalError):
        cause = error.__cause__
        return cause is not None and is_connection_error(cause)
    return False


def with_retries(
    operation: Callable[[], T],
    what: str,
    window_s: float,
    where: str = "the database",
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `operation`; while it fails to reach the database, retry for up to `window_s`.

    Delays double from 1 s to 30 s, each with up to 50% random jitter, so workers that lost
    the server together do not reconnect in one burst.

    Raises:
        DatabaseUnavailable: The database did not respond within `window_s`.
    """
    deadline = time.monotonic() + window_s
    delay = FIRST_DELAY_S
    attempt = 1
    while True:
        try:
            result = operation()
        except Exception as error:
            if not is_connection_error(error):
                raise
            if is_authentication_error(error):
                # A waiting worker keeps its GPUs allocated, so a rejected login stops it at once.
                raise DatabaseLoginRefused(
                    f"The database at {where} rejected the worker's login while it tried to "
                    f"{what}: {describe(error)}. {_login_hint(error, where)}"
                ) from error
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseUnavailable(
                    f"The database at {where} did not respond for {window_s:.0f} s while the "
                    f"worker tried to {what}: {describe(error)}. Check that the server runs "
                    "and accepts connections from this node (pg_hba.conf, max_connections), "
                    "then run 'python -m hpc resubmit --config CONFIG' on the login node."
                ) from error
            if attempt == 1:
                logger.warning(
                    "Cannot reach the database while trying to %s (%s); retrying for up to %.0f s.",
                    what,
                    describe(error),
                    window_s,
                )
            wait = min(delay * (1 + random.random() / 2), max(left, 0.1))
            sleep(wait)
            delay = min(delay * 2, MAX_DELAY_S)
            attempt += 1
            continue
        if attempt > 1:
            logger.info("The database responds again: %s done after %d attempts.", what, attempt)
        return result


def describe(error: BaseException) -> str:
    """Name the root cause of a database error in one line (Optuna wraps the driver's)."""
    root = _root(error)
    return f"{type(root).__name__}: {_first_line(error) or 'no message'}"


def _root(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.orig is not None:
        error = error.orig
    return error


def _first_line(error: BaseException) -> str:
    lines = str(_root(error)).strip().splitlines()
    return lines[0] if lines else ""


def _login_hint(error: BaseException, where: str) -> str:
    """Return db_access's fix for a refused login; `where` is the URL without password."""
    try:
        url = make_url(where)
    except ArgumentError:
        return "Check the user, database and password file of the storage URL."
    return db_access.connection_hint(_first_line(error), url)
