"""The rule of tuner.redaction: failure messages and tracebacks without document text."""

from __future__ import annotations

import pytest

from tuner.errors import ConfigError, TrialError
from tuner.redaction import (
    describe_error,
    redacted_message,
    redacted_traceback,
    retry_phrases,
)
from tuner.retry_policy import decide

NOTE = "Le patient présente une douleur thoracique depuis trois jours"


class OutOfMemoryError(RuntimeError):
    """Stands for torch.cuda.OutOfMemoryError, which the rule knows by name."""


class BratParsingError(ValueError):
    """EDS-NLP 0.22's error for an unparsable .ann line, which it quotes whole."""

    def __init__(self, ann_file: str, line: str) -> None:
        super().__init__(f"File {ann_file}, unrecognized Brat line {line}")


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "error",
    [
        ValueError(f"could not convert string to float: '{NOTE}'"),
        KeyError(NOTE),
        BratParsingError("/data/train/doc12.ann", f"T1\tDISO 0 10\t{NOTE}"),
        RuntimeError(f"Span {NOTE} does not align with token boundaries"),
        Exception(f"«{NOTE}»"),
    ],
)
def test_data_errors_withheld(error: BaseException) -> None:
    text = describe_error(raised(error))

    assert text.startswith(f"{type(error).__name__}: message withheld")
    assert "patient" not in text
    assert "douleur" not in text
    assert "raised at " in text
    assert "test_redaction.py" in text


# What a note's header holds: a patient number (IPP), a social security number (NIR), a birth
# date, a document id and a file named after the patient.
IDENTIFIERS = ("80012345", "1610375123456", "12/03/1961", "DOC-2024-000123", "dupont_jean")
NOTE_HEADER = (
    "IPP 80012345 NIR 1610375123456 né le 12/03/1961, note_id=DOC-2024-000123, "
    "fichier /data/notes/dupont_jean.txt"
)


@pytest.mark.parametrize(
    "error",
    [
        ValueError(NOTE_HEADER),
        BratParsingError("/data/notes/dupont_jean.ann", f"T1\tDISO 0 10\t{NOTE_HEADER}"),
        KeyError("80012345"),
        FileNotFoundError(2, "No such file or directory", "/data/notes/dupont_jean.txt"),
    ],
)
def test_numbers_paths_identifiers_withheld(error: BaseException) -> None:
    text = describe_error(raised(error))

    for identifier in IDENTIFIERS:
        assert identifier not in text
    assert "/data/notes" not in text
    assert "it contains" not in text
    assert f"({len(' '.join(str(error).split()))} characters" in text
    assert "raised at " in text


def test_error_codes_withheld() -> None:
    text = describe_error(raised(ValueError(f"[E024] at ./data/dev/a.txt step 12 {NOTE}")))

    assert "E024" not in text
    assert "a.txt" not in text
    assert "step" not in text
    assert "it contains" not in text


@pytest.mark.parametrize(
    "error",
    [
        TrialError("Metric 'ner.micro.f' is nan at step 10: the training diverged."),
        ConfigError("tuning.metric: expected a path"),
        OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        MemoryError("out of memory"),
    ],
)
def test_safe_types_kept_whole(error: BaseException) -> None:
    assert redacted_message(raised(error)) == str(error)


def test_retry_phrases_survive() -> None:
    error = raised(RuntimeError(f"CUDA error: CUBLAS_STATUS_ALLOC_FAILED on '{NOTE}'"))

    text = describe_error(error)

    assert "CUBLAS_STATUS_ALLOC_FAILED" in text
    assert "patient" not in text
    assert decide(text, attempt=1, max_retries=2).retry is False


def test_old_torch_oom_still_not_retried() -> None:
    error = raised(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))

    assert decide(describe_error(error), attempt=1, max_retries=2).retry is False


def test_retry_phrases_only() -> None:
    message = f"CUDA out of memory at 80012345 HIP out of memory {NOTE} CUDA_ERROR_X"

    assert retry_phrases(message) == ["CUDA out of memory", "HIP out of memory"]


def test_traceback_keeps_code_withholds_messages() -> None:
    def read_document() -> None:
        raise ValueError(f"bad span in '{NOTE}'")

    try:
        try:
            read_document()
        except ValueError as error:
            raise TrialError("the trial's data failed") from error
    except TrialError as error:
        text = redacted_traceback(error)

    assert "patient" not in text
    assert 'raise ValueError(f"bad span in' in text  # the code line, from the source file
    assert "in read_document" in text
    assert "ValueError: message withheld" in text
    assert "direct cause of the following exception" in text
    assert text.rstrip().endswith("TrialError: the trial's data failed")


def test_traceback_notes_withheld() -> None:
    error = ValueError("tokenizer failed")
    error.add_note(NOTE_HEADER)

    text = redacted_traceback(raised(error))

    assert "patient" not in text
    for identifier in IDENTIFIERS:
        assert identifier not in text
    assert "message withheld" in text
