"""The coordinator: validate, create or continue the sweep, launch workers, write the report."""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import submitit

from hpc import tables
from hpc.claims import count_trials
from hpc.settings import HpcSettings, default_sweep_name, parse_hpc_section
from hpc.storage import (
    STORAGE_ENV,
    check_connection,
    create_engine,
    ensure_schema,
    hide_password,
    optuna_storage,
    parse_storage_url,
    user_schema,
)
from hpc.sweep_state import (
    STATE_VERSION,
    SweepPaths,
    read_sweep_state,
    study_name,
    write_json_atomic,
)
from tuner.config import LoadedConfig, load_config
from tuner.errors import ConfigError, HpcTuneError

logger = logging.getLogger(__name__)

PHASE = 1
# Local workers run until their budget is spent; submitit's local default is 2 minutes.
LOCAL_TIMEOUT_MIN = 7 * 24 * 60
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class SweepRequest:
    """Command-line values of `hpc sweep`; None leaves the config's value."""

    config_path: Path
    workers: int | None = None
    executor: str | None = None
    storage: str | None = None
    seed: int | None = None
    n_trials: int | None = None
    skip_preflight: bool = False


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep: config, cluster settings, paths and the storage it uses."""

    loaded: LoadedConfig
    settings: HpcSettings
    name: str
    paths: SweepPaths
    storage_url: str
    schema: str
    embedded: dict[str, Any] | None
    tuning_overrides: dict[str, Any]
    server: Any = None
    stop_server: bool = False


def close_sweep(sweep: Sweep) -> None:
    """Stop the embedded server if this command started it."""
    if sweep.server is not None and sweep.stop_server:
        from hpc import embedded_pg

        embedded_pg.stop(sweep.server)
        logger.info("Stopped the embedded PostgreSQL server (%s).", sweep.server.data_dir)


def open_sweep(request: SweepRequest, start_embedded: bool = True) -> Sweep:
    """Load and validate the config, and resolve the sweep's name, folders and storage."""
    overrides = {"seed": request.seed, "n_trials": request.n_trials}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    loaded = load_config(request.config_path, overrides=overrides)
    settings = parse_hpc_section(
        loaded.hpc_section,
        {"workers": request.workers, "executor": request.executor, "storage": request.storage},
    )
    name = settings.sweep_name or default_sweep_name(loaded.path)
    paths = SweepPaths(loaded.tuning.checkpoint_dir.expanduser().resolve())
    storage_url, source = _storage_setting(request, settings)
    schema = user_schema()
    server = None
    stop_server = False
    if storage_url is None:
        server, stop_server = _embedded_server(paths, name, start_new=start_embedded)
        storage_url = server.url
        embedded = {"data_dir": str(server.data_dir), "socket_dir": str(server.socket_dir)}
    else:
        embedded = None
        parsed = parse_storage_url(storage_url, source)
        check_connection(parsed, source)
        storage_url = parsed.render_as_string(hide_password=False)
    return Sweep(
        loaded, settings, name, paths, storage_url, schema, embedded, overrides, server, stop_server
    )


def run_sweep(request: SweepRequest) -> int:
    """Create or continue a sweep, run its workers locally, and write the report."""
    sweep = open_sweep(request)
    try:
        report_dir = _run_local_sweep(sweep, request)
    finally:
        # Local workers have ended: nothing needs the embedded server any more.
        close_sweep(replace(sweep, stop_server=True))
    print(f"Report: {report_dir}")
    return 0


def _run_local_sweep(sweep: Sweep, request: SweepRequest) -> Path:
    executor = _choose_executor(sweep.settings.executor)
    tuning = sweep.loaded.tuning
    if tuning.two_phase_tuning:
        raise ConfigError(
            "tuning.two_phase_tuning: true is not supported by this version of hpc-tune yet. "
            "Set it to false to tune every hyperparameter in one phase."
        )
    if not request.skip_preflight and sweep.settings.objective == "edsnlp":
        _preflight(sweep)

    sweep.paths.create()
    study = _create_or_load_study(sweep)
    _write_state(sweep)
    _reap_dead_local_workers(sweep, study)

    print(f"Sweep {sweep.name}: study {study.study_name} in {hide_password(sweep.storage_url)}")
    print(f"Checkpoint directory: {sweep.paths.root}")
    jobs = _launch_local_workers(sweep) if executor == "local" else []
    _follow(sweep, jobs)
    return write_final_report(sweep)


