"""Unit tests of the embedded PostgreSQL server's paths, file-system checks and lock files."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hpc import embedded_pg_paths as paths
from tuner.errors import ConfigError, HpcTuneError

# Shaped like /proc/mounts on a cluster login node.
MOUNTS = r"""
/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,relatime 0 0
tmpfs /dev/shm tmpfs rw,relatime 0 0
nas01:/export/home /home nfs4 rw,relatime,vers=4.2 0 0
/dev/sdb1 /home/alice/local xfs rw,relatime 0 0
10.0.0.5@o2ib:/scratch /scratch lustre rw,flock 0 0
gpfs0 /gpfs gpfs rw,relatime 0 0
beegfs_nodev /mnt/beegfs beegfs rw,relatime 0 0
//fs/share /mnt/win\040share cifs rw,relatime 0 0
tmpfs /var/tmp tmpfs rw 0 0
/dev/vdc /var/tmp ext4 rw 0 0
sshfs#me@host: /mnt/remote fuse.sshfs rw 0 0
""".strip()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "ext4"),
        ("/work/run/checkpoints", "ext4"),
        ("/home/alice/sweeps", "nfs4"),
        ("/home", "nfs4"),
        ("/home/alice/local/sweep", "xfs"),
        ("/home/alice/localother", "nfs4"),
        ("/scratch/alice/ckpt", "lustre"),
        ("/gpfs/projects/x", "gpfs"),
        ("/mnt/beegfs/x", "beegfs"),
        ("/mnt/win share/ckpt", "cifs"),
        ("/mnt/win", "ext4"),
        ("/var/tmp/hpc-tune-alice", "ext4"),
        ("/mnt/remote/ckpt", "fuse.sshfs"),
    ],
)
def test_fs_type_longest_mount(path: str, expected: str) -> None:
    assert paths.fs_type_for_path(path, MOUNTS) == expected


def test_fs_type_no_matching_mount() -> None:
    assert paths.fs_type_for_path("/data/x", "nas:/e /home nfs rw 0 0\nbad line\n") is None


@pytest.mark.parametrize(
    ("fs_type", "network"),
    [
        ("ext4", False),
        ("xfs", False),
        ("tmpfs", False),
        ("btrfs", False),
        ("fuse.fuse-overlayfs", False),
        ("nfs", True),
        ("nfs4", True),
        ("lustre", True),
        ("gpfs", True),
        ("beegfs", True),
        ("cifs", True),
        ("smb3", True),
        ("ceph", True),
        ("fuse.sshfs", True),
        ("fuse.glusterfs", True),
        (None, True),
    ],
)
def test_is_network_fs(fs_type: str | None, network: bool) -> None:
    assert paths.is_network_fs(fs_type) is network


def test_socket_dir_stable_and_private_name() -> None:
    first = paths.socket_dir_for(Path("/var/tmp/hpc-tune-alice/sweep"), 1234)
    again = paths.socket_dir_for(Path("/var/tmp/hpc-tune-alice/sweep"), 1234)
    other = paths.socket_dir_for(Path("/var/tmp/hpc-tune-alice/other"), 1234)
    assert first == again
    assert first != other
    assert re.fullmatch(r"/tmp/hpc-tune-1234-[0-9a-f]{8}", str(first))


def test_socket_path_fits_for_largest_uid() -> None:
    socket_dir = paths.socket_dir_for(Path("/" + "d" * 4000), 4294967294)
    socket_path = paths.socket_path_for(socket_dir)
    assert socket_path == socket_dir / ".s.PGSQL.5432"
    assert len(os.fsencode(socket_path)) < 60


def test_socket_path_limit_is_107_bytes() -> None:
    suffix_bytes = len("/.s.PGSQL.5432")
    at_limit = Path("/" + "a" * (paths.MAX_SOCKET_PATH_BYTES - suffix_bytes - 1))
    assert len(os.fsencode(paths.socket_path_for(at_limit))) == 107
    with pytest.raises(HpcTuneError, match="108 bytes long"):
        paths.socket_path_for(Path(str(at_limit) + "a"))


def test_socket_path_counts_bytes_not_characters() -> None:
    # 50 two-byte characters: 64 characters but 114 bytes in all.
    with pytest.raises(HpcTuneError, match="over Linux's limit of 107 bytes"):
        paths.socket_path_for(Path("/" + "é" * 50))


def select(fs_type: str | None, owner_uid: int) -> Path:
    return paths.select_data_dir(
        Path("/home/alice/ckpt"),
        "alice-cfg-0123abcd",
        fs_type=fs_type,
        owner_uid=owner_uid,
        server_uid=1000,
        server_user="alice",
    )


def test_data_dir_local_and_owned() -> None:
    assert select("ext4", 1000) == Path("/home/alice/ckpt/postgres")


def test_data_dir_network_fs_falls_back() -> None:
    fallback = Path("/var/tmp/hpc-tune-alice/alice-cfg-0123abcd")
    assert select("nfs4", 1000) == fallback
    assert select("lustre", 1000) == fallback
    assert select(None, 1000) == fallback


def test_data_dir_other_owner_falls_back() -> None:
    # Started as root: the checkpoint belongs to root, the server runs as postgres.
    chosen = paths.select_data_dir(
        Path("/tmp/ckpt"),
        "sweep",
        fs_type="ext4",
        owner_uid=0,
        server_uid=101,
        server_user="postgres",
    )
    assert chosen == Path("/var/tmp/hpc-tune-postgres/sweep")


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "a\0b"])
def test_fallback_rejects_bad_sweep_name(name: str) -> None:
    with pytest.raises(ConfigError, match="hpc.sweep_name"):
        paths.fallback_data_dir(name, "alice")


def make_bin_dir(folder: Path, names: tuple[str, ...] = paths.SERVER_BINARIES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text("#!/bin/sh\n")
        (folder / name).chmod(0o755)
    return folder


@pytest.fixture
def no_system_postgres(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    monkeypatch.setattr(paths, "SYSTEM_BIN_GLOBS", ())
    monkeypatch.setattr(paths, "PIP_PACKAGES", ())


def test_bin_dir_newest_system_version(
    no_system_postgres: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_bin_dir(tmp_path / "lib" / "9.6" / "bin")
    make_bin_dir(tmp_path / "lib" / "10" / "bin")
    make_bin_dir(tmp_path / "lib" / "17" / "bin", names=("pg_ctl",))
    monkeypatch.setattr(paths, "SYSTEM_BIN_GLOBS", (str(tmp_path / "lib" / "*" / "bin"),))
    assert paths.find_bin_dir() == tmp_path / "lib" / "10" / "bin"


def test_bin_dir_from_pip_package(
    no_system_postgres: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "fake_pgserver"
    bin_dir = make_bin_dir(package / "pginstall" / "bin")
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(paths, "PIP_PACKAGES", ("fake_pgserver",))
    assert paths.find_bin_dir() == bin_dir


def test_bin_dir_missing_says_what_to_install(no_system_postgres: None) -> None:
    with pytest.raises(HpcTuneError) as raised:
        paths.find_bin_dir()
    message = str(raised.value)
    assert "apt-get install postgresql-15" in message
    assert "pip install pgserver" in message
    assert "hpc.storage" in message


def test_pid_file_states(tmp_path: Path) -> None:
    pid_file = tmp_path / "postmaster.pid"
    assert paths.read_pid_file(pid_file) is None

    pid_file.write_text("not a pid\n")
    assert paths.read_pid_file(pid_file) is None

    # A live process that is not postgres: its pid was reused after a crash.
    pid_file.write_text(f"{os.getpid()}\n/data\n")
    read = paths.read_pid_file(pid_file)
    assert read is not None
    assert read.state == "stale"
    assert read.lines == (str(os.getpid()), "/data")

    finished = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    pid_file.write_text(finished.stdout)
    read = paths.read_pid_file(pid_file)
    assert read is not None
    assert read.state == "stale"


def test_file_lock_excludes_second_holder(tmp_path: Path) -> None:
    lock_path = tmp_path / "data.lock"
    with paths.file_lock(lock_path, timeout_s=1):
        with pytest.raises(HpcTuneError, match="Timed out after 0 s"):
            with paths.file_lock(lock_path, timeout_s=0.2):
                pass
    with paths.file_lock(lock_path, timeout_s=0.2):
        pass
