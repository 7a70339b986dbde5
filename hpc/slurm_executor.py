"""Slurm: render the sweep's sbatch scripts, submit the worker array and the finalize job."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from hpc import scheduler, templates
from hpc.hints import hpc_command, plural
from hpc.log_context import WORKER_LOG_DIR
from hpc.slurm_settings import SlurmSettings, derived_time_min
from hpc.sweep import Sweep
from hpc.sweep_state import read_sweep_state, write_json_atomic
from tuner.errors import HpcTuneError
from tuner.private_dirs import make_private_dir

logger = logging.getLogger(__name__)

WORKER_SCRIPT = "worker.sbatch"
FINALIZE_SCRIPT = "finalize.sbatch"


@dataclass(frozen=True)
class Submission:
    """Job ids of one submission of workers and their finalize job."""

    array_job_id: str
    finalize_job_id: str
    log_dir: Path


def sbatch_dir(sweep: Sweep) -> Path:
    return sweep.paths.root / "sbatch"


def render_scripts(sweep: Sweep, working_dir: Path) -> tuple[Path, Path]:
    """Render the worker and finalize scripts into `<checkpoint>/sbatch/`, ready for sbatch."""
    folder = make_private_dir(sbatch_dir(sweep))
    log_dir = make_private_dir(sweep.paths.jobs_dir / "slurm")
    worker = templates.render_worker_script(
        _worker_settings(sweep),
        sweep_dir=sweep.paths.root,
        working_dir=working_dir,
        python=sys.executable,
        job_name=f"hpc-{sweep.name}",
        workers=sweep.settings.workers,
        log_dir=log_dir,
        offline=sweep.settings.offline,
    )
    finalize = templates.render_finalize_script(
        sweep.settings.slurm,
        sweep_dir=sweep.paths.root,
        working_dir=working_dir,
        python=sys.executable,
        job_name=f"hpc-{sweep.name}-finalize",
        log_dir=log_dir,
        offline=sweep.settings.offline,
    )
    worker_path = folder / WORKER_SCRIPT
    finalize_path = folder / FINALIZE_SCRIPT
    _write_script(worker_path, worker)
    _write_script(finalize_path, finalize)
    return worker_path, finalize_path


def _worker_settings(sweep: Sweep) -> SlurmSettings:
    """Return the workers' Slurm settings, with a time limit derived from a GPU-hour budget
    when the user set none."""
    settings = sweep.settings.slurm
    tuning = sweep.loaded.tuning
    if settings.time_min is not None or tuning.n_trials is not None or tuning.gpu_hours is None:
        return settings
    time_min = derived_time_min(
        tuning.gpu_hours, sweep.settings.workers, settings.gpus_per_task, settings.signal_lead_s
    )
    logger.info(
        "Worker time limit: %d min, derived from gpu_hours=%s over %d workers "
        "(set hpc.slurm.time_min to choose it).",
        time_min,
        tuning.gpu_hours,
        sweep.settings.workers,
    )
    return dataclasses.replace(settings, time_min=time_min)


def submit(sweep: Sweep) -> Submission:
    """Submit the rendered worker array, then a finalize job that runs after all of it.

    If the finalize job is rejected, the array is cancelled, so no worker runs unrecorded.
    """
    folder = sbatch_dir(sweep)
    array_job_id = scheduler.submit_script(folder / WORKER_SCRIPT)
    try:
        # afterany, not afterok: one failed array task must not block the report.
        finalize_job_id = scheduler.submit_script(
            folder / FINALIZE_SCRIPT, extra_args=[f"--dependency=afterany:{array_job_id}"]
        )
    except scheduler.SchedulerError:
        scheduler.cancel_jobs([array_job_id])
        logger.error("Cancelled worker array %s: its finalize job was rejected.", array_job_id)
        raise
    _record_jobs(sweep, array_job_id, finalize_job_id)
    return Submission(array_job_id, finalize_job_id, sweep.paths.jobs_dir / "slurm")


def submit_finalize(sweep: Sweep, after: list[str]) -> str:
    """Submit a finalize job that runs after the given jobs end, and record it."""
    job_id = scheduler.submit_script(
        sbatch_dir(sweep) / FINALIZE_SCRIPT,
        # Whole arrays: a dependency on an array's id waits for all of its tasks.
        extra_args=[f"--dependency=afterany:{':'.join(sorted({j.split('_')[0] for j in after}))}"],
    )
    _record_jobs(sweep, "", job_id)
    return job_id


def test_scripts(sweep: Sweep) -> None:
    """Check the rendered scripts with `bash -n` and `sbatch --test-only`, submitting nothing.

    Raises:
        HpcTuneError: With the script, and the shell's or sbatch's message.
    """
    for name in (WORKER_SCRIPT, FINALIZE_SCRIPT):
        script = sbatch_dir(sweep) / name
        syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        if syntax.returncode != 0:
            raise HpcTuneError(
                f"{script}: invalid shell ({syntax.stderr.strip()}). Check hpc.slurm.setup."
            )
        scheduler.submit_script(script, extra_args=["--test-only"], parse_job_id=False)


def active_jobs(sweep: Sweep) -> list[str]:
    """Return the recorded jobs of the sweep that are still queued or running."""
    recorded = (sweep.state or {}).get("submissions", [])
    job_ids = [job for entry in recorded for job in (entry["workers"], entry["finalize"]) if job]
    if not job_ids:
        return []
    return sorted({state.job_id for state in scheduler.active_jobs(job_ids)})


def reject_if_jobs_active(sweep: Sweep) -> None:
    """Stop a second submission while jobs of an earlier one are still queued or running."""
    active = active_jobs(sweep)
    if active:
        raise HpcTuneError(
            f"Sweep {sweep.name} still has jobs queued or running ({', '.join(active)}). Follow "
            f"them with '{hpc_command('status', sweep)}', add workers with 'sbatch "
            f"{sbatch_dir(sweep) / WORKER_SCRIPT}', or cancel them with "
            f"'{hpc_command('cancel', sweep)}' first."
        )


def print_submission(sweep: Sweep, submission: Submission) -> None:
    print(f"Sweep {sweep.name}: submitted to Slurm.")
    tasks = "1 task" if sweep.settings.workers == 1 else f"{sweep.settings.workers} tasks"
    print(f"  workers:  array job {submission.array_job_id} ({tasks})")
    print(f"  finalize: job {submission.finalize_job_id} (after the workers, writes the report)")
    print(f"  logs:     {sweep.paths.jobs_dir / WORKER_LOG_DIR} (Slurm's: {submission.log_dir})")
    print(
        f"  scripts:  {sbatch_dir(sweep)} (sbatch worker.sbatch adds "
        f"{plural(sweep.settings.workers, 'more worker')})"
    )
    print(f"Follow:   {hpc_command('status', sweep)}")
    print(
        f"Cancel:   scancel {submission.finalize_job_id} {submission.array_job_id} "
        "(the finalize job first)"
    )
    print(f"Report:   {sweep.loaded.tuning.output_dir.expanduser().resolve()} when it ends")


def _record_jobs(sweep: Sweep, array_job_id: str, finalize_job_id: str) -> None:
    state = read_sweep_state(sweep.paths) or {}
    submissions = list(state.get("submissions", []))
    submissions.append({"phase": 1, "workers": array_job_id, "finalize": finalize_job_id})
    state["submissions"] = submissions
    write_json_atomic(sweep.paths.sweep_file, state)


def _write_script(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o700)
    logger.info("Rendered %s", path)
