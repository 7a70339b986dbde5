"""Shared fixtures: a fresh PostgreSQL database per test and the tiny BERT model."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[1]
STORAGE_ENV = "HPC_TUNE_TEST_STORAGE"


@pytest.fixture(scope="session")
def server_url() -> str:
    url = os.environ.get(STORAGE_ENV)
    if not url:
        pytest.fail(
            f"{STORAGE_ENV} is not set. Run the tests with 'make test', which starts a test "
            "PostgreSQL server and sets it."
        )
    return url


@pytest.fixture
def database_url(server_url: str) -> Iterator[str]:
    """A new empty database on the test server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random BERT of the example, generated once per test session."""
    folder = tmp_path_factory.mktemp("models") / "tiny-bert"
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "quaero" / "make_tiny_bert.py"), str(folder)],
        check=True,
        timeout=300,
    )
    return folder
