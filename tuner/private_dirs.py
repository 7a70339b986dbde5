"""Folders and files of a sweep, private to the user or shared with one group.

Checkpoint and report folders may hold patient text (training outputs, models), so every
folder that hpc-tune creates gets mode 0700. With `hpc.share_with_group` set, the checkpoint
and output folders get mode 2750 and that group instead, and the report's files mode 0640.
The setgid bit (the 2 of 2750) makes the kernel give the group to every folder and file
created inside, EDS-NLP's included, and `make_private_dir` gives a new folder mode 2750 when
its parent is such a folder of the user. So a worker needs no setting to create a trial
folder: the folder it is created in decides.

mkdir's mode is reduced by the process umask, so modes are set with chmod after creation.
Files that hpc-tune writes into these folders (`sweep.json`, logs) get mode 0600, or 0640 in
a group-shared folder (`match_folder_access`). Folders that already exist are never changed:
a folder wider than expected, or of another group, is logged once per process with one
command that fixes it and everything inside it.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

from tuner.errors import ConfigError

logger = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
SHARED_DIR_MODE = 0o2750
PRIVATE_FILE_MODE = 0o600
SHARED_FILE_MODE = 0o640
GROUP_KEY = "hpc.share_with_group"

_warned: set[Path] = set()


@dataclass(frozen=True)
class FolderAccess:
    """Access to a folder tree: the user alone, or the user and the members of one group.

    Attributes:
        group: Name of the group that may read, or None for the user alone.
        gid: Numeric id of `group`, or None.
    """

    group: str | None = None
    gid: int | None = None

    @property
    def dir_mode(self) -> int:
        return PRIVATE_DIR_MODE if self.gid is None else SHARED_DIR_MODE

    @property
    def file_mode(self) -> int:
        return PRIVATE_FILE_MODE if self.gid is None else SHARED_FILE_MODE


PRIVATE = FolderAccess()


def group_access(group: str | None, key: str = GROUP_KEY) -> FolderAccess:
    """Return the access that shares folders with `group`, or `PRIVATE` for None.

    Raises:
        ConfigError: The group does not exist on this machine, or the user is not a member of
            it (the user could not give folders to it).
    """
    if group is None:
        return PRIVATE
    if not isinstance(group, str) or not group.strip():
        raise ConfigError(f"{key}: expected the name of a group, got {group!r}.")
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(
            f"{key}: group {group!r} not found on this machine. Use one of your groups "
            f"({', '.join(user_group_names())}; `id -Gn` lists them), or remove the key to keep "
            "the folders private."
        ) from None
    if gid not in user_group_ids():
        raise ConfigError(
            f"{key}: you ({_user_name()}) are not a member of group {group!r}, so hpc-tune cannot "
            f"give folders to it. Your groups: {', '.join(user_group_names())}. Ask an "
            "administrator to add you to the group (then log in again), or choose one of yours."
        )
    return FolderAccess(group, gid)


def user_group_ids() -> set[int]:
    """Return the ids of this process's groups: the primary one and the supplementary ones."""
    return {os.getegid(), *os.getgroups()}


def user_group_names() -> list[str]:
    names = []
    for gid in sorted(user_group_ids()):
        try:
            names.append(grp.getgrgid(gid).gr_name)
        except KeyError:
            names.append(str(gid))
    return names


def make_private_dir(folder: Path, access: FolderAccess | None = None) -> Path:
    """Create `folder` and its missing parents with the mode and group of `access`.

    Args:
        folder: The folder to create.
        access: The access of the folders to create. When None, they take the access of the
            nearest existing parent if that parent is a group-shared folder of the user
            (setgid bit, group read), and are private otherwise.

    Returns:
        `folder`.
    """
    folder = Path(folder)
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.is_dir():
            break
        missing.append(candidate)
    if not missing:
        warn_about_access(folder, access if access is not None else _existing_access(folder))
        return folder
    if access is None:
        access = inherited_access(missing[-1].parent)
    for candidate in reversed(missing):
        candidate.mkdir(exist_ok=True)
        _set_dir_access(candidate, access)
    return folder


