"""Parsers of Slurm output (tables of real 22.05 strings) and the runner, with fake commands.

Strings marked "captured" were printed by the Slurm 22.05.8 clients of Debian bookworm against a
controller without compute nodes and without accounting. sacct lines follow the formats of
sacct 22.05 (JobID `<array>_<task>` or `<array>_[<expression>]`, State `CANCELLED by <uid>`,
ExitCode `<status>:<signal>`), because that cluster had no accounting database.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from datetime import datetime
from pathlib import Path

import pytest

from hpc import scheduler
from hpc.scheduler import (
    JobState,
    SchedulerError,
    cancel_jobs,
    controller_answers,
    job_end_time,
    parse_sacct,
    parse_sbatch_job_id,
    parse_scontrol_ping,
    parse_slurm_time,
    parse_squeue,
    query_jobs,
    run_scheduler,
    submit_script,
)

# Captured: `scontrol ping` with the controller up, and with it down (exit status 1).
PING_UP = "Slurmctld(primary) at vm is UP\n"
PING_DOWN = (
    "Slurmctld(primary) at vm is DOWN\n"
    "*****************************************\n"
    "** RESTORE SLURMCTLD DAEMON TO SERVICE **\n"
    "*****************************************\n"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PING_UP, True),
        (PING_DOWN, False),
        ("Slurmctld(primary) at ctl1 is DOWN\nSlurmctld(backup) at ctl2 is UP\n", True),
        ("", False),
        ("scontrol: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\n", False),
    ],
)
def test_parse_scontrol_ping(text: str, expected: bool) -> None:
    assert parse_scontrol_ping(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Submitted batch job 1\n", "1"),  # captured, plain sbatch
        ("2\n", "2"),  # captured, sbatch --parsable
        ("123;cluster2\n", "123"),  # --parsable on a federation or with -M
        ("Submitted batch job 77 on cluster other\n", "77"),
        ("\nSubmitted batch job 9\n", "9"),
    ],
)
def test_parse_sbatch_job_id(text: str, expected: str) -> None:
    assert parse_sbatch_job_id(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n",
        "Submitted batch job\n",
    ],
)
def test_parse_sbatch_job_id_rejects(text: str) -> None:
    with pytest.raises(SchedulerError, match="no job id"):
        parse_sbatch_job_id(text)


# Captured: `squeue -h -o "%i|%A|%T|%r"` with pending arrays, then with -r (one line per task).
NODES_DOWN = (
    "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions"
)
SQUEUE_GROUPED = f"""\
1|1|PENDING|{NODES_DOWN}
3_[0-3%2]|3|PENDING|ReqNodeNotAvail, UnavailableNodes:vm
4_[3-5]|4|PENDING|ReqNodeNotAvail, UnavailableNodes:vm
"""
SQUEUE_AFTER_CANCEL = f"""\
1|1|CANCELLED|{NODES_DOWN}
3_[0,2-3%2]|3|PENDING|ReqNodeNotAvail, UnavailableNodes:vm
4_[3]|4|PENDING|ReqNodeNotAvail, UnavailableNodes:vm
9|9|PENDING|JobHeldUser
"""
SQUEUE_PER_TASK = """\
3_0|3|PENDING|ReqNodeNotAvail, UnavailableNodes:vm
3_1|3|PENDING|ReqNodeNotAvail, UnavailableNodes:vm
"""
# Same format for started tasks: each has its own job id (%A), and the reason is "None".
SQUEUE_RUNNING = """\
12_0|13|RUNNING|None
12_1|14|COMPLETING|None
12_[2-7%2]|12|PENDING|JobArrayTaskLimit
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            SQUEUE_GROUPED,
            [
                JobState(
                    "1",
                    None,
                    "PENDING",
                    "Nodes required for job are DOWN, DRAINED or reserved for jobs in higher "
                    "priority partitions",
                    None,
                    "1",
                ),
                JobState(
                    "3", "0-3%2", "PENDING", "ReqNodeNotAvail, UnavailableNodes:vm", None, "3"
                ),
                JobState("4", "3-5", "PENDING", "ReqNodeNotAvail, UnavailableNodes:vm", None, "4"),
            ],
        ),
        (
            SQUEUE_PER_TASK,
            [
                JobState("3", "0", "PENDING", "ReqNodeNotAvail, UnavailableNodes:vm", None, "3"),
                JobState("3", "1", "PENDING", "ReqNodeNotAvail, UnavailableNodes:vm", None, "3"),
            ],
        ),
        (
            SQUEUE_RUNNING,
            [
                JobState("12", "0", "RUNNING", None, None, "13"),
                JobState("12", "1", "COMPLETING", None, None, "14"),
                JobState("12", "2-7%2", "PENDING", "JobArrayTaskLimit", None, "12"),
            ],
        ),
        ("", []),
    ],
)
def test_parse_squeue(text: str, expected: list[JobState]) -> None:
    assert parse_squeue(text) == expected


