"""Rendering of sbatch_templates/: strict placeholders, golden files, quoting and secrets.

Set HPC_TUNE_UPDATE_GOLDEN=1 to rewrite the golden files after an intended template change,
then review the diff.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hpc import scheduler
from hpc.slurm_settings import SlurmSettings, parse_slurm_section
from hpc.templates import (
    DEFAULT_EXPORTED_ENV,
    TemplateError,
    filename_pattern,
    job_environment_names,
    render_finalize_script,
    render_template,
    render_worker_script,
    sbatch_option_lines,
    sbatch_quote,
    shell_quote,
)
from tuner.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"
UPDATE_GOLDEN = os.environ.get("HPC_TUNE_UPDATE_GOLDEN") == "1"
BASH = shutil.which("bash") or "/bin/bash"

# A checkpoint directory with spaces, both kinds of quotes, '#', '%' and '$'.
SWEEP_DIR = Path('/scratch/o\'brien/my "best" sweep #1 50% $HOME')
WORKING_DIR = Path("/home/o'brien/nlp project")
PYTHON = "/opt/hpc tune/venv/bin/python"
GOLDEN_ENVIRON = {"HPC_TUNE_ALLOW_CPU": "1", "PGPASSWORD": "hunter2-secret", "HOME": "/home/u"}


def golden_settings() -> SlurmSettings:
    return parse_slurm_section(
        {
            "partition": "gpu",
            "account": "nlp-team",
            "qos": "normal",
            "gpus_per_task": 1,
            "cpus_per_task": 8,
            "mem_gb": 32,
            "time_min": 720,
            "constraint": "a100",
            "array_parallelism": 4,
            "extra_sbatch": ["--exclusive", '--comment="hpc tune"'],
            "setup": ["module load cuda/12.1", "source '/opt/hpc tune/venv/bin/activate'"],
            "exported_env": ["WANDB_DIR"],
            "finalize": {"partition": "cpu"},
        }
    )


def render_golden_worker() -> str:
    return render_worker_script(
        golden_settings(),
        sweep_dir=SWEEP_DIR,
        working_dir=WORKING_DIR,
        python=PYTHON,
        job_name="hpc-obrien-config-1a2b3c4d",
        workers=8,
        log_dir=SWEEP_DIR / "jobs" / "slurm",
        exported_env=job_environment_names(["WANDB_DIR"], GOLDEN_ENVIRON),
    )


def render_golden_finalize() -> str:
    return render_finalize_script(
        golden_settings(),
        sweep_dir=SWEEP_DIR,
        working_dir=WORKING_DIR,
        python=PYTHON,
        job_name="hpc-obrien-config-1a2b3c4d-finalize",
        log_dir=SWEEP_DIR / "jobs" / "slurm",
        exported_env=job_environment_names(["WANDB_DIR"], GOLDEN_ENVIRON),
    )


@pytest.mark.parametrize(
    ("name", "render"),
    [("worker.sbatch", render_golden_worker), ("finalize.sbatch", render_golden_finalize)],
)
def test_golden_file(name: str, render) -> None:
    rendered = render()
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.write_text(rendered, encoding="utf-8")
    assert rendered == path.read_text(encoding="utf-8")


@pytest.mark.parametrize("render", [render_golden_worker, render_golden_finalize])
def test_bash_accepts_rendered_script(render, tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(render())
    result = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def parse_sbatch_lines(script: str) -> list[str]:
    """Split `#SBATCH` lines into arguments with sbatch's documented rules.

    sbatch 22.05 reads options from the `#SBATCH` lines before the first command. Quotes (single
    or double) group characters, a backslash escapes the next character even inside quotes,
    and an unquoted `#` starts a comment.
    """
    arguments = []
    for line in script.splitlines():
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.lstrip().startswith("#"):
                break
            continue
        text, index = line[len("#SBATCH") :], 0
        while index < len(text):
            while index < len(text) and text[index].isspace():
                index += 1
            if index == len(text):
                break
            word, quote, escaped = "", None, False
            while index < len(text) and (quote or not text[index].isspace()):
                char = text[index]
                index += 1
                if escaped:
                    word, escaped = word + char, False
                elif char == "\\":
                    escaped = True
                elif quote:
                    if char == quote:
                        quote = None
                    else:
                        word += char
                elif char in "'\"":
                    quote = char
                elif char == "#":
                    index = len(text)
                    break
                else:
                    word += char
            if word:
                arguments.append(word)
    return arguments


def options_of(script: str) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for argument in parse_sbatch_lines(script):
        name, _, value = argument.partition("=")
        options[name] = value if "=" in argument else None
    return options


def test_worker_sbatch_options() -> None:
    options = options_of(render_golden_worker())
    log_dir = filename_pattern(SWEEP_DIR / "jobs" / "slurm", "")
    assert options["--job-name"] == "hpc-obrien-config-1a2b3c4d"
    assert options["--array"] == "0-7%4"
    assert "--requeue" in options
    assert options["--signal"] == "USR2@180"
    assert options["--output"] == f"{log_dir}hpc-obrien-config-1a2b3c4d-%A_%a.out"
    assert options["--error"] == f"{log_dir}hpc-obrien-config-1a2b3c4d-%A_%a.err"
    assert "50%% $HOME/jobs" in str(options["--output"])
    assert options["--chdir"] == str(WORKING_DIR)
    assert options["--cpus-per-task"] == "8"
    assert options["--mem"] == "32G"
    assert options["--gres"] == "gpu:1"
    assert options["--time"] == "720"
    assert options["--partition"] == "gpu"
    assert options["--account"] == "nlp-team"
    assert options["--qos"] == "normal"
    assert options["--constraint"] == "a100"
    assert "--exclusive" in options
    assert options["--comment"] == "hpc tune"


def test_export_list() -> None:
    exported = str(options_of(render_golden_worker())["--export"]).split(",")
    for name in ("PATH", "HOME", "USER", "LANG", "PGPASSFILE", "PGHOST", "SLURM_CONF"):
        assert name in exported
    assert "HPC_TUNE_ALLOW_CPU" in exported
    assert "WANDB_DIR" in exported
    assert "PGPASSWORD" not in exported
    assert len(exported) == len(set(exported))


def test_finalize_sbatch_options() -> None:
    options = options_of(render_golden_finalize())
    assert options["--job-name"] == "hpc-obrien-config-1a2b3c4d-finalize"
    assert "--array" not in options
    assert "--gres" not in options
    assert "--signal" not in options
    assert "--constraint" not in options
    assert "--exclusive" not in options
    assert options["--partition"] == "cpu"
    assert options["--account"] == "nlp-team"
    assert options["--cpus-per-task"] == "1"
    assert options["--mem"] == "4G"
    assert options["--time"] == "60"
    assert str(options["--output"]).endswith("/hpc-obrien-config-1a2b3c4d-finalize-%j.out")
    assert options["--chdir"] == str(WORKING_DIR)


def test_optional_resources_left_out() -> None:
    settings = parse_slurm_section({"gpus_per_task": 0, "mem_gb": None})
    options = options_of(
        render_worker_script(
            settings,
            sweep_dir=Path("/s"),
            working_dir=Path("/w"),
            python="python3",
            job_name="hpc-x",
            workers=1,
            log_dir=Path("/s/jobs"),
            exported_env=["PATH"],
        )
    )
    assert options["--array"] == "0-0"
    for option in ("--gres", "--mem", "--time", "--partition", "--account", "--qos"):
        assert option not in options
    assert options["--export"] == "PATH"


def run_rendered_script(script_text: str, tmp_path: Path, environ: dict[str, str]) -> list[str]:
    """Run a rendered script with bash and a fake srun; return srun's arguments."""
    fake_bin = tmp_path / "fake bin"
    fake_bin.mkdir()
    srun = fake_bin / "srun"
    srun.write_text(
        f'#!{BASH}\nprintf "%s\\0" "$@" > "$RECORD_DIR/args"\nenv > "$RECORD_DIR/env"\n'
    )
    srun.chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(script_text)
    env = {
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "RECORD_DIR": str(tmp_path),
        "SLURM_CPUS_PER_TASK": "3",
        **environ,
    }
    subprocess.run([BASH, str(script)], env=env, check=True, timeout=30)
    return (tmp_path / "args").read_text().split("\0")[:-1]


