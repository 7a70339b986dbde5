from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from hpc import signals


@pytest.fixture
def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `scontrol` on PATH that appends its arguments to a file."""
    calls = tmp_path / "calls.txt"
    script = tmp_path / "bin" / "scontrol"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    return calls


def test_first_signal_wins() -> None:
    stop = signals.StopRequest()
    stop.handle(signal.SIGUSR2, None)
    stop.handle(signal.SIGTERM, None)
    assert stop.signum == signal.SIGUSR2
    assert stop.names == ["SIGUSR2", "SIGTERM"]


def test_usr2_requeues_once(tmp_path: Path, fake_scontrol: Path) -> None:
    stop = signals.StopRequest()
    stop.handle(signal.SIGUSR2, None)
    stop.handle(signal.SIGUSR2, None)
    reason = signals.requeue_or_exit(stop, tmp_path / "jobs", "77_3", max_requeues=2)
    assert reason == "requeued after SIGUSR2"
    assert fake_scontrol.read_text().splitlines() == ["requeue 1234"]
    state = json.loads((tmp_path / "jobs" / "state" / "77_3.json").read_text())
    assert state["requeues"] == 1
    assert state["last_reason"] == "after SIGUSR2"


def test_max_requeues_stops(tmp_path: Path, fake_scontrol: Path) -> None:
    stop = signals.StopRequest()
    stop.handle(signal.SIGUSR2, None)
    for _ in range(2):
        signals.requeue_or_exit(stop, tmp_path / "jobs", "77_3", max_requeues=2)
    reason = signals.requeue_or_exit(stop, tmp_path / "jobs", "77_3", max_requeues=2)
    assert "max_requeues reached" in reason
    assert len(fake_scontrol.read_text().splitlines()) == 2


def test_sigterm_does_not_requeue(tmp_path: Path, fake_scontrol: Path) -> None:
    stop = signals.StopRequest()
    stop.handle(signal.SIGTERM, None)
    reason = signals.requeue_or_exit(stop, tmp_path / "jobs", "77_3", max_requeues=2)
    assert reason == "stopped by SIGTERM"
    assert not fake_scontrol.exists()
    assert not (tmp_path / "jobs" / "state").exists()
