"""The trial host: a fork server that prepares the plug-in once and forks one child per trial.

The worker process alone talks to the database. The host imports torch and EDS-NLP and
resolves the config once (7 s for the QUAERO example on 2 cores), then forks a child for each
trial, so a crash, an out-of-memory kill or a NaN fails that trial only. The child writes its
messages on the host's pipe to the worker while the host waits for it:

    child -> worker: ("score", step, value)   worker -> child: ("continue",) or ("prune",)
    child -> worker: ("train_s", seconds) if the plug-in measured its training time, then
                     ("result", value) | ("pruned", step) | ("error", type name, message)
    host  -> worker: ("ready",) once, then ("exit", trial number, exit code) after each child
"""

from __future__ import annotations

import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tuner.objectives import ObjectiveSpec, TrialRequest, build_objective
from tuner.private_dirs import make_private_dir, match_folder_access
from tuner.redaction import redacted_message, redacted_traceback
from tuner.training import PruneRequested

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
TRIAL_LOG = "trial.log"


@dataclass(frozen=True)
class TrialOutcome:
    """The end of a trial.

    Attributes:
        state: `complete`, `pruned`, `failed`, or `interrupted` by a stop signal.
        value: The metric (complete), the last reported score (pruned), or None.
        error: `ErrorType: message` for a failed trial.
        train_s: Seconds the trial spent inside EDS-NLP's `train()`, when measured.
    """

    state: str
    value: float | None = None
    error: str | None = None
    train_s: float | None = None


class _Interrupted(Exception):
    """The worker asked to stop while a trial ran."""


class HostDied(RuntimeError):
    """The trial host process ended; the worker starts a new one."""


