"""A demo project for trying pploy: a local git remote whose deploy script shows off live
output (colours, progress bars with carriage returns, stdout and stderr interleaved)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DEMO_USERS = ["alice", "bob"]

DEPLOY_SCRIPT = r"""#!/bin/sh
# Demo deploy: about 15 seconds of output, the way real deploy tools write it.
set -e
printf '\033[1;34m==> Deploying %s to %s as %s\033[0m\n' \
  "$DEPLOY_PROJECT" "$DEPLOY_ENV" "$DEPLOY_USER"
for step in build test package; do
  printf '\033[36m--> %s\033[0m\n' "$step"
  i=0
  while [ $i -le 20 ]; do
    bar=$(printf '%*s' "$i" '' | tr ' ' '#')
    printf '\r[%-20s] %3d%%' "$bar" $((i * 5))
    i=$((i + 1))
    sleep 0.1
  done
  printf '\n'
  echo "warning: $step produced 0 warnings (this line is on stderr)" >&2
done
for host in web1 web2 web3; do
  printf 'uploading to \033[1m%s\033[0m ... ' "$host"
  sleep 1
  printf '\033[32mok\033[0m\n'
done
printf '\033[1;32m==> %s is live on %s\033[0m\n' "$DEPLOY_PROJECT" "$DEPLOY_ENV"
"""

README = """<h3>Demo project</h3>
<p>Gain the lock, check out <code>main</code>, then deploy to <b>test</b>, <b>staging</b> or
<b>production</b> and watch the log flow.</p>
"""


def _git(*args: str, cwd: Path) -> None:
    env = dict(os.environ, GIT_AUTHOR_NAME="pploy demo", GIT_AUTHOR_EMAIL="demo@example.com")
    env.update(GIT_COMMITTER_NAME="pploy demo", GIT_COMMITTER_EMAIL="demo@example.com")
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def create_demo_remote(root: Path) -> Path:
    """A bare repository at ``root/demo.git`` holding the demo project (created once)."""
    bare = root / "demo.git"
    if bare.exists():
        return bare
    source = root / "demo-source"
    (source / ".deploy/bin").mkdir(parents=True, exist_ok=True)
    (source / ".deploy/config").mkdir(parents=True, exist_ok=True)
    script = source / ".deploy/bin/deploy"
    script.write_text(DEPLOY_SCRIPT)
    script.chmod(0o755)
    (source / ".deploy/config/deploy_envs").write_text("test\nstaging\nproduction\n")
    (source / ".deploy/config/readme.html").write_text(README)
    (source / "app.txt").write_text("version 1\n")
    _git("init", "-q", "-b", "main", cwd=source)
    _git("add", "-A", cwd=source)
    _git("commit", "-q", "-m", "Demo project", cwd=source)
    (source / "app.txt").write_text("version 2\n")
    _git("commit", "-q", "-am", "Bump to version 2", "-m", "Shows the pending commits.", cwd=source)
    _git("clone", "-q", "--bare", str(source), str(bare), cwd=root)
    return bare


async def ensure_demo_project(projects: object, workdir: Path) -> None:
    """Add the demo project to a workdir that has none yet."""
    from pploy.deploy.domain.projects import Projects

    assert isinstance(projects, Projects)
    if (projects.root / "demo").exists():
        return
    remote = create_demo_remote(workdir / "demo-remote")
    await projects.clone(str(remote))
