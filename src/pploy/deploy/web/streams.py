"""Log transports, each a view of follow.follow(): raw chunked text, SSE and WebSocket, plus
the pploy-style one-shot ``POST /{project}/deploy`` that starts a job and streams it back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import WSMsgType, web

from pploy import log
from pploy.deploy import actions
from pploy.deploy.domain.errors import BadRequest, PployError
from pploy.deploy.domain.permissions import Caller
from pploy.deploy.domain.records import JobRecord
from pploy.deploy.jobs.following import FollowItem, follow
from pploy.deploy.services import Services, services
from pploy.deploy.web import security
from pploy.deploy.web.middleware import same_origin_form, starts_work
from pploy.deploy.web.params import job_id, parse_json_object, read_json
from pploy.deploy.web.rendering import for_scripts
from pploy.deploy.web.requestkeys import CALLER, REQUEST_ID
from pploy.streamtest import STREAM_HEADERS  # the headers every stream needs to pass proxies

HEARTBEAT_SECONDS = 15.0

routes = web.RouteTableDef()


def parse_offset(value: str | None) -> int:
    if value is None or value == "":
        return 0
    if not value.isdigit() or len(value) > 18:
        raise BadRequest(f"offset must be a non-negative byte offset, not {value!r}")
    return int(value)


def job_log(
    svc: Services, record: JobRecord, offset: int, heartbeat: float | None = None
) -> AsyncGenerator[FollowItem | None, None]:
    """Follow a job's log from ``offset`` whether it is running or finished."""
    path = svc.jobs.log_path(record)
    buffer = svc.jobs.live_buffer(record.id) or svc.jobs.remote_log(record)
    if buffer is None:
        record = svc.jobs.get(record.id)  # it may have finished since it was read
        if record.running:  # a record left running by a crash that recover() has not seen
            raise PployError("job is not running in this pploy", status=409)
        if not path.exists() and record.log_bytes:
            raise PployError(
                "the log of this job was removed (only the newest logs are kept)", status=410
            )
    return follow(
        buffer, path, offset, final_status=svc.jobs.final_status(record), heartbeat=heartbeat
    )


def utf8_complete(data: bytes) -> int:
    """Length of ``data`` without a trailing incomplete UTF-8 sequence (held for the next
    chunk, so an SSE event id never falls inside a character)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        if byte & 0x80 == 0:
            return len(data)
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4
        return len(data) - back if back < need else len(data)
    return len(data)


async def start_stream(
    request: web.Request, content_type: str, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**STREAM_HEADERS, **(headers or {})})
    response.content_type = content_type
    if content_type.startswith("text/plain"):
        response.charset = "utf-8"
        # Without it Chromium holds a text/plain frame until ~1 KB arrived to sniff its type.
        response.headers["X-Content-Type-Options"] = "nosniff"
    response.enable_chunked_encoding()
    await response.prepare(request)
    return response


async def write_raw(response: web.StreamResponse, items: AsyncIterator[FollowItem | None]) -> None:
    async for item in items:
        if item is not None and item.data:
            await response.write(item.data)


@routes.get("/api/jobs/{job_id}/log")
async def raw_log(request: web.Request) -> web.StreamResponse:
    svc = services(request)
    record = svc.jobs.get(job_id(request))
    offset = parse_offset(request.query.get("offset"))
    following = request.query.get("follow") in ("1", "true", "yes")
    items = job_log(svc, record, offset)
    if not following:
        path = svc.jobs.log_path(record)
        # A log written on another instance sharing the database is read from there.
        remote = None if path.exists() else svc.jobs.remote_log(svc.jobs.get(record.id))
        size = path.stat().st_size if path.exists() else remote.size if remote else 0
        response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        response.content_type = "text/plain"
        response.charset = "utf-8"
        response.content_length = max(0, size - offset)
        if request.query.get("download"):
            response.headers["Content-Disposition"] = (
                f'attachment; filename="{record.project}-{record.id}.log"'
            )
        await response.prepare(request)
        sent = 0
        async for item in follow(remote, path, offset):
            if item is not None and item.data:
                chunk = item.data[: response.content_length - sent]
                await response.write(chunk)
                sent += len(chunk)
                if sent >= response.content_length:
                    break
        await response.write_eof()
        await items.aclose()
        return response
    response = await start_stream(request, "text/plain")
    await write_raw(response, items)
    await response.write_eof()
    return response


def sse_event(event: str, data: str, event_id: int | None = None) -> bytes:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"data: {data}")
    return ("\n".join(lines) + "\n\n").encode()


@routes.get("/api/jobs/{job_id}/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: ``log`` events (JSON string data, id = byte offset after it), a
    ``status`` event at the end, a comment every HEARTBEAT_SECONDS of silence."""
    svc = services(request)
    record = svc.jobs.get(job_id(request))
    offset = parse_offset(request.headers.get("Last-Event-ID") or request.query.get("offset"))
    items = job_log(svc, record, offset, heartbeat=HEARTBEAT_SECONDS)
    # Viewers of one job on this instance share its encodings (a remote job's too).
    live = svc.jobs.live_buffer(record.id) or (
        svc.jobs.remote_log(record) if record.running else None
    )
    response = await start_stream(request, "text/event-stream")
    await response.write(b"retry: 2000\n\n")
    pending = b""
    async for item in items:
        if item is None:
            await response.write(b": ping\n\n")
            continue
        if item.status is not None:
            if pending:
                text = pending.decode(errors="replace")
                await response.write(sse_event("log", json.dumps(text), item.offset))
            await response.write(sse_event("status", json.dumps(item.status)))
            break
        data = pending + item.data
        cut = utf8_complete(data)
        pending = data[cut:]
        if cut:
            end = item.offset - len(pending)
            piece = data[:cut]

            def encode(piece: bytes = piece, end: int = end) -> bytes:
                return sse_event("log", json.dumps(piece.decode(errors="replace")), end)

            if live is not None:
                event = live.encode_once(("sse", end - cut, end), encode)
            else:
                event = encode()
            await response.write(event)
    await response.write_eof()
    return response


