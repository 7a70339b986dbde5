"""A PostgreSQL server of its own for tests of a site's database: SSL, passwords, roles.

The server listens on 127.0.0.1 only, with a certificate signed by a test certificate
authority made with openssl. Over TCP it accepts only SSL connections with a SCRAM-SHA-256
password. Its superuser `postgres` connects without a password through the private Unix
socket, and the tests use that connection to create roles and databases.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import psycopg2
import pytest

from hpc.embedded_pg_paths import find_bin_dir

SUPERUSER = "postgres"
HBA = """\
# TYPE     DATABASE USER     ADDRESS       METHOD
local      all      postgres               trust
hostnossl  all      all      127.0.0.1/32  reject
hostssl    all      all      127.0.0.1/32  scram-sha-256
"""


@dataclass
class SslPostgres:
    """A running test server and the files a client needs to verify it."""

    prefix: Path
    port: int
    ca_cert: Path
    wrong_ca_cert: Path
    bin_dir: Path
    account: pwd.struct_passwd

    @property
    def data_dir(self) -> Path:
        return self.prefix / "data"

    @property
    def socket_dir(self) -> Path:
        return self.prefix / "sock"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run `sql` as the superuser through the Unix socket, in autocommit mode."""
        connection = psycopg2.connect(
            host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=database
        )
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def create_role(self, name: str, password: str) -> None:
        # The server hashes the password with SCRAM-SHA-256 (password_encryption).
        self.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")

    def create_database(self, owner_roles: list[str]) -> str:
        """Create a database in which each role in `owner_roles` may create schemas."""
        name = f"site_{uuid.uuid4().hex[:10]}"
        self.execute(f'CREATE DATABASE "{name}"')
        for role in owner_roles:
            self.execute(f'GRANT CONNECT, CREATE ON DATABASE "{name}" TO "{role}"')
        return name

    def url(self, user: str, database: str, **query: str) -> str:
        """Return the SQLAlchemy URL of `database` for `user`, without a password."""
        text = f"postgresql+psycopg2://{user}@127.0.0.1:{self.port}/{database}"
        return f"{text}?{urlencode(query)}" if query else text

    def verified_url(self, user: str, database: str) -> str:
        return self.url(user, database, sslmode="verify-full", sslrootcert=str(self.ca_cert))

    def stop(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists():
            subprocess.run(
                _as_account(self.account)
                + [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "stop"],
                capture_output=True,
                timeout=60,
                check=False,
            )
        shutil.rmtree(self.prefix, ignore_errors=True)


def start_server() -> SslPostgres:
    """Create certificates and a data folder under /tmp, then start the server.

    As root the server runs as user `postgres`, which scripts/test-postgres.sh creates.
    """
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed: it makes the test server's certificates")
    account = _server_account()
    # Under /tmp, not pytest's tmp_path: the server's user must reach its files.
    prefix = Path(tempfile.mkdtemp(prefix="hpc-tune-site-pg-"))
    prefix.chmod(0o755)
    ssl_dir = prefix / "ssl"
    ssl_dir.mkdir()
    ca_cert = _make_certificate_authority(ssl_dir, "ca")
    wrong_ca_cert = _make_certificate_authority(ssl_dir, "wrong-ca")
    _make_server_certificate(ssl_dir, ca_name="ca")
    for folder in ("data", "sock", "log"):
        (prefix / folder).mkdir()
    for path in [ssl_dir / "server.key", ssl_dir / "server.crt", *prefix.glob("[dsl]*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    (ssl_dir / "server.key").chmod(0o600)
    (prefix / "data").chmod(0o700)

    bin_dir = find_bin_dir()
    server = SslPostgres(prefix, _free_port(), ca_cert, wrong_ca_cert, bin_dir, account)
    _run(
        _as_account(account)
        + [str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", SUPERUSER]
        + ["--auth-local=trust", "--auth-host=reject", "--encoding=UTF8", "--no-locale"],
        prefix,
    )
    (server.data_dir / "pg_hba.conf").write_text(HBA)
    options = [
        f"-p {server.port}",
        "-c listen_addresses=127.0.0.1",
        f"-c unix_socket_directories={server.socket_dir}",
        "-c ssl=on",
        f"-c ssl_cert_file={ssl_dir / 'server.crt'}",
        f"-c ssl_key_file={ssl_dir / 'server.key'}",
        "-c password_encryption=scram-sha-256",
        "-c fsync=off",
        "-c max_connections=100",
    ]
    _run(
        _as_account(account)
        + [str(bin_dir / "pg_ctl"), "-D", str(server.data_dir), "-w", "-t", "60"]
        + ["-l", str(prefix / "log" / "server.log"), "-o", " ".join(options), "start"],
        prefix,
    )
    return server


def write_pgpass(path: Path, server: SslPostgres, user: str, password: str) -> Path:
    """Write a password file with one line for `user` on the server, mode 0600."""
    path.write_text(f"127.0.0.1:{server.port}:*:{user}:{password}\n")
    path.chmod(0o600)
    return path


def client_environment(pgpass_file: Path, **extra: str) -> dict[str, str]:
    """Return this process's environment with no libpq setting but PGPASSFILE, plus `extra`."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environ.pop("HPC_TUNE_STORAGE", None)
    return {**environ, "PGPASSFILE": str(pgpass_file), "PYTHONUNBUFFERED": "1", **extra}


def _server_account() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        pytest.skip("no user 'postgres' to run the server as root: run scripts/test-postgres.sh")


def _as_account(account: pwd.struct_passwd) -> list[str]:
    return ["runuser", "-u", account.pw_name, "--"] if os.geteuid() == 0 else []


def _make_certificate_authority(folder: Path, name: str) -> Path:
    _run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "2", "-subj", f"/CN=hpc-tune test {name}"]
        + ["-addext", "basicConstraints=critical,CA:TRUE"]
        + ["-addext", "keyUsage=critical,keyCertSign,cRLSign"]
        + ["-keyout", str(folder / f"{name}.key"), "-out", str(folder / f"{name}.crt")],
        folder,
    )
    return folder / f"{name}.crt"


def _make_server_certificate(folder: Path, ca_name: str) -> None:
    _run(
        ["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-subj", "/CN=127.0.0.1"]
        + ["-keyout", str(folder / "server.key"), "-out", str(folder / "server.csr")],
        folder,
    )
    extensions = folder / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _run(
        ["openssl", "x509", "-req", "-in", str(folder / "server.csr"), "-days", "2"]
        + ["-CA", str(folder / f"{ca_name}.crt"), "-CAkey", str(folder / f"{ca_name}.key")]
        + ["-CAcreateserial", "-extfile", str(extensions), "-out", str(folder / "server.crt")],
        folder,
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
