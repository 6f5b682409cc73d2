"""A team moving from go-pploy or typester/gate runs its old command lines: go-pploy's
single-dash flags are understood where pploy has the same setting, and each other one is
answered in one line with the pploy setting that replaces it; a webhook template left in Go
syntax fails --check-config (and start) naming the key and the pploy spelling."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from bench.procs import stop_process
from pploy.cli import main
from tests.deploy.support import make_remote
from tests.helpers import DATA, free_port, wait_port

# go-pploy's flag set (main.go) and the pidfile package's -pidfile.
GO_PPLOY_FLAGS = [
    "lock", "workdir", "logmax", "prefix", "port", "webhook", "lockgained", "lockreleased",
    "lockextended", "deployed", "ddapikey", "ddappkey", "ddlockgained", "ddlockreleased",
    "ddlockextended", "dddeployed", "ldaphost", "ldapport", "ldapdn", "ldapttl", "pidfile",
]  # fmt: skip


def pploy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    return subprocess.run(
        [sys.executable, "-m", "pploy", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
    )  # fmt: skip


def test_exact_equivalents_are_understood(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    workdir, pidfile = tmp_path / "work", tmp_path / "pploy.pid"
    port = free_port()
    for args in (
        ["-workdir", str(workdir), "-port", str(port), "-prefix", "/pploy/",
         "-pidfile", str(pidfile)],
        [f"-workdir={workdir}", f"-port={port}", "-prefix=/pploy/", f"-pidfile={pidfile}"],
        [f"--workdir={workdir}", f"--port={port}", "--prefix=/pploy/", f"--pidfile={pidfile}"],
    ):  # fmt: skip
        code, out, err = main_in_process(
            capsys, "serve", *args, "--users", "alice", "--check-config"
        )
        assert code == 0, (args, err)
        assert f"workdir {workdir}" in out
    # They really set the values: a bad port is refused as --port's would be.
    code, _, err = main_in_process(capsys, "serve", "-workdir", str(workdir), "-port", "x")
    assert code == 2 and "invalid int value: 'x'" in err


@pytest.mark.parametrize(
    ("args", "answer"),
    [
        (["-logmax", "20"], "`job: {keep_logs: 20}` in the --config file"),
        (["--logmax=7"], "`job: {keep_logs: 7}`"),
        (
            ["-webhook", "https://hooks.slack.com/services/T/B/secret"],
            "`webhooks: [{url: URL, format: slack}]` in the --config file",
        ),
        (
            ["-lockgained", "{{.User}} locked"],
            "`templates: {lock.gained: …}` of a `webhooks:` entry with `format: slack`",
        ),
        (["-deployed", "x"], "`templates: {job.finished: …}`"),
        (["-ddapikey", "dd-secret"], "`webhooks: [{format: datadog, api_key: KEY}]`"),
        (["-ddappkey", "dd-app-secret"], "nothing: Datadog's events API needs only the API key"),
        (
            ["-dddeployed", "x"],
            "`templates: {job.finished: …}` of a `webhooks:` entry with `format: datadog`",
        ),
        (["-ldaphost", "ldap.example.com"], '`ldap: {url: "ldap://HOST:PORT", base_dn: DN}`'),
        (["-ldapport", "636"], '`ldap: {url: "ldap://HOST:636", base_dn: DN}`'),
        (["-ldapdn", "ou=people,dc=example"], 'base_dn: "ou=people,dc=example"'),
        (["-ldapttl", "10m"], "`ldap: {…, cache_minutes: 10}`"),
        (["-lock"], "`lock: {gain_minutes: N, extend_minutes: N}`"),
        (["-lock", "ten minutes"], "`lock: {gain_minutes: N, extend_minutes: N}` in the --config"),
    ],
)
def test_other_go_flags_are_answered_with_their_replacement(
    args: list[str], answer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = main_in_process(capsys, "serve", "--workdir", "/nonexistent/x", *args)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err  # one line, no argparse usage dump
    flag = args[0].split("=")[0]
    assert lines[0].startswith(f"pploy serve: {flag} is go-pploy's flag; use "), lines[0]
    assert answer in lines[0]
    assert out == ""
    for secret in ("secret", "dd-secret", "dd-app-secret"):  # secrets are never echoed
        assert secret not in err or secret in answer


def main_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The `pploy` command's own entry point, in this process (argument parsing only)."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_go_pploy_flag_is_known(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each flag of go-pploy's main.go gets one of the two answers, none a bare argparse
    error, through the real command line (one process)."""
    for name in GO_PPLOY_FLAGS:
        value = {"port": str(free_port()), "lock": "10m"}.get(name, str(tmp_path / name))
        code, _, err = main_in_process(
            capsys, "serve", f"-{name}", value, "--users", "a", "--check-config"
        )
        assert "unrecognized arguments" not in err and "usage:" not in err, (name, err)
        if name in ("workdir", "port", "prefix", "pidfile", "lock"):
            assert code == 0, (name, err)
        else:
            assert code == 2 and "is go-pploy's flag; use " in err, (name, err)
    result = pploy("serve", "-logmax", "20")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "pploy serve: -logmax is go-pploy's flag; use `job: {keep_logs: 20}` in the --config "
        "file (logs kept per project)\n"
    )


