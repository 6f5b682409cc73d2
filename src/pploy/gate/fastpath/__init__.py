"""gate's fast path: plain proxied requests answered without aiohttp's server and client.

Why: profiled under load (bench/README.md), aiohttp's server and client were over half of
gate's CPU per small proxied request, and gate needed twice the CPU of Go's
``httputil.ReverseProxy``. This front end parses request heads with httptools (llhttp, the
parser Node.js uses), hands each admitted request to a raw keep-alive upstream connection and
lets the response flow from the upstream socket to the client's with nothing in between. No
library offers such a hop on asyncio, so it is written by hand.

The contract
------------

1. **It decides nothing by itself.** Who serves a request is :func:`pploy.gate.plan.plan`;
   the guards (:mod:`pploy.gate.guards`, host → identity → restrictions), what the upstream is
   sent (:func:`pploy.gate.forwarding.upstream_request`), what the response head becomes
   (:func:`pploy.gate.headers.response_head`), the error pages and failure logging
   (:class:`pploy.gate.proxy.UpstreamProxy`), the timeouts (:class:`pploy.gate.sweep.IdleSweep`)
   and the request log (:class:`pploy.gate.requestlog.Exchange`) are the full server's own.
2. **It serves only the ordinary.** HTTP/1.1 requests without a body (no
   ``Transfer-Encoding``, ``Content-Length`` absent or 0), no ``Upgrade`` or ``Expect``, planned
   for a proxy route to an ``http://`` upstream, with a head ordinary in every way. Anything
   else is *handed over*: the connection, with every byte received from the start of that
   request, goes to aiohttp's server, which serves it from then on — gate's own endpoints,
   htdocs, 404s and slash redirects, WebSockets, request bodies, ``https://`` upstreams,
   HTTP/1.0, and any head that is unusual (a parse error, a bare CR or LF, a folded line, a
   duplicated Host or ``Content-Length``, a line over 8190 bytes, a head over 16 KiB). So
   aiohttp's answers to malformed input stay the only ones, and request framing cannot differ
   between the two: a request the fast path serves ends exactly at its head's empty line.
3. **Every response is framed exactly or not at all.** A sized body passes with its length,
   anything else is re-framed as chunked; bytes beyond a response's end are never relayed, and
   an upstream connection that sent any is closed; a failure before the head is gate's
   502/504 page, after it the client's connection is cut (a truncated body never looks whole).
4. **Every wait is bounded.** A client connection has ``head_timeout`` for each request head
   (from its opening or its previous response; bytes trickling in buy nothing); an upstream
   ``upstream.idle_timeout`` of silence (never counting a slow client); an idle pooled
   upstream connection 15 s.

The state of a client connection is :class:`~pploy.gate.fastpath.front.Stage` (``HEAD`` →
``EXCHANGE`` → ``HEAD`` … → ``CLOSED``, or ``HANDED_OVER``), that of an upstream connection
:class:`~pploy.gate.fastpath.relay.Phase`; each module draws its diagram.
"""

from pploy.gate.fastpath.front import FastPath

__all__ = ["FastPath"]
