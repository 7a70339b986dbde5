"""Exception messages without document text, for trial failure logs and the trial's `error`.

A trial reads clinical notes, and the message of a data error may quote one: a tokenizer error,
a span that does not align, an unparsable annotation line. EDS-NLP 0.22's `BratParsingError`,
for one, puts the whole line in its message, entity text included. Library prose and document text
cannot be told apart, so the rule is an allowlist:

- The message is kept whole for hpc-tune's own errors, whose messages hpc-tune writes from
  config values and metrics, and for out-of-memory errors (`torch.cuda.OutOfMemoryError`,
  `MemoryError`), whose messages are about memory sizes.
- For any other type the message is withheld. The log keeps the error's type, the file, line
  and function that raised it (a place in the code, not data), the message's length, and
  which of the fixed phrases that `tuner.retry_policy` looks for (`CUDA out of memory`) the
  message contains. Nothing else of the message is kept: in a clinical note the numbers
  (patient and social security numbers, dates), file names (which may hold a patient's name)
  and identifiers are the most sensitive part.

Tracebacks keep their code lines, which come from source files, and get the same rule for the
message of each exception in the chain.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from types import TracebackType

from tuner.errors import HpcTuneError
from tuner.retry_policy import DETERMINISTIC_MESSAGES

SAFE_TYPE_NAMES = frozenset({"OutOfMemoryError", "MemoryError"})
MAX_MESSAGE_CHARS = 2000
CUT_MARK = " [...]"
# The lines Python prints between chained exceptions (CPython 3.10 to 3.12).
CAUSE_LINE = "\nThe above exception was the direct cause of the following exception:\n\n"
CONTEXT_LINE = "\nDuring handling of the above exception, another exception occurred:\n\n"


def message_is_safe(error: BaseException) -> bool:
    """Return whether the message of `error` can be logged whole (see the module's rule)."""
    return isinstance(error, HpcTuneError) or type(error).__name__ in SAFE_TYPE_NAMES


def redacted_message(error: BaseException) -> str:
    """Return the message of `error` on one line, or its withheld form for unsafe types."""
    message = " ".join(str(error).split())
    if message_is_safe(error):
        return _cut(message)
    return withheld_message(message, raising_frame(error.__traceback__))


def describe_error(error: BaseException) -> str:
    """Return `ErrorType: message` with the message redacted, as the worker records it."""
    return f"{type(error).__name__}: {redacted_message(error)}"


def withheld_message(message: str, raised_at: str | None = None) -> str:
    """Return what a log may show of an unsafe message: its length, place and retry phrases."""
    parts = [f"message withheld because it may quote a document ({len(message)} characters"]
    if raised_at:
        parts.append(f"; raised at {raised_at}")
    kept = retry_phrases(message)
    if kept:
        parts.append(f"; it contains: {', '.join(kept)}")
    return "".join(parts) + ")"


def retry_phrases(message: str) -> list[str]:
    """Return the phrases of `tuner.retry_policy.DETERMINISTIC_MESSAGES` found in `message`.

    They are fixed strings of this code base, so keeping them reveals nothing of a document
    except that it contained one, and the retry policy needs them to stop retrying.
    """
    return [phrase for phrase in DETERMINISTIC_MESSAGES if phrase in message]


def raising_frame(trace: TracebackType | None) -> str | None:
    """Return `file:line in function` of the innermost frame of `trace`, or None."""
    if trace is None:
        return None
    while trace.tb_next is not None:
        trace = trace.tb_next
    code = trace.tb_frame.f_code
    return f"{_short_path(code.co_filename)}:{trace.tb_lineno} in {code.co_name}"


def redacted_traceback(error: BaseException) -> str:
    """Format `error` as `traceback.format_exception` does, with each message redacted.

    Chained exceptions (`raise ... from`, or raised while handling another) come first, as
    Python prints them. Notes added with `add_note` get the rule of their exception.
    """
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = error
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, CAUSE_LINE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, CONTEXT_LINE
        else:
            current = None

    blocks = []
    for exception, link in reversed(chain):
        lines = []
        if exception.__traceback__ is not None:
            lines.append("Traceback (most recent call last):\n")
            lines.extend(traceback.format_tb(exception.__traceback__))
        lines.append(f"{type(exception).__name__}: {redacted_message(exception)}\n")
        for note in getattr(exception, "__notes__", ()):
            note_text = " ".join(str(note).split())
            safe = message_is_safe(exception)
            lines.append((_cut(note_text) if safe else withheld_message(note_text)) + "\n")
        blocks.append("".join(lines) + link)
    return "".join(blocks)


def _short_path(filename: str) -> str:
    """Shorten an installed module's path to the part after `site-packages/`."""
    marker = "site-packages/"
    if marker in filename:
        return filename.split(marker, 1)[1]
    return str(Path(filename))


def _cut(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - len(CUT_MARK)] + CUT_MARK