def test_parse_squeue_after_cancel() -> None:
    states = parse_squeue(SQUEUE_AFTER_CANCEL)
    assert [state.display_id for state in states] == ["1", "3_[0,2-3%2]", "4_3", "9"]
    assert [state.state for state in states] == ["CANCELLED", "PENDING", "PENDING", "PENDING"]
    assert [state.active for state in states] == [False, True, True, True]
    assert states[2].array_task_id == "3"


@pytest.mark.parametrize("line", ["1|1|PENDING", "abc|1|PENDING|None", "12_x|12|RUNNING|None"])
def test_parse_squeue_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(SchedulerError, match="Unexpected"):
        parse_squeue(line + "\n")


SACCT_NO_HEADER = """\
46|46|CANCELLED by 0|0:0|None
47_0|48|COMPLETED|0:0|None
47_1|49|TIMEOUT|0:0|None
47_2|50|FAILED|1:0|None
47_3|51|RUNNING|0:0|None
47_[4-7%2]|47|PENDING|0:0|JobArrayTaskLimit
52|52|OUT_OF_MEMORY|0:125|None
53|53|NODE_FAIL|0:0|None
54|54|PREEMPTED|0:15|None
"""
SACCT_WITH_HEADER_AND_STEPS = """\
JobID|State|ExitCode|JobIDRaw|Reason
61|COMPLETED|0:0|61|None
61.batch|COMPLETED|0:0|61.batch|
61.extern|COMPLETED|0:0|61.extern|
61.0|COMPLETED|0:0|61.0|
62_3|REQUEUED|0:0|65|None
62_3.batch|CANCELLED|0:15|65.batch|
"""


def test_parse_sacct_table() -> None:
    states = parse_sacct(SACCT_NO_HEADER)
    assert [(s.job_id, s.array_task_id, s.state) for s in states] == [
        ("46", None, "CANCELLED"),
        ("47", "0", "COMPLETED"),
        ("47", "1", "TIMEOUT"),
        ("47", "2", "FAILED"),
        ("47", "3", "RUNNING"),
        ("47", "4-7%2", "PENDING"),
        ("52", None, "OUT_OF_MEMORY"),
        ("53", None, "NODE_FAIL"),
        ("54", None, "PREEMPTED"),
    ]
    assert [s.exit_code for s in states][2:4] == ["0:0", "1:0"]
    assert states[5].reason == "JobArrayTaskLimit"
    assert states[0].reason is None
    assert [s.raw_job_id for s in states][:3] == ["46", "48", "49"]
    assert [s.active for s in states] == [False, False, False, False, True, True] + [False] * 3


def test_parse_sacct_uses_header_and_skips_steps() -> None:
    states = parse_sacct(SACCT_WITH_HEADER_AND_STEPS)
    assert states == [
        JobState("61", None, "COMPLETED", None, "0:0", "61"),
        JobState("62", "3", "REQUEUED", None, "0:0", "65"),
    ]
    assert states[1].active


@pytest.mark.parametrize(
    "text",
    [
        "46|46|CANCELLED by 0\n",  # fewer fields than SACCT_FIELDS
        "JobName|Elapsed\nwrap|00:00:01\n",  # header without JobID
        "x_1|1|RUNNING|0:0|None\n",
    ],
)
def test_parse_sacct_rejects(text: str) -> None:
    with pytest.raises(SchedulerError):
        parse_sacct(text)


@pytest.mark.parametrize("text", ["N/A", "NONE", "Unknown", "", "  N/A\n"])
def test_parse_slurm_time_without_time(text: str) -> None:
    assert parse_slurm_time(text) is None


def test_parse_slurm_time_local_time() -> None:
    parsed = parse_slurm_time("2026-12-04T22:48:21\n")
    assert parsed == datetime(2026, 12, 4, 22, 48, 21).astimezone()
    assert parsed is not None and parsed.tzinfo is not None


def test_parse_slurm_time_rejects_relative_format() -> None:
    with pytest.raises(SchedulerError, match="Unexpected Slurm time"):
        parse_slurm_time("Tomorr 10:00")


def test_job_state_display_id() -> None:
    assert JobState("5", None, "RUNNING", None, None).display_id == "5"
    assert JobState("5", "2", "RUNNING", None, None).display_id == "5_2"
    assert JobState("5", "0,2-3%2", "PENDING", None, None).display_id == "5_[0,2-3%2]"


# The runner, with fake Slurm commands: small shell scripts first on PATH.