def inherited_access(parent: Path) -> FolderAccess:
    """Return the access a new folder in `parent` gets: the parent's group if the parent is a
    group-shared folder of this user, else private."""
    try:
        status = parent.stat()
    except OSError:
        return PRIVATE
    shared = status.st_mode & stat.S_ISGID and status.st_mode & stat.S_IRGRP
    if not shared or status.st_uid != os.geteuid():
        return PRIVATE
    try:
        name = grp.getgrgid(status.st_gid).gr_name
    except KeyError:
        name = str(status.st_gid)
    return FolderAccess(name, status.st_gid)


def _existing_access(folder: Path) -> FolderAccess:
    """Return the access an existing folder should have when the caller requests none.

    A group-shared folder of the user keeps its group: hpc-tune made it so on request. Any
    other folder should have the access of its parent.
    """
    own = inherited_access(folder)
    return own if own.gid is not None else inherited_access(folder.parent)


def match_folder_access(path: Path) -> None:
    """Give a file hpc-tune wrote in a folder the file mode of that folder's access.

    Files in a group-shared folder get mode 0640 (the setgid bit of the folder has given them
    its group), and files elsewhere 0600. The process umask (077) would make them all 0600.
    """
    os.chmod(path, inherited_access(Path(path).parent).file_mode)


def set_file_access(path: Path, access: FolderAccess) -> None:
    """Give a file hpc-tune wrote the mode and group of `access` (symbolic links are skipped)."""
    path = Path(path)
    if path.is_symlink():
        return
    if access.gid is not None:
        os.chown(path, -1, access.gid)
    os.chmod(path, access.file_mode)


def warn_about_access(folder: Path, access: FolderAccess) -> None:
    """Log once per folder tree when `access` and an existing folder differ in who can open it.

    The folder is left as it is: the user or an older version made it, and changing a user's
    permissions silently could break what they set up on purpose. The logged command fixes
    the folder and everything inside it, so folders inside a folder already logged are not
    logged again.
    """
    folder = Path(folder)
    if any(logged in _warned for logged in (folder, *folder.parents)):
        return
    try:
        status = folder.stat()
    except OSError:
        return
    mode = stat.S_IMODE(status.st_mode)
    wrong_group = access.gid is not None and status.st_gid != access.gid
    problems = []
    if mode & 0o007:
        problems.append("other users can open it")
    if mode & 0o070 and (access.gid is None or wrong_group):
        problems.append(f"group {_group_name(status.st_gid)} can open it")
    if access.gid is not None and (wrong_group or not mode & 0o050):
        problems.append(f"group {access.group} cannot open it")
    if not problems:
        return
    _warned.add(folder)
    logger.warning(
        "Folder %s already exists with mode %04o and group %s: %s. hpc-tune leaves existing "
        "folders as they are. To fix this folder and everything inside it, run: %s",
        folder,
        mode,
        _group_name(status.st_gid),
        " and ".join(problems),
        access_fix_command(folder, access),
    )


def access_fix_command(folder: Path, access: FolderAccess) -> str:
    """Return the shell command that gives the tree under `folder` the access `access`.

    Shared: the group, read for the group on files and folders (`X` adds the search bit to
    folders only), nothing for other users, and the setgid bit on folders only (on a file it
    would mean something else). Private: nothing for the group and other users.
    """
    quoted = shlex.quote(str(folder))
    if access.gid is None:
        return f"chmod -R go-rwx {quoted}"
    return (
        f"chgrp -R {shlex.quote(str(access.group))} {quoted} && chmod -R g+rX,g-w,o-rwx {quoted} "
        f"&& find {quoted} -type d -exec chmod g+s {{}} +"
    )


def _set_dir_access(folder: Path, access: FolderAccess) -> None:
    if access.gid is not None:
        os.chown(folder, -1, access.gid)
    # chmod after chown: chown may clear the setgid bit.
    os.chmod(folder, access.dir_mode)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