def write_final_report(sweep: Sweep) -> Path:
    """Write the report of the sweep's study into `tuning.output_dir`."""
    from tuner.report import ReportContext, write_report

    study = optuna.load_study(
        study_name=study_name(sweep.name, PHASE),
        storage=optuna_storage(sweep.storage_url, sweep.schema, create_tables=False),
    )
    tuning = sweep.loaded.tuning
    context = ReportContext(
        sweep_name=sweep.name,
        metric=tuning.metric,
        seed=tuning.seed,
        n_trials_target=tuning.n_trials,
    )
    output_dir = tuning.output_dir.expanduser().resolve()
    return write_report(study, output_dir, sweep.loaded.path, tuning.hyperparameters, context)


def _storage_setting(request: SweepRequest, settings: HpcSettings) -> tuple[str | None, str]:
    if request.storage:
        return request.storage, "--storage"
    if settings.storage:
        return settings.storage, "hpc.storage"
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV], STORAGE_ENV
    return None, "embedded"


def _embedded_server(paths: SweepPaths, name: str, start_new: bool) -> tuple[Any, bool]:
    """Start or reuse the sweep's embedded server, and return whether to stop it afterwards.

    Args:
        start_new: True for `sweep`, which may create the server; False for commands that
            read an existing sweep and must find its recorded data folder.
    """
    from hpc import embedded_pg

    state = read_sweep_state(paths) or {}
    recorded = (state.get("embedded") or {}).get("data_dir")
    if not start_new and recorded is None:
        raise HpcTuneError(
            f"No sweep with an embedded server found in {paths.root}. Run 'make sweep' first, "
            "or pass --storage if the sweep used a PostgreSQL server."
        )
    data_dir = Path(recorded) if recorded else None
    was_running = data_dir is not None and embedded_pg.is_running(data_dir)
    paths.create()
    server = embedded_pg.ensure_running(paths.root, name, data_dir=data_dir)
    return server, not was_running


def _choose_executor(setting: str) -> str:
    if setting == "slurm":
        raise ConfigError(
            "hpc.executor: 'slurm' is not supported by this version of hpc-tune yet. "
            "Use 'local' (or 'auto') to run the workers on this machine."
        )
    return "local"


def _preflight(sweep: Sweep) -> None:
    from tuner.preflight import preflight

    started = time.monotonic()
    tuning = sweep.loaded.tuning
    preflight(sweep.loaded.config, tuning.hyperparameters, tuning.metric_parts, sweep.loaded.path)
    logger.info("Preflight passed in %.1f s.", time.monotonic() - started)


