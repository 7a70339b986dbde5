"""Two-phase sweeps: write phase 1's report, plan phase 2, create its study, record it.

The finalize job of phase 1 (on Slurm) or the coordinator (locally) calls `promote` once
phase 1's budget is spent. Phase 2 is a study of its own, `<sweep>.phase2`. Its first trial
is enqueued at phase 1's best values of the kept hyperparameters, and every phase-2 trial
trains under the same frozen values of the others.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import asdict
from pathlib import Path

import optuna

from hpc import tables
from hpc.hints import plural
from hpc.storage import create_engine, optuna_storage
from hpc.sweep import Storage, Sweep, SweepRequest, load_sweep
from hpc.sweep_state import read_sweep_state, study_name, write_json_atomic
from tuner.best_config import write_text_atomically
from tuner.data_checksum import data_checksums
from tuner.errors import HpcTuneError
from tuner.phases import STOP, PhasePlan, plan_phase_two
from tuner.report import SUMMARY_NAME, ReportContext, compute_importances, write_report
from tuner.space import optuna_params

logger = logging.getLogger(__name__)

SECOND_PHASE = 2


def report_dir(sweep: Sweep, phase: int | None = None) -> Path:
    """Return where the report of a phase goes: `output_dir/phase_N` in two-phase sweeps."""
    output_dir = sweep.loaded.tuning.output_dir.expanduser().resolve()
    if not sweep.loaded.tuning.two_phase_tuning:
        return output_dir
    return output_dir / f"phase_{phase or sweep.phase}"


def report_context(sweep: Sweep, storage: Storage, n_trials: int | None) -> ReportContext:
    """Gather what the report states besides the trials: workers, GPU-hours, data, command."""
    tuning = sweep.loaded.tuning
    two_phase = tuning.two_phase_tuning
    state = sweep.state or {}
    working_dir = Path(state.get("working_dir") or Path.cwd())
    engine = create_engine(storage.url, storage.schema)
    try:
        usage = tables.worker_usage(engine, sweep.name, sweep.phase)
    finally:
        engine.dispose()
    executor = state.get("executor", "local")
    gpus_per_worker = sweep.gpus_per_trial
    workers = (
        f"{plural(usage.workers, 'worker run')} ({executor}) on "
        f"{plural(len(usage.hosts), 'host')} ({', '.join(usage.hosts)})"
    )
    if executor == "slurm":
        workers += f", in {plural(usage.jobs, 'Slurm job run')}"
    train_command = None
    if sweep.settings.objective == "edsnlp":
        config = report_dir(sweep) / "config.yml"
        train_command = (
            f"cd {shlex.quote(str(working_dir))} && python -m edsnlp.train "
            f"--config {shlex.quote(str(config))}"
        )
    return ReportContext(
        sweep_name=sweep.name,
        metric=tuning.metric,
        seed=tuning.seed,
        n_trials_target=n_trials,
        phase=sweep.phase if two_phase else None,
        frozen_values=dict(sweep.phase_plan.get("frozen", {})) if sweep.phase > 1 else {},
        gpus_per_trial=sweep.gpus_per_trial,
        allocated_gpu_hours=usage.held_s * gpus_per_worker / 3600,
        workers=workers,
        data=data_checksums(sweep.loaded.config, working_dir),
        train_command=train_command,
        seed_path=tuning.seed_path,
        share_with_group=sweep.settings.share_with_group,
    )


def promote(sweep: Sweep, storage: Storage, n_trials: int | None) -> tuple[PhasePlan, Sweep]:
    """End phase 1: write its report, plan phase 2 and, unless the plan stops, create it.

    Returns:
        The plan, and the sweep as recorded afterwards (in phase 2 unless the plan stops).
    """
    rdb = optuna_storage(storage.url, storage.schema, create_tables=False)
    first = optuna.load_study(study_name=sweep.study_name, storage=rdb)
    hyperparameters = sweep.loaded.tuning.hyperparameters
    importances = compute_importances(first)
    plan = plan_phase_two(first.get_trials(deepcopy=False), hyperparameters, importances)
    logger.info("Phase 1 of sweep %s is over: %s.", sweep.name, plan.reason)
    try:
        folder = write_report(
            first,
            report_dir(sweep, 1),
            sweep.loaded.path,
            hyperparameters,
            report_context(sweep, storage, n_trials),
            importances=importances,
        )
        logger.info("Phase 1 report written to %s", folder)
    except HpcTuneError as error:  # no complete trial: the summary explains why
        logger.error("Phase 1 report incomplete: %s", error)
    if plan.decision == STOP:
        summary = report_dir(sweep, 1) / SUMMARY_NAME
        if summary.is_file():
            write_text_atomically(
                summary, f"{summary.read_text()}\nThe sweep stops after phase 1: {plan.reason}.\n"
            )

    state = read_sweep_state(sweep.paths) or {}
    state["phase_plan"] = asdict(plan)
    if plan.decision != STOP:
        second_name = study_name(sweep.name, SECOND_PHASE)
        second = optuna.create_study(
            study_name=second_name, storage=rdb, direction="maximize", load_if_exists=True
        )
        second.set_user_attr("phase_plan", state["phase_plan"])
        start = optuna_params(plan.start, hyperparameters)
        second.enqueue_trial(start, user_attrs={"phase_1_best": True}, skip_if_exists=True)
        state["phase"] = SECOND_PHASE
        state["studies"] = {**state.get("studies", {}), str(SECOND_PHASE): second_name}
        logger.info(
            "Phase 2 study %s created; its first trial repeats phase 1's best values %s.",
            second_name,
            start,
        )
    write_json_atomic(sweep.paths.sweep_file, state)
    again = load_sweep(SweepRequest(config_path=sweep.loaded.path), use_recorded_overrides=True)
    return plan, again


def phase_one_stays_best(sweep: Sweep, storage: Storage) -> str | None:
    """Return a sentence when phase 1's best value beats every complete phase-2 trial."""
    rdb = optuna_storage(storage.url, storage.schema, create_tables=False)
    first = optuna.load_study(study_name=study_name(sweep.name, 1), storage=rdb)
    second = optuna.load_study(study_name=sweep.study_name, storage=rdb)
    try:
        best_first, best_second = first.best_trial, second.best_trial
    except ValueError:
        return None
    if best_first.value is None or best_second.value is None:
        return None
    if best_first.value <= best_second.value:
        return None
    return (
        f"Phase 1's best trial {best_first.number} ({best_first.value}) stays better than "
        f"phase 2's best trial {best_second.number} ({best_second.value}); train phase 1's "
        f"best values, in {report_dir(sweep, 1) / 'config.yml'}."
    )
