"""Run a command under a pseudo-terminal and read its output as it is written.

Why a pty: libc fully buffers stdout (4 KiB) when it is a pipe, so a deploy script's output
would arrive in lumps; on a terminal it is line-buffered, and stdout and stderr interleave
exactly as written. Output post-processing is switched off (no ``\\n`` → ``\\r\\n``), so the
log holds the script's bytes exactly.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import struct
import subprocess
import termios
from collections.abc import Callable, Sequence

READ_BATCH = 256 * 1024


# Signals a job's process gets back at their default action before ``exec``: an ignored
# signal stays ignored across exec, and pploy (or its runner, or a shell that started pploy in
# the background) may ignore them — then cancel's SIGINT, or a SIGTERM, would do nothing.
DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP)


def _child_setup(then: Callable[[], None] | None) -> Callable[[], None]:
    """The child's step before ``exec``: default signal actions, then ``then``'s."""

    def preexec() -> None:
        for sig in DEFAULT_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if then is not None:
            then()

    return preexec


def _discard(data: bytes) -> None:
    """Output sink until :meth:`PtyProcess.spawn` sets the caller's."""


class PtyProcess:
    """A child in its own session and process group, its stdout and stderr on a pty."""

    def __init__(self, proc: asyncio.subprocess.Process, master_fd: int) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.master_fd = master_fd
        self._eof = asyncio.get_running_loop().create_future()
        self._on_output: Callable[[bytes], None] = _discard

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        cwd: str,
        env: dict[str, str],
        on_output: Callable[[bytes], None],
        columns: int = 160,
        rows: int = 50,
        preexec: Callable[[], None] | None = None,
    ) -> PtyProcess:
        """Spawn ``argv``; ``on_output`` is called with each chunk read from the pty.

        ``preexec`` runs in the child before ``exec`` (see containment: it moves the child
        into the job's cgroup before the script can start anything), after the child's
        DEFAULT_SIGNALS are set back to their default action."""
        master_fd, slave_fd = os.openpty()
        try:
            fcntl.ioctl(slave_fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
            attrs = termios.tcgetattr(slave_fd)
            attrs[1] &= ~termios.OPOST  # oflag: keep the script's bytes as they are
            attrs[3] &= ~termios.ECHO  # lflag
            termios.tcsetattr(slave_fd, termios.TCSANOW, attrs)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=slave_fd,
                stderr=slave_fd,
                start_new_session=True,
                preexec_fn=_child_setup(preexec),
            )
        except BaseException:
            os.close(master_fd)
            raise
        finally:
            # The parent must not keep the slave open, or EIO (end of output) never comes.
            os.close(slave_fd)
        os.set_blocking(master_fd, False)
        self = cls(proc, master_fd)
        self._on_output = on_output
        asyncio.get_running_loop().add_reader(master_fd, self._readable)
        return self

    def _readable(self) -> None:
        # A pty hands out at most about 4 KiB per read: drain what is there (up to a bound,
        # so one chatty job cannot starve the loop) and pass it on as one chunk, so a fast
        # writer costs one log write and one wake-up per batch rather than per read.
        chunks: list[bytes] = []
        size = 0
        eof = False
        while size < READ_BATCH:
            try:
                data = os.read(self.master_fd, 65536)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:  # EIO: every writer closed the slave
                    raise
                eof = True
                break
            if not data:
                eof = True
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            self._on_output(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof:
            self._finish_reading()

    def _finish_reading(self) -> None:
        if self.master_fd >= 0:
            asyncio.get_running_loop().remove_reader(self.master_fd)
        if not self._eof.done():
            self._eof.set_result(None)

    async def wait(self, drain_seconds: float = 1.0) -> int:
        """Wait for the child to exit, then for the rest of its output.

        Returns the exit status as asyncio reports it (negative = killed by that signal).
        A background process that inherited the pty can keep it open forever, so reading
        stops ``drain_seconds`` after the child exits even without EOF.
        """
        returncode = await self.proc.wait()
        try:
            await asyncio.wait_for(asyncio.shield(self._eof), drain_seconds)
        except TimeoutError:
            self._readable()  # take what is buffered before giving up
        self.close()
        return returncode

    def close(self) -> None:
        if self.master_fd >= 0:
            self._finish_reading()
            os.close(self.master_fd)
            self.master_fd = -1

    def group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the whole process group; False when nothing is left to signal."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    async def terminate_group(self, waits: Sequence[float] = (5.0, 5.0)) -> str:
        """SIGINT, then SIGTERM, then SIGKILL to the group, waiting ``waits`` between them,
        until no process of the group is left. Returns the last signal's name."""
        last = "none"
        for sig, wait in ((signal.SIGINT, waits[0]), (signal.SIGTERM, waits[1])):
            if not self.signal_group(sig):
                return last
            last = sig.name
            if await self._group_gone_within(wait):
                return last
        self.signal_group(signal.SIGKILL)
        await self._group_gone_within(5.0)
        return signal.SIGKILL.name

    async def _group_gone_within(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if self.proc.returncode is None:
                try:
                    await asyncio.wait_for(asyncio.shield(self.proc.wait()), 0.05)
                except TimeoutError:
                    pass
            elif not self.group_alive():
                return True
            else:
                await asyncio.sleep(0.05)
            if self.proc.returncode is not None and not self.group_alive():
                return True
            if loop.time() >= deadline:
                return False


JOB_TAG_VAR = "PPLOY_JOB_ID"


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``PPLOY_JOB_ID=<tag>``: every process a job
    started, including daemons that left its process group with setsid (Linux /proc)."""
    needle = f"{JOB_TAG_VAR}={tag}".encode()
    found = []
    own = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == own:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry))
    return found


def kill_tagged(tag: str) -> int:
    """SIGKILL every process of a job that is still alive; returns how many were signalled."""
    count = 0
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, signal.SIGKILL)
            count += 1
        except (ProcessLookupError, PermissionError):
            continue
    return count
