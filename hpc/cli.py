"""Command line: `python -m hpc sweep|worker|status|report`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from hpc.log_context import LOG_CONTEXT, LogLineFormatter
from tuner.errors import HpcTuneError

logger = logging.getLogger("hpc")

QUIET_LOGGERS = ("optuna", "submitit", "httpx", "urllib3")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Trial outputs, logs and reports may hold patient text: private to the user by default.
    os.umask(0o077)
    # A command started in the background by a script inherits SIGINT ignored, and Python
    # then raises no KeyboardInterrupt: `hpc cancel` could not stop a local sweep, nor Ctrl-C
    # end `status --watch`. The workers ignore SIGINT again themselves.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _configure_logging(args.verbose)
    try:
        return int(args.handler(args) or 0)
    except HpcTuneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hpc",
        description="Run EDS-NLP hyperparameter tuning on Slurm or on this machine.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    sweep = commands.add_parser("sweep", help="create or continue a sweep and run it")
    _add_config(sweep)
    sweep.add_argument("--workers", type=int, help="number of workers (hpc.workers)")
    sweep.add_argument("--executor", choices=("auto", "local", "slurm"), help="hpc.executor")
    sweep.add_argument(
        "--storage",
        help="PostgreSQL URL postgresql+psycopg2://USER@HOST[:PORT]/DB, no password (hpc.storage)",
    )
    sweep.add_argument("--seed", type=int, help="sweep seed (tuning.seed)")
    sweep.add_argument("--n-trials", type=int, help="number of finished trials (tuning.n_trials)")
    sweep.add_argument(
        "--skip-preflight", action="store_true", help="do not build the pipeline before launching"
    )
    sweep.set_defaults(handler=_sweep)

    worker = commands.add_parser("worker", help="run one worker of a started sweep")
    worker.add_argument(
        "--sweep-dir", required=True, type=Path, help="the sweep's checkpoint directory"
    )
    worker.set_defaults(handler=_worker)

    finalize = commands.add_parser(
        "finalize", help="after the workers: reap trials, write the report"
    )
    finalize.add_argument(
        "--sweep-dir", required=True, type=Path, help="the sweep's checkpoint directory"
    )
    finalize.set_defaults(handler=_finalize)

    resubmit = commands.add_parser(
        "resubmit", help="submit workers and a finalize job again (Slurm)"
    )
    _add_config(resubmit)
    resubmit.add_argument("--storage", help="PostgreSQL URL, if the sweep used one")
    resubmit.set_defaults(handler=_resubmit)

    cancel = commands.add_parser(
        "cancel", help="cancel a sweep's jobs (finalize first); make sweep continues it later"
    )
    _add_config(cancel)
    cancel.add_argument("--storage", help="PostgreSQL URL, if the sweep used one")
    cancel.set_defaults(handler=_cancel)

    logs = commands.add_parser("logs", help="print one trial's log lines and training output")
    _add_config(logs)
    logs.add_argument("--trial", required=True, type=int, help="the trial number")
    logs.set_defaults(handler=_logs)

    status = commands.add_parser(
        "status", help="show a sweep's trials, best value, budget, jobs and stale trials"
    )
    _add_config(status)
    status.add_argument("--storage", help="PostgreSQL URL, if the sweep used one")
    status.add_argument(
        "--json", action="store_true", help="print JSON (schema: docs/status.schema.json)"
    )
    status.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=30.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 30) until Ctrl-C",
    )
    status.set_defaults(handler=_status)

    report = commands.add_parser("report", help="rebuild the report from the database")
    _add_config(report)
    report.add_argument("--storage", help="PostgreSQL URL, if the sweep used one")
    report.set_defaults(handler=_report)

    check_node = commands.add_parser(
        "check-node",
        help="run one short job with the workers' request: CUDA, GPUs, database (Slurm)",
    )
    _add_config(check_node)
    check_node.add_argument("--storage", help="PostgreSQL URL, if the sweep uses one")
    check_node.add_argument(
        "--timeout-s",
        type=_positive_seconds,
        default=600.0,
        help="seconds to wait for the job, queue time included (default 600); then it is cancelled",
    )
    check_node.set_defaults(handler=_check_node)
    return parser


def _positive_seconds(text: str) -> float:
    """Parse a number of seconds above zero, for argparse."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return seconds


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="EDS-NLP config with a tuning: section"
    )


