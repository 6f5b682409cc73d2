"""Reading what a request sends (JSON bodies, fields, ids), one way for every route: a
malformed value is a 400 that names it."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from pploy.deploy.errors import BadRequest


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object body; an empty body is an empty object."""
    if not request.can_read_body:
        return {}
    if request.content_type != "application/json":
        raise BadRequest("send the body as application/json")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


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
