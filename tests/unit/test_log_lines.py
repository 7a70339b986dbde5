"""The fixed shape of log lines, the trial event lines, the worker log file and `logs`."""

from __future__ import annotations

import io
import logging
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from hpc.log_context import (
    LOG_CONTEXT,
    MAX_ERROR_LINE_CHARS,
    LogLineFormatter,
    error_line,
    trial_context,
    worker_log_file,
)
from hpc.reaper import fail_and_retry
from hpc.trial_host import TrialOutcome
from hpc.trial_logs import worker_lines
from hpc.trial_run import record_outcome as _record

# The documented shape: timestamp, level, four key=value fields, logger name, message.
LINE = re.compile(
    r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"job=(?P<job>\S+) task=(?P<task>\S+) worker=(?P<worker>\S+) trial=(?P<trial>\S+) "
    r"(?P<name>[\w.]+): (?P<message>.*)$"
)
TRACEBACK_TEXT = 'Traceback (most recent call last):\n  File "train.py", line 3\nthe patient text'


@pytest.fixture(autouse=True)
def empty_context() -> Iterator[None]:
    saved = dict(LOG_CONTEXT)
    LOG_CONTEXT.clear()
    yield
    LOG_CONTEXT.clear()
    LOG_CONTEXT.update(saved)


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The lines that loggers under `hpc` and `tests` write, in the fixed shape."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogLineFormatter())
    loggers = [logging.getLogger("hpc"), logging.getLogger("tests")]
    levels = [target.level for target in loggers]
    for target in loggers:
        target.addHandler(handler)
        target.setLevel(logging.DEBUG)
    yield stream
    for target, level in zip(loggers, levels, strict=True):
        target.removeHandler(handler)
        target.setLevel(level)


def parsed_lines(stream: io.StringIO) -> list[re.Match[str]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    matches = [LINE.match(line) for line in lines]
    for line, match in zip(lines, matches, strict=True):
        assert match, f"line not in the fixed shape: {line!r}"
    return [match for match in matches if match]


def test_line_without_context(log_output: io.StringIO) -> None:
    logging.getLogger("tests.coordinator").info("Sweep started.")
    [line] = parsed_lines(log_output)
    assert line["job"] == "-"
    assert line["task"] == "-"
    assert line["worker"] == "-"
    assert line["trial"] == "-"
    assert line["name"] == "tests.coordinator"
    assert line["message"] == "Sweep started."


def test_line_with_context(log_output: io.StringIO) -> None:
    LOG_CONTEXT.update(job="123_4", task="4", worker="2", trial="7")
    logging.getLogger("tests.worker").warning("Trial %d started: lr=%s", 7, 0.001)
    [line] = parsed_lines(log_output)
    assert line["job"] == "123_4"
    assert line["task"] == "4"
    assert line["worker"] == "2"
    assert line["trial"] == "7"
    assert line["message"] == "Trial 7 started: lr=0.001"


def test_extra_trial_overrides_context(log_output: io.StringIO) -> None:
    LOG_CONTEXT.update(job="local-99", worker="1")
    with trial_context(7):
        logging.getLogger("tests.reaper").info("Trial 3 retried.", extra={"trial": 3})
        logging.getLogger("tests.worker").info("Heartbeat sent.")
    logging.getLogger("tests.worker").info("Claiming a trial.")
    first, second, third = parsed_lines(log_output)
    assert first["trial"] == "3"
    assert second["trial"] == "7"
    assert third["trial"] == "-"
    assert {line["job"] for line in (first, second, third)} == {"local-99"}


def test_field_with_spaces_kept_in_one_column(log_output: io.StringIO) -> None:
    LOG_CONTEXT["job"] = "local pid 12"
    logging.getLogger("tests.worker").info("Started.")
    [line] = parsed_lines(log_output)
    assert line["job"] == "local_pid_12"


def test_every_line_of_traceback_shaped(log_output: io.StringIO) -> None:
    LOG_CONTEXT.update(job="5", worker="3")
    try:
        raise RuntimeError("first line\nsecond line")
    except RuntimeError:
        logging.getLogger("tests.worker").exception("Trial %d crashed.", 4, extra={"trial": 4})
    lines = parsed_lines(log_output)
    assert len(lines) > 3
    assert {line["trial"] for line in lines} == {"4"}
    assert {line["worker"] for line in lines} == {"3"}
    assert lines[0]["message"] == "Trial 4 crashed."
    assert lines[-1]["message"] == "second line"


def test_error_line_keeps_first_line() -> None:
    assert error_line(f"TrialError: boom\n{TRACEBACK_TEXT}") == "TrialError: boom"
    assert error_line("\n  OSError: disk full  \nmore") == "OSError: disk full"
    assert error_line("") == ""


def test_error_line_cuts_long_line() -> None:
    cut = error_line("ValueError: " + "x" * 1000)
    assert len(cut) == MAX_ERROR_LINE_CHARS
    assert cut.startswith("ValueError: xxx")
    assert cut.endswith(" [...]")
    assert error_line("ValueError: short", max_chars=300) == "ValueError: short"


def new_trial() -> tuple[optuna.Study, optuna.Trial]:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1.0, log=True)
    return study, trial