def test_worker_script_runs_worker_with_exact_paths(tmp_path: Path) -> None:
    sweep_dir = tmp_path / 'it\'s a "sweep" $HOME `x` dir'
    settings = parse_slurm_section({"setup": ["export SETUP_RAN=yes"], "gpus_per_task": 0})
    script = render_worker_script(
        settings,
        sweep_dir=sweep_dir,
        working_dir=tmp_path,
        python=sys.executable,
        job_name="hpc-x",
        workers=2,
        log_dir=sweep_dir / "jobs",
        exported_env=["PATH"],
    )
    arguments = run_rendered_script(script, tmp_path, {})
    assert arguments == [
        "--unbuffered",
        "-c",
        "3",
        sys.executable,
        "-m",
        "hpc",
        "worker",
        "--sweep-dir",
        str(sweep_dir),
    ]
    environment = (tmp_path / "env").read_text().splitlines()
    for line in (
        "SETUP_RAN=yes",
        "SLURM_EXPORT_ENV=ALL",
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "OMP_NUM_THREADS=3",
    ):
        assert line in environment


def test_finalize_script_runs_finalize(tmp_path: Path) -> None:
    script = render_finalize_script(
        SlurmSettings(),
        sweep_dir=tmp_path / "my sweep",
        working_dir=tmp_path,
        python=sys.executable,
        job_name="hpc-x-finalize",
        log_dir=tmp_path / "jobs",
        exported_env=["PATH"],
    )
    arguments = run_rendered_script(script, tmp_path, {"HF_HUB_OFFLINE": "0"})
    assert arguments[-4:] == ["hpc", "finalize", "--sweep-dir", str(tmp_path / "my sweep")]
    environment = (tmp_path / "env").read_text().splitlines()
    # hpc.offline (true by default) wins over a value set before the script.
    assert "HF_HUB_OFFLINE=1" in environment
    assert "HF_HUB_OFFLINE=0" not in environment
    assert "TRANSFORMERS_OFFLINE=1" in environment
    assert "HF_DATASETS_OFFLINE=1" in environment


