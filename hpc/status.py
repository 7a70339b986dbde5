"""`python -m hpc status`: trials by state, best trial and budget of a sweep."""

from __future__ import annotations

from pathlib import Path

import optuna

from hpc.claims import count_trials
from hpc.coordinator import PHASE, Sweep, SweepRequest, close_sweep, open_sweep
from hpc.storage import create_engine, hide_password, optuna_storage
from hpc.sweep_state import study_name
from tuner.space import user_values


def print_status(config_path: Path, storage: str | None) -> int:
    """Print one screen about the sweep of `config_path`; return the exit code."""
    sweep = open_sweep(SweepRequest(config_path=config_path, storage=storage), start_embedded=False)
    try:
        return _print_sweep(sweep)
    finally:
        close_sweep(sweep)


def _print_sweep(sweep: Sweep) -> int:
    name = study_name(sweep.name, PHASE)
    engine = create_engine(sweep.storage_url, sweep.schema)
    try:
        with engine.connect() as connection:
            counts = count_trials(connection, name)
    finally:
        engine.dispose()
    tuning = sweep.loaded.tuning
    print(f"Sweep:    {sweep.name} (phase {PHASE}, study {name})")
    print(f"Storage:  {hide_password(sweep.storage_url)}")
    print(
        f"Trials:   complete {counts.complete}, pruned {counts.pruned}, failed {counts.failed}, "
        f"running {counts.running}, waiting {counts.waiting}"
    )
    if tuning.n_trials is not None:
        print(f"Budget:   {counts.finished} of {tuning.n_trials} trials finished")
    elif tuning.gpu_hours is not None:
        print(
            f"Budget:   {counts.finished_seconds / 3600:.3f} of {tuning.gpu_hours} GPU-hours spent"
        )
    if counts.complete:
        study = optuna.load_study(
            study_name=name,
            storage=optuna_storage(sweep.storage_url, sweep.schema, create_tables=False),
        )
        best = study.best_trial
        print(f"Best:     trial {best.number}, value {best.value}")
        for param, value in user_values(best.params, tuning.hyperparameters).items():
            print(f"          {param}: {value}")
    else:
        print("Best:     no complete trial yet")
    return 0
