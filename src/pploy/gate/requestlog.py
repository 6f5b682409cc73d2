"""A request's id, its metrics and its access-log line: the same for both front ends.

aiohttp's server (``pploy.gate.app``'s middleware) and the fast path (``pploy.gate.fastpath``)
both wrap each request in an :class:`Exchange`: it gives the request its id when it starts
and, when its answer has been sent (streams: at their end), records what was answered — or,
when the client left first, what it was sent (499 if nothing) — so every request gets one
id, one metrics sample and one access-log line whichever front end served it.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
from types import TracebackType
from typing import Any

from pploy.gate import requestkeys as keys
from pploy.gate.auth import Principal
from pploy.gate.core import Gate
from pploy.gate.headers import is_websocket
from pploy.gate.incoming import Incoming

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ids = random.Random(secrets.randbits(128))


def new_request_id() -> str:
    """32 hex digits. A request id correlates log lines and is no secret, so it comes from a
    fast PRNG (os.urandom cost a syscall on every request)."""
    return f"{_ids.getrandbits(128):032x}"


def request_id(gate: Gate, request: Incoming) -> str:
    """A trusted proxy's ``X-Request-Id`` (if well-formed) or a new one; kept on the request."""
    incoming = request.headers.get("X-Request-Id", "")
    trusted = incoming and gate.auth.from_trusted_proxy(request)
    rid = incoming if trusted and _REQUEST_ID.match(incoming) else new_request_id()
    request[keys.REQUEST_ID] = rid
    return rid


def finish(gate: Gate, request: Incoming, status: int, size: int, elapsed: float) -> None:
    """The request is over: one metrics sample and one access-log line."""
    gate.metrics.request(request.get(keys.ROUTE, "gate"), request.method, status, elapsed)
    if not gate.access_log.enabled:
        return
    principal: Principal | None = request.get(keys.PRINCIPAL)
    fields: dict[str, Any] = {
        "rid": request[keys.REQUEST_ID],
        "client": gate.auth.client_ip(request),
        "method": request.method,
        "path": request.raw_path[:2048],
        "status": status,
        "bytes": size,
        "ms": round(elapsed * 1000, 2),
        "route": request.get(keys.ROUTE),
        "user": principal.user if principal else None,
        "via": principal.via if principal else None,
        "ws": "1" if is_websocket(request.headers) else None,
        "aborted": "client" if request.get(keys.ABORTED) else None,
    }
    gate.access_log.add(fields)


class Exchange:
    """One request's bookkeeping, as a context manager around answering it. Set ``status``
    and ``size`` (body bytes) to what was answered; a cancellation (the client went away)
    records what it was sent (``SENT_STATUS``, ``BODY_BYTES``), or 499 (nginx's "client
    closed") when nothing was."""

    __slots__ = ("gate", "request", "id", "started", "status", "size")

    def __init__(self, gate: Gate, request: Incoming) -> None:
        self.gate = gate
        self.request = request
        self.id = request_id(gate, request)
        self.started = time.monotonic()
        self.status = 500  # unless told otherwise: an error escaped
        self.size = 0

    def __enter__(self) -> Exchange:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        request = self.request
        if kind is not None and issubclass(kind, asyncio.CancelledError):
            self.status = request.get(keys.SENT_STATUS, 499)
            self.size = request.get(keys.BODY_BYTES, self.size)
            request[keys.ABORTED] = True
        finish(self.gate, request, self.status, self.size, time.monotonic() - self.started)