def test_no_secret_in_rendered_scripts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "hunter2-secret")
    monkeypatch.setenv("HPC_TUNE_STORAGE", "postgresql+psycopg2://tuner@db/optuna")
    settings = parse_slurm_section({"exported_env": ["WANDB_DIR"]})
    common: dict[str, Any] = {
        "sweep_dir": Path("/s"),
        "working_dir": Path("/w"),
        "python": "python3",
        "log_dir": Path("/s/jobs"),
    }
    for script in (
        render_worker_script(settings, job_name="hpc-x", workers=2, **common),
        render_finalize_script(settings, job_name="hpc-x-finalize", **common),
    ):
        assert "hunter2-secret" not in script
        assert "PGPASSWORD" not in script
        assert "postgresql" not in script
        assert "HPC_TUNE_STORAGE" in str(options_of(script)["--export"])


def test_job_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {"HPC_TUNE_B": "1", "HPC_TUNE_A": "2", "PGPASSWORD": "x", "OTHER": "y"}
    names = job_environment_names(["OTHER", "PATH"], environ)
    assert names[: len(DEFAULT_EXPORTED_ENV)] == list(DEFAULT_EXPORTED_ENV)
    assert names[len(DEFAULT_EXPORTED_ENV) :] == ["HPC_TUNE_A", "HPC_TUNE_B", "OTHER"]
    monkeypatch.setenv("HPC_TUNE_FROM_OS", "1")
    assert "HPC_TUNE_FROM_OS" in job_environment_names()


def test_job_environment_names_rejects_password() -> None:
    with pytest.raises(ConfigError, match="PGPASSWORD cannot be passed"):
        job_environment_names(["PGPASSWORD"], {})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("16G", "16G"),
        ("gpu:1", "gpu:1"),
        ("/a b", '"/a b"'),
        ("it's", '"it\'s"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\\b", '"a\\\\b"'),
        ("x#y", '"x#y"'),
        ("$HOME", '"$HOME"'),
    ],
)
def test_sbatch_quote(value: str, expected: str) -> None:
    quoted = sbatch_quote(value)
    assert quoted == expected
    assert parse_sbatch_lines(f"#SBATCH --comment={quoted}") == [f"--comment={value}"]


def test_shell_quote_is_shlex() -> None:
    assert shell_quote("it's") == "'it'\"'\"'s'"
    assert shell_quote("plain") == "plain"


def test_filename_pattern() -> None:
    assert filename_pattern(Path("/a/50%/b"), "x-%j.out") == "/a/50%%/b/x-%j.out"
    with pytest.raises(TemplateError, match="backslash"):
        filename_pattern(Path("/a\\b"), "x-%j.out")


def test_sbatch_option_lines() -> None:
    lines = sbatch_option_lines([("--requeue", None), ("--chdir", "/a b")], ["--exclusive"])
    assert lines == '#SBATCH --requeue\n#SBATCH --chdir="/a b"\n#SBATCH --exclusive'


def write_template(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "job.sbatch").write_text(text)
    return folder


