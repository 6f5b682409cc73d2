"""Projects: git clones under ``<workdir>/projects/<name>`` that follow the `.deploy/` contract.

The contract (kept exactly as pploy users have it):

- ``.deploy/bin/deploy``: executable, run as ``DEPLOY_ENV=<env> DEPLOY_USER=<user>``;
- ``.deploy/bin/checkout_overwrite``: optional, replaces the default checkout;
- ``.deploy/config/deploy_envs``: optional, one environment per line (default staging, production);
- ``.deploy/config/readme.html``: optional, shown on the project page (sanitised).
"""

from __future__ import annotations

import asyncio
import builtins
import shutil
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nh3

from pploy.deploy.domain import git, names, repofiles
from pploy.deploy.domain.errors import BadRequest, Conflict, NotFound, Unavailable
from pploy.deploy.domain.records import Storage

DEFAULT_ENVS = ("staging", "production")
DEPLOY_SCRIPT = ".deploy/bin/deploy"
CHECKOUT_SCRIPT = ".deploy/bin/checkout_overwrite"
ENVS_FILE = ".deploy/config/deploy_envs"
README_FILE = ".deploy/config/readme.html"
MAX_README_BYTES = 256 * 1024
MAX_ENVS_BYTES = 64 * 1024
# With a shared database: the id of the store's repository a clone was made for, in the clone's
# own .git (pploy's file, never repository content), so a project removed and added again
# elsewhere while this instance was away is cloned afresh.
REPOSITORY_MARK = "pploy-repository"


@dataclass(frozen=True)
class RepoFiles:
    """What the project page and the API show from a clone's ``.deploy/config``."""

    envs: list[str]
    envs_problem: str | None
    readme: str | None
    readme_problem: str | None
    deploy_problem: str | None
    checkout_overwrite: bool
    checkout_problem: str | None


@dataclass(frozen=True)
class Project:
    name: str
    path: Path

    @property
    def deploy_script(self) -> Path:
        return self.path / DEPLOY_SCRIPT

    @property
    def checkout_script(self) -> Path | None:
        """The checkout_overwrite script, when it is an executable file inside the clone."""
        if repofiles.executable_problem(self.path, CHECKOUT_SCRIPT):
            return None
        return self.path / CHECKOUT_SCRIPT

    def checkout_problem(self) -> str | None:
        """Why a checkout cannot run: checkout_overwrite leads outside the clone."""
        try:
            repofiles.inside_parts(self.path, CHECKOUT_SCRIPT)
        except repofiles.RefusedFile as exc:
            return f"{exc}: pploy runs only scripts inside the clone"
        return None

    def deploy_problem(self) -> str | None:
        """Why the project cannot deploy now, or None when it can."""
        problem = repofiles.executable_problem(self.path, DEPLOY_SCRIPT)
        if problem == f"{DEPLOY_SCRIPT} is missing":
            return f"{DEPLOY_SCRIPT} is missing: this repository cannot be deployed by pploy"
        return problem or self.envs_and_problem()[1]

    def envs_and_problem(self) -> tuple[list[str], str | None]:
        """Environments from deploy_envs (blank lines, comments and names pploy refuses skipped),
        the defaults when there is no such file; none, with the reason, when it is refused."""
        try:
            raw = repofiles.read_file(self.path, ENVS_FILE, MAX_ENVS_BYTES)
        except repofiles.RefusedFile as exc:
            return [], f"{exc}; no environment can be deployed until it is fixed"
        if raw is None:
            return list(DEFAULT_ENVS), None
        envs = []
        for line in raw.decode(errors="replace").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                envs.append(names.env_name(line))
            except names.InvalidName:
                continue
        return list(dict.fromkeys(envs)) or list(DEFAULT_ENVS), None

    def deploy_envs(self) -> list[str]:
        """The environments one may deploy to (see envs_and_problem)."""
        return self.envs_and_problem()[0]

    def readme_and_problem(self) -> tuple[str | None, str | None]:
        """readme.html sanitised with nh3 (markup survives, scripts and handlers do not), or
        the reason it is not shown."""
        try:
            raw = repofiles.read_file(self.path, README_FILE, MAX_README_BYTES)
        except repofiles.RefusedFile as exc:
            return None, str(exc)
        if raw is None:
            return None, None
        html = nh3.clean(raw.decode(errors="replace"), link_rel="noopener noreferrer nofollow")
        return html, None

    def files(self) -> RepoFiles:
        envs, envs_problem = self.envs_and_problem()
        readme, readme_problem = self.readme_and_problem()
        return RepoFiles(
            envs, envs_problem, readme, readme_problem, self.deploy_problem(),
            self.checkout_script is not None, self.checkout_problem(),
        )  # fmt: skip

    async def read_files(self) -> RepoFiles:
        """``files()`` in a thread: the event loop never waits on a clone's disk."""
        return await asyncio.to_thread(self.files)


