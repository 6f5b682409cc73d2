"""gate's own HTML pages (login form, 403, 502, errors), rendered with autoescaping."""

from __future__ import annotations

from typing import Any

import jinja2
from aiohttp import web

from pploy.languages import LANGUAGES, negotiate

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("pploy.gate", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it browsers send `Origin: null` on the login form POST.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# gate's fixed wording in Japanese; English is the key. Messages that quote a provider or an
# exception stay as they are.
JA: dict[str, str] = {
    "Sign in": "ログイン",
    "Development login: anyone can sign in as anyone. Never expose this.": (
        "開発用ログイン: 誰でも任意のユーザーとしてログインできます。公開しないでください。"
    ),
    "user name": "ユーザー名",
    "Signed in as": "ログイン中:",
    "via": "経由:",
    "Why": "理由",
    "Request id": "リクエスト ID",
    "Sign out": "ログアウト",
    "Sign out of gate?": "gate からログアウトしますか？",
    "That sign-out did not come from this site. Sign out here:": (
        "このログアウト要求はこのサイトからのものではありません。ここでログアウトしてください:"
    ),
    "Signed out": "ログアウトしました",
    "You are signed out of gate.": "gate からログアウトしました。",
    "Sign in again": "もう一度ログイン",
    "Access denied": "アクセスできません",
    "This site does not admit your account.": (
        "このサイトはあなたのアカウントを受け付けていません。"
    ),
    "Use another account": "別のアカウントを使う",
    "Sign-in failed": "ログインに失敗しました",
    "Try again": "もう一度試す",
    "Sign-in cancelled": "ログインが取り消されました",
    "Sign-in error": "ログインエラー",
    "Signing in did not work. Please try again.": (
        "ログインできませんでした。もう一度お試しください。"
    ),
}


def page_language(request: web.Request | None) -> str:
    """The reader's language: the ``lang`` cookie pploy's switcher sets (same site), else
    Accept-Language."""
    if request is None:
        return "en"
    chosen = request.cookies.get("lang")
    if chosen in LANGUAGES:
        return chosen
    return negotiate(request.headers.get("Accept-Language"))


def page(
    status: int, title: str, request: web.Request | None = None, **context: Any
) -> web.Response:
    """A small HTML page in the reader's language (given the request); values are escaped by
    the template."""
    language = page_language(request)
    catalogue = JA if language == "ja" else {}
    defaults: dict[str, Any] = {
        "message": None,
        "error": status >= 400,
        "who": None,
        "reason": None,
        "dev_form": False,
        "links": [],
        "request_id": None,
        "login_path": "/login",
        "next": "/",
        "confirm": None,
    }
    defaults.update(context)
    html = _env.get_template("gate_page.html").render(
        title=title, lang=language, _=lambda text: catalogue.get(text, text), **defaults
    )
    return web.Response(
        status=status, text=html, content_type="text/html", headers=SECURITY_HEADERS
    )
