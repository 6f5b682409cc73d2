"""API tokens over HTTP: ``/api/tokens`` (JSON) and the ``/tokens`` page. Each acts on the
caller's own tokens, or, for an admin (``permissions.admins``), on another user's named by
``?user=``: how an admin cuts off someone gate no longer lets in. Tokens are made with a
signed-in session, never with another token. The rules are in :mod:`pploy.deploy.actions`."""

from __future__ import annotations

from urllib.parse import urlencode

from aiohttp import web

from pploy.deploy import actions
from pploy.deploy.domain.errors import BadRequest, PployError
from pploy.deploy.domain.permissions import Refused
from pploy.deploy.domain.tokens import NewToken
from pploy.deploy.services import services
from pploy.deploy.web import security
from pploy.deploy.web.params import read_json, string_field
from pploy.deploy.web.rendering import redirect_with_flash, render
from pploy.deploy.web.requestkeys import CALLER

routes = web.RouteTableDef()


def _token_id(request: web.Request) -> int:
    raw = request.match_info["token_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"token id must be a number, not {raw!r}")
    return int(raw)


@routes.post("/api/tokens")
async def create_token(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    created = await actions.create_token(
        svc, request[CALLER], string_field(body, "name"), body.get("expires_days")
    )
    return web.json_response(created.to_json(), status=201, headers={"Cache-Control": "no-store"})


@routes.get("/api/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    """The caller's tokens; ``?user=bob``: bob's, for an admin."""
    tokens = actions.tokens_of(services(request), request[CALLER], _owner(request))
    return web.json_response({"tokens": [t.to_json() for t in tokens]})


@routes.delete("/api/tokens/{token_id}")
async def revoke_token(request: web.Request) -> web.Response:
    revoked = await actions.revoke_token(services(request), request[CALLER], _token_id(request))
    return web.json_response({"token": revoked.to_json()})


def _owner(request: web.Request) -> str | None:
    """``?user=``: whose tokens an admin looks at (absent or empty: the caller's own)."""
    return request.query.get("user") or None


def _page_url(owner: str | None) -> str:
    return "/tokens" + (f"?{urlencode({'user': owner})}" if owner else "")


def _page(request: web.Request, created: NewToken | None = None, status: int = 200) -> web.Response:
    svc = services(request)
    caller = request[CALLER]
    owner = _owner(request)
    response = render(
        request, "tokens.html", status=status,
        tokens=actions.tokens_of(svc, caller, owner), owner=owner or caller.user,
        created=created, via_token=caller.token,
        may_see_others=svc.permissions.manage_tokens_of(caller, "").allowed,
    )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"  # the page may show a new token once
    return response


@routes.get("/tokens")
async def tokens_page(request: web.Request) -> web.Response:
    return _page(request)


@routes.post("/tokens")
async def create_token_form(request: web.Request) -> web.Response:
    svc = services(request)
    await security.check_form_token(request)
    form = await request.post()
    name = form.get("name")
    try:
        created = await actions.create_token(
            svc, request[CALLER], name if isinstance(name, str) else "",
            form.get("expires_days"),
        )  # fmt: skip
    except Refused:
        raise  # made with a token: a 403, as on the API
    except PployError as exc:
        raise redirect_with_flash("/tokens", exc.message) from None
    return _page(request, created, status=201)


@routes.post("/tokens/{token_id}/revoke")
async def revoke_token_form(request: web.Request) -> web.Response:
    svc = services(request)
    await security.check_form_token(request)
    back = _page_url(_owner(request))
    token_id = _token_id(request)
    try:
        revoked = await actions.revoke_token(svc, request[CALLER], token_id)
    except PployError as exc:
        raise redirect_with_flash(back, exc.message) from None
    whose = "" if revoked.user == request[CALLER].user else f"{revoked.user}'s "
    raise redirect_with_flash(back, f"revoked {whose}token {revoked.name!r}")


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