class Projects:
    """The set of projects in a workdir; with a store, each addition and removal is recorded
    there (see ``Store.add_repository``)."""

    def __init__(
        self, workdir: Path, *, git_config: object | None = None, store: Storage | None = None
    ) -> None:
        self.root = workdir / "projects"
        self.logs_root = workdir / "logs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs_root.mkdir(parents=True, exist_ok=True)
        self.shallow = getattr(git_config, "shallow", True)
        self.depth = getattr(git_config, "depth", 50)
        self.timeout = getattr(git_config, "timeout_seconds", 300)
        self.allowed_urls: list[str] = list(getattr(git_config, "allowed_urls", [names.ANY_URL]))
        self.store = store
        self._cloning: set[str] = set()
        # A shared database (several instances): the store says which projects exist, and
        # this is called for one it names that has no clone here yet (cluster.Cluster clones).
        self.shared = bool(store is not None and store.shared)
        self.on_missing: Callable[[str], None] | None = None
        if store is not None and not self.shared:
            self._adopt_unrecorded_clones(store)

    def _adopt_unrecorded_clones(self, store: Storage) -> None:
        """Clones made by a pploy that did not record repositories get a record now, with the
        URL their ``origin`` names (from pploy's own ``.git/config``, not repository content)."""
        for project in self.list():
            if store.current_repository(project.name) is None:
                result = subprocess.run(
                    ["git", "config", "--get", "remote.origin.url"], cwd=project.path,
                    env=git.git_env(), capture_output=True, text=True, check=False,
                    timeout=self.timeout,
                )  # fmt: skip
                url = result.stdout.strip() or "(unknown)"
                store.adopt_repository(project.name, names.without_secrets(url))

    def list(self) -> list[Project]:
        if self.shared:
            return self._list_shared()
        return self.local()

    def local(self) -> builtins.list[Project]:
        """The clones in this workdir."""
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
        if self.shared:
            return self._get_shared(name, path)
        if not (path / ".git").exists():
            raise NotFound(f"no project named {name!r}")
        return Project(name, path)

    def _list_shared(self) -> builtins.list[Project]:
        """The projects the shared store names that are cloned here (the others are asked
        for, and listed once cloned)."""
        assert self.store is not None
        names_ = {repo.project for repo in self.store.current_repositories()}
        here = {project.name: project for project in self.local()}
        for name in sorted(names_ - set(here)):
            if self.on_missing is not None:
                self.on_missing(name)
        return [project for name, project in sorted(here.items()) if name in names_]

    def _get_shared(self, name: str, path: Path) -> Project:
        assert self.store is not None
        current = self.store.current_repository(name)
        if current is None:
            raise NotFound(f"no project named {name!r}")
        if not (path / ".git").exists() or self.cloned_for(name) not in (None, current.id):
            if self.on_missing is not None:
                self.on_missing(name)
            raise Unavailable(
                f"{name} was added on another pploy instance and is being cloned here; "
                "try again in a few seconds"
            )
        return Project(name, path)

    def log_dir(self, name: str) -> Path:
        return self.logs_root / names.project_name(name)

    def _clone_args(self, url: str, staging: Path) -> builtins.list[str]:
        """``git clone``'s arguments (shallow, all branches, by default)."""
        args = ["clone", "--no-single-branch"]
        if names.ANY_URL not in self.allowed_urls:
            # An allowed server must not redirect this clone, or later fetches, elsewhere.
            args += ["--config", "http.followRedirects=false"]
        if self.shallow:
            args += ["--depth", str(self.depth)]
        return [*args, "--end-of-options", url, str(staging)]

    async def clone(self, url: str) -> Project:
        """Clone ``url`` (shallow, all branches, by default) as a new project."""
        try:
            names.repository_url(url)
            name = names.project_name_from_url(url)
        except names.InvalidName as exc:
            raise BadRequest(str(exc)) from exc
        if not names.url_allowed(url, self.allowed_urls):
            raise BadRequest(
                f"the repository URL {names.without_secrets(url)!r} is not allowed here: "
                f"git.allowed_urls is {', '.join(self.allowed_urls) or '(empty)'}"
            )
        if (self.root / name).exists() or name in self._cloning:
            raise Conflict(f"a project named {name!r} already exists")
        if self.shared and self.store is not None and self.store.current_repository(name):
            raise Conflict(f"a project named {name!r} already exists (on another instance)")
        self._cloning.add(name)
        staging = self.root / f".clone-{uuid.uuid4().hex}"
        try:
            try:
                await git.run_git(*self._clone_args(url, staging), timeout=self.timeout)
            except git.GitError as exc:
                raise BadRequest(f"git clone failed: {exc}") from exc
            except TimeoutError as exc:
                raise BadRequest(f"git clone took longer than {self.timeout:g} s") from exc
            if self.shared and self.store is not None:  # recorded first: the store decides
                added = self.store.add_repository(name, names.without_secrets(url))  # who won
                (staging / ".git" / REPOSITORY_MARK).write_text(str(added.id))
            staging.rename(self.root / name)
            if self.store is not None and not self.shared:
                self.store.add_repository(name, names.without_secrets(url))
        finally:
            self._cloning.discard(name)
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)
        return Project(name, self.root / name)

    def cloning(self, name: str) -> bool:
        """True while this instance clones ``name`` (added here, or on demand)."""
        return name in self._cloning

    def cloned_for(self, name: str) -> int | None:
        """The store repository id this workdir's clone of ``name`` was made for (None: not
        recorded, or no clone)."""
        try:
            text = (self.root / names.project_name(name) / ".git" / REPOSITORY_MARK).read_text()
        except OSError:
            return None
        return int(text) if text.strip().isdigit() else None

    async def clone_recorded(self, name: str, url: str, repository: int) -> Project:
        """Clone a project another instance added (``url`` as the store has it: without any
        password, so a private repository needs this host's git credentials)."""
        if not names.url_allowed(url, self.allowed_urls):
            raise BadRequest(f"the repository URL {url!r} of {name} is not allowed here")
        staging = self.root / f".clone-{uuid.uuid4().hex}"
        self._cloning.add(name)
        try:
            await git.run_git(*self._clone_args(url, staging), timeout=self.timeout)
            (staging / ".git" / REPOSITORY_MARK).write_text(str(repository))
            staging.rename(self.root / names.project_name(name))
        finally:
            self._cloning.discard(name)
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)
        return Project(name, self.root / name)

    async def drop_clone(self, name: str) -> None:
        """Delete this instance's clone of a project removed on another instance."""
        path = self.root / names.project_name(name)
        if not path.exists():
            return
        trash = self.root / f".remove-{uuid.uuid4().hex}"
        path.rename(trash)
        await asyncio.to_thread(shutil.rmtree, trash, True)

    async def remove(self, name: str, user: str) -> None:
        """Delete the clone; its logs and job records stay (the audit trail), the store marks
        its repository removed by ``user``."""
        project = self.get(name)
        trash = self.root / f".remove-{uuid.uuid4().hex}"
        project.path.rename(trash)
        if self.store is not None:
            self.store.remove_project(name, user)
        await asyncio.to_thread(shutil.rmtree, trash, True)