def test_render_template_inserts_verbatim(tmp_path: Path) -> None:
    folder = write_template(tmp_path, "#!/bin/bash\n{{ a }} and {{b}} and {{ a }}\n${HOME}\n")
    rendered = render_template("job", {"a": "'x y'", "b": "$B"}, folder)
    assert rendered == "#!/bin/bash\n'x y' and $B and 'x y'\n${HOME}\n"


@pytest.mark.parametrize(
    ("text", "values", "message"),
    [
        ("{{ a }} {{ b }}", {"a": "1"}, r"no value for placeholders \['b'\]"),
        ("{{ a }}", {"a": "1", "c": "2"}, r"no placeholder for values \['c'\]"),
        ("{{ a-b }}", {}, r"malformed placeholder"),
        ("{{ a }} }}", {"a": "1"}, r"malformed placeholder"),
        ("{{ a }}", {"a": 1}, r"value of 'a' is not a string"),
    ],
)
def test_render_template_is_strict(tmp_path: Path, text: str, values, message: str) -> None:
    folder = write_template(tmp_path, text)
    with pytest.raises(TemplateError, match=message):
        render_template("job", values, folder)


def test_render_template_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="not found"):
        render_template("nothing", {}, tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sweep_dir": Path("relative/sweep")}, r"sweep_dir 'relative/sweep' must be an absolute"),
        ({"working_dir": Path("w")}, r"working_dir 'w' must be an absolute path"),
        ({"log_dir": Path("jobs")}, r"log_dir 'jobs' must be an absolute path"),
        ({"sweep_dir": Path("/a\nb")}, r"expected a non-empty single line"),
        ({"job_name": "a/b"}, r"cannot contain '/' or '%'"),
        ({"job_name": ""}, r"Invalid job name"),
        ({"workers": 0}, r"expected an integer >= 1"),
        ({"python": ""}, r"Invalid python"),
    ],
)
def test_render_worker_rejects(changes: dict, message: str) -> None:
    arguments = {
        "sweep_dir": Path("/s"),
        "working_dir": Path("/w"),
        "python": "python3",
        "job_name": "hpc-x",
        "workers": 2,
        "log_dir": Path("/s/jobs"),
        "exported_env": ["PATH"],
        **changes,
    }
    with pytest.raises(TemplateError, match=message):
        render_worker_script(SlurmSettings(), **arguments)


def test_render_rejects_password_in_export_list() -> None:
    with pytest.raises(ConfigError, match="PGPASSWORD cannot be passed"):
        render_finalize_script(
            SlurmSettings(),
            sweep_dir=Path("/s"),
            working_dir=Path("/w"),
            python="python3",
            job_name="hpc-x",
            log_dir=Path("/s/jobs"),
            exported_env=["PATH", "PGPASSWORD"],
        )


@pytest.mark.integration
def test_real_sbatch_reads_quoted_paths(tmp_path: Path) -> None:
    """Submit a held worker array to the Slurm controller at hand and read back its paths."""
    if not scheduler.controller_answers():
        pytest.skip("no Slurm controller answers 'scontrol ping'")
    sweep_dir = tmp_path / 'it\'s a "sweep" #1'
    working_dir = tmp_path / "work dir"
    for folder in (sweep_dir / "jobs", working_dir):
        folder.mkdir(parents=True)
    script = sweep_dir / "worker.sbatch"
    script.write_text(
        render_worker_script(
            parse_slurm_section({"gpus_per_task": 0, "cpus_per_task": 1, "mem_gb": None}),
            sweep_dir=sweep_dir,
            working_dir=working_dir,
            python=sys.executable,
            job_name="hpc-template-test",
            workers=2,
            log_dir=sweep_dir / "jobs",
        )
    )
    job_id = scheduler.submit_script(script, ["--hold"])
    try:
        job_details = scheduler.run_scheduler(["scontrol", "show", "job", job_id]).stdout
        assert f"WorkDir={working_dir}\n" in job_details
        assert f"Command={script}\n" in job_details
        assert "ArrayTaskThrottle" not in job_details
        assert "Requeue=1" in job_details
        # Accounting records a new job, then its pending reason, after sbatch returns: slurmdbd
        # received it over 30 s late once, in a full test run.
        deadline = time.monotonic() + 120
        states = scheduler.query_jobs([job_id])
        while time.monotonic() < deadline and (
            not states or any(state.reason is None for state in states)
        ):
            time.sleep(1)
            states = scheduler.query_jobs([job_id])
        assert {state.state for state in states} == {"PENDING"}
        assert {state.reason for state in states} == {"JobHeldUser"}
    finally:
        scheduler.cancel_jobs([job_id])
