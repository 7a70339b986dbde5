"""The status screen's text, hints and progress line, from data as `collect_status` gives it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hpc.claims import Budget, StudyCounts
from hpc.local_workers import progress_line
from hpc.scheduler import JobState
from hpc.status import job_hint, render_status

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "status.schema.json").read_text()
)

RUNNING: dict[str, Any] = {
    "schema_version": 1,
    "time": "2026-12-05T10:00:00+01:00",
    "sweep": {
        "name": "ner-quaero",
        "state": "running",
        "executor": "slurm",
        "study": "ner-quaero.phase2",
        "storage": "postgresql+psycopg2://alice@db:5432/optuna",
        "checkpoint_dir": "/scratch/alice/checkpoint",
        "cancelled_at": None,
    },
    "phase": {"current": 2, "phases": 2, "plan": "phase 2 tunes lr and dropout"},
    "trials": {
        "complete": 7,
        "pruned": 2,
        "failed": 1,
        "running": 3,
        "waiting": 1,
        "retried": 1,
        "finished": 10,
    },
    "best": {
        "value": 0.8123,
        "trial": 12,
        "phase": 1,
        "metric": ["ner.micro.f"],
        "params": {"lr": 0.001, "dropout": 0.2},
    },
    "budget": {
        "unit": "gpu_hours",
        "total": 4.0,
        "used": 1.5,
        "left": 2.5,
        "spent": None,
        "mean_trial_s": 600.0,
        "workers": 3,
        "eta_s": 3000,
    },
    "jobs": [
        {"id": "41_0", "role": "workers", "state": "RUNNING", "reason": None, "hint": None},
        {"id": "41_1", "role": "workers", "state": "RUNNING", "reason": None, "hint": None},
        {"id": "41_2", "role": "workers", "state": "RUNNING", "reason": None, "hint": None},
        {
            "id": "41_3",
            "role": "workers",
            "state": "PENDING",
            "reason": "launch failed requeued held",
            "hint": job_hint(JobState("41", "3", "PENDING", "launch failed requeued held", None)),
        },
        {"id": "42", "role": "finalize", "state": "PENDING", "reason": "Dependency", "hint": None},
    ],
    "jobs_note": None,
    "stale": {
        "reaped": 1,
        "silent": [{"trial": 15, "job": "41_2", "silent_s": 420}],
        "grace_s": 300,
    },
    "next": None,
}


def test_running_sweep_screen() -> None:
    jsonschema.validate(RUNNING, SCHEMA)
    text = render_status(RUNNING)
    assert text.splitlines()[:4] == [
        "Sweep:    ner-quaero, running",
        "Phase:    2 of 2 (phase 2 tunes lr and dropout)",
        "Study:    ner-quaero.phase2 in postgresql+psycopg2://alice@db:5432/optuna",
        "Trials:   complete 7, pruned 2, failed 1, running 3, waiting 1, retried 1",
    ]
    assert "Best:     ner.micro.f = 0.8123 (trial 12, phase 1)\n          lr: 0.001\n" in text
    assert (
        "Budget:   1.500 of 4 GPU-hours spent, 2.500 left; about 50 min to go with 3 workers "
        "(mean trial 10 min)" in text
    )
    assert "Jobs:     41 tasks 0-2 [workers]: RUNNING\n" in text
    assert "          41 task 3 [workers]: PENDING (launch failed requeued held)\n" in text
    assert "          42 [finalize]: PENDING (Dependency)\n" in text
    assert "scontrol release 41_3" in text
    assert "Reaped:   1 stale trial of ended jobs or processes" in text
    assert "Stale:    trial 15 has sent no heartbeat for 7 min; kept because job 41_2" in text


def test_held_group_gets_one_release_command() -> None:
    data = copy.deepcopy(RUNNING)
    data["jobs"] = [
        {
            "id": f"41_{task}",
            "role": "workers",
            "state": "PENDING",
            "reason": "JobHeldUser",
            "hint": job_hint(JobState("41", str(task), "PENDING", "JobHeldUser", None)),
        }
        for task in (0, 1, 2, 5)
    ]
    text = render_status(data)
    assert "Jobs:     41 tasks 0-2,5 [workers]: PENDING (JobHeldUser)" in text
    assert text.count("Action:") == 1
    assert "Action:   held by a user: scontrol release 41\n" in text


@pytest.mark.parametrize(
    ("state", "reason", "expected"),
    [
        ("PENDING", "launch failed requeued held", "scontrol release 7_1"),
        ("PENDING", "JobHeldAdmin", "ask them to run scontrol release 7_1"),
        ("REQUEUE_HOLD", None, "scontrol release 7_1"),
        ("PENDING", "DependencyNeverSatisfied", "scancel 7_1"),
        ("PENDING", "Resources", None),
        ("RUNNING", None, None),
    ],
)
def test_job_hints(state: str, reason: str | None, expected: str | None) -> None:
    hint = job_hint(JobState("7", "1", state, reason, None))
    if expected is None:
        assert hint is None
    else:
        assert expected in (hint or "")


def test_finished_and_stopped_screens() -> None:
    finished = copy.deepcopy(RUNNING)
    finished["sweep"]["state"] = "finished"
    finished["budget"] = {
        "unit": "trials",
        "total": 20,
        "used": 20,
        "left": 0,
        "spent": "n_trials reached (20 finished, 0 running)",
        "mean_trial_s": 95.0,
        "workers": 0,
        "eta_s": None,
    }
    finished["jobs"], finished["stale"] = [], {"reaped": 0, "silent": [], "grace_s": 300}
    jsonschema.validate(finished, SCHEMA)
    text = render_status(finished)
    assert "Budget:   20 of 20 trials finished, 0 left\n" in text
    assert "Jobs:     none" in text
    assert "Next:" not in text

    stopped = copy.deepcopy(finished)
    stopped["sweep"]["state"] = "stopped"
    stopped["budget"].update(used=12, left=8, spent=None)
    stopped["jobs_note"] = "Slurm did not answer: 'squeue' timed out"
    stopped["next"] = (
        "cd /work && python -m hpc sweep --config c.yml  (no job runs and budget is left)"
    )
    jsonschema.validate(stopped, SCHEMA)
    text = render_status(stopped)
    assert "12 of 20 trials finished, 8 left; no worker runs now" in text
    assert "(Slurm did not answer: 'squeue' timed out)" in text
    assert "Next:     cd /work && python -m hpc sweep --config c.yml  (no job runs" in text


def test_schema_rejects_missing_key() -> None:
    broken = copy.deepcopy(RUNNING)
    del broken["budget"]
    with pytest.raises(jsonschema.ValidationError, match="'budget' is a required property"):
        jsonschema.validate(broken, SCHEMA)


def test_progress_line_counts_trials_and_gpu_hours() -> None:
    counts = StudyCounts(complete=5, pruned=1, failed=0, running=2, finished_seconds=5400)
    line = progress_line(counts, Budget(n_trials=12), (3, 0.81234))
    assert line == (
        "[############............] 6/12 trials (complete 5, pruned 1, failed 0), "
        "best 0.8123 (trial 3), running 2"
    )
    line = progress_line(counts, Budget(n_trials=None, gpu_seconds=4 * 3600), None)
    assert line.startswith("[#########...............] 1.50/4 GPU-hours, 6 trials")
    assert "best -" in line
    assert progress_line(StudyCounts(), Budget(n_trials=None), None).startswith("0 trials")
