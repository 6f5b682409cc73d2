"""Where to send the user after login: only a same-origin relative path, or ``/``.

Browsers are lenient: they drop tabs and newlines from URLs, read ``\\`` as ``/``, and treat
``//host`` and ``/\\host`` as another site. Attackers hide those characters behind one or two
layers of percent-encoding. So a return path is refused unless, in its raw form and after each
decoding, it is a path that starts with exactly one ``/`` and holds no backslash, control
character or whitespace.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

DEFAULT = "/"
MAX_LENGTH = 2048


def _plain(text: str) -> bool:
    if not text.startswith("/") or text.startswith("//"):
        return False
    if "\\" in text:
        return False
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c in "\u2028\u2029\u00a0\ufeff" for c in text):
        return False
    parts = urlsplit(text)
    return not parts.scheme and not parts.netloc


def safe_return_path(value: object) -> str:
    """Return ``value`` if it is a safe local path, else ``/``."""
    if not isinstance(value, str) or not value or len(value) > MAX_LENGTH:
        return DEFAULT
    text = value
    # Check the raw form and up to three decodings; anything still encoded after that is
    # refused outright rather than trusted.
    for _ in range(4):
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


def login_redirect_target(path_qs: str) -> str:
    """The ``next`` value for a request that must log in first."""
    return safe_return_path(path_qs)
