"""Every command block of README.md and docs/ runs as written.

The blocks (```sh, ```bash, ```shell, ```console) are taken from the files as they are. A block
that needs an outside service, or would change the machine it runs on, carries the comment
`<!-- doc-test: skip (why) -->` on the line before it; every other block runs, each document's
blocks in order in one shell (so an `export` carries on to the next block), with `set -euo
pipefail`. They run in a network namespace of their own, where the ports the docs name are free:
`pploy up` on 127.0.0.1:9999 (its defaults, as the README starts it) and a standalone
`pploy serve --users alice --port 9000`, each with a project `myapp` (the docs' running
example). The one-shot deploy command offered to scripts also runs against a failing deploy,
where it must exit non-zero."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import pploy
from tests.deploy.support import make_remote
from tests.helpers import require_binary, skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.S | re.M)
COMMAND_LANGUAGES = {"sh", "bash", "shell", "console"}
SKIP = re.compile(r"^<!-- doc-test: skip \((.+)\) -->$")

# The blocks marked as not runnable here, by document and first line: marking another one is
# a change to this list too (and so seen in review).
MARKED = {
    ("README.md", "# 1. The whole stack locally with embedded defau"),
    ("README.md", 'python3 -m pytest -m "not slow" -n 2 -q     # th'),
    ("docs/deploying.md", "sudo python3 -m venv /opt/pploy"),
    ("docs/deploying.md", "sudo useradd --system --home-dir /var/lib/pploy "),
    ("docs/deploying.md", "sudo mkdir -p /etc/pploy"),
    ("docs/deploying.md", "sudo cp contrib/systemd/pploy.service contrib/sy"),
    ("docs/deploying.md", "pploy nginx-config --server-name deploy.example."),
    ("docs/deploying.md", "sudo htpasswd -c /etc/nginx/pploy.htpasswd ops  "),
    ("docs/deploying.md", "pploy doctor https://deploy.example.com/ --cooki"),
    ("docs/doctor.md", "pploy doctor https://deploy.example.com/ --cooki"),
    ("docs/migrating.md", "git clone https://github.com/edvakf/go-pploy && "),
    ("docs/governance.md", 'curl -X POST -H "Authorization: Bearer $PPLOY_TO'),
}


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    text: str
    skip: str | None  # the marker's reason

    @property
    def first_line(self) -> str:
        """The start of the block's first line (as MARKED names it)."""
        return self.text.splitlines()[0][:48]


def command_blocks() -> list[Block]:
    blocks = []
    for document in DOCUMENTS:
        text = (ROOT / document).read_text()
        for match in FENCE.finditer(text):
            if match.group(1) not in COMMAND_LANGUAGES:
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = SKIP.match(before)
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(
                Block(document, line, match.group(2), marker.group(1) if marker else None)
            )
    return blocks


def test_the_blocks_not_run_are_exactly_the_marked_ones() -> None:
    blocks = command_blocks()
    marked = {(b.document, b.first_line) for b in blocks if b.skip}
    assert marked == MARKED
    # Every marker sits right before a command block (none left dangling after an edit).
    markers = sum(
        1
        for document in DOCUMENTS
        for line in (ROOT / document).read_text().splitlines()
        if SKIP.match(line)
    )
    assert markers == len(marked)
    assert len([b for b in blocks if not b.skip]) >= 7  # api.md's, the nginx-config one


def shell_script(blocks: list[Block]) -> str:
    """One document's runnable blocks, in order, each announced on stdout."""
    parts = []
    for block in blocks:
        # On a line of its own, also after output that ends without a newline.
        parts.append(f"printf '\\n@@ block %s\\n' '{block.document}:{block.line}'")
        parts.append(block.text)
    parts.append("printf '\\n@@ end\\n'")
    return "\n".join(parts) + "\n"


SETUP = r"""
set -euo pipefail
ip link set lo up
cd "$WORK"
pploy serve --users alice --port 9000 --workdir "$WORK/serve" > serve.log 2>&1 &
pploy up > up.log 2>&1 &
trap 'kill -INT $(jobs -p) 2>/dev/null; wait' EXIT
ready() {
  for _ in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "nothing answers at $1" >&2; tail -20 serve.log up.log >&2; return 1
}
ready http://127.0.0.1:9000/ping
ready http://127.0.0.1:9999/ping
json() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
# standalone pploy: myapp
curl -sf -b user=alice -H 'Content-Type: application/json' \
  -d "{\"url\": \"$REMOTES/myapp.git\"}" http://127.0.0.1:9000/api/projects > /dev/null
# pploy up: alice's session and a token of the test's own; myapp and broken, broken's lock
curl -sf -c setup-cookies.txt -d user=alice http://127.0.0.1:9999/login -o /dev/null
SETUP_TOKEN=$(curl -sf -b setup-cookies.txt -H 'Content-Type: application/json' \
  -d '{"name": "setup"}' http://127.0.0.1:9999/api/tokens | json token)
for name in myapp broken; do
  curl -sf -H "Authorization: Bearer $SETUP_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"url\": \"$REMOTES/$name.git\"}" http://127.0.0.1:9999/api/projects > /dev/null
done
curl -sf -H "Authorization: Bearer $SETUP_TOKEN" -H 'Content-Type: application/json' \
  -d '{"operation": "gain"}' http://127.0.0.1:9999/api/projects/broken/lock > /dev/null
mkdir -p run
for script in "$WORK"/scripts/*.sh; do
  name=$(basename "$script" .sh)
  rc=0
  if [ "$name" = failing-one-shot ]; then
    (cd run && PPLOY_URL=http://127.0.0.1:9999 PPLOY_TOKEN=$SETUP_TOKEN \
      bash -euo pipefail "$script") > "$WORK/$name.out" 2>&1 || rc=$?
  else
    (cd run && bash -euo pipefail "$script") > "$WORK/$name.out" 2>&1 || rc=$?
  fi
  echo "$rc" > "$WORK/$name.rc"
done
"""