def test_gate_takes_typester_gates_conf_flag_in_gos_spellings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample = (DATA / "gate-config_sample.yml").read_text()
    conf = tmp_path / "gate.yml"
    conf.write_text(sample)
    for args in (["-conf", str(conf)], [f"-conf={conf}"], ["--conf", str(conf)]):
        _, out, err = main_in_process(capsys, "gate", *args, "--check-config")
        assert f"{conf}: " in out + err, (args, err)
        assert "unrecognized" not in err and "usage:" not in err


@pytest.mark.slow  # `pploy serve` processes
def test_a_go_webhook_template_fails_check_config_and_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "pploy.yml"
    conf.write_text(
        "users: [alice]\n"
        f"workdir: {tmp_path / 'work'}\n"
        "webhooks:\n"
        "  - url: https://hooks.slack.com/services/T/B/x\n"
        "    format: slack\n"
        "    templates:\n"
        "      job.finished: '{user} deployed {project}'\n"
        "      lock.gained: '{{.User}} locked {{ .Project }} for {{.Env}}'\n"
    )
    for extra in (["--check-config"], ["--port", str(free_port())]):
        result = pploy("serve", "--config", str(conf), *extra)  # the real command, as run
        assert result.returncode == 2, result.stdout + result.stderr
        assert "webhooks[0].templates" in result.stderr and "lock.gained" in result.stderr
        assert "Go template syntax" in result.stderr
        assert "'{user} locked {project} for {env}'" in result.stderr
        assert "job.finished" not in result.stderr  # the Python one is fine
        assert not (tmp_path / "work").exists()  # nothing started
    # Other Go actions are caught too; Python's own doubled braces (a literal {) are not.
    conf.write_text(
        f"users: [alice]\nworkdir: {tmp_path / 'work'}\nwebhooks:\n"
        "  - {url: 'https://x.example/', templates: {lock.gained: '{{if .Env}}x{{end}}'}}\n"
    )
    code, _, err = main_in_process(capsys, "serve", "--config", str(conf), "--check-config")
    assert code == 2 and "Go template syntax" in err
    conf.write_text(
        f"users: [alice]\nworkdir: {tmp_path / 'work'}\nwebhooks:\n"
        "  - {url: 'https://x.example/', templates: {lock.gained: '{{literal}} {user}'}}\n"
    )
    code, out, err = main_in_process(capsys, "serve", "--config", str(conf), "--check-config")
    assert code == 0, err
    assert re.search(r"configuration OK", out)


@pytest.mark.slow  # a `pploy serve` process
async def test_go_lock_duration_is_the_gain_and_the_extension(tmp_path: Path) -> None:
    """`pploy serve -lock 2m` (go-pploy's spelling): a gained lock lasts 2 minutes and an
    extension adds 2 minutes, as go-pploy's one duration did."""
    remote = make_remote(tmp_path, name="myapp")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PPLOY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pploy", "serve", "-lock", "2m", f"-port={port}",
         "-workdir", str(tmp_path / "work"), "--users", "alice"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err", "wb"),  # noqa: SIM115
    )  # fmt: skip
    try:
        wait_port(port, proc, tmp_path / "err")
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession(cookies={"user": "alice"}) as session:
            async with session.post(base + "/api/projects", json={"url": str(remote)}) as r:
                assert r.status == 201, await r.text()
            lock = base + "/api/projects/myapp/lock"
            async with session.post(lock, json={"operation": "gain"}) as r:
                gained = (await r.json())["lock"]["seconds_left"]
            async with session.post(lock, json={"operation": "extend"}) as r:
                extended = (await r.json())["lock"]["seconds_left"]
        assert 110 < gained <= 120, gained
        assert 230 < extended <= 240, extended
    finally:
        stop_process(proc)
