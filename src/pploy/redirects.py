"""Where to send a user after a login: only a same-site local path, or ``/``.

The one validator for the whole project (gate's login return path and pploy's user picker).
Browsers are lenient: they drop tabs and newlines from URLs, read ``\\`` as ``/``, treat
``//host`` and ``/\\host`` as another site, and resolve dot segments. Attackers hide those
behind one or two layers of percent-encoding. So a return path is refused unless, in its raw
form and after each decoding, it starts with exactly one ``/``, holds no ``//`` anywhere (no
embedded ``scheme://`` either, even in the query), no dot segment, and no backslash, control
character or whitespace. Legitimate local paths, with their queries, pass unchanged.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

DEFAULT = "/"
MAX_LENGTH = 2048
# Checked in the raw form and up to three decodings; still encoded after that = refused.
MAX_DECODINGS = 4
_INVISIBLE = "\u2028\u2029\u00a0\ufeff"


def _plain(text: str) -> bool:
    if not text.startswith("/") or "//" in text or "\\" in text:
        return False
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c in _INVISIBLE for c in text):
        return False
    path = text.split("?", 1)[0].split("#", 1)[0]
    if any(segment in (".", "..") for segment in path.split("/")):
        return False
    parts = urlsplit(text)
    return not parts.scheme and not parts.netloc


def safe_return_path(value: object) -> str:
    """Return ``value`` if it is a safe local path, else ``/``."""
    if not isinstance(value, str) or not value or len(value) > MAX_LENGTH:
        return DEFAULT
    text = value
    for _ in range(MAX_DECODINGS):
        if not _plain(text):
            return DEFAULT
        try:
            decoded = unquote(text, errors="strict") if "%" in text else text
        except UnicodeDecodeError:
            return DEFAULT
        if decoded == text:
            return value
        text = decoded
    return DEFAULT
