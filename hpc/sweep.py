"""Opening a sweep: its config, settings, folders, storage and study."""

from __future__ import annotations

import getpass
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import URL

from hpc import tables
from hpc.claims import StudyCounts, count_trials
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
from tuner.text import plural

logger = logging.getLogger(__name__)

FIRST_PHASE = 1
SPACE_ATTR = "search_space"
# `hpc.storage: embedded` requests the embedded server explicitly, as Slurm sweeps must.
EMBEDDED = "embedded"


@dataclass(frozen=True)
class SweepRequest:
    """Command-line values; None leaves the config's (or the recorded sweep's) value."""

    config_path: Path
    workers: int | None = None
    executor: str | None = None
    storage: str | None = None
    seed: int | None = None
    n_trials: int | None = None
    skip_preflight: bool = False


@dataclass(frozen=True)
class Sweep:
    """A sweep's config, cluster settings, folders and recorded state, before storage."""

    loaded: LoadedConfig
    settings: HpcSettings
    name: str
    paths: SweepPaths
    state: dict[str, Any] | None
    tuning_overrides: dict[str, Any]

    @property
    def phase(self) -> int:
        """The phase the sweep is in: 1, or 2 once a two-phase sweep was promoted."""
        return int((self.state or {}).get("phase", FIRST_PHASE))

    @property
    def study_name(self) -> str:
        return study_name(self.name, self.phase)

    @property
    def gpus_per_trial(self) -> int:
        """GPUs each trial holds, as recorded when the sweep was submitted (1 by default)."""
        return int((self.state or {}).get("gpus_per_trial", 1))

    @property
    def phase_plan(self) -> dict[str, Any]:
        """The promotion's record: kept and frozen hyperparameters, decision and reason."""
        return dict((self.state or {}).get("phase_plan") or {})


@dataclass(frozen=True)
class Storage:
    """Location of the sweep's study, and the embedded server if this command started it."""

    url: str
    schema: str
    server: Any = None
    stop_server: bool = False

    @property
    def embedded(self) -> dict[str, str] | None:
        if self.server is None:
            return None
        return {"data_dir": str(self.server.data_dir), "socket_dir": str(self.server.socket_dir)}


def load_sweep(request: SweepRequest, use_recorded_overrides: bool = False) -> Sweep:
    """Load and validate the config and the sweep's recorded state; start nothing.

    Args:
        use_recorded_overrides: For `status` and `report`: apply the `tuning:` overrides the
            sweep was started with (such as `--n-trials`) unless the request sets them.
    """
    requested = {"seed": request.seed, "n_trials": request.n_trials}
    requested = {key: value for key, value in requested.items() if value is not None}
    config_path = Path(request.config_path).expanduser()
    if config_path.is_dir():
        raise ConfigError(f"--config: {config_path} is a folder. Pass the YAML config file in it.")

    loaded = load_config(config_path, overrides=requested)
    settings = parse_hpc_section(
        loaded.hpc_section,
        {"workers": request.workers, "executor": request.executor, "storage": request.storage},
    )
    url, source = storage_setting(request, settings)
    if url is not None and url != EMBEDDED:
        parse_storage_url(url, source)  # a password in it fails here, before anything starts
    if os.environ.get(STORAGE_ENV) and os.environ[STORAGE_ENV] != EMBEDDED:
        # Checked even when unused: every HPC_TUNE_* variable is passed to Slurm jobs.
        parse_storage_url(os.environ[STORAGE_ENV], STORAGE_ENV)
    name = settings.sweep_name or default_sweep_name(loaded.path)
    paths = SweepPaths(
        loaded.tuning.checkpoint_dir.expanduser().resolve(), group=settings.share_with_group
    )
    state = read_sweep_state(paths)
    if state is not None and state.get("sweep_name") != name:
        raise ConfigError(
            f"{paths.sweep_file} belongs to sweep {state.get('sweep_name')!r}, not {name!r}. "
            "Give each sweep its own tuning.checkpoint_dir."
        )
    overrides = requested
    if use_recorded_overrides and state is not None:
        overrides = {**state.get("tuning_overrides", {}), **requested}
        loaded = load_config(config_path, overrides=overrides)
    return Sweep(loaded, settings, name, paths, state, overrides)


