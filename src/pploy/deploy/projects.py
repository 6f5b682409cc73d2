"""Projects: git clones under ``<workdir>/projects/<name>`` that follow the `.deploy/` contract.

The contract (kept exactly as pploy users have it):

- ``.deploy/bin/deploy``: executable, run as ``DEPLOY_ENV=<env> DEPLOY_USER=<user>``;
- ``.deploy/bin/checkout_overwrite``: optional, replaces the default checkout;
- ``.deploy/config/deploy_envs``: optional, one environment per line (default staging, production);
- ``.deploy/config/readme.html``: optional, shown on the project page (sanitised).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import nh3

from pploy.deploy import git, names
from pploy.deploy.errors import BadRequest, Conflict, NotFound

DEFAULT_ENVS = ("staging", "production")
DEPLOY_SCRIPT = ".deploy/bin/deploy"
CHECKOUT_SCRIPT = ".deploy/bin/checkout_overwrite"
ENVS_FILE = ".deploy/config/deploy_envs"
README_FILE = ".deploy/config/readme.html"
MAX_README_BYTES = 256 * 1024


@dataclass(frozen=True)
class Project:
    name: str
    path: Path

    @property
    def deploy_script(self) -> Path:
        return self.path / DEPLOY_SCRIPT

    @property
    def checkout_script(self) -> Path | None:
        script = self.path / CHECKOUT_SCRIPT
        return script if script.is_file() and os.access(script, os.X_OK) else None

    def deploy_problem(self) -> str | None:
        """Why the project cannot deploy now, or None when it can."""
        script = self.deploy_script
        if not script.exists():
            return f"{DEPLOY_SCRIPT} is missing: this repository cannot be deployed by pploy"
        if not script.is_file():
            return f"{DEPLOY_SCRIPT} is not a file"
        if not os.access(script, os.X_OK):
            return f"{DEPLOY_SCRIPT} is not executable (chmod +x it and commit)"
        return None

    def deploy_envs(self) -> list[str]:
        """Environments from deploy_envs, skipping blank lines and names pploy refuses."""
        try:
            text = (self.path / ENVS_FILE).read_text(errors="replace")
        except OSError:
            return list(DEFAULT_ENVS)
        envs = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                envs.append(names.env_name(line))
            except names.InvalidName:
                continue
        return list(dict.fromkeys(envs)) or list(DEFAULT_ENVS)

    def readme_html(self) -> str | None:
        """readme.html sanitised with nh3: markup survives, scripts and handlers do not."""
        try:
            with open(self.path / README_FILE, "rb") as fh:
                raw = fh.read(MAX_README_BYTES)
        except OSError:
            return None
        return nh3.clean(raw.decode(errors="replace"), link_rel="noopener noreferrer nofollow")


class Projects:
    """The set of projects in a workdir."""

    def __init__(self, workdir: Path, *, git_config: object | None = None) -> None:
        self.root = workdir / "projects"
        self.logs_root = workdir / "logs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs_root.mkdir(parents=True, exist_ok=True)
        self.shallow = getattr(git_config, "shallow", True)
        self.depth = getattr(git_config, "depth", 50)
        self.timeout = getattr(git_config, "timeout_seconds", 300)
        self._cloning: set[str] = set()

    def list(self) -> list[Project]:
        found = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and (entry / ".git").exists():
                try:
                    found.append(Project(names.project_name(entry.name), entry))
                except names.InvalidName:
                    continue
        return found

    def get(self, name: str) -> Project:
        try:
            names.project_name(name)
        except names.InvalidName as exc:
            raise NotFound(f"no project named {name!r}") from exc
        path = self.root / name
        if not (path / ".git").exists():
            raise NotFound(f"no project named {name!r}")
        return Project(name, path)

    def log_dir(self, name: str) -> Path:
        return self.logs_root / names.project_name(name)

    async def clone(self, url: str) -> Project:
        """Clone ``url`` (shallow, all branches, by default) as a new project."""
        try:
            names.repository_url(url)
            name = names.project_name_from_url(url)
        except names.InvalidName as exc:
            raise BadRequest(str(exc)) from exc
        if (self.root / name).exists() or name in self._cloning:
            raise Conflict(f"a project named {name!r} already exists")
        self._cloning.add(name)
        staging = self.root / f".clone-{uuid.uuid4().hex}"
        try:
            args = ["clone", "--no-single-branch"]
            if self.shallow:
                args += ["--depth", str(self.depth)]
            args += ["--end-of-options", url, str(staging)]
            try:
                await git.run_git(*args, timeout=self.timeout)
            except git.GitError as exc:
                raise BadRequest(f"git clone failed: {exc}") from exc
            except TimeoutError as exc:
                raise BadRequest(f"git clone took longer than {self.timeout:g} s") from exc
            staging.rename(self.root / name)
        finally:
            self._cloning.discard(name)
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)
        return Project(name, self.root / name)

    async def remove(self, name: str) -> None:
        project = self.get(name)
        trash = self.root / f".remove-{uuid.uuid4().hex}"
        project.path.rename(trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)
        logs = self.log_dir(name)
        if logs.exists():
            await asyncio.to_thread(shutil.rmtree, logs, True)
