"""A site's PostgreSQL: SSL with a verified certificate, passwords from a password file only,
and several users who each keep their own sweeps in one database."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
import sqlalchemy
from pg_server import SslPostgres, client_environment, start_server, write_pgpass
from sweep_helpers import write_config

pytestmark = [pytest.mark.integration]

PASSWORDS = {"alice": "alice-Pw-6Qz1", "bob": "bob-Pw-3Kx8"}


@pytest.fixture(scope="module")
def site_server() -> Iterator[SslPostgres]:
    server = start_server()
    for role, password in PASSWORDS.items():
        server.create_role(role, password)
    yield server
    server.stop()


@dataclass(frozen=True)
class SiteUser:
    """One user of the shared database: their role, password file, home and sweep folder."""

    name: str
    folder: Path
    url: str
    environ: dict[str, str]

    def run(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hpc", *args],
            cwd=self.folder,
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "hpc", *args],
            cwd=self.folder,
            env=self.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def site_user(
    server: SslPostgres, database: str, tmp_path: Path, name: str, login: str | None = None
) -> SiteUser:
    """Give `name` a home, a password file and a sweep folder; `login` is the login name."""
    home = tmp_path / name / "home"
    home.mkdir(parents=True)
    folder = tmp_path / name / "work"
    folder.mkdir()
    pgpass_file = write_pgpass(home / ".pgpass", server, name, PASSWORDS[name])
    login = login or name
    # The login name decides the sweep's and the schema's names, as on a real cluster.
    environ = client_environment(pgpass_file, HOME=str(home), USER=login, LOGNAME=login)
    return SiteUser(name, folder, server.verified_url(name, database), environ)


def snapshot_schema(server: SslPostgres, database: str, schema: str) -> dict[str, list[str]]:
    """Return every row of every table of `schema`, read by the superuser."""
    tables = server.execute(
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'",
        database,
    )
    assert tables, f"schema {schema} has no table"
    return {
        str(table): sorted(
            repr(row) for row in server.execute(f'SELECT * FROM "{schema}"."{table}"', database)
        )
        for (table,) in tables
    }


def trial_states(server: SslPostgres, database: str, schema: str) -> list[str]:
    rows = server.execute(f'SELECT state FROM "{schema}".trials ORDER BY number', database)
    return [str(state) for (state,) in rows]


def wait_for_running_trial(server: SslPostgres, database: str, schema: str) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if "RUNNING" in trial_states(server, database, schema):
                return
        except psycopg2.errors.UndefinedTable:
            pass  # the coordinator has not created the tables yet
        time.sleep(0.5)
    raise AssertionError(f"no trial of {schema} started in 180 s")


def test_verified_ssl_sweep_runs(site_server: SslPostgres, tmp_path: Path) -> None:
    database = site_server.create_database(["alice"])
    alice = site_user(site_server, database, tmp_path, "alice")
    write_config(alice.folder, n_trials=2, executor="local", synthetic={"duration_s": 0.2})

    result = alice.run("sweep", "--config", "config.yml", "--storage", alice.url)

    assert result.returncode == 0, result.stderr[-3000:]
    # The server rejects TCP connections without SSL, so each connection was verified SSL.
    assert trial_states(site_server, database, "hpc_tune_alice") == ["COMPLETE", "COMPLETE"]
    state = json.loads((alice.folder / "checkpoint" / "sweep.json").read_text())
    assert "sslmode=verify-full" in state["storage_url"]
    # Shown decoded, as a path the user can read and paste.
    assert f"sslrootcert={site_server.ca_cert}" in state["storage_url"]
    assert PASSWORDS["alice"] not in json.dumps(state)


@pytest.mark.parametrize("executor", ["local", "slurm"])
def test_wrong_root_certificate_stops_sweep(
    site_server: SslPostgres, tmp_path: Path, executor: str
) -> None:
    if executor == "slurm":
        from sweep_helpers import skip_without_slurm

        skip_without_slurm()
    database = site_server.create_database(["alice"])
    alice = site_user(site_server, database, tmp_path, "alice")
    write_config(alice.folder, n_trials=2, executor=executor)
    url = site_server.url(
        "alice", database, sslmode="verify-full", sslrootcert=str(site_server.wrong_ca_cert)
    )

    result = alice.run("sweep", "--config", "config.yml", "--storage", url)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"cannot connect to postgresql+psycopg2://alice@127.0.0.1:{site_server.port}/" in (
        result.stderr
    )
    assert "certificate verify failed" in result.stderr
    assert "Point sslrootcert (URL query or PGSSLROOTCERT)" in result.stderr
    assert PASSWORDS["alice"] not in result.stdout + result.stderr
    assert "array job" not in result.stdout
    # The connection is checked before the checkpoint folder is created.
    assert not (alice.folder / "checkpoint").exists()


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        ("no file", "does not exist"),
        ("other line", "has no line for 127.0.0.1:{port}:{database}:alice"),
        ("mode 0644", "has mode 0644, and libpq ignores a password file"),
    ],
)
def test_password_file_problems_named(
    site_server: SslPostgres, tmp_path: Path, problem: str, expected: str
) -> None:
    database = site_server.create_database(["alice"])
    alice = site_user(site_server, database, tmp_path, "alice")
    pgpass_file = Path(alice.environ["PGPASSFILE"])
    if problem == "no file":
        pgpass_file.unlink()
    elif problem == "other line":
        pgpass_file.write_text(f"127.0.0.1:{site_server.port}:*:bob:{PASSWORDS['bob']}\n")
    else:
        pgpass_file.chmod(0o644)
    write_config(alice.folder, n_trials=1, executor="local")

    result = alice.run("sweep", "--config", "config.yml", "--storage", alice.url)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "The server asks for a password" in result.stderr
    assert expected.format(port=site_server.port, database=database) in result.stderr
    assert f"127.0.0.1:{site_server.port}:{database}:alice:PASSWORD" in result.stderr or (
        problem == "mode 0644" and f"chmod 0600 {pgpass_file}" in result.stderr
    )
    assert not (alice.folder / "checkpoint").exists()


def test_role_without_create_right(site_server: SslPostgres, tmp_path: Path) -> None:
    database = site_server.create_database([])
    bob = site_user(site_server, database, tmp_path, "bob")
    write_config(bob.folder, n_trials=1, executor="local")

    result = bob.run("sweep", "--config", "config.yml", "--storage", bob.url)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "Cannot create schema hpc_tune_bob" in result.stderr
    assert "CREATE SCHEMA hpc_tune_bob AUTHORIZATION bob" in result.stderr


def test_two_users_stay_apart(site_server: SslPostgres, tmp_path: Path) -> None:
    database = site_server.create_database(["alice", "bob"])
    alice = site_user(site_server, database, tmp_path, "alice")
    bob = site_user(site_server, database, tmp_path, "bob")
    # The same config file name in both users' folders.
    write_config(alice.folder, n_trials=6, executor="local", synthetic={"duration_s": 2.0})
    write_config(bob.folder, n_trials=40, executor="local", synthetic={"duration_s": 2.0})
    sweep = ("sweep", "--config", "config.yml", "--storage")
    alice_sweep = alice.start(*sweep, alice.url)
    bob_sweep = bob.start(*sweep, bob.url)
    try:
        wait_for_running_trial(site_server, database, "hpc_tune_bob")
        wait_for_running_trial(site_server, database, "hpc_tune_alice")

        status = bob.run("status", "--config", "config.yml", "--json")
        assert status.returncode == 0, status.stderr[-3000:]
        screen = json.loads(status.stdout)
        assert screen["sweep"]["name"].startswith("bob-config-")
        assert screen["sweep"]["study"].startswith("bob-config-")
        assert "alice" not in status.stdout

        cancel = bob.run("cancel", "--config", "config.yml")
        assert cancel.returncode == 0, cancel.stderr[-3000:]
        bob_sweep.wait(timeout=120)
        alice_output, alice_errors = alice_sweep.communicate(timeout=300)
    finally:
        for process in (alice_sweep, bob_sweep):
            stop_sweep(process)

    # Bob's cancel stopped his sweep only: every one of Alice's trials completed.
    assert alice_sweep.returncode == 0, alice_errors[-3000:]
    assert trial_states(site_server, database, "hpc_tune_alice") == ["COMPLETE"] * 6
    bob_states = trial_states(site_server, database, "hpc_tune_bob")
    assert len([state for state in bob_states if state == "COMPLETE"]) < 40

    studies = {
        schema: [
            str(name)
            for (name,) in site_server.execute(
                f'SELECT study_name FROM "{schema}".studies', database
            )
        ]
        for schema in ("hpc_tune_alice", "hpc_tune_bob")
    }
    assert len(studies["hpc_tune_alice"]) == 1
    assert studies["hpc_tune_alice"][0].startswith("alice-config-")
    assert len(studies["hpc_tune_bob"]) == 1
    assert studies["hpc_tune_bob"][0].startswith("bob-config-")

    alice_rows = snapshot_schema(site_server, database, "hpc_tune_alice")
    for command in ("status", "report", "cancel"):
        result = bob.run(command, "--config", "config.yml")
        assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
        assert "alice" not in result.stdout, command
    assert snapshot_schema(site_server, database, "hpc_tune_alice") == alice_rows
    report = (bob.folder / "results" / "result_summary.txt").read_text()
    assert "alice" not in report

    rows = site_server.execute(
        "SELECT nspname, nspowner::regrole::text FROM pg_namespace WHERE nspname LIKE 'hpc_tune_%'",
        database,
    )
    owners = {str(schema): str(owner) for schema, owner in rows}
    assert owners == {"hpc_tune_alice": "alice", "hpc_tune_bob": "bob"}
    check_schema_closed(site_server, database, reader="bob", schema="hpc_tune_alice")
    check_schema_closed(site_server, database, reader="alice", schema="hpc_tune_bob")

    # Bob's role with Alice's login name finds a schema it may not use, and stops.
    intruder = site_user(site_server, database, tmp_path / "intruder", "bob", login="alice")
    write_config(intruder.folder, n_trials=1, executor="local")
    result = intruder.run("sweep", "--config", "config.yml", "--storage", intruder.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Schema hpc_tune_alice" in result.stderr
    assert "role bob may not use it: role alice owns it" in result.stderr
    assert "hpc_tune_<login>" in result.stderr
    assert "Use role alice" in result.stderr
    assert "CREATE SCHEMA" not in result.stderr
    assert snapshot_schema(site_server, database, "hpc_tune_alice") == alice_rows


def stop_sweep(process: subprocess.Popen[str]) -> None:
    """Stop a sweep left running by a failed test as Ctrl-C does, so its workers end too."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()