def open_storage(sweep: Sweep, request: SweepRequest, create: bool) -> Storage:
    """Connect to the sweep's PostgreSQL, starting the embedded server when it uses one.

    The storage is, in order: `--storage`, `hpc.storage`, `HPC_TUNE_STORAGE`, the URL recorded
    in `sweep.json`, the embedded server.

    Args:
        create: True for `sweep`, which may start a new embedded server; False for commands
            that read an existing sweep.
    """
    url, source = storage_setting(request, sweep.settings)
    recorded = (sweep.state or {}).get("storage_url")
    recorded_embedded = (sweep.state or {}).get("embedded")
    if url == EMBEDDED:
        server, stop_server = _embedded_server(sweep, create)
        return Storage(server.url, user_schema(), server, stop_server)
    if url is not None:
        parsed = parse_storage_url(url, source)
        # Compared as parsed URLs: sweep.json of older versions contains the query percent-encoded.
        if recorded and not recorded_embedded and hide_password(recorded) != hide_password(parsed):
            raise ConfigError(
                f"{source}: sweep {sweep.name} keeps its study in {recorded}, not in "
                f"{hide_password(parsed)}. Pass --storage {recorded}, or start a new sweep with "
                "another hpc.sweep_name and tuning.checkpoint_dir."
            )
        check_connection(parsed, source)
        return Storage(parsed.render_as_string(hide_password=False), user_schema())
    if recorded and not recorded_embedded:
        logger.info("Using the storage recorded in %s: %s", sweep.paths.sweep_file, recorded)
        parsed = parse_storage_url(recorded, str(sweep.paths.sweep_file))
        check_connection(parsed, str(sweep.paths.sweep_file))
        return Storage(recorded, user_schema())
    server, stop_server = _embedded_server(sweep, create)
    return Storage(server.url, user_schema(), server, stop_server)


def check_storage(sweep: Sweep, request: SweepRequest) -> URL | None:
    """Connect once to the sweep's PostgreSQL server, if it uses one, before anything is created.

    Returns the parsed URL, or None for the embedded server.

    Raises:
        ConfigError: The URL differs from the sweep's recorded one, or the connection failed.
    """
    url, source = storage_setting(request, sweep.settings)
    state = sweep.state or {}
    if url == EMBEDDED or (url is None and (state.get("embedded") or not state.get("storage_url"))):
        return None
    if url is None:
        url, source = state["storage_url"], str(sweep.paths.sweep_file)
    parsed = parse_storage_url(url, source)
    check_connection(parsed, source)
    return parsed


def close_storage(storage: Storage, force: bool = False) -> None:
    """Stop the embedded server if this command started it, or always with `force`."""
    if storage.server is None or not (storage.stop_server or force):
        return
    from hpc import embedded_pg

    embedded_pg.stop(storage.server)
    logger.info("Stopped the embedded PostgreSQL server (%s).", storage.server.data_dir)


def create_or_load_study(sweep: Sweep, storage: Storage) -> optuna.Study:
    """Create the phase's study and hpc-tune's tables once, or load them on a rerun.

    Raises:
        ConfigError: When the search space or the metric changed since the sweep started.
    """
    ensure_schema(storage.url, storage.schema)
    optuna_rdb = optuna_storage(storage.url, storage.schema, create_tables=True)
    engine = create_engine(storage.url, storage.schema)
    try:
        tables.create_tables(engine)
    finally:
        engine.dispose()
    study = optuna.create_study(
        study_name=sweep.study_name, storage=optuna_rdb, direction="maximize", load_if_exists=True
    )
    space = describe_space(sweep.loaded)
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None:
        study.set_user_attr(SPACE_ATTR, space)
        study.set_user_attr("config_path", str(sweep.loaded.path))
        study.set_user_attr("seed", sweep.loaded.tuning.seed)
        logger.info("Created study %s.", sweep.study_name)
    elif stored != space:
        raise ConfigError(
            f"{sweep.loaded.path}: {_space_change(stored, space)} since sweep {sweep.name} "
            "started, so its trials cannot be compared. Restore the previous values, or start "
            "a new sweep: set another hpc.sweep_name and another tuning.checkpoint_dir."
        )
    else:
        logger.info(
            "Continuing study %s with %s.", sweep.study_name, plural(len(study.trials), "trial")
        )
    return study


