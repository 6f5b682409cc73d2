"""The doctor's judgement: which hop answered, what a probe's observations mean, what to fix.

The verdict of a probe is a table, :data:`RULES`: the first rule whose condition holds on the
observations gives the verdict, the detail line and the kind of problem; :data:`FIXES` maps
(hop, problem) to the likely fix. :func:`judge` only walks the table. Adding a diagnosis means
adding a row, not another branch.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from pploy.chain.doctor.model import TRANSPORTS, Options, Probe

REDIRECTS = frozenset({301, 302, 303, 307, 308})
REFUSED = frozenset({401, 403}) | REDIRECTS


# -- who answered ----------------------------------------------------------------------------


def front_hop(headers: dict[str, str]) -> str:
    """Who answered, from the response headers: nginx, gate/pploy directly, or another."""
    server = headers.get("Server", "")
    lowered = server.lower()
    if "X-Accel-Buffering" in headers and "nginx" not in lowered:
        # nginx never passes X-Accel-Buffering on; seeing it means no nginx in front.
        origin = headers.get("X-Stream-Test-Origin", "")
        return origin or "aiohttp"
    if lowered.startswith("nginx") or "openresty" in lowered:
        return "nginx"
    if "aiohttp" in lowered:
        return headers.get("X-Stream-Test-Origin") or "gate or pploy (aiohttp)"
    if server:
        return f"another proxy (Server: {server})"
    return "an unknown proxy"


# -- likely fixes, by hop and problem --------------------------------------------------------

FIXES = {
    ("nginx", "buffered"): (
        "nginx is buffering this response. pploy and gate send `X-Accel-Buffering: no` on "
        "every stream, which nginx obeys unless `proxy_ignore_headers` lists it or another "
        "proxy drops it: remove `X-Accel-Buffering` from `proxy_ignore_headers` (or set "
        "`proxy_buffering off;`) in this location. `pploy nginx-config` prints a known-good "
        "configuration."
    ),
    ("nginx", "websocket"): (
        "nginx did not pass the WebSocket upgrade on. In the location add "
        "`proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; "
        "proxy_set_header Connection $connection_upgrade;` with "
        "`map $http_upgrade $connection_upgrade { default upgrade; '' close; }` in `http {}`."
    ),
    ("nginx", "cut"): (
        "nginx closed the stream during a silence: `proxy_read_timeout` is shorter than the "
        "gap between two writes. Keep heartbeats on (pploy and gate send one at least every "
        "15 s) and set `proxy_read_timeout` well above them (the shipped config uses 3600s). "
        "WebSocket pings go hop by hop: between nginx and gate they are gate's "
        "(`upstream.websocket_heartbeat`, 30 s by default)."
    ),
    ("gate", "buffered"): (
        "gate answered and still batched the ticks: this is a gate bug (gate writes every "
        "upstream chunk at once); please report it with this output."
    ),
    ("other", "buffered"): (
        "a proxy in front buffers streamed responses: disable response buffering for this "
        "site (for a CDN, bypass its cache and buffering for /api/ and /.gate/), and make "
        "sure it passes `Cache-Control: no-transform` (no compression of streams)."
    ),
    ("other", "websocket"): (
        "a proxy in front does not pass WebSocket upgrades: enable WebSocket support "
        "(HTTP/1.1 to the upstream with the Upgrade and Connection headers)."
    ),
    ("other", "cut"): (
        "a proxy in front closed the stream during a silence: raise its read/idle timeout "
        "above pploy's 15 s heartbeat (and gate's upstream.idle_timeout if gate is the one)."
    ),
}


def likely_fix(hop: str, problem: str | None) -> str | None:
    """The fix for ``problem`` at ``hop``; hops without a row of their own get the generic
    proxy advice."""
    if problem is None:
        return None
    key = hop if hop in ("nginx", "gate") else "other"
    return FIXES.get((key, problem)) or FIXES.get(("other", problem))


# -- measurements the rules read -------------------------------------------------------------


def _holds(probe: Probe) -> list[float]:
    """How long each tick was held beyond the quickest one (0 for all when streamed)."""
    lags = [t.lag for t in probe.ticks]
    return [lag - min(lags) for lag in lags]


def _largest_silence(probe: Probe, options: Options) -> float:
    gaps = [options.interval]
    previous = 0.0
    for tick in probe.ticks:
        gaps.append(tick.at - previous)
        previous = tick.at
    if probe.ended_at is not None:
        gaps.append(probe.ended_at - previous)
    return max(gaps)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


# -- conditions ------------------------------------------------------------------------------


def _no_endpoint(probe: Probe, options: Options) -> bool:
    return probe.status == 404 and probe.endpoint != "url"


def _no_stream(probe: Probe, options: Options) -> bool:
    return bool(probe.error) and not probe.ticks and probe.ended_at is None


def _upgrade_answered_as_http(probe: Probe, options: Options) -> bool:
    # The upgrade never reached a WebSocket server: it answered plain HTTP.
    return (
        _no_stream(probe, options)
        and probe.transport == "websocket"
        and probe.status in (200, 400, 426)
    )


def _abnormal_close(probe: Probe) -> bool:
    return probe.transport == "websocket" and probe.close_code not in (1000, None)


def _cut(probe: Probe, options: Options) -> bool:
    return not probe.done or _abnormal_close(probe)


def _empty(probe: Probe, options: Options) -> bool:
    return not probe.ticks


def _held(probe: Probe, options: Options) -> bool:
    # Buffered: most ticks were held (a buffer), or some for very long. One network hiccup
    # delays a few ticks briefly and is not a verdict.
    holds = _holds(probe)
    typical_limit = max(0.25, 2.5 * options.interval)
    return statistics.median(holds) > typical_limit or max(holds) > max(1.0, 10 * options.interval)


def _always(probe: Probe, options: Options) -> bool:
    return True


# -- detail lines ----------------------------------------------------------------------------


def _error_detail(probe: Probe, options: Options) -> str:
    return probe.error or ""


def _cut_detail(probe: Probe, options: Options) -> str:
    when = probe.ended_at if probe.ended_at is not None else 0.0
    detail = f"connection cut at {when:.1f} s after {len(probe.ticks)} of {probe.expected} ticks"
    if _abnormal_close(probe):
        detail += f" (WebSocket close code {probe.close_code})"
    if probe.error:
        detail += f"; {probe.error}"
    return detail + (
        f" — likely a read timeout (nginx proxy_read_timeout, gate upstream.idle_timeout) "
        f"shorter than the longest silence ({_largest_silence(probe, options):.1f} s)"
    )


def _buffered_detail(probe: Probe, options: Options) -> str:
    batches = len(probe.batches)
    sizes = sorted(b.bytes for b in probe.batches)
    detail = (
        f"{len(probe.ticks)} ticks arrived in {batches} batch{'es' if batches != 1 else ''} "
        f"(up to {max(b.ticks for b in probe.batches)} ticks, {_size(sizes[-1])} at once); "
        f"ticks held up to {max(_holds(probe)):.2f} s"
    )
    if batches > 2 and sizes[0] > 0.8 * sizes[-1]:
        detail += f" — batches of about {_size(sizes[batches // 2])}: a size buffer"
    return detail


def _streaming_detail(probe: Probe, options: Options) -> str:
    ticks = probe.ticks
    held = max(_holds(probe))
    gaps = [b.at - a.at for a, b in zip(ticks, ticks[1:], strict=False)]
    detail = f"{len(ticks)}/{probe.expected} ticks, each as sent (held at most {held * 1000:.0f} ms"
    if gaps:
        detail += f", median gap {statistics.median(gaps) * 1000:.0f} ms"
    return detail + ")"


def _fixed(text: str) -> Callable[[Probe, Options], str]:
    return lambda probe, options: text


# -- the table -------------------------------------------------------------------------------

Condition = Callable[[Probe, Options], bool]
Detail = Callable[[Probe, Options], str]


@dataclass(frozen=True)
class Rule:
    """One diagnosis: when ``when`` holds, the probe gets ``verdict``, the line ``detail``
    and the likely fix for ``problem`` at the hop that answered."""

    name: str
    when: Condition
    verdict: str
    detail: Detail
    problem: str | None = None


RULES: tuple[Rule, ...] = (
    Rule(
        "no stream-test endpoint",
        _no_endpoint,
        "unavailable",
        _fixed("HTTP 404: this server has no stream-test endpoint here"),
    ),
    Rule(
        "upgrade answered as HTTP", _upgrade_answered_as_http, "broken", _error_detail, "websocket"
    ),
    Rule("no stream", _no_stream, "broken", _error_detail),
    Rule("cut before its end", _cut, "broken", _cut_detail, "cut"),
    Rule("no tick", _empty, "broken", _fixed("the stream ended without a single tick")),
    Rule("held in batches", _held, "buffered", _buffered_detail, "buffered"),
    Rule("streaming", _always, "streaming", _streaming_detail),
)


def judge(probe: Probe, options: Options) -> Rule:
    """Set the verdict, the detail and the likely fix from what arrived and when: the first
    rule of :data:`RULES` that holds decides. Returns that rule."""
    probe.expected = options.expected
    probe.hop = front_hop(probe.headers) if probe.headers else ""
    rule = next(r for r in RULES if r.when(probe, options))
    probe.verdict = rule.verdict
    probe.available = rule.verdict != "unavailable"
    probe.detail = rule.detail(probe, options)
    probe.fix = likely_fix(probe.hop, rule.problem)
    return rule


# -- across probes ---------------------------------------------------------------------------


def _unreached(probes: list[Probe]) -> list[str]:
    """Nothing answered at all: say why, and blame no hop (none was reached)."""
    first = probes[0]
    if all(p.unresolved for p in probes):
        return [
            f"{first.error}: check the host name in the URL (or run the doctor where that "
            "name resolves); no hop answered, so none is to blame"
        ]
    return [f"nothing answered ({first.error}); no hop answered, so none is to blame"]


def _refused(probes: list[Probe], options: Options | None) -> str:
    credentials = options.credentials if options else None
    if not credentials:
        return (
            "authentication needed: sign in with a browser, copy gate's session cookie "
            "(_gate_session unless auth.session.cookie_name says otherwise) and pass "
            "--cookie _gate_session=VALUE"
        )
    refused = next(p for p in probes if p.status in REFUSED)
    return (
        f"refused with {credentials} passed ({refused.endpoint} {refused.transport}: "
        f"{refused.error}): the session may have ended or belong to another site (sign in "
        "again and copy a fresh cookie), or the site refuses this Host or Origin"
    )


def summarise(probes: list[Probe], options: Options | None = None) -> list[str]:
    """Where the trouble is, comparing gate's endpoint (nginx → gate) with pploy's
    (nginx → gate → pploy)."""
    lines = []
    by_key = {(p.endpoint, p.transport): p for p in probes}
    if probes and all(p.status is None and p.error and not p.ticks for p in probes):
        return _unreached(probes)
    if not any(p.available for p in probes):
        return ["no stream-test endpoint answered: is this a pploy or gate URL?"]
    if any(p.status in REFUSED for p in probes):
        lines.append(_refused(probes, options))
    for transport in TRANSPORTS:
        gate = by_key.get(("gate", transport))
        pploy = by_key.get(("pploy", transport))
        if any(p is not None and p.status in REFUSED for p in (gate, pploy)):
            continue
        if gate and pploy and gate.available and pploy.available:
            if gate.verdict == "streaming" and pploy.verdict != "streaming":
                lines.append(
                    f"{transport}: gate's own stream is fine but pploy's is {pploy.verdict}: "
                    "the trouble is between gate and pploy, or in a proxy rule for pploy's "
                    "paths only"
                )
            elif gate.verdict != "streaming" and pploy.verdict == gate.verdict:
                lines.append(
                    f"{transport}: {gate.verdict} at gate's endpoint too: the hop in front of "
                    f"gate ({gate.hop or 'unknown'}) is the one to fix"
                )
            elif gate.verdict != "streaming" and pploy.verdict == "streaming":
                lines.append(
                    f"{transport}: only gate's endpoint is {gate.verdict}: a proxy rule for "
                    "/.gate/ paths differs from the rest"
                )
    if all(p.verdict == "streaming" for p in probes if p.available):
        lines.append("every transport streams: ticks arrived as they were sent")
    return lines


def healthy(probes: list[Probe]) -> bool:
    """Every endpoint that answered streams on every transport, and at least one answered."""
    return all(p.verdict == "streaming" for p in probes if p.available) and any(
        p.available for p in probes
    )