class TrialHost:
    """Worker-side handle of a trial host process."""

    def __init__(self, spec: ObjectiveSpec, ready_timeout_s: float = 1800) -> None:
        self.spec = spec
        self.ready_timeout_s = ready_timeout_s
        self.process: multiprocessing.process.BaseProcess | None = None
        self.connection: Connection | None = None
        self.launched = 0.0

    def start(self) -> None:
        """Start the host and wait until the plug-in is prepared."""
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the host process, which prepares the plug-in while the worker goes on.

        A worker that runs no other thread yet (its first launch, before any heartbeat)
        forks the host, which then shares the modules the worker already imported. A new
        interpreter cost about 0.3 CPU-seconds per worker, several seconds of wall time when
        16 workers start together on 2 cores. A host started again during a trial is spawned,
        because the heartbeat thread may then own a lock that a fork would copy.
        """
        context: Any = multiprocessing.get_context(
            "fork" if threading.active_count() == 1 else "spawn"
        )
        worker_end, host_end = context.Pipe(duplex=True)
        self.process = context.Process(
            target=_host_main, args=(host_end, self.spec), name="hpc-tune-trial-host"
        )
        self.process.start()
        host_end.close()
        self.connection = worker_end
        self.launched = time.monotonic()

    def wait_ready(self) -> None:
        """Wait until the launched host has prepared the plug-in."""
        assert self.process is not None, "launch() first"
        started = self.launched
        message = self._receive(deadline=started + self.ready_timeout_s)
        if message[0] == "error":
            raise HostDied(f"the trial plug-in failed to prepare: {message[1]}: {message[2]}")
        logger.info(
            "Trial host ready in %.1f s (pid %s).", time.monotonic() - started, self.process.pid
        )

    def run(
        self,
        request: TrialRequest,
        should_prune: Callable[[int, float], bool],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> TrialOutcome:
        """Run one trial in a fresh child of the host and return how it ended.

        When `should_stop()` turns true, the host and its child are killed and the outcome is
        `interrupted`: EDS-NLP cannot resume a training, so nothing is worth saving.
        """
        try:
            return self._run(request, should_prune, should_stop)
        except _Interrupted:
            self.kill()
            return TrialOutcome(
                "interrupted", error="Interrupted: the worker received a stop signal"
            )

    def kill(self) -> None:
        """Kill the host at once; its trial child dies with it (parent-death signal)."""
        if self.process is not None:
            self.process.kill()
            self.process.join(timeout=10)
            self.process = None
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def _run(
        self,
        request: TrialRequest,
        should_prune: Callable[[int, float], bool],
        should_stop: Callable[[], bool],
    ) -> TrialOutcome:
        if self.process is None or not self.process.is_alive():
            self.start()
        assert self.connection is not None
        self.connection.send(("run", request))
        outcome: TrialOutcome | None = None
        last_score: float | None = None
        train_s: float | None = None
        while True:
            message = self._receive(deadline=None, should_stop=should_stop)
            kind = message[0]
            if kind == "score":
                step, value = message[1], message[2]
                last_score = value
                prune = should_prune(step, value)
                self.connection.send(("prune",) if prune else ("continue",))
            elif kind == "result":
                value = message[1]
                if value is None or not math.isfinite(value):
                    outcome = TrialOutcome(
                        "failed", error=f"NonFiniteMetric: the metric is {value}"
                    )
                else:
                    outcome = TrialOutcome("complete", value=float(value))
            elif kind == "pruned":
                outcome = TrialOutcome("pruned", value=last_score)
            elif kind == "error":
                outcome = TrialOutcome("failed", error=f"{message[1]}: {message[2]}")
            elif kind == "train_s":
                train_s = message[1]
            elif kind == "exit":
                return replace(outcome or _exit_outcome(message[2]), train_s=train_s)

    def close(self) -> None:
        """Stop the host; its children die with it (parent-death signal)."""
        if self.connection is not None:
            try:
                self.connection.send(("stop",))
            except (BrokenPipeError, OSError):
                pass
            self.connection.close()
            self.connection = None
        if self.process is not None:
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=10)
            self.process = None

    def _receive(
        self, deadline: float | None, should_stop: Callable[[], bool] = lambda: False
    ) -> tuple[Any, ...]:
        assert self.connection is not None and self.process is not None
        while True:
            if should_stop():
                raise _Interrupted
            if self.connection.poll(0.5):
                try:
                    return self.connection.recv()
                except (EOFError, OSError):
                    break
            if not self.process.is_alive():
                break
            if deadline is not None and time.monotonic() > deadline:
                self.process.kill()
                raise HostDied(f"the trial host was not ready after {self.ready_timeout_s:.0f} s")
        code = self.process.exitcode
        self.process.join(timeout=5)
        self.process = None
        raise HostDied(f"the trial host ended (exit code {code})")


def _exit_outcome(exit_code: int | None) -> TrialOutcome:
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return TrialOutcome(
            "failed", error=f"ProcessKilled: the trial process died from {name}{hint}"
        )
    return TrialOutcome(
        "failed", error=f"ProcessExited: the trial process exited with code {exit_code}"
    )


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def _ignore_job_signals() -> None:
    # Slurm signals every process of a job step; the worker alone decides what a signal means.
    for signum in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _host_main(connection: Connection, spec: ObjectiveSpec) -> None:
    _die_with_parent()
    _ignore_job_signals()
    try:
        objective = build_objective(spec)
        objective.prepare()
    except Exception as error:
        connection.send(("error", type(error).__name__, redacted_message(error)))
        return
    connection.send(("ready",))
    fork = multiprocessing.get_context("fork")
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] != "run":
            return
        request: TrialRequest = message[1]
        # Not a daemon: EDS-NLP's data loader workers are children of the trial process.
        child = fork.Process(target=_child_main, args=(connection, objective, request))
        child.start()
        child.join()
        connection.send(("exit", request.number, child.exitcode))


def _child_main(connection: Connection, objective: Any, request: TrialRequest) -> None:
    _die_with_parent()
    _redirect_output(Path(request.trial_dir) / TRIAL_LOG)

    def on_score(step: int, value: float) -> None:
        connection.send(("score", int(step), float(value)))
        if connection.recv()[0] == "prune":
            raise PruneRequested(f"pruned at step {step}")

    try:
        value = objective.run(request, on_score)
    except PruneRequested as pruned:
        _send_train_time(connection, objective)
        connection.send(("pruned", str(pruned)))
        return
    except BaseException as error:  # a trial must never take its host down
        # Data errors may quote a document: messages follow the rule of tuner.redaction.
        sys.stderr.write(f"Trial {request.number} failed:\n{redacted_traceback(error)}")
        _send_train_time(connection, objective)
        connection.send(("error", type(error).__name__, redacted_message(error)))
        return
    _send_train_time(connection, objective)
    connection.send(("result", None if value is None else float(value)))
    sys.stdout.flush()


def _send_train_time(connection: Connection, objective: Any) -> None:
    train_s = getattr(objective, "train_s", None)
    if train_s is not None:
        connection.send(("train_s", float(train_s)))


def _redirect_output(log_path: Path) -> None:
    """Send the trial's standard output and error, training logs included, to its own file."""
    sys.stdout.flush()
    sys.stderr.flush()
    make_private_dir(log_path.parent)
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    match_folder_access(log_path)  # 0640 in a checkpoint directory shared with a group
    os.dup2(descriptor, 1)
    os.dup2(descriptor, 2)
    os.close(descriptor)
