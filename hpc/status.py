"""`python -m hpc status`: trials by state, best trial and budget of a sweep."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpc.reaper import reap_sweep
from hpc.storage import create_engine, hide_password, optuna_storage
from hpc.sweep import (
    Storage,
    Sweep,
    SweepRequest,
    close_storage,
    count_sweep_trials,
    load_started_sweep,
    open_storage,
)
from tuner.space import user_values


def print_status(config_path: Path, storage_url: str | None) -> int:
    """Print one screen about the sweep of `config_path`; return the exit code."""
    request = SweepRequest(config_path=config_path, storage=storage_url)
    sweep = load_started_sweep(request)
    storage = open_storage(sweep, request, create=False)
    try:
        return _print_sweep(sweep, storage)
    finally:
        close_storage(storage)


def _print_sweep(sweep: Sweep, storage: Storage) -> int:
    reaped = _reap(sweep, storage)
    counts = count_sweep_trials(sweep, storage)
    tuning = sweep.loaded.tuning

    print(f"Sweep:    {sweep.name} (phase {sweep.phase}, study {sweep.study_name})")
    print(f"Storage:  {hide_password(storage.url)}")
    print(
        f"Trials:   complete {counts.complete}, pruned {counts.pruned}, failed {counts.failed}, "
        f"running {counts.running}, waiting {counts.waiting}, retried {counts.retried}"
    )

    cancel = (sweep.state or {}).get("cancel")
    if cancel:
        print(f"Cancelled: at {cancel['requested_at']}; 'make sweep' continues the sweep")
    if reaped:
        print(f"Reaped:   {reaped} stale trials of ended jobs or processes, queued to run again")
    if tuning.n_trials is not None:
        print(f"Budget:   {counts.finished} of {tuning.n_trials} trials finished")
    elif tuning.gpu_hours is not None:
        used_h = counts.finished_seconds / 3600
        print(f"Budget:   {used_h:.3f} of {tuning.gpu_hours} GPU-hours spent")
    if not counts.complete:
        print("Best:     no complete trial yet")
        return 0

    study = optuna.load_study(
        study_name=sweep.study_name,
        storage=optuna_storage(storage.url, storage.schema, create_tables=False),
    )
    best = study.best_trial
    print(f"Best:     trial {best.number}, value {best.value}")
    for param, value in user_values(best.params, tuning.hyperparameters).items():
        print(f"          {param}: {value}")
    return 0


def _reap(sweep: Sweep, storage: Storage) -> int:
    """Reap stale trials, so that they are cleaned up even when every worker is dead."""
    if sweep.state is None:
        return 0
    engine = create_engine(storage.url, storage.schema)
    try:
        study = optuna.load_study(
            study_name=sweep.study_name,
            storage=optuna_storage(storage.url, storage.schema, create_tables=False),
        )
        return reap_sweep(engine, study, sweep)
    finally:
        engine.dispose()
