"""Which failed trials run again: an error that would fail the same way again is not retried.

A trial's error arrives as `ErrorType: message`. Retrying repeats the same parameters and the
same training seed. An error caused by those (an invalid value, CUDA out of memory at that
batch size, a metric that is not a number) comes back on every attempt, so retrying it only
spends budget. Errors of the process or the machine (a killed process, a lost worker, an I/O
error) may pass, so they run again, up to `hpc.max_retries` times.
"""

from __future__ import annotations

from dataclasses import dataclass

# The user attribute of a failed trial queued to run again: budgets and the report count it
# once, through its retry.
RETRIED_ATTR = "retried_as"
# The user attribute of a sample closed at once because its values repeat an earlier trial.
DUPLICATE_ATTR = "duplicate_of"
# Error types raised by an invalid value or config: the same parameters raise them again.
DETERMINISTIC_TYPES = frozenset(
    {
        "ConfigError",
        "ConfitValidationError",
        "ValidationError",
        "MissingReference",
        "CyclicReferenceError",
        "TypeError",
        "NonFiniteMetric",
        "OutOfMemoryError",  # torch.cuda.OutOfMemoryError
    }
)
# Words in a message that mean the same parameters will fail again.
DETERMINISTIC_MESSAGES = (
    "CUDA out of memory",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "HIP out of memory",
)


@dataclass(frozen=True)
class RetryDecision:
    """Whether a failed trial runs again, and why, in words for the log."""

    retry: bool
    reason: str


def decide(error: str, attempt: int, max_retries: int) -> RetryDecision:
    """Decide whether a trial that failed with `error` on its `attempt`-th run runs again.

    Args:
        error: `ErrorType: message`, as the worker records it in the trial's `error`.
        attempt: 1 for the first run of these parameters, 2 for the first retry, and so on.
        max_retries: How many retries one parameter set gets at most.
    """
    error_type = error.split(":", 1)[0].strip()
    if error_type in DETERMINISTIC_TYPES:
        return RetryDecision(
            False, f"{error_type} comes back with the same parameters and seed, so no retry"
        )
    for words in DETERMINISTIC_MESSAGES:
        if words in error:
            return RetryDecision(False, f"'{words}' comes back at the same batch size, so no retry")
    if attempt > max_retries:
        return RetryDecision(
            False, f"attempt {attempt} failed and hpc.max_retries is {max_retries}, so no retry"
        )
    return RetryDecision(True, f"retry {attempt} of at most {max_retries}")