def describe_space(loaded: LoadedConfig) -> dict[str, Any]:
    """JSON description of the search space and metric, stored on the study."""
    space = {
        hp.name: {
            "path": hp.path,
            "type": hp.type,
            "low": hp.low,
            "high": hp.high,
            "step": hp.step,
            "log": hp.log,
            "choices": None if hp.choices is None else list(hp.choices),
        }
        for hp in loaded.tuning.hyperparameters
    }
    # A JSON round trip gives the same types as the copy read back from the database.
    return json.loads(json.dumps({"hyperparameters": space, "metric": list(loaded.tuning.metric)}))


def load_started_sweep(request: SweepRequest) -> Sweep:
    """Load a sweep that `sweep` has started, with its recorded overrides.

    Raises:
        HpcTuneError: No `sweep.json` exists for this config.
    """
    sweep = load_sweep(request, use_recorded_overrides=True)
    if sweep.state is None:
        raise HpcTuneError(
            f"No sweep found in {sweep.paths.root}: check tuning.checkpoint_dir and the folder "
            "you run from, or start the sweep with 'python -m hpc sweep'."
        )
    return sweep


def write_state(sweep: Sweep, storage: Storage, executor: str = "local") -> None:
    """Record the sweep in `sweep.json`, keeping what earlier runs recorded."""
    state = dict(sweep.state or {})
    state.update(
        version=STATE_VERSION,
        sweep_name=sweep.name,
        config_path=str(sweep.loaded.path),
        working_dir=os.getcwd(),
        user=getpass.getuser(),
        storage_url=hide_password(storage.url),
        schema=storage.schema,
        embedded=storage.embedded,
        phase=sweep.phase,
        studies={**state.get("studies", {}), str(sweep.phase): sweep.study_name},
        tuning_overrides=sweep.tuning_overrides,
        objective=sweep.settings.objective,
        synthetic=dict(sweep.settings.synthetic),
        keep_models=sweep.settings.keep_models,
        max_requeues=sweep.settings.max_requeues,
        max_retries=sweep.settings.max_retries,
        heartbeat_s=sweep.settings.heartbeat_s,
        heartbeat_grace_s=sweep.settings.heartbeat_grace_s,
        db_retry_s=sweep.settings.db_retry_s,
        signal_lead_s=sweep.settings.slurm.signal_lead_s,
        workers=sweep.settings.workers,
        executor=executor,
        # A Slurm worker's GPUs all serve its trial; a local worker counts as one GPU.
        gpus_per_trial=max(1, sweep.settings.slurm.gpus_per_task) if executor == "slurm" else 1,
    )
    write_json_atomic(sweep.paths.sweep_file, state)


def _space_change(stored: dict[str, Any], current: dict[str, Any]) -> str:
    if stored.get("metric") != current.get("metric"):
        return f"tuning.metric changed from {stored.get('metric')} to {current.get('metric')}"
    before, after = stored.get("hyperparameters", {}), current.get("hyperparameters", {})
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(name for name in set(before) & set(after) if before[name] != after[name])
    parts = []
    if added:
        parts.append(f"added {added}")
    if removed:
        parts.append(f"removed {removed}")
    for name in changed:
        parts.append(f"changed {name!r} from {before[name]} to {after[name]}")
    return "the search space changed (" + "; ".join(parts) + ")"


def storage_setting(request: SweepRequest, settings: HpcSettings) -> tuple[str | None, str]:
    if request.storage:
        return request.storage, "--storage"
    if settings.storage:
        return settings.storage, "hpc.storage"
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV], STORAGE_ENV
    return None, "embedded"


def _embedded_server(sweep: Sweep, create: bool) -> tuple[Any, bool]:
    from hpc import embedded_pg

    recorded = ((sweep.state or {}).get("embedded") or {}).get("data_dir")
    if not create and recorded is None:
        raise HpcTuneError(
            f"No sweep found in {sweep.paths.root}. Run 'make sweep' first, or pass --storage "
            "if the sweep used a PostgreSQL server."
        )
    data_dir = Path(recorded) if recorded else None
    was_running = data_dir is not None and embedded_pg.is_running(data_dir)
    sweep.paths.create()
    server = embedded_pg.ensure_running(sweep.paths.root, sweep.name, data_dir=data_dir)
    return server, not was_running


def count_sweep_trials(sweep: Sweep, storage: Storage) -> StudyCounts:
    """Count the trials of the sweep's study by state, on a connection of its own."""
    engine = create_engine(storage.url, storage.schema)
    try:
        with engine.connect() as connection:
            return count_trials(connection, sweep.study_name)
    finally:
        engine.dispose()