@routes.get("/api/jobs/{job_id}/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Binary frames of raw log bytes, then one text frame with the JSON status, then close
    1000. The client may send ``{"action": "cancel"}`` (lock holder only)."""
    svc = services(request)
    record = svc.jobs.get(job_id(request))
    offset = parse_offset(request.query.get("offset"))
    items = job_log(svc, record, offset)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=64 * 1024)
    await ws.prepare(request)

    async def send_log() -> None:
        async for item in items:
            if item is None:
                continue
            if item.status is not None:
                await ws.send_str(json.dumps(item.status))
                return
            await ws.send_bytes(item.data)

    async def receive_commands() -> None:
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            if msg.type == WSMsgType.TEXT:
                reply = await handle_command(svc, request, record, msg.data)
                await ws.send_str(json.dumps(reply))

    sender = asyncio.create_task(send_log())
    receiver = asyncio.create_task(receive_commands())
    code, reason = 1001, b"going away"
    try:
        await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        failed = sender.done() and not sender.cancelled() and sender.exception() is not None
        code, reason = (1011, b"log unavailable") if failed else (1000, b"job finished")
    finally:
        # Stop reading before closing: close() itself waits for the client's close reply,
        # which is what makes the close a clean 1000 on the client's side.
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
        await items.aclose()
        if not ws.closed:
            await ws.close(code=code, message=reason)
    return ws


# The commands a log's WebSocket takes, each an action (pploy.deploy.actions) called with the
# caller and the job: the route inventory test checks every one is an action with a hostile test.
COMMANDS: dict[str, Callable[[Services, Caller, int], Awaitable[object]]] = {
    "cancel": actions.cancel_job,
}


async def handle_command(
    svc: Services, request: web.Request, record: JobRecord, text: str
) -> dict[str, Any]:
    try:
        command = parse_json_object(text)
    except BadRequest:
        return {"error": "commands are JSON objects"}
    name = command.get("action")
    run = COMMANDS.get(name) if isinstance(name, str) else None
    if run is None:
        return {"error": 'unknown command; the only one is {"action": "cancel"}'}
    with actions.taking() as taken:
        try:
            await run(svc, request[CALLER], record.id)
        except PployError as exc:
            return {"error": exc.message, "status": exc.status}
        finally:
            log.event(
                "ws.command", request_id=request.get(REQUEST_ID), command=name,
                user=request[CALLER].user, action=",".join(taken) or None,
            )  # fmt: skip
    return {"cancelling": record.id}


async def one_shot_body(request: web.Request) -> Mapping[str, Any]:
    """The parameters a one-shot request sends in its body (none: an empty mapping).

    A body must be JSON (no cross-site page can send it) or a form carrying the CSRF token
    like every other form: a foreign page's ``<form>`` always sends a form content type, even
    with an empty body and its parameters in the action URL, or ``text/plain``. A ``POST``
    with no body and no such type (``curl -X POST '…?env=staging'``) is nothing a foreign
    page can send without a CORS preflight, which pploy never grants."""
    body: Mapping[str, Any] = {}
    if request.content_type == "application/json":
        body = await read_json(request)
    elif request.content_type in security.FORM_TYPES:
        await security.check_form_token(request)
        body = await request.post()
    elif request.can_read_body or request.content_type in security.SIMPLE_TYPES:
        raise BadRequest(
            "send the parameters in the query string (with no body), as JSON, or as a "
            "form with its CSRF token",
            status=415,
        )
    return body


async def one_shot_params(request: web.Request, key: str, *aliases: str) -> str:
    """``key`` (or one of its ``aliases``) from the query string or the body (see
    :func:`one_shot_body`)."""
    body = await one_shot_body(request)
    value = None
    for name in (key, *aliases):
        value = request.query.get(name, body.get(name))
        if value is not None:
            break
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key!r} is required (query string, JSON or form field)")
    return value


async def one_shot(request: web.Request, kind: str) -> web.StreamResponse:
    """Start a job and answer with its output, chunked, as the original pploy did."""
    svc = services(request)
    project = svc.projects.get(request.match_info["project"])
    caller = request[CALLER]
    if kind == "deploy":
        env = await one_shot_params(request, "env", "target")  # target: go-pploy's name
        record = await actions.start_deploy(svc, caller, project, env)
        if record.status == "awaiting_approval":  # nothing runs yet: say so (governance.md)
            return web.Response(text=f"job #{record.id} awaits approval\n", status=202)
    else:
        ref = await one_shot_params(request, "ref")
        record = await actions.start_checkout(svc, caller, project, ref)
    response = await start_stream(request, "text/plain", {"X-Pploy-Job": str(record.id)})
    await write_raw(response, job_log(svc, record, 0))
    await response.write_eof()
    return response


@for_scripts
@starts_work
@same_origin_form  # go-pploy's deploy buttons
async def one_shot_deploy(request: web.Request) -> web.StreamResponse:
    return await one_shot(request, "deploy")


@for_scripts
@starts_work
@same_origin_form  # go-pploy's checkout form
async def one_shot_checkout(request: web.Request) -> web.StreamResponse:
    return await one_shot(request, "checkout")


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)


def add_one_shot_routes(app: web.Application) -> None:
    """Registered last: ``/{project}/…`` must not shadow any other route."""
    app.router.add_post("/{project}/deploy", one_shot_deploy)
    app.router.add_post("/{project}/checkout", one_shot_checkout)
