"""The project page's history: one page of jobs, filtered by environment, kind, status and user,
and searched. Query parameters come from the browser: each is bounded and checked here, and
only ever bound into SQL as a value (see Store.find_jobs)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from multidict import MultiMapping

from pploy.deploy.domain.records import Storage

PAGE_SIZE = 30
KINDS = ("deploy", "checkout")
STATUSES = ("running", "succeeded", "failed", "cancelled", "interrupted", "timed_out")
FIELDS = ("env", "kind", "status", "user")
MAX_TEXT = 200


def _text(query: MultiMapping[str], key: str) -> str:
    value = query.get(key, "")
    return value.strip()[:MAX_TEXT] if isinstance(value, str) else ""


def history_view(store: Storage, project: str, query: MultiMapping[str]) -> dict[str, Any]:
    """What the history section shows for the request's ``env``, ``kind``, ``status``,
    ``user``, ``q`` and ``page`` parameters (unknown kinds and statuses are ignored)."""
    filters = {key: _text(query, key) for key in FIELDS}
    if filters["kind"] not in KINDS:
        filters["kind"] = ""
    if filters["status"] not in STATUSES:
        filters["status"] = ""
    q = _text(query, "q")
    page_text = _text(query, "page")
    page = int(page_text) if page_text.isdigit() and 0 < int(page_text) < 1_000_000 else 1
    jobs, total = store.find_jobs(project, filters, q, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))

    def link(to: int) -> str:
        params = {k: v for k, v in {**filters, "q": q}.items() if v}
        if to > 1:
            params["page"] = str(to)
        return "?" + urlencode(params) + "#history" if params else "?#history"

    return {
        "jobs": jobs,
        "total": total,
        "page": page,
        "pages": pages,
        "filters": filters,
        "q": q,
        "filtered": any(filters.values()) or bool(q),
        "kinds": KINDS,
        "statuses": STATUSES,
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
    }
