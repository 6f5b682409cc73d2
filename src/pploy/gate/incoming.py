"""What gate's rules read from a request, whichever front end received it.

gate has two front ends: aiohttp's server (every request it can answer) and the fast path
(:mod:`pploy.gate.fastpath`, plain proxied requests). The guards, the authenticator, the
upstream header cleaning and the access log are written once, against this protocol, and
both front ends' request objects satisfy it: aiohttp's ``web.Request`` as it is, and the fast
path's :class:`~pploy.gate.fastpath.FastRequest`.
"""

from __future__ import annotations

from typing import Any, Protocol, overload

from multidict import CIMultiDictProxy


class Incoming(Protocol):
    """A request as gate's rules see it: method, target, headers, peer, and a mapping of what
    gate stores on it while handling it (``pploy.gate.requestkeys``)."""

    @property
    def method(self) -> str: ...

    @property
    def raw_path(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def headers(self) -> CIMultiDictProxy[str]: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def secure(self) -> bool: ...

    def __getitem__(self, key: Any) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...

    def __contains__(self, key: object) -> bool: ...

    @overload
    def get(self, key: Any, /) -> Any: ...

    @overload
    def get(self, key: Any, default: Any, /) -> Any: ...
