"""The rule of tuner.redaction: failure messages and tracebacks without document text."""

from __future__ import annotations

import pytest

from tuner.errors import ConfigError, TrialError
from tuner.redaction import (
    describe_error,
    redacted_message,
    redacted_traceback,
    safe_tokens,
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


def test_paths_and_numbers_kept() -> None:
    error = raised(BratParsingError("/data/train/doc12.ann", f"T1\tDISO 0 10\t{NOTE}"))

    text = redacted_message(error)

    assert "it contains: /data/train/doc12.ann 0 10)" in text
    assert f"({len(str(error))} characters" in text


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


def test_safe_tokens() -> None:
    message = f"[E024] at ./data/dev/a.txt step 12 of 1e-3 max_steps {NOTE} 3.5%"

    assert safe_tokens(message) == [
        "[E024]",
        "./data/dev/a.txt",
        "12",
        "1e-3",
        "max_steps",
        "3.5%",
    ]


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
    error.add_note(NOTE)

    text = redacted_traceback(raised(error))

    assert "patient" not in text
    assert "message withheld" in text
