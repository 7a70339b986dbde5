"""Slurm: render the sweep's sbatch scripts, submit the worker array and the finalize job."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from hpc import scheduler, templates
from hpc.sweep import Sweep
from hpc.sweep_state import read_sweep_state, write_json_atomic

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
    folder = sbatch_dir(sweep)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_dir = sweep.paths.jobs_dir / "slurm"
    log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    worker = templates.render_worker_script(
        sweep.settings.slurm,
        sweep_dir=sweep.paths.root,
        working_dir=working_dir,
        python=sys.executable,
        job_name=f"hpc-{sweep.name}",
        workers=sweep.settings.workers,
        log_dir=log_dir,
    )
    finalize = templates.render_finalize_script(
        sweep.settings.slurm,
        sweep_dir=sweep.paths.root,
        working_dir=working_dir,
        python=sys.executable,
        job_name=f"hpc-{sweep.name}-finalize",
        log_dir=log_dir,
    )
    worker_path = folder / WORKER_SCRIPT
    finalize_path = folder / FINALIZE_SCRIPT
    _write_script(worker_path, worker)
    _write_script(finalize_path, finalize)
    return worker_path, finalize_path


def submit(sweep: Sweep) -> Submission:
    """Submit the rendered worker array, then a finalize job that runs after all of it."""
    folder = sbatch_dir(sweep)
    array_job_id = scheduler.submit_script(folder / WORKER_SCRIPT)
    # afterany, not afterok: one failed array task must not block the report.
    finalize_job_id = scheduler.submit_script(
        folder / FINALIZE_SCRIPT, extra_args=[f"--dependency=afterany:{array_job_id}"]
    )
    _record_jobs(sweep, array_job_id, finalize_job_id)
    return Submission(array_job_id, finalize_job_id, sweep.paths.jobs_dir / "slurm")


def print_submission(sweep: Sweep, submission: Submission) -> None:
    config = sweep.loaded.path
    print(f"Sweep {sweep.name}: submitted to Slurm.")
    print(f"  workers:  array job {submission.array_job_id} ({sweep.settings.workers} tasks)")
    print(f"  finalize: job {submission.finalize_job_id} (after the workers, writes the report)")
    print(f"  logs:     {submission.log_dir}")
    print(f"  scripts:  {sbatch_dir(sweep)} (sbatch worker.sbatch adds workers)")
    print(f"Follow:   make status CONFIG={config}   or   squeue -u $USER")
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
