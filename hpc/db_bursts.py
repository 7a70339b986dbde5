"""One database connection per burst of operations, none between bursts.

A claim or a trial's end runs a dozen storage operations in a row (ask, parameters, user
attributes, tell). Opening a connection for each costs a PostgreSQL backend start every time,
under the claim's lock. Keeping a pool open would instead leave an idle connection per worker,
and 128 workers would then use up a server's `max_connections=100`.

So the worker's Optuna storage has a pool of one connection that is closed whenever it
returns to the pool outside a burst: inside `with held(storage):` the operations share one
connection, and after the block no connection stays open.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import sqlalchemy
from sqlalchemy import event

_BURSTS: weakref.WeakKeyDictionary[sqlalchemy.Engine, _Bursts] = weakref.WeakKeyDictionary()


class _Bursts:
    """The burst depth of one engine and the closing of its connections outside bursts."""

    def __init__(self, engine: sqlalchemy.Engine) -> None:
        self.engine = engine
        self.depth = 0
        # Whether the pool contains an open connection returned during a burst.
        self.kept = False
        self.lock = threading.Lock()
        event.listen(engine, "checkin", self._on_checkin)

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None:
            return
        if self.depth == 0:
            # Closes the DBAPI connection; the pool opens a new one at the next checkout.
            record.invalidate()
            self.kept = False
        else:
            self.kept = True

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self.lock:
            self.depth += 1
        try:
            yield
        finally:
            with self.lock:
                self.depth -= 1
                last = self.depth == 0
            if last and self.kept:
                # Check the idle connection out and in again, which closes it.
                with self.engine.connect():
                    pass


def close_between_bursts(engine: sqlalchemy.Engine) -> None:
    """Make `engine` (a one-connection QueuePool) close each connection outside bursts."""
    if engine not in _BURSTS:
        _BURSTS[engine] = _Bursts(engine)


def held(engine: sqlalchemy.Engine) -> contextlib.AbstractContextManager[None]:
    """Share one connection among the operations of the block on `engine`.

    An engine not set up by `close_between_bursts` is left as it is.
    """
    bursts = _BURSTS.get(engine)
    return bursts.hold() if bursts is not None else contextlib.nullcontext()
