"""Job and worker ids added to every log line of a process."""

from __future__ import annotations

import logging

LOG_CONTEXT: dict[str, str] = {}


class ContextFilter(logging.Filter):
    """Add the job id and worker number of this process to each record as `context`."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = [f"{key} {value}" for key, value in LOG_CONTEXT.items()]
        record.context = " ".join(parts) or f"pid {record.process}"
        return True
