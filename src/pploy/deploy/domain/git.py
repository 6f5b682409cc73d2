"""Reading and fetching git repositories, always with an argument list, never a shell."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

# Transports git may use: `ext::` (runs commands) and friends stay off. Set as git config
# (protocol.<name>.allow), not GIT_ALLOW_PROTOCOL: that variable would also allow `file` for
# submodules, which git refuses by default ("user": only for URLs the user gave, such as a
# local path added as a project), so a repository's .gitmodules cannot pull in other
# repositories of this machine.
PROTOCOL_CONFIG = {
    "protocol.allow": "never",
    "protocol.git.allow": "always",
    "protocol.http.allow": "always",
    "protocol.https.allow": "always",
    "protocol.ssh.allow": "always",
    "protocol.file.allow": "user",
}
FIELD = "\x1f"
RECORD = "\x1e"
LOG_FORMAT = RECORD + FIELD.join(["%H", "%an", "%ae", "%aI", "%D", "%s", "%b"]) + FIELD


class GitError(Exception):
    pass


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for git: never prompt, only safe transports, C locale for parsing."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("GIT_ALLOW_PROTOCOL", "GIT_PROTOCOL_FROM_USER", "GIT_CONFIG_COUNT")
        and not key.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))
    }
    env.update(
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
        GIT_ASKPASS="/bin/true",
        SSH_ASKPASS="/bin/true",
        GIT_CONFIG_COUNT=str(len(PROTOCOL_CONFIG)),
    )
    for i, (key, value) in enumerate(PROTOCOL_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    if extra:
        env.update(extra)
    return env


# What pploy reads of git's output: commit messages and file lists are repository content, so a
# hostile commit (a 1 GB message, a million files) must not fill pploy's memory.
MAX_OUTPUT_BYTES = 4 << 20
MAX_ERROR_BYTES = 64 << 10


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of ``stream`` until its end; True when there was more."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await stream.read(65536):
        if size + len(chunk) > limit:
            chunks.append(chunk[: limit - size])
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _subcommand(args: tuple[str, ...]) -> str:
    """The git subcommand in ``args``, past options and the values of ``-c``."""
    for i, arg in enumerate(args):
        if arg[:1] != "-" and (i == 0 or args[i - 1] != "-c"):
            return arg
    return ""


async def run_git(
    *args: str, cwd: str | None = None, timeout: float = 60, max_output: int = MAX_OUTPUT_BYTES
) -> str:
    """Run ``git args…`` and return its stdout; GitError with stderr when it fails, or when it
    prints more than ``max_output`` bytes (git is stopped then)."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=git_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None

    async def run() -> tuple[bytes, bool, bytes]:
        errors = asyncio.ensure_future(_read_capped(stderr, MAX_ERROR_BYTES))
        try:
            out, too_much = await _read_capped(stdout, max_output)
            if too_much:
                proc.kill()
            err, _ = await errors
        finally:
            errors.cancel()
        await proc.wait()
        return out, too_much, err

    try:
        out, too_much, err = await asyncio.wait_for(run(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    if too_much:
        raise GitError(f"git {_subcommand(args)} printed more than {max_output >> 20} MiB; stopped")
    if proc.returncode != 0:
        raise GitError(err.decode(errors="replace").strip() or f"git {_subcommand(args)} failed")
    return out.decode(errors="replace")


@dataclass
class Commit:
    sha: str
    author: str
    email: str
    date: str
    refs: list[str]
    subject: str
    body: str
    files: list[tuple[str, str]] = field(default_factory=list)

    @property
    def short(self) -> str:
        return self.sha[:10]

    def to_json(self) -> dict[str, object]:
        return {
            "sha": self.sha,
            "author": self.author,
            "email": self.email,
            "date": self.date,
            "refs": self.refs,
            "subject": self.subject,
            "body": self.body,
            "files": [{"status": s, "path": p} for s, p in self.files],
        }


def parse_log(text: str) -> list[Commit]:
    """Parse ``git log`` output made with LOG_FORMAT and ``--name-status``."""
    commits = []
    for record in text.split(RECORD)[1:]:
        parts = record.split(FIELD)
        if len(parts) < 8:
            continue
        sha, author, email, date, refs, subject, body, rest = parts[:8]
        files = []
        for line in rest.splitlines():
            cols = line.split("\t")
            if len(cols) >= 2 and cols[0]:
                files.append((cols[0], " → ".join(cols[1:])))
        commits.append(
            Commit(
                sha=sha,
                author=author,
                email=email,
                date=date,
                refs=[r.strip() for r in refs.split(",") if r.strip()],
                subject=subject,
                body=body.strip(),
                files=files,
            )
        )
    return commits


async def recent_commits(path: str, limit: int, revision: str = "HEAD") -> list[Commit]:
    out = await run_git(
        # quotePath=false: a non-ASCII file name is shown as itself, not as octal escapes.
        "-c", "core.quotePath=false",
        "log", f"--max-count={limit}", f"--format={LOG_FORMAT}", "--name-status",
        "--first-parent", "-m", "--end-of-options", revision, "--",
        cwd=path,
    )  # fmt: skip
    return parse_log(out)


async def resolve_commit(path: str, ref: str) -> str | None:
    """The commit a ref names, trying remote branch, tag, then the ref itself (a SHA, or
    ``origin/master~1``). ``HEAD`` (``HEAD^``, ``HEAD~2``) is the clone's own, as it was for
    the originals' ``git checkout``, never origin's default branch."""
    local = ref == "HEAD" or ref.startswith(("HEAD~", "HEAD^"))
    candidates = (ref,) if local else (f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref)
    for candidate in candidates:
        try:
            out = await run_git(
                "rev-parse", "--verify", "--quiet", "--end-of-options", f"{candidate}^{{commit}}",
                cwd=path,
            )  # fmt: skip
        except GitError:
            continue
        if out.strip():
            return out.strip()
    return None


async def head_sha(path: str) -> str | None:
    try:
        return (await run_git("rev-parse", "--verify", "--quiet", "HEAD", cwd=path)).strip()
    except GitError:
        return None


async def default_branch(path: str) -> str | None:
    try:
        out = await run_git("symbolic-ref", "--short", "refs/remotes/origin/HEAD", cwd=path)
    except GitError:
        return None
    return out.strip().removeprefix("origin/") or None
