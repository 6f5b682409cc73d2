"""gate never serves its own secrets (issue 10): not its configuration, not a key, certificate
or password file it reads, by any spelling of any path, with ``htdocs: ./`` beside gate.yml (as
typester/gate's sample has it) or with htdocs left out, logged in or not, admitted by network
or not. Everything runs through a real gate started from a real gate.yml on disk."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pploy.cli import main
from pploy.gate.config import load_config
from pploy.gate.server import GateServer
from tests.gate.conftest import RunningGate, client_session, dev_login, free_socket

SESSION_KEY = "session-key-that-must-never-leave-0123456789"
CLIENT_SECRET = "client-secret-that-must-never-leave"

SPELLINGS = [
    "/gate.yml",
    "/GATE.YML",
    "/Gate.yml",
    "/gate.yml.",
    "/gate.yml/",
    "/gate.yml;",
    "/gate.yml%00",
    "/gate.yml%20",
    "/gate.yml?x=1",
    "/%67ate.yml",
    "/gate%2eyml",
    "/gate%2Eyml",
    "//gate.yml",
    "///gate.yml",
    "/./gate.yml",
    "/%2e/gate.yml",
    "/sub/../gate.yml",
    "/sub/..;/gate.yml",
    "/sub/%2e%2e/gate.yml",
    "/sub%2f..%2fgate.yml",
    "/sub/%252e%252e/gate.yml",
    "/sub\\..\\gate.yml",
    "/index.html/../gate.yml",
    "/assertion.pem",
    "/%61ssertion.pem",
    "/assertion.pem/",
    "/htpasswd",
    "/sub/link-to-config",
    "/sub/link-to-key",
    "/sub/hardlink.txt",
    "/sub/link-outside",
    "/sub/fifo",
    "/sub/",
    "/sub",
]


def _write_stack(folder: Path, htdocs: str | None, allow_networks: bool) -> Path:
    """gate.yml, its assertion key and htpasswd, side by side, as an admin lays them out."""
    folder.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "assertion.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (folder / "htpasswd").write_text(f"robot:{hashed}\n")
    (folder / "index.html").write_text("<h1>public page</h1>")
    sub = folder / "sub"
    sub.mkdir()
    (sub / "page.txt").write_text("public text")
    config: dict[str, Any] = {
        "address": "127.0.0.1:0",
        "auth": {
            "session": {"key": SESSION_KEY},
            "info": {"service": "dev", "client_secret": CLIENT_SECRET},
            "assertion": {"key_file": "assertion.pem"},
            "htpasswd": "htpasswd",
        },
        "proxy": [],
    }
    if htdocs is not None:
        config["htdocs"] = htdocs
    if allow_networks:
        config["auth"]["allow_networks"] = ["127.0.0.0/8"]
    (folder / "gate.yml").write_text(yaml.safe_dump(config))
    # Links an admin (or a deploy) might leave in the document root.
    (sub / "link-to-config").symlink_to(folder / "gate.yml")
    (sub / "link-to-key").symlink_to("../assertion.pem")
    os.link(folder / "gate.yml", sub / "hardlink.txt")
    outside = folder.parent / f"outside-{folder.name}.txt"
    outside.write_text("outside the document root")
    (sub / "link-outside").symlink_to(outside)
    os.mkfifo(sub / "fifo")
    return folder / "gate.yml"


async def _start(config_file: Path) -> RunningGate:
    sock = free_socket()
    port = sock.getsockname()[1]
    server = GateServer(load_config(config_file))
    await server.start(sock=sock)
    return RunningGate(server, f"http://127.0.0.1:{port}", port)


async def raw_get(port: int, path: str, cookie: str = "") -> tuple[int, bytes]:
    """Send the path bytes exactly as written (a client library would normalise them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
        "Accept: text/html\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return int(data.split(b" ", 2)[1]), data


def assert_no_secret(folder: Path, path: str, data: bytes) -> None:
    for secret in (
        SESSION_KEY.encode(),
        CLIENT_SECRET.encode(),
        b"PRIVATE KEY",
        b"robot:$2",
        b"outside the document root",
    ):
        assert secret not in data, (path, secret, data[:300])


@pytest.mark.parametrize("allow_networks", [False, True], ids=["login", "network"])
@pytest.mark.parametrize("htdocs", ["./", None], ids=["htdocs-dot", "no-htdocs"])
async def test_no_secret_is_served_by_any_spelling(tmp_path, htdocs, allow_networks):
    config_file = _write_stack(tmp_path / "etc", htdocs, allow_networks)
    gate = await _start(config_file)
    try:
        async with client_session() as client:
            await dev_login(client, gate.url, "alice")
            cookie = "; ".join(f"{c.key}={c.value}" for c in client.cookie_jar)
        for who in ("anonymous", "logged-in"):
            for path in SPELLINGS:
                status, data = await raw_get(gate.port, path, cookie if who == "logged-in" else "")
                assert_no_secret(tmp_path, path, data)
                assert status != 200, (who, path, status)
            # What htdocs is for still works, and only when it is configured.
            status, data = await raw_get(gate.port, "/sub/page.txt", cookie)
            assert (status == 200) == (htdocs is not None), (who, status)
            if htdocs is not None:
                assert data.endswith(b"public text")
    finally:
        await gate.server.stop()


def test_check_config_warns_when_htdocs_holds_the_config(tmp_path, capsys):
    config_file = _write_stack(tmp_path / "etc", "./", False)
    assert main(["gate", "--config", str(config_file), "--check-config"]) == 0
    err = capsys.readouterr().err
    assert f"htdocs: {config_file.parent} contains {config_file}" in err
    assert f"contains {config_file.parent / 'assertion.pem'}" in err
    assert f"contains {config_file.parent / 'htpasswd'}" in err

    config_file.write_text(config_file.read_text().replace("htdocs: ./", "htdocs: sub"))
    assert main(["gate", "--config", str(config_file), "--check-config"]) == 0
    assert "htdocs:" not in capsys.readouterr().err


def test_htdocs_left_out_means_no_static_files():
    from pploy.gate.config import parse_config

    config = parse_config(
        {"address": "127.0.0.1:1", "auth": {"session": {"key": "k"}, "info": {"service": "dev"}}}
    )
    assert config.htdocs is None
