"""Render `sbatch_templates/*.sbatch` into job scripts for the worker array and the finalize job.

Templates are plain sbatch scripts with `{{ name }}` placeholders. Rendering is strict and
inserts values verbatim, so callers quote them: `shell_quote` for the shell part of the script,
`sbatch_quote` for the arguments of `#SBATCH` lines, which sbatch reads with its own rules.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpc.slurm_settings import SlurmSettings, validate_env_name
from tuner.errors import HpcTuneError
from tuner.training import OFFLINE_VARIABLES

# The repository's folder in an editable install; a wheel installs it as data files.
_SOURCE_TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "sbatch_templates"
TEMPLATE_DIR = (
    _SOURCE_TEMPLATE_DIR
    if _SOURCE_TEMPLATE_DIR.is_dir()
    else Path(sys.prefix) / "share" / "hpc-tune" / "sbatch_templates"
)
PLACEHOLDER_PATTERN = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

# Variables passed to every job (`sbatch --export=<names>`); a name missing from the
# submitting shell is skipped by sbatch. SLURM_* variables always reach the job. PGPASSWORD
# is never listed: jobs read the password from PGPASSFILE or ~/.pgpass.
DEFAULT_EXPORTED_ENV = (
    # Process basics.
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    # The Python environment of the submitting shell.
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "CONDA_DEFAULT_ENV",
    "PYTHONPATH",
    # libpq connection settings, without the password.
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGCONNECT_TIMEOUT",
    "PGAPPNAME",
    # Model and dataset caches filled on the login node, read offline by the jobs.
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "TRANSFORMERS_CACHE",
    "TORCH_HOME",
    "XDG_CACHE_HOME",
    # The Slurm client configuration, for the squeue calls that workers make.
    "SLURM_CONF",
)
# Every variable of the submitting shell whose name starts with this is exported too.
EXPORTED_ENV_PREFIX = "HPC_TUNE_"

# Arguments of `#SBATCH` lines that need no quotes: sbatch splits on spaces, reads quotes and
# backslashes, and treats an unquoted '#' as the start of a comment.
_SBATCH_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


class TemplateError(HpcTuneError):
    """A template that cannot be rendered, or a value that cannot go into a job script."""


def shell_quote(value: str) -> str:
    """Quote `value` as one bash word (`shlex.quote`)."""
    return shlex.quote(value)


def sbatch_quote(value: str) -> str:
    """Quote `value` as one argument of an `#SBATCH` line.

    sbatch reads backslash as an escape character even inside single quotes, so this uses
    double quotes and escapes backslashes and double quotes.
    """
    if _SBATCH_PLAIN.match(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def filename_pattern(directory: Path, file_pattern: str) -> str:
    """Build an `--output`/`--error` pattern: `directory` taken literally, then `file_pattern`.

    `%` in the directory is doubled so that sbatch reads it as a plain `%`.
    NOTE: `scontrol show job` in Slurm 22.05.8 displays such a doubled `%` wrongly; the file
    names that slurmstepd creates from it were not checked.

    Raises:
        TemplateError: The directory contains a backslash, which would make sbatch ignore
            every replacement symbol such as `%A`.
    """
    if "\\" in str(directory):
        raise TemplateError(
            f"Log folder {str(directory)!r} contains a backslash, which makes sbatch ignore "
            "%A and %a in log file names. Use a checkpoint directory without backslashes."
        )
    return str(directory).replace("%", "%%") + "/" + file_pattern


def render_template(name: str, values: Mapping[str, str], template_dir: Path | None = None) -> str:
    """Render `<template_dir>/<name>.sbatch`, replacing each `{{ key }}` with `values[key]`.

    Values are inserted verbatim. Every placeholder must have a value and every value a
    placeholder.

    Raises:
        TemplateError: The template is missing, has a malformed `{{ ... }}`, or the placeholders
            and the keys of `values` differ.
    """
    path = (template_dir or TEMPLATE_DIR) / f"{name}.sbatch"
    try:
        template = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise TemplateError(
            f"Template {path} not found. Reinstall hpc-tune from its source tree, which ships "
            "the sbatch_templates/ folder."
        ) from error

    placeholders = set(PLACEHOLDER_PATTERN.findall(template))
    leftover = PLACEHOLDER_PATTERN.sub("", template)
    if "{{" in leftover or "}}" in leftover:
        raise TemplateError(
            f"Template {path} has a malformed placeholder: write {{{{ name }}}} with a name "
            "made of letters, digits and '_'."
        )
    missing = sorted(placeholders - set(values))
    unknown = sorted(set(values) - placeholders)
    if missing or unknown:
        raise TemplateError(
            f"Template {path}: no value for placeholders {missing}, no placeholder for values "
            f"{unknown}. Make the template's placeholders match the renderer's values."
        )
    for key, value in values.items():
        if not isinstance(value, str):
            raise TemplateError(f"Template {path}: value of {key!r} is not a string: {value!r}.")
    return PLACEHOLDER_PATTERN.sub(lambda match: values[match[1]], template)


def sbatch_option_lines(
    options: Sequence[tuple[str, str | None]], extra: Sequence[str] = ()
) -> str:
    """Format `#SBATCH` lines.

    Args:
        options: `(option, value)` pairs; the value is quoted with `sbatch_quote`, and None
            gives a flag such as `--requeue`.
        extra: Raw options written as they are (`hpc.slurm.extra_sbatch`).
    """
    lines = [
        f"#SBATCH {option}" if value is None else f"#SBATCH {option}={sbatch_quote(value)}"
        for option, value in options
    ]
    lines += [f"#SBATCH {option}" for option in extra]
    return "\n".join(lines)


def job_environment_names(
    extra: Sequence[str] = (), environ: Mapping[str, str] | None = None
) -> list[str]:
    """List the names for `--export`: defaults, `HPC_TUNE_*` names set in `environ`, and `extra`.

    Args:
        extra: More names, usually `SlurmSettings.exported_env`.
        environ: The submitting environment; `os.environ` when None. Only names are read.

    Raises:
        ConfigError: A name in `extra` is malformed or is PGPASSWORD.
    """
    environ = os.environ if environ is None else environ
    prefixed = sorted(name for name in environ if name.startswith(EXPORTED_ENV_PREFIX))
    names = list(DEFAULT_EXPORTED_ENV) + prefixed
    for index, name in enumerate(extra):
        names.append(validate_env_name(name, f"hpc.slurm.exported_env[{index}]"))
    return list(dict.fromkeys(names))


def render_worker_script(
    settings: SlurmSettings,
    *,
    sweep_dir: Path,
    working_dir: Path,
    python: str,
    job_name: str,
    workers: int,
    log_dir: Path,
    exported_env: Sequence[str] | None = None,
    template_dir: Path | None = None,
    offline: bool = True,
) -> str:
    """Render the worker array script: `workers` tasks, each running `python -m hpc worker`.

    Args:
        settings: The `hpc.slurm` settings.
        sweep_dir: The sweep's checkpoint directory (absolute).
        working_dir: Directory the jobs run in (`--chdir`, absolute).
        python: The Python interpreter of the jobs, usually `sys.executable`; the command of
            `settings.python` replaces it when set.
        job_name: `--job-name` of the array.
        workers: Number of array tasks (>= 1).
        log_dir: Folder of the `<job_name>-%A_%a.out` and `.err` logs (absolute).
        exported_env: Variable names for `--export`; when None,
            `job_environment_names(settings.exported_env)` read from this process's environment.
        template_dir: Folder of the templates; the project's `sbatch_templates/` when None.
        offline: `hpc.offline`: whether the job sets HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE and
            HF_DATASETS_OFFLINE to 1, after the setup lines so that they cannot undo it.

    Raises:
        TemplateError: A path is relative, a value spans several lines or `workers` < 1.
        ConfigError: An exported name is malformed or is PGPASSWORD.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise TemplateError(f"Cannot render {workers!r} workers: expected an integer >= 1.")
    array = f"0-{workers - 1}"
    if settings.array_parallelism is not None:
        array += f"%{settings.array_parallelism}"

    options: list[tuple[str, str | None]] = [
        ("--job-name", _job_name(job_name)),
        ("--array", array),
        ("--requeue", None),
        ("--signal", f"USR2@{settings.signal_lead_s}"),
        ("--open-mode", "append"),
        ("--output", _log_pattern(log_dir, f"{job_name}-%A_%a.out")),
        ("--error", _log_pattern(log_dir, f"{job_name}-%A_%a.err")),
        *_common_options(
            working_dir, exported_env, settings, settings.cpus_per_task, settings.mem_gb
        ),
        *_gpu_options(settings.gpus_per_task),
        *_time_options(settings.time_min),
        *_site_options(settings.partition, settings, settings.constraint),
    ]
    return _render(
        "worker",
        settings,
        options,
        extra=settings.extra_sbatch,
        python=python,
        sweep_dir=sweep_dir,
        template_dir=template_dir,
        offline=offline,
    )