@pytest.mark.slow  # pploy up, pploy serve, deploys
@pytest.mark.timeout(400)
def test_every_unmarked_command_block_runs_as_written(tmp_path: Path) -> None:
    require_binary("curl")
    unshare = require_binary("unshare")
    require_binary("ip")
    if os.geteuid() != 0:
        skip_or_fail("the documented ports need a network namespace of their own (root)")
    blocks = command_blocks()
    runnable = [b for b in blocks if not b.skip]
    remotes = tmp_path / "remotes"
    remotes.mkdir()
    make_remote(
        remotes, name="myapp",
        deploy_script='#!/bin/sh\necho "myapp: $DEPLOY_ENV by $DEPLOY_USER"\n',
    )  # fmt: skip
    make_remote(remotes, name="broken", deploy_script="#!/bin/sh\necho about to fail\nexit 3\n")

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    by_document: dict[str, list[Block]] = {}
    for block in runnable:
        by_document.setdefault(block.document, []).append(block)
    for document, group in by_document.items():
        (scripts / f"{document.replace('/', '_')}.sh").write_text(shell_script(group))
    # The one-shot command offered to scripts, against a deploy that fails.
    (one_shot,) = [b for b in runnable if "-D headers.txt" in b.text]
    assert one_shot.text.count("/demo/deploy") == 1
    failing = one_shot.text.replace("/demo/deploy", "/broken/deploy")
    (scripts / "failing-one-shot.sh").write_text(failing)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "pploy"  # `pploy` is the code under test, whatever else is installed
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m pploy "$@"\n')
    shim.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    env.update(
        PATH=f"{bin_dir}:{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(
            [str(Path(pploy.__file__).parents[1]), env.get("PYTHONPATH", "")]
        ),
        HOME=str(home),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        WORK=str(tmp_path),
        REMOTES=str(remotes),
    )
    driver = tmp_path / "driver.sh"
    driver.write_text(SETUP)
    # Its own network (the documented ports) and process namespace (nothing outlives it).
    command = [unshare, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    result = subprocess.run(
        [*command, "bash", str(driver)], env=env, capture_output=True, text=True, timeout=360
    )
    logs = "".join(
        f"\n--- {name}\n{(tmp_path / name).read_text()[-2000:]}"
        for name in ("serve.log", "up.log")
        if (tmp_path / name).exists()
    )
    assert result.returncode == 0, result.stdout + result.stderr + logs

    ran: list[str] = []
    for document in by_document:
        name = document.replace("/", "_")
        out = (tmp_path / f"{name}.out").read_text()
        code = int((tmp_path / f"{name}.rc").read_text())
        ran += re.findall(r"^@@ block (\S+)$", out, re.M)
        assert code == 0 and out.rstrip().endswith("@@ end"), f"{document}:\n{out[-4000:]}{logs}"
        if document == "docs/api.md":
            assert '"user": "alice"' in out  # status
            assert "git checkout" in out  # the checkout's log, followed
            assert "Deploying demo to staging as alice" in out  # the one-shot deploy's output
            assert "\nsucceeded\n" in out  # ... and its result
            assert '"lock": null' in out  # released
            assert '"name": "docs"' in out  # tokens listed, without secrets
            assert "myapp: staging by alice" in out  # the standalone one-shot
            assert "myapp: production by alice" in out  # `pploy client` in CI
        if document == "docs/deploying.md":
            assert "satisfy any;" in out and "allow 192.0.2.0/24;" in out
    # Every block ran except the marked ones.
    assert sorted(ran) == sorted(f"{b.document}:{b.line}" for b in runnable)
    assert {(b.document, b.first_line) for b in blocks if f"{b.document}:{b.line}" not in ran} == (
        MARKED
    )

    # A failed deploy makes the documented one-shot command fail.
    out = (tmp_path / "failing-one-shot.out").read_text()
    assert int((tmp_path / "failing-one-shot.rc").read_text()) != 0, out
    assert "about to fail" in out and out.rstrip().endswith("failed"), out