def test_failure_line_first_line_cut(log_output: io.StringIO, tmp_path: Path) -> None:
    study, trial = new_trial()
    trial.set_user_attr("trial_dir", str(tmp_path))
    error = "ValueError: " + "y" * 400 + "\n" + TRACEBACK_TEXT
    _record(study, trial, TrialOutcome("failed", error=error), 2.5, max_retries=2)
    failure, retry = parsed_lines(log_output)
    assert failure["trial"] == "0"
    assert failure["name"] == "hpc.worker"
    assert failure["message"].startswith("Trial 0 failed after 2.5 s: ValueError: yyy")
    assert "y [...] (log: " in failure["message"]
    assert len(error_line(error)) == MAX_ERROR_LINE_CHARS
    assert retry["name"] == "hpc.reaper"
    assert "Traceback" not in log_output.getvalue()
    assert "patient text" not in log_output.getvalue()


def test_end_and_prune_lines(log_output: io.StringIO) -> None:
    study, trial = new_trial()
    _record(study, trial, TrialOutcome("complete", value=0.8), 3.25, max_retries=2)
    other = study.ask()
    other.suggest_float("lr", 1e-4, 1.0, log=True)
    _record(study, other, TrialOutcome("pruned", value=0.1), 1.0, max_retries=2)
    end, prune = parsed_lines(log_output)
    assert end["trial"] == "0"
    assert end["message"] == "Trial 0 finished with value 0.8 in 3.2 s."
    assert prune["trial"] == "1"
    assert prune["message"] == "Trial 1 pruned after 1.0 s (last score 0.1)."


def test_retry_line_names_attempt(log_output: io.StringIO) -> None:
    study, trial = new_trial()
    with trial_context(9):
        fail_and_retry(study, trial, "ProcessExited: code 1\ndetail", max_retries=2)
    [line] = parsed_lines(log_output)
    assert line["trial"] == "0"
    assert line["message"] == (
        "Trial 0 queued again as attempt 2 with the same parameters and seed "
        "(retry 1 of at most 2). Error: ProcessExited: code 1"
    )


def test_not_retried_line_names_reason(log_output: io.StringIO) -> None:
    study, trial = new_trial()
    fail_and_retry(study, trial, "NonFiniteMetric: the metric is nan", max_retries=2)
    [line] = parsed_lines(log_output)
    assert line["trial"] == "0"
    assert line["message"].startswith("Trial 0 not retried: NonFiniteMetric comes back")
    assert line["message"].endswith("Error: NonFiniteMetric: the metric is nan")


def test_worker_log_file_private(tmp_path: Path) -> None:
    jobs_dir = tmp_path / "jobs"
    LOG_CONTEXT.update(job="local-7", worker="12")
    hpc_logger = logging.getLogger("hpc.worker")
    level = hpc_logger.level
    hpc_logger.setLevel(logging.INFO)
    try:
        with worker_log_file(jobs_dir, 12) as path:
            hpc_logger.info("Worker 12 started.")
        hpc_logger.info("After the worker: not in its file.")
    finally:
        hpc_logger.setLevel(level)
    assert path == jobs_dir / "workers" / "worker-0012.log"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    [line] = path.read_text().splitlines()
    match = LINE.match(line)
    assert match, line
    assert match["worker"] == "12"
    assert match["message"] == "Worker 12 started."


def test_worker_lines_merge_files(tmp_path: Path) -> None:
    head = "INFO job=1_0 task=0 worker=1"
    own = [
        f"2026-01-01 10:00:00,000 {head} trial=1 hpc.worker: Trial 1 started: lr=0.1",
        f"2026-01-01 10:00:01,000 {head} trial=1 hpc.heartbeat: Heartbeat recorded again.",
        f"2026-01-01 10:00:01,000 {head} trial=1 hpc.heartbeat: Heartbeat recorded again.",
        f"2026-01-01 10:00:03,000 {head} trial=10 hpc.worker: Trial 10 started: lr=0.2",
    ]
    reaper = "2026-01-01 10:00:02,000 INFO job=- task=- worker=- trial=1 hpc.reaper: Trial 1 kept"
    old_shape = "2026-01-01 09:59:59,000 INFO [job 1_0 worker 1] hpc.worker: Trial 1 started: x"
    (tmp_path / "workers").mkdir()
    (tmp_path / "slurm").mkdir()
    (tmp_path / "workers" / "worker-0001.log").write_text("\n".join(own) + "\n")
    (tmp_path / "slurm" / "1_0.err").write_text("\n".join([old_shape, own[0], reaper]) + "\n")
    (tmp_path / "slurm" / "1_0.json").write_text(own[0])

    assert worker_lines(tmp_path, 1) == [old_shape, own[0], own[1], own[2], reaper]
    assert worker_lines(tmp_path, 10) == [own[3]]
    assert worker_lines(tmp_path / "missing", 1) == []
