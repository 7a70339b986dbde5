"""Exception messages without document text, for trial failure logs and the trial's `error`.

A trial reads clinical notes, and the message of a data error may quote one: a tokenizer error,
a span that does not align, an unparsable annotation line. EDS-NLP 0.22's `BratParsingError`,
for one, puts the whole line in its message, entity text included. Library prose and document text
cannot be told apart, so the rule is an allowlist:

- The message is kept whole for hpc-tune's own errors, whose messages hpc-tune writes from
  config values and metrics, and for out-of-memory errors (`torch.cuda.OutOfMemoryError`,
  `MemoryError`), whose messages are about memory sizes.
- For any other type the message is withheld. The error's type, the file, line and function
  that raised it, the message's length, and what the message contains from a short list of
  kinds that cannot be prose are kept: file paths, numbers, identifiers with an underscore
  (`CUBLAS_STATUS_ALLOC_FAILED`), spaCy error codes (`[E024]`) and the phrases that
  `tuner.retry_policy` looks for (`CUDA out of memory`).

Tracebacks keep their code lines, which come from source files, and get the same rule for the
message of each exception in the chain.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from types import TracebackType

from tuner.errors import HpcTuneError
from tuner.retry_policy import DETERMINISTIC_MESSAGES

SAFE_TYPE_NAMES = frozenset({"OutOfMemoryError", "MemoryError"})
KEPT_PHRASES = (*DETERMINISTIC_MESSAGES, "NaN loss")
MAX_KEPT_TOKENS = 12
MAX_TOKEN_CHARS = 200
MAX_MESSAGE_CHARS = 2000
CUT_MARK = " [...]"

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?%?$")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9]*(_[A-Za-z0-9]+)+$")
_ERROR_CODE = re.compile(r"^\[[EW]\d{3,4}\]$")
_PATH = re.compile(r"^(~|\.{1,2})?/[^\s'\"`]*$|^[\w.-]+(/[\w.-]+)*/[\w.-]+\.[A-Za-z0-9]{1,6}$")
_EDGE_PUNCTUATION = "\"'`«»“”‘’(){}<>,;:!?"
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
    """Return what a log may show of an unsafe message: its length, place and safe tokens."""
    parts = [f"message withheld because it may quote a document ({len(message)} characters"]
    if raised_at:
        parts.append(f"; raised at {raised_at}")
    kept = safe_tokens(message)
    if kept:
        parts.append(f"; it contains: {' '.join(kept)}")
    return "".join(parts) + ")"


def safe_tokens(message: str) -> list[str]:
    """Return the known phrases, paths, numbers, identifiers and error codes in `message`."""
    kept = [phrase for phrase in KEPT_PHRASES if phrase in message]
    for word in message.split():
        token = word.strip(_EDGE_PUNCTUATION).rstrip(".")
        if not token or len(token) > MAX_TOKEN_CHARS or token in kept:
            continue
        if any(pattern.match(token) for pattern in (_NUMBER, _IDENTIFIER, _ERROR_CODE, _PATH)):
            kept.append(token)
        if len(kept) >= MAX_KEPT_TOKENS:
            kept.append("[...]")
            break
    return kept


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
