"""Heartbeats of a running trial, written by a thread of the worker while its child trains.

Heartbeats go through Optuna's heartbeat storage API (`record_heartbeat`, the
`trial_heartbeats` table), with the database's clock. A failed write is logged once per
outage and retried at the next beat: the trial goes on, and reapers keep a stale trial
whose job still runs (see `hpc.reaper`).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from optuna.storages import RDBStorage

from hpc.db_retry import describe

logger = logging.getLogger(__name__)


class Heartbeat:
    """A context manager that records a trial's heartbeat every `interval_s` seconds."""

    def __init__(self, storage: RDBStorage, trial_id: int, number: int, interval_s: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.number = number
        self.interval_s = interval_s
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{number}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 30)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception as error:
                self.failures += 1
                if self.failures == 1:
                    logger.warning(
                        "Heartbeat of trial %d not recorded (%s); the trial goes on and "
                        "heartbeats are retried every %.0f s.",
                        self.number,
                        describe(error),
                        self.interval_s,
                    )
                continue
            if self.failures:
                logger.info(
                    "Heartbeat of trial %d recorded again after %d failed beats.",
                    self.number,
                    self.failures,
                )
                self.failures = 0