def render_finalize_script(
    settings: SlurmSettings,
    *,
    sweep_dir: Path,
    working_dir: Path,
    python: str,
    job_name: str,
    log_dir: Path,
    exported_env: Sequence[str] | None = None,
    template_dir: Path | None = None,
    offline: bool = True,
) -> str:
    """Render the finalize job script, which runs `python -m hpc finalize` with its own resources.

    The job takes its resources from `settings.finalize`, its partition from there or from the
    workers, and the workers' account and QOS; the constraint and `extra_sbatch` apply to the
    workers only. The dependency on the workers is not part of the script: pass it to
    `submit_script` as `--dependency=afterany:<id>`. Arguments are those of
    `render_worker_script`; the logs are `<job_name>-%j.out` and `.err`.

    Raises:
        TemplateError: A path is relative or a value spans several lines.
        ConfigError: An exported name is malformed or is PGPASSWORD.
    """
    finalize = settings.finalize
    options: list[tuple[str, str | None]] = [
        ("--job-name", _job_name(job_name)),
        ("--requeue", None),
        ("--open-mode", "append"),
        ("--output", _log_pattern(log_dir, f"{job_name}-%j.out")),
        ("--error", _log_pattern(log_dir, f"{job_name}-%j.err")),
        *_common_options(
            working_dir, exported_env, settings, finalize.cpus_per_task, finalize.mem_gb
        ),
        *_gpu_options(finalize.gpus),
        *_time_options(finalize.time_min),
        *_site_options(finalize.partition or settings.partition, settings, None),
    ]
    return _render(
        "finalize",
        settings,
        options,
        extra=(),
        python=python,
        sweep_dir=sweep_dir,
        template_dir=template_dir,
        offline=offline,
    )


