"""The Go baseline of the proxy benchmark: ``main.go`` (standard library only), built at
benchmark time with whatever Go is installed (Debian: ``apt-get install golang-go``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import free_port, stop_process, wait_port

SOURCE = Path(__file__).with_name("main.go")


def build(out_dir: Path) -> tuple[Path | None, str]:
    """The built binary and Go's version, or None and why not (Go missing, build failed).
    No module download is attempted: GOPROXY=off, GOFLAGS=-mod=mod, GO111MODULE=off."""
    go = shutil.which("go")
    if go is None:
        return None, "go is not installed (Debian: apt-get install golang-go); Go baseline skipped"
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "goproxy"
    env = dict(
        os.environ,
        GOCACHE=str(out_dir / "cache"),
        GOPATH=str(out_dir / "gopath"),
        GO111MODULE="off",
        GOPROXY="off",
        GOFLAGS="",
        CGO_ENABLED="0",
    )
    version = subprocess.run([go, "version"], capture_output=True, text=True, env=env).stdout
    done = subprocess.run(
        [go, "build", "-o", str(binary), str(SOURCE)], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        return None, f"go build failed; Go baseline skipped:\n{done.stderr[-2000:]}"
    return binary, version.strip()


class GoProxy:
    """The built baseline proxying to ``backend``; ``idle`` > 0 is the tuned variant."""

    def __init__(self, binary: Path, root: Path, backend: str, idle: int = 0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        cmd = [str(binary), "-listen", f"127.0.0.1:{self.port}", "-backend", backend]
        if idle:
            cmd += ["-idle", str(idle)]
        # Logs one line per request, as typester/gate does; to a file, as in production.
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(root / f"goproxy-{self.port}.log", "wb"),  # noqa: SIM115
        )
        wait_port(self.port, self.proc, timeout=30)

    def stop(self) -> None:
        stop_process(self.proc)


if __name__ == "__main__":  # build only: python -m bench.goproxy OUT_DIR
    path, detail = build(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(path or "", detail)