BASH = shutil.which("bash") or "/bin/bash"
# Programs the fake commands use; everything else stays off PATH, real Slurm clients included.
FAKE_COMMAND_TOOLS = ("cat", "env", "grep", "head", "sleep", "touch", "tr")


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder for fake Slurm commands; PATH holds it and a few basic tools, nothing else."""
    folder = tmp_path / "bin"
    tools = tmp_path / "tools"
    folder.mkdir()
    tools.mkdir()
    for tool in FAKE_COMMAND_TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is needed by the fake Slurm commands"
        (tools / tool).symlink_to(found)
    monkeypatch.setenv("PATH", f"{folder}:{tools}")
    monkeypatch.setattr(scheduler, "_sacct_disabled", False)
    return folder


def write_command(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_run_scheduler_returns_output(fake_bin: Path) -> None:
    write_command(fake_bin, "squeue", 'printf "%s\\n" "$@"')
    result = run_scheduler(["squeue", "-h", "-o", "%i|%T"])
    assert result.returncode == 0
    assert result.stdout.splitlines() == ["-h", "-o", "%i|%T"]


def test_run_scheduler_failure_carries_details(fake_bin: Path) -> None:
    write_command(
        fake_bin,
        "scancel",
        'echo "scancel: error: Kill job error on job id 12: Unable to contact slurm controller'
        ' (connect failure)" >&2; exit 8',
    )
    with pytest.raises(SchedulerError) as caught:
        run_scheduler(["scancel", "12"])
    error = caught.value
    assert error.returncode == 8
    assert error.command == ["scancel", "12"]
    assert "connect failure" in error.stderr
    assert "'scancel 12' failed with exit code 8" in str(error)
    assert "Unable to contact slurm controller" in str(error)


def test_run_scheduler_keeps_stderr_tail(fake_bin: Path) -> None:
    write_command(
        fake_bin, "sacct", "head -c 5000 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 1"
    )
    with pytest.raises(SchedulerError) as caught:
        run_scheduler(["sacct"])
    assert str(caught.value).endswith("xEND")
    assert len(str(caught.value)) < 2100


def test_run_scheduler_without_check(fake_bin: Path) -> None:
    write_command(fake_bin, "scontrol", 'echo "$1 is DOWN"; exit 1')
    result = run_scheduler(["scontrol", "ping"], check=False)
    assert result.returncode == 1
    assert result.stdout == "ping is DOWN\n"


def test_run_scheduler_timeout(fake_bin: Path) -> None:
    write_command(fake_bin, "squeue", "exec sleep 30")
    with pytest.raises(SchedulerError, match=r"'squeue -h' timed out after 0.3 s"):
        run_scheduler(["squeue", "-h"], timeout_s=0.3)


def test_run_scheduler_missing_command(fake_bin: Path) -> None:
    with pytest.raises(SchedulerError, match="sbatch was not found on PATH"):
        run_scheduler(["sbatch", "job.sbatch"])


def test_run_scheduler_logs_command_line(fake_bin: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_command(fake_bin, "squeue", "true")
    with caplog.at_level(logging.DEBUG, logger="hpc.scheduler"):
        run_scheduler(["squeue", "--format=%i|%T"])
    assert "Running squeue '--format=%i|%T'" in caplog.text


def test_run_scheduler_only_runs_slurm_commands() -> None:
    with pytest.raises(ValueError, match="Not a Slurm client command"):
        run_scheduler(["rm", "-rf", "/tmp/nothing"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f"printf '{PING_UP}'", True),
        ("printf 'Slurmctld(primary) at vm is DOWN\\n'; exit 1", False),
        ("exec sleep 30", False),
    ],
)
def test_controller_answers(fake_bin: Path, body: str, expected: bool) -> None:
    write_command(fake_bin, "scontrol", body)
    assert controller_answers(timeout_s=0.5) is expected


def test_controller_answers_without_scontrol(fake_bin: Path) -> None:
    assert controller_answers() is False


def test_submit_script_hides_password(
    fake_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / "sbatch-call"
    write_command(
        fake_bin,
        "sbatch",
        f'printf "%s\\n" "$@" > {record}.args; env > {record}.env; echo 42',
    )
    monkeypatch.setenv("PGPASSWORD", "hunter2-secret")
    monkeypatch.setenv("SBATCH_EXPORT", "ALL")
    monkeypatch.setenv("PGPASSFILE", "/home/u/.pgpass")
    script = tmp_path / "my sweep" / "worker.sbatch"

    job_id = submit_script(script, ["--dependency=afterany:41"])

    assert job_id == "42"
    args = Path(f"{record}.args").read_text().splitlines()
    assert args == ["--parsable", "--dependency=afterany:41", str(script)]
    environment = Path(f"{record}.env").read_text()
    assert "hunter2-secret" not in environment
    assert "PGPASSWORD" not in environment
    assert "SBATCH_EXPORT" not in environment
    assert "PGPASSFILE=/home/u/.pgpass" in environment
    assert os.environ["PGPASSWORD"] == "hunter2-secret"


def test_submit_script_failure_names_settings(fake_bin: Path, tmp_path: Path) -> None:
    write_command(
        fake_bin,
        "sbatch",
        "echo 'sbatch: error: invalid partition specified: nope' >&2;"
        "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2;"
        "exit 1",
    )
    with pytest.raises(SchedulerError) as caught:
        submit_script(tmp_path / "worker.sbatch")
    assert "Invalid partition name specified" in str(caught.value)
    assert "hpc.slurm" in str(caught.value)
    assert caught.value.returncode == 1


def test_query_jobs_reads_sacct(fake_bin: Path, tmp_path: Path) -> None:
    record = tmp_path / "sacct.args"
    write_command(
        fake_bin,
        "sacct",
        f'printf "%s\\n" "$@" > {record}; env | grep ^SLURM_ >> {record};'
        "printf '47_0|48|COMPLETED|0:0|None\\n47_[1-3]|47|PENDING|0:0|None\\n'",
    )
    states = query_jobs(["47", "12_3"])
    assert [state.display_id for state in states] == ["47_0", "47_[1-3]"]
    recorded = record.read_text().splitlines()
    assert "--jobs=47,12_3" in recorded
    assert "--format=JobID,JobIDRaw,State,ExitCode,Reason" in recorded
    assert "SLURM_BITSTR_LEN=0" in recorded
    assert "SLURM_TIME_FORMAT=standard" in recorded


def test_query_jobs_falls_back_to_squeue(
    fake_bin: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = tmp_path / "sacct.calls"
    write_command(
        fake_bin,
        "sacct",
        f"echo call >> {calls}; echo 'Slurm accounting storage is disabled' >&2; exit 1",
    )
    write_command(fake_bin, "squeue", f"printf '{SQUEUE_PER_TASK}'")

    with caplog.at_level(logging.WARNING, logger="hpc.scheduler"):
        first = query_jobs(["3"])
        second = query_jobs(["3"])

    assert [state.display_id for state in first] == ["3_0", "3_1"]
    assert second == first
    assert calls.read_text().count("call") == 1
    assert caplog.text.count("sacct is unavailable") == 1


def test_query_jobs_squeue_forgot_job(fake_bin: Path) -> None:
    write_command(fake_bin, "sacct", "echo 'Slurm accounting storage is disabled' >&2; exit 1")
    write_command(
        fake_bin, "squeue", "echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1"
    )
    assert query_jobs(["999"]) == []


def test_query_jobs_other_sacct_error(fake_bin: Path) -> None:
    write_command(
        fake_bin,
        "sacct",
        "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1",
    )
    with pytest.raises(SchedulerError, match="Problem talking to the database"):
        query_jobs(["5"])


@pytest.mark.parametrize("job_id", ["-1", "12_[1-3]", "12;rm", "", "12.batch"])
def test_query_jobs_rejects_invalid_ids(job_id: str) -> None:
    with pytest.raises(ValueError, match="Invalid Slurm job id"):
        query_jobs([job_id])


def test_query_jobs_without_ids_runs_nothing(fake_bin: Path) -> None:
    assert query_jobs([]) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("echo 2026-12-04T23:18:21", datetime(2026, 12, 4, 23, 18, 21).astimezone()),
        ("echo N/A", None),  # captured: a pending job
        ("echo NONE", None),  # a running job without time limit
        ("true", None),  # captured: a job that ended prints nothing
        ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", None),
    ],
)
def test_job_end_time(fake_bin: Path, body: str, expected: datetime | None) -> None:
    write_command(fake_bin, "squeue", body)
    assert job_end_time("12") == expected


def test_job_end_time_controller_down(fake_bin: Path) -> None:
    write_command(
        fake_bin,
        "squeue",
        "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2;"
        "exit 1",
    )
    with pytest.raises(SchedulerError, match="connect failure"):
        job_end_time("12")


def test_cancel_jobs(fake_bin: Path, tmp_path: Path) -> None:
    record = tmp_path / "scancel.args"
    write_command(fake_bin, "scancel", f'printf "%s\\n" "$@" > {record}')
    cancel_jobs(["12", "13_4", "12"])
    assert record.read_text().splitlines() == ["12", "13_4"]


def test_cancel_jobs_nothing(fake_bin: Path, tmp_path: Path) -> None:
    record = tmp_path / "scancel.args"
    write_command(fake_bin, "scancel", f"touch {record}")
    cancel_jobs([])
    assert not record.exists()
