"""Folder modes of tuner.private_dirs, and the hpc.offline and hpc.share_with_group settings."""

from __future__ import annotations

import grp
import logging
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpc.log_context import log_file
from hpc.settings import parse_hpc_section
from hpc.sweep_state import SweepPaths, write_json_atomic
from tuner import private_dirs
from tuner.errors import ConfigError
from tuner.private_dirs import (
    PRIVATE,
    group_access,
    inherited_access,
    make_private_dir,
    set_file_access,
)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """A umask that lets mkdir give every permission, so only the chmod calls restrict."""
    previous = os.umask(0o022)
    private_dirs._warned.clear()
    yield
    os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


def foreign_group() -> str:
    mine = private_dirs.user_group_ids()
    for entry in grp.getgrall():
        if entry.gr_gid not in mine:
            return entry.gr_name
    pytest.skip("this user is a member of every group of the machine")


def test_new_folders_private(tmp_path: Path) -> None:
    folder = make_private_dir(tmp_path / "a" / "b" / "c")

    assert mode_of(tmp_path / "a") == 0o700
    assert mode_of(tmp_path / "a" / "b") == 0o700
    assert mode_of(folder) == 0o700


def test_shared_folders_get_group(tmp_path: Path) -> None:
    access = group_access(own_group())

    folder = make_private_dir(tmp_path / "shared" / "report", access)

    assert mode_of(tmp_path / "shared") == 0o2750
    assert mode_of(folder) == 0o2750
    assert folder.stat().st_gid == os.getegid()


def test_subfolder_inherits_shared_parent(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "root", group_access(own_group()))

    trial = make_private_dir(tmp_path / "root" / "trials" / "00003")

    assert mode_of(tmp_path / "root" / "trials") == 0o2750
    assert mode_of(trial) == 0o2750
    assert inherited_access(tmp_path / "root").gid == os.getegid()


def test_subfolder_of_private_parent_private(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "root")
    os.chmod(tmp_path, 0o755)  # a world-readable parent above the root does not count

    trial = make_private_dir(tmp_path / "root" / "trials" / "00003")

    assert mode_of(trial) == 0o700
    assert inherited_access(tmp_path / "root") == PRIVATE


def test_file_access(tmp_path: Path) -> None:
    private_file = tmp_path / "summary.txt"
    private_file.write_text("x")
    shared_file = tmp_path / "config.yml"
    shared_file.write_text("x")

    set_file_access(private_file, PRIVATE)
    set_file_access(shared_file, group_access(own_group()))

    assert mode_of(private_file) == 0o600
    assert mode_of(shared_file) == 0o640
    assert shared_file.stat().st_gid == os.getegid()


def test_existing_wide_folder_kept_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    os.chmod(folder, 0o755)

    with caplog.at_level(logging.WARNING, logger="tuner.private_dirs"):
        make_private_dir(folder, PRIVATE)
        make_private_dir(folder, PRIVATE)

    assert mode_of(folder) == 0o755
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert "mode 0755" in warnings[0]
    assert "other users can open it" in warnings[0]
    assert f"chmod -R go-rwx {folder}" in warnings[0]


def test_existing_private_folder_not_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_private_dir(tmp_path / "checkpoint")

    with caplog.at_level(logging.WARNING, logger="tuner.private_dirs"):
        make_private_dir(tmp_path / "checkpoint")

    assert caplog.records == []


def test_sweep_paths_create(tmp_path: Path) -> None:
    paths = SweepPaths(tmp_path / "checkpoint", group=own_group())

    paths.create()

    for folder in (paths.root, paths.trials_dir, paths.jobs_dir):
        assert mode_of(folder) == 0o2750
        assert folder.stat().st_gid == os.getegid()


def test_new_shared_sweep_not_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_private_dir(tmp_path / "ckpt")  # an existing private parent, as users keep one
    paths = SweepPaths(tmp_path / "ckpt" / "sweep", group=own_group())

    with caplog.at_level(logging.WARNING, logger="tuner.private_dirs"):
        paths.create()
        # What later steps do: write sweep.json, create folders with no access requested.
        write_json_atomic(paths.sweep_file, {"version": 1})
        make_private_dir(paths.root)
        make_private_dir(paths.jobs_dir / "workers")
        paths.create()

    assert caplog.records == []
    assert mode_of(paths.jobs_dir / "workers") == 0o2750


def test_group_added_later_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    SweepPaths(tmp_path / "sweep").create()
    make_private_dir(tmp_path / "sweep" / "trials" / "00000")
    write_json_atomic(tmp_path / "sweep" / "sweep.json", {"version": 1})
    shared = SweepPaths(tmp_path / "sweep", group=own_group())

    with caplog.at_level(logging.WARNING, logger="tuner.private_dirs"):
        shared.create()

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert f"group {own_group()} cannot open it" in warnings[0]
    command = warnings[0].split("run: ", 1)[1]
    assert command.startswith(f"chgrp -R {own_group()} {shared.root} && chmod -R g+rX")

    subprocess.run(command, shell=True, check=True)
    caplog.clear()
    private_dirs._warned.clear()
    with caplog.at_level(logging.WARNING, logger="tuner.private_dirs"):
        shared.create()

    assert caplog.records == []
    for folder in (shared.root, shared.trials_dir, shared.trial_dir(0), shared.jobs_dir):
        assert mode_of(folder) == 0o2750, folder
    assert mode_of(shared.sweep_file) == 0o640


def test_written_files_follow_folder(tmp_path: Path) -> None:
    os.umask(0o077)  # as hpc's commands run
    private = SweepPaths(tmp_path / "private")
    shared = SweepPaths(tmp_path / "shared", group=own_group())

    for paths, expected in ((private, 0o600), (shared, 0o640)):
        paths.create()
        write_json_atomic(paths.sweep_file, {"version": 1})
        with log_file(paths.jobs_dir / "reaper.log") as log_path:
            logging.getLogger("hpc.test").warning("a line")

        assert mode_of(paths.sweep_file) == expected, paths.root
        assert mode_of(log_path) == expected, paths.root
        assert log_path.stat().st_gid == paths.root.stat().st_gid


def test_unknown_group_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        group_access("no-such-group-hpc-tune")

    message = str(raised.value)
    assert message.startswith("hpc.share_with_group: group 'no-such-group-hpc-tune' not found")
    assert own_group() in message


def test_group_without_user_rejected() -> None:
    group = foreign_group()

    with pytest.raises(ConfigError) as raised:
        group_access(group)

    assert f"not a member of group {group!r}" in str(raised.value)


def test_settings_defaults() -> None:
    settings = parse_hpc_section({}, {})

    assert settings.offline is True
    assert settings.share_with_group is None


def test_settings_share_with_group() -> None:
    settings = parse_hpc_section({"share_with_group": own_group()}, {})

    assert settings.share_with_group == own_group()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"offline": "no"}, "hpc.offline: expected true or false, got 'no'"),
        ({"offline": 0}, "hpc.offline: expected true or false, got 0"),
        ({"share_with_group": "no-such-group-hpc-tune"}, "group 'no-such-group-hpc-tune' not"),
        ({"share_with_group": ""}, "hpc.share_with_group: expected the name of a group"),
    ],
)
def test_settings_rejected(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_hpc_section(section, {})
