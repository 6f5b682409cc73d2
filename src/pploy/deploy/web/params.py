"""Reading what a request sends (JSON bodies, fields, ids), one way for every route: a
malformed value is a 400 that names it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pploy.deploy.domain.errors import BadRequest


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check_strings(value: object) -> None:
    """Refuse strings Python's decoder lets through but nothing can store or send back: a
    lone surrogate (``"\\ud800"``) fails later, in sqlite, a log line or the response."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            item.encode()
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


def parse_json_object(data: bytes | str) -> dict[str, Any]:
    """``data`` as a JSON object, or BadRequest saying what is wrong with it.

    Every way a body can be malformed ends here as a 400, never a 500: not UTF-8, not JSON,
    nested deeper than the parser goes (100,000 ``[``), an integer too long to convert,
    ``NaN``/``Infinity``, a lone surrogate, a top level that is not an object."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
        body = json.loads(text, parse_constant=_no_constant)
        _check_strings(body)
    except (UnicodeDecodeError, UnicodeEncodeError) as exc:
        raise BadRequest(f"the body is not valid UTF-8 JSON: {exc.reason}") from None
    except RecursionError:
        raise BadRequest("the body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, too many digits, NaN
        raise BadRequest(f"the body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body (see :func:`parse_json_object`); an empty body is an
    empty object. The body's size is bounded by the app's ``client_max_size``."""
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise BadRequest("send the body as application/json")
    return parse_json_object(await request.read())


def string_field(body: dict[str, Any], key: str) -> str:
    """``body[key]``, which must be a non-empty string."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{key!r} is required and must be a non-empty string")
    return value


def job_id(request: web.Request) -> int:
    """The ``{job_id}`` of the path as a number."""
    raw = request.match_info["job_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"job id must be a number, not {raw!r}")
    return int(raw)
