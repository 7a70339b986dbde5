"""Checks of the storage URL's query, its display, and the hints for a refused login."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from hpc import db_access
from hpc.check_node import print_report
from hpc.db_retry import DatabaseLoginRefused, DatabaseUnavailable, with_retries
from hpc.storage import hide_password, parse_storage_url
from tuner.errors import ConfigError

BASE = "postgresql+psycopg2://alice@db.example.org:5432/optuna"


def test_misspelled_parameter_named() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_storage_url(f"{BASE}?sslmod=require", "hpc.storage")
    message = str(caught.value)
    assert message.startswith("hpc.storage: unknown connection parameter 'sslmod'")
    assert "sslmode" in message
    assert "sslrootcert" in message


def test_invalid_sslmode_lists_values() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_storage_url(f"{BASE}?sslmode=bogus", "--storage")
    message = str(caught.value)
    assert "sslmode='bogus'" in message
    assert "disable, allow, prefer, require, verify-ca, verify-full" in message


def test_valid_query_accepted() -> None:
    url = parse_storage_url(
        f"{BASE}?sslmode=verify-full&sslrootcert=/etc/ca.crt&connect_timeout=5", "hpc.storage"
    )
    assert url.query["sslmode"] == "verify-full"


def test_sslrootcert_shown_decoded() -> None:
    url = make_url(f"{BASE}?sslmode=verify-full&sslrootcert=%2Fsite%2Fpg%2Fca.crt")
    shown = hide_password(url)
    assert shown == f"{BASE}?sslmode=verify-full&sslrootcert=/site/pg/ca.crt"
    # The decoded text is still a URL that names the same file.
    assert make_url(shown).query == url.query


def test_display_keeps_encoding_when_needed() -> None:
    # A '+' decoded would read back as a space, so the query stays encoded.
    url = make_url(BASE).update_query_dict({"sslrootcert": "/site/a+b/ca.crt"})
    shown = hide_password(url)
    assert make_url(shown).query["sslrootcert"] == "/site/a+b/ca.crt"


@pytest.mark.parametrize(
    "reason",
    [
        'password authentication failed for user "alice"',
        "fe_sendauth: no password supplied",
        'FATAL:  role "carol" does not exist',
        'no pg_hba.conf entry for host "10.0.0.5", user "alice", database "optuna", no encryption',
        'pg_hba.conf rejects connection for host "10.0.0.5", user "alice", database "optuna"',
    ],
)
def test_login_failures_recognised(reason: str) -> None:
    assert db_access.is_authentication_failure(reason)


@pytest.mark.parametrize(
    "reason",
    [
        'connection to server at "127.0.0.1", port 1 failed: Connection refused',
        "server closed the connection unexpectedly",
        "the database system is starting up",
        "timeout expired",
    ],
)
def test_outages_not_login_failures(reason: str) -> None:
    assert not db_access.is_authentication_failure(reason)


def operational_error(message: str) -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception(message))


def test_refused_login_not_retried() -> None:
    def refused() -> None:
        raise operational_error('FATAL:  role "carol" does not exist')

    with pytest.raises(DatabaseLoginRefused) as caught:
        with_retries(refused, "register the worker", window_s=600, where=BASE, sleep=pytest.fail)
    message = str(caught.value)
    assert "rejected the worker's login while it tried to register the worker" in message
    assert "The server has no role carol" in message
    # The worker's end-of-run handler catches DatabaseUnavailable and logs it.
    assert isinstance(caught.value, DatabaseUnavailable)


def test_outage_still_retried() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise operational_error("server closed the connection unexpectedly")
        return "done"

    assert with_retries(flaky, "claim a trial", window_s=60, where=BASE, sleep=lambda _: None)
    assert len(calls) == 2


def test_no_ssl_hint_checks_host_first() -> None:
    hint = db_access.connection_hint(
        "server does not support SSL, but SSL was required", make_url(BASE)
    )
    assert hint.startswith("The server does not offer SSL. First check that the URL's host and")
    assert hint.index("host and port") < hint.index("remove sslmode")


def test_owned_schema_hint_names_owner() -> None:
    hint = db_access.owned_schema_hint("hpc_tune_root", "bob", "alice")
    assert "Use role alice" in hint
    assert "hpc_tune_<login>" in hint
    assert "CREATE SCHEMA" not in hint


def test_check_node_prints_hint(capsys: pytest.CaptureFixture[str]) -> None:
    report = {
        "host": "node1",
        "job_id": "7",
        "torch": "2.5",
        "cuda_visible_devices": None,
        "cuda_available": False,
        "devices": [],
        "database": {
            "url": BASE,
            "ok": False,
            "error": "fe_sendauth: no password supplied",
            "hint": "The server asks for a password, but chmod 0600 /home/a/.pgpass.",
        },
    }

    assert print_report(report, gpus_requested=0, allow_cpu=False) == 1
    output = capsys.readouterr().out
    assert "database:  FAILED" in output
    assert "chmod 0600 /home/a/.pgpass" in output
