"""The languages pploy and gate speak, and choosing one from a request's Accept-Language.

Shared by pploy's pages (deploy/web/i18n.py) and gate's (gate/pages.py), which keep their own
catalogues."""

from __future__ import annotations

LANGUAGES = ("en", "ja")


def negotiate(accept_language: str | None) -> str:
    """The best of LANGUAGES for an Accept-Language header (q-values respected)."""
    best, best_q = "en", 0.0
    for index, item in enumerate((accept_language or "").split(",")):
        parts = item.strip().split(";")
        tag = parts[0].strip().lower()
        q = 1.0
        for param in parts[1:]:
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.split("-")[0]
        q -= index * 1e-6  # earlier wins ties
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best