def check_schema_closed(server: SslPostgres, database: str, reader: str, schema: str) -> None:
    """Assert that role `reader`, logged in with its own password, cannot read `schema`."""
    connection = psycopg2.connect(
        host="127.0.0.1",
        port=server.port,
        dbname=database,
        user=reader,
        password=PASSWORDS[reader],
        sslmode="verify-full",
        sslrootcert=str(server.ca_cert),
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT has_schema_privilege(%s, 'USAGE')", (schema,))
            assert cursor.fetchone() == (False,)
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute(f'SELECT count(*) FROM "{schema}".trials')
    finally:
        connection.close()


def test_pgpassword_not_enough_for_slurm(site_server: SslPostgres, tmp_path: Path) -> None:
    from sweep_helpers import skip_without_slurm

    skip_without_slurm()
    database = site_server.create_database(["alice"])
    alice = site_user(site_server, database, tmp_path, "alice")
    Path(alice.environ["PGPASSFILE"]).unlink()
    alice.environ["PGPASSWORD"] = PASSWORDS["alice"]
    write_config(alice.folder, n_trials=1, executor="slurm")

    result = alice.run("sweep", "--config", "config.yml", "--storage", alice.url)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "PGPASSWORD is set, but Slurm jobs never receive it" in result.stderr
    assert f"127.0.0.1:{site_server.port}:{database}:alice:PASSWORD" in result.stderr
    assert PASSWORDS["alice"] not in result.stdout + result.stderr
    assert "array job" not in result.stdout


def test_libpq_ssl_environment_reaches_jobs(site_server: SslPostgres, tmp_path: Path) -> None:
    from sweep_helpers import skip_without_slurm, sweep_jobs, wait_for_sweep_jobs

    skip_without_slurm()
    database = site_server.create_database(["alice"])
    alice = site_user(site_server, database, tmp_path, "alice")
    alice.environ.update(PGSSLMODE="verify-full", PGSSLROOTCERT=str(site_server.ca_cert))
    write_config(alice.folder, n_trials=2, synthetic={"duration_s": 0.2})

    # No SSL setting in the URL: the jobs verify the server only if libpq's variables reach them.
    url = site_server.url("alice", database)
    result = alice.run("sweep", "--config", "config.yml", "--storage", url)

    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = alice.folder / "checkpoint"
    wait_for_sweep_jobs(checkpoint, timeout_s=300)
    assert trial_states(site_server, database, "hpc_tune_alice") == ["COMPLETE", "COMPLETE"]
    array = sweep_jobs(checkpoint)[0]
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    match = re.search(r"^StateSaveLocation\s*=\s*(\S+)", config, re.MULTILINE)
    assert match, config
    state_dir = Path(match[1])
    [environment] = list(state_dir.glob(f"hash.*/job.{array}/environment"))
    content = environment.read_bytes()
    assert b"PGSSLMODE=verify-full" in content
    assert f"PGSSLROOTCERT={site_server.ca_cert}".encode() in content
    assert f"PGPASSFILE={alice.environ['PGPASSFILE']}".encode() in content


def test_wrong_pgpass_password_stops_slurm(site_server: SslPostgres, tmp_path: Path) -> None:
    from sweep_helpers import skip_without_slurm

    skip_without_slurm()
    database = site_server.create_database(["alice"])
    alice = site_user(site_server, database, tmp_path, "alice")
    pgpass_file = write_pgpass(
        Path(alice.environ["PGPASSFILE"]), site_server, "alice", "Wrong-Pw-0000"
    )
    # The right password in PGPASSWORD: the login node connects, the jobs would not.
    alice.environ["PGPASSWORD"] = PASSWORDS["alice"]
    write_config(alice.folder, n_trials=1, executor="slurm")

    result = alice.run("sweep", "--config", "config.yml", "--storage", alice.url)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "PGPASSWORD is set, but Slurm jobs never receive it" in result.stderr
    assert "password authentication failed" in result.stderr
    assert f"Correct it in {pgpass_file}." in result.stderr
    assert PASSWORDS["alice"] not in result.stdout + result.stderr
    assert "array job" not in result.stdout
    assert not (alice.folder / "checkpoint").exists()


def test_misspelled_url_parameter(site_server: SslPostgres, tmp_path: Path) -> None:
    database = site_server.create_database(["alice"])
    alice = site_user(site_server, database, tmp_path, "alice")
    write_config(alice.folder, n_trials=1, executor="local")
    url = site_server.url("alice", database, sslmod="require")

    result = alice.run("sweep", "--config", "config.yml", "--storage", url)

    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "--storage: unknown connection parameter 'sslmod'" in result.stderr
    assert not (alice.folder / "checkpoint").exists()


def test_worker_login_refused_at_once(
    site_server: SslPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpc.db_retry import DatabaseLoginRefused, with_retries
    from hpc.storage import create_engine, parse_storage_url

    database = site_server.create_database(["alice"])
    pgpass_file = write_pgpass(tmp_path / "pgpass", site_server, "alice", "Wrong-Pw-0000")
    monkeypatch.setenv("PGPASSFILE", str(pgpass_file))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = parse_storage_url(site_server.verified_url("alice", database), "--storage")
    engine = create_engine(url, "hpc_tune_alice")

    def connect() -> None:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))

    started = time.monotonic()
    try:
        with pytest.raises(DatabaseLoginRefused) as caught:
            # A retry would call sleep, which fails the test.
            with_retries(connect, "register the worker", 600, str(url), sleep=pytest.fail)
    finally:
        engine.dispose()
    assert time.monotonic() - started < 30
    assert "password authentication failed" in str(caught.value)
    assert f"Correct it in {pgpass_file}." in str(caught.value)


def test_check_node_database_hint(
    site_server: SslPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpc.check_node import _database_answer

    database = site_server.create_database(["alice"])
    pgpass_file = write_pgpass(tmp_path / "pgpass", site_server, "alice", PASSWORDS["alice"])
    pgpass_file.chmod(0o644)
    monkeypatch.setenv("PGPASSFILE", str(pgpass_file))
    monkeypatch.delenv("PGPASSWORD", raising=False)

    answer = _database_answer(site_server.verified_url("alice", database))

    assert answer["ok"] is False
    assert "no password supplied" in answer["error"]
    assert f"chmod 0600 {pgpass_file}" in answer["hint"]
    assert f"sslrootcert={site_server.ca_cert}" in answer["url"]