def _sweep(args: argparse.Namespace) -> int:
    from hpc.coordinator import run_sweep
    from hpc.sweep import SweepRequest

    request = SweepRequest(
        config_path=args.config,
        workers=args.workers,
        executor=args.executor,
        storage=args.storage,
        seed=args.seed,
        n_trials=args.n_trials,
        skip_preflight=args.skip_preflight,
    )
    return run_sweep(request)


def _worker(args: argparse.Namespace) -> int:
    worker_entry(str(args.sweep_dir))
    return 0


def worker_entry(sweep_dir: str) -> str:
    """Run one worker of the sweep whose checkpoint directory is `sweep_dir`.

    It is the function submitit's local executor calls and what `python -m hpc worker` runs.
    """
    from hpc.sweep_state import SweepPaths, read_sweep_state
    from hpc.worker import run_worker, spec_from_state

    _configure_logging(verbose=False)
    # The coordinator owns Ctrl-C: it stops the workers and queues their trials again.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.umask(0o077)
    paths = SweepPaths(Path(sweep_dir).resolve())
    state = read_sweep_state(paths)
    if state is None:
        raise HpcTuneError(f"No sweep.json in {paths.root}: start the sweep with 'make sweep'.")
    os.chdir(state["working_dir"])
    job_id = slurm_job_id()
    LOG_CONTEXT["job"] = job_id or f"local-{os.getpid()}"
    spec = spec_from_state(state, paths, job_id)
    _fail_at_start_if_requested(spec)
    summary = run_worker(spec)
    return f"worker {summary.worker_id}: {summary.trials} trials, {summary.reason}"


def _finalize(args: argparse.Namespace) -> int:
    from hpc.finalize import finalize

    return finalize(args.sweep_dir)


def _resubmit(args: argparse.Namespace) -> int:
    from hpc.finalize import resubmit

    return resubmit(args.config, args.storage)


def _logs(args: argparse.Namespace) -> int:
    from hpc.trial_logs import print_trial_logs

    return print_trial_logs(args.config, args.trial)


def _cancel(args: argparse.Namespace) -> int:
    from hpc.cancel import cancel

    return cancel(args.config, args.storage)


def _check_node(args: argparse.Namespace) -> int:
    from hpc.check_node import check_node

    return check_node(args.config, args.storage, args.timeout_s)


def slurm_job_id() -> str | None:
    """Return `<array job>_<task>` for an array task, the job id for a plain job, or None."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _fail_at_start_if_requested(spec: object) -> None:
    # Test hook of the synthetic plug-in: hpc.synthetic.fail_array_tasks lists array task ids
    # that exit with status 1 before taking any trial.
    objective = spec.objective  # type: ignore[attr-defined]
    if objective.kind != "synthetic":
        return
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is not None and int(task) in objective.options.get("fail_array_tasks", []):
        logger.error("Array task %s fails at start, as hpc.synthetic.fail_array_tasks asks.", task)
        sys.exit(1)


def _status(args: argparse.Namespace) -> int:
    from hpc.status import print_status

    if args.watch is not None and args.watch < 1:
        raise HpcTuneError(f"--watch {args.watch:g}: give at least 1 second between refreshes.")
    return print_status(args.config, args.storage, as_json=args.json, watch_s=args.watch)


def _report(args: argparse.Namespace) -> int:
    from hpc.coordinator import write_final_report
    from hpc.sweep import SweepRequest, close_storage, load_sweep, open_storage
    from tuner.report import SUMMARY_NAME

    request = SweepRequest(config_path=args.config, storage=args.storage)
    sweep = load_sweep(request, use_recorded_overrides=True)
    storage = open_storage(sweep, request, create=False)
    try:
        report_dir = write_final_report(sweep, storage)
    finally:
        close_storage(storage)
    print(f"Report: {report_dir}")
    # A report rebuilt mid-sweep covers the trials so far, so print the summary's coverage lines.
    summary = (report_dir / SUMMARY_NAME).read_text(encoding="utf-8").splitlines()
    for line in summary:
        if line.startswith(("Trials covered:", "Time span:")):
            print(line)
    return 0


def _configure_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if root.handlers:
        return
    # Every line of a process in a Slurm job (a worker, the finalize job) names the job.
    job_id = slurm_job_id()
    if job_id:
        LOG_CONTEXT.setdefault("job", job_id)
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task:
        LOG_CONTEXT.setdefault("task", task)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogLineFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    # Optuna installs its own handler; its INFO lines repeat what hpc-tune logs.
    optuna.logging.set_verbosity(logging.DEBUG if verbose else logging.WARNING)
