"""API tokens over HTTP: ``/api/tokens`` (JSON) and the ``/tokens`` page, each acting on the
caller's own tokens only. Tokens are made with a signed-in session, never with another token:
a leaked token that expires must not be able to mint one that does not."""

from __future__ import annotations

from aiohttp import web

from pploy.deploy import security
from pploy.deploy.errors import BadRequest, Forbidden, PployError
from pploy.deploy.params import read_json, string_field
from pploy.deploy.permissions import Caller
from pploy.deploy.rendering import redirect_with_flash, render
from pploy.deploy.requestkeys import CALLER
from pploy.deploy.services import services
from pploy.deploy.tokens import NewToken

routes = web.RouteTableDef()


def _session_caller(request: web.Request) -> Caller:
    caller = request[CALLER]
    if caller.token is not None:
        raise Forbidden(
            "API tokens are made with a signed-in session, not with another API token "
            f"(this request used {caller.token!r})"
        )
    return caller


def _token_id(request: web.Request) -> int:
    raw = request.match_info["token_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise BadRequest(f"token id must be a number, not {raw!r}")
    return int(raw)


def _expires_days(value: object) -> float | None:
    """``expires_days`` as sent: absent/empty for a token that never expires."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise BadRequest(f"expires_days must be a number, not {value!r}") from None
    return value  # type: ignore[return-value]  # Tokens.create checks numbers


@routes.post("/api/tokens")
async def create_token(request: web.Request) -> web.Response:
    svc = services(request)
    body = await read_json(request)
    created = svc.tokens.create(
        _session_caller(request),
        string_field(body, "name"),
        _expires_days(body.get("expires_days")),
    )
    return web.json_response(created.to_json(), status=201, headers={"Cache-Control": "no-store"})


@routes.get("/api/tokens")
async def list_tokens(request: web.Request) -> web.Response:
    svc = services(request)
    return web.json_response(
        {"tokens": [t.to_json() for t in svc.tokens.list(request[CALLER].user)]}
    )


@routes.delete("/api/tokens/{token_id}")
async def revoke_token(request: web.Request) -> web.Response:
    svc = services(request)
    revoked = svc.tokens.revoke(request[CALLER].user, _token_id(request))
    return web.json_response({"token": revoked.to_json()})


def _page(request: web.Request, created: NewToken | None = None, status: int = 200) -> web.Response:
    svc = services(request)
    caller = request[CALLER]
    response = render(
        request, "tokens.html", status=status, tokens=svc.tokens.list(caller.user),
        created=created, via_token=caller.token,
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
        created = svc.tokens.create(
            _session_caller(request),
            name if isinstance(name, str) else "",
            _expires_days(form.get("expires_days")),
        )
    except PployError as exc:
        raise redirect_with_flash("/tokens", exc.message) from None
    return _page(request, created, status=201)


@routes.post("/tokens/{token_id}/revoke")
async def revoke_token_form(request: web.Request) -> web.Response:
    svc = services(request)
    await security.check_form_token(request)
    try:
        revoked = svc.tokens.revoke(request[CALLER].user, _token_id(request))
    except PployError as exc:
        raise redirect_with_flash("/tokens", exc.message) from None
    raise redirect_with_flash("/tokens", f"revoked token {revoked.name!r}")


def add_routes(app: web.Application) -> None:
    app.router.add_routes(routes)