def space_signature(loaded: LoadedConfig) -> str:
    """Hash of the search space, stored on the study to detect a changed space on rerun."""
    space = [
        [hp.path, hp.name, hp.type, hp.low, hp.high, hp.step, hp.log, hp.choices]
        for hp in loaded.tuning.hyperparameters
    ]
    text = json.dumps([space, list(loaded.tuning.metric)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _create_or_load_study(sweep: Sweep) -> optuna.Study:
    ensure_schema(sweep.storage_url, sweep.schema)
    storage = optuna_storage(sweep.storage_url, sweep.schema, create_tables=True)
    engine = create_engine(sweep.storage_url, sweep.schema)
    try:
        tables.create_tables(engine)
    finally:
        engine.dispose()
    name = study_name(sweep.name, PHASE)
    signature = space_signature(sweep.loaded)
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True
    )
    stored = study.user_attrs.get("space_signature")
    if stored is None:
        study.set_user_attr("space_signature", signature)
        study.set_user_attr("config_path", str(sweep.loaded.path))
        study.set_user_attr("seed", sweep.loaded.tuning.seed)
        logger.info("Created study %s.", name)
    elif stored != signature:
        raise ConfigError(
            f"The search space or metric of {sweep.loaded.path} changed since sweep {sweep.name} "
            "started, so its trials cannot be compared. Start a new sweep by setting another "
            "hpc.sweep_name (or another tuning.checkpoint_dir), or restore the previous space."
        )
    else:
        logger.info("Continuing study %s with %d trials.", name, len(study.trials))
    return study


def _write_state(sweep: Sweep) -> None:
    state = read_sweep_state(sweep.paths) or {}
    if state and state.get("sweep_name") != sweep.name:
        raise ConfigError(
            f"{sweep.paths.sweep_file} belongs to sweep {state.get('sweep_name')!r}, not "
            f"{sweep.name!r}. Give each sweep its own tuning.checkpoint_dir."
        )
    state.update(
        version=STATE_VERSION,
        sweep_name=sweep.name,
        config_path=str(sweep.loaded.path),
        working_dir=os.getcwd(),
        user=getpass.getuser(),
        storage_url=hide_password(sweep.storage_url),
        schema=sweep.schema,
        embedded=sweep.embedded,
        phase=PHASE,
        studies={str(PHASE): study_name(sweep.name, PHASE)},
        tuning_overrides=sweep.tuning_overrides,
        objective=sweep.settings.objective,
        synthetic=dict(sweep.settings.synthetic),
        keep_models=sweep.settings.keep_models,
        workers=sweep.settings.workers,
    )
    write_json_atomic(sweep.paths.sweep_file, state)


def _reap_dead_local_workers(sweep: Sweep, study: optuna.Study) -> None:
    """Fail RUNNING trials left by local workers that no longer exist, so they stop counting."""
    engine = create_engine(sweep.storage_url, sweep.schema)
    try:
        dead = tables.dead_local_workers(engine, sweep.name)
        if not dead:
            return
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get("worker") in dead:
                optuna.trial.Trial(study, trial._trial_id).set_user_attr(
                    "error", "WorkerLost: its worker process ended while the trial ran"
                )
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                logger.warning(
                    "Trial %d failed: its worker %s ended while it ran.",
                    trial.number,
                    trial.user_attrs["worker"],
                )
        tables.mark_ended(engine, dead, "process not found")
    finally:
        engine.dispose()


def _launch_local_workers(sweep: Sweep) -> list[submitit.Job]:
    from hpc.cli import worker_entry

    folder = sweep.paths.jobs_dir / f"phase{PHASE}" / "%j"
    _share_cpus(sweep.settings.workers)
    executor = submitit.LocalExecutor(folder=folder)
    gpus = _local_gpu_count()
    jobs = []
    for index in range(sweep.settings.workers):
        parameters: dict[str, Any] = {"timeout_min": LOCAL_TIMEOUT_MIN}
        if gpus:
            parameters.update(gpus_per_node=1, visible_gpus=[index % gpus])
        executor.update_parameters(**parameters)
        jobs.append(executor.submit(worker_entry, str(sweep.paths.root)))
    print(f"Started {len(jobs)} local workers; logs in {sweep.paths.jobs_dir / f'phase{PHASE}'}")
    return jobs


def _share_cpus(workers: int) -> None:
    """Give each local worker its share of the CPUs unless the user set thread counts.

    Measured on 2 cores with the QUAERO example: 2 workers with 2 OpenMP threads each took
    43 s a trial, against 2.5 s with 1 thread each.
    """
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for variable in THREAD_VARIABLES:
        if variable not in os.environ:
            os.environ[variable] = threads
            logger.info("Set %s=%s for each of %d local workers.", variable, threads, workers)


def _local_gpu_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in listing.stdout.splitlines() if line.startswith("GPU "))


def _follow(sweep: Sweep, jobs: list[submitit.Job], interval_s: float = 2.0) -> None:
    """Print progress until every local worker has ended."""
    engine = create_engine(sweep.storage_url, sweep.schema)
    name = study_name(sweep.name, PHASE)
    target = sweep.loaded.tuning.n_trials
    last_line = ""
    try:
        while True:
            done = all(job.done() for job in jobs)
            with engine.connect() as connection:
                counts = count_trials(connection, name)
            line = _progress_line(counts, target)
            if line != last_line:
                print(line, flush=True)
                last_line = line
            if done:
                break
            time.sleep(interval_s)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        print(
            "Interrupted: workers stopped. Run 'make sweep' again to continue this sweep.",
            file=sys.stderr,
        )
        raise
    finally:
        engine.dispose()
    for job in jobs:
        _check_job(job)


def _progress_line(counts: Any, target: int | None) -> str:
    total = f"/{target}" if target else ""
    return (
        f"Trials finished: {counts.finished}{total} (complete {counts.complete}, pruned "
        f"{counts.pruned}, failed {counts.failed}), running {counts.running}"
    )


def _check_job(job: submitit.Job) -> None:
    try:
        job.result()
    except Exception as error:  # submitit re-raises the worker's exception with its traceback
        logger.error(
            "Worker job %s failed: %s (log: %s)",
            job.job_id,
            str(error).splitlines()[0],
            job.paths.stderr,
        )
