"""Reading files out of a clone whose content is untrusted: nothing outside it, nothing unbounded.

A repository can commit a symlink (``readme.html -> /etc/passwd``), and a deploy script can
leave a FIFO or a huge file in its clone. So a file pploy reads from a clone is opened only if

- its real path (symlinks inside the clone are allowed) stays inside the clone and does not go
  through ``.git`` (which holds the remote URL, possibly with credentials);
- each component is then opened with ``O_NOFOLLOW`` from the clone's directory, so a symlink
  swapped in after the check makes the open fail instead of leaving the clone;
- it is a regular file (checked with ``fstat`` on the opened descriptor; ``O_NONBLOCK`` keeps the
  open of a FIFO from waiting for a writer);
- it is at most ``limit`` bytes (never more than ``limit + 1`` bytes are read).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


class RefusedFile(Exception):
    """A repository file pploy will not read; the message names the file and says why."""


def _size_text(limit: int) -> str:
    return f"{limit // 1024} KiB" if limit >= 1024 else f"{limit} bytes"


def inside_parts(root: Path, rel: str) -> list[str] | None:
    """The components of ``rel``'s real path under ``root``, or None when nothing is there.

    Raises RefusedFile when the real path leaves ``root`` or enters its ``.git``.
    """
    root_real = os.path.realpath(root)
    target = os.path.realpath(os.path.join(root_real, rel))
    relative = os.path.relpath(target, root_real)
    parts = relative.split(os.sep)
    if relative == os.curdir:
        raise RefusedFile(f"{rel} is not a regular file")
    if parts[0] == os.pardir or os.path.isabs(relative):
        raise RefusedFile(f"{rel} is a symlink that leads outside the repository")
    if parts[0] == ".git":
        raise RefusedFile(f"{rel} is a symlink into .git")
    if not os.path.lexists(target):
        return None
    return parts


def read_file(root: Path, rel: str, limit: int) -> bytes | None:
    """The content of ``root/rel`` (at most ``limit`` bytes), or None when it does not exist.

    Blocking but bounded: no wait on a FIFO, no read past ``limit + 1`` bytes. Run it in a
    thread from the event loop.
    """
    parts = inside_parts(root, rel)
    if parts is None:
        return None
    fds: list[int] = []
    try:
        fds.append(os.open(os.path.realpath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for part in parts[:-1]:
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fds[-1])
        fds.append(fd)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile(f"{rel} is not a regular file")
        if info.st_size > limit:
            raise RefusedFile(f"{rel} is larger than {_size_text(limit)}")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise RefusedFile(f"{rel} is larger than {_size_text(limit)}")
        return b"".join(chunks)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RefusedFile(f"{rel} is a symlink loop, or changed while being read") from None
        if exc.errno == errno.ENXIO:  # a socket
            raise RefusedFile(f"{rel} is not a regular file") from None
        raise RefusedFile(f"{rel} cannot be read: {exc.strerror}") from None
    finally:
        for fd in reversed(fds):
            os.close(fd)


def executable_problem(root: Path, rel: str) -> str | None:
    """Why ``root/rel`` cannot be run as a repository script, or None when it can.

    A script may be a symlink to another file of the clone, never to one outside it: pploy runs
    what the repository holds, not programs of the machine it names.
    """
    try:
        parts = inside_parts(root, rel)
    except RefusedFile as exc:
        return f"{exc}: pploy runs only scripts inside the clone"
    if parts is None:
        return f"{rel} is missing"
    path = Path(os.path.realpath(root), *parts)
    if not path.is_file():
        return f"{rel} is not a regular file"
    if not os.access(path, os.X_OK):
        return f"{rel} is not executable (chmod +x it and commit)"
    return None