def _render(
    name: str,
    settings: SlurmSettings,
    options: Sequence[tuple[str, str | None]],
    *,
    extra: Sequence[str],
    python: str,
    sweep_dir: Path,
    template_dir: Path | None,
    offline: bool,
) -> str:
    setup = "\n".join(settings.setup) if settings.setup else "# (none)"
    values = {
        "sbatch_options": sbatch_option_lines(options, extra),
        "setup": setup,
        "offline_env": offline_env_lines(offline),
        "python": " ".join(
            shell_quote(_one_line(word, "python")) for word in settings.python or (python,)
        ),
        "sweep_dir": shell_quote(str(_absolute(sweep_dir, "sweep_dir"))),
    }
    return render_template(name, values, template_dir)


def offline_env_lines(offline: bool) -> str:
    """Return the shell lines of `hpc.offline`: exports of the offline variables, or a comment."""
    if not offline:
        return "# hpc.offline is false: Hugging Face libraries may download models and data."
    lines = ["# Jobs never download models or data (hpc.offline): everything must be on disk."]
    lines += [f"export {name}=1" for name in OFFLINE_VARIABLES]
    return "\n".join(lines)


def _common_options(
    working_dir: Path,
    exported_env: Sequence[str] | None,
    settings: SlurmSettings,
    cpus: int,
    mem_gb: int | None,
) -> list[tuple[str, str | None]]:
    if exported_env is None:
        exported_env = job_environment_names(settings.exported_env)
    names = [validate_env_name(name, "exported_env") for name in exported_env]
    if not names:
        raise TemplateError("The --export list is empty: pass job_environment_names().")
    options: list[tuple[str, str | None]] = [
        ("--chdir", str(_absolute(working_dir, "working_dir"))),
        ("--export", ",".join(dict.fromkeys(names))),
        ("--nodes", "1"),
        ("--ntasks", "1"),
        ("--cpus-per-task", str(cpus)),
    ]
    if mem_gb is not None:
        options.append(("--mem", f"{mem_gb}G"))
    return options


def _gpu_options(gpus: int) -> list[tuple[str, str | None]]:
    return [("--gres", f"gpu:{gpus}")] if gpus > 0 else []


def _time_options(time_min: int | None) -> list[tuple[str, str | None]]:
    return [("--time", str(time_min))] if time_min is not None else []


def _site_options(
    partition: str | None, settings: SlurmSettings, constraint: str | None
) -> list[tuple[str, str | None]]:
    pairs = [
        ("--partition", partition),
        ("--account", settings.account),
        ("--qos", settings.qos),
        ("--constraint", constraint),
    ]
    return [(option, value) for option, value in pairs if value is not None]


def _log_pattern(log_dir: Path, file_pattern: str) -> str:
    return filename_pattern(_absolute(log_dir, "log_dir"), file_pattern)


def _absolute(path: Path, label: str) -> Path:
    path = Path(path)
    if not path.is_absolute():
        raise TemplateError(f"{label} {str(path)!r} must be an absolute path: jobs run elsewhere.")
    _one_line(str(path), label)
    return path


def _job_name(job_name: str) -> str:
    _one_line(job_name, "job name")
    if "/" in job_name or "%" in job_name:
        raise TemplateError(
            f"Invalid job name {job_name!r}: it is part of the log file names, so it cannot "
            "contain '/' or '%'."
        )
    return job_name


def _one_line(value: str, label: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "\n\r\0"):
        raise TemplateError(f"Invalid {label} {value!r}: expected a non-empty single line.")
    return value
