"""``pploy doctor URL``: find the hop that holds a stream back.

The doctor reads the stream-test endpoints (see :mod:`pploy.streamtest`) of the site at
URL over all three transports — chunked text, Server-Sent Events and WebSocket — from both
gate (``/.gate/stream-test``) and pploy (``/api/stream-test``) when both answer, notes when each
tick arrives and gives a verdict per transport:

- **streaming**: ticks arrive as they are sent;
- **buffered**: ticks arrive in batches (with the batch sizes and how long they were held);
- **broken**: no stream (handshake refused, authentication needed, HTTP error) or a stream cut
  before its end (at N s: likely a read timeout such as nginx's ``proxy_read_timeout``).

Comparing gate's endpoint with pploy's tells whether the trouble is in front of gate (nginx,
a load balancer) or between gate and pploy. The likely fix names the hop that answered, read
from the response headers.

Three parts, importing one way: :mod:`.probe` measures (network I/O only), :mod:`.verdict`
judges (a rule table over the observations), :mod:`.report` renders; :mod:`.model` holds the
plain data they share.
"""

from __future__ import annotations

from typing import Any

from pploy import log
from pploy.chain.doctor.model import Batch, Options, Probe, Tick, parse_cookie, parse_header
from pploy.chain.doctor.probe import measure, plan
from pploy.chain.doctor.report import build, render_text
from pploy.chain.doctor.verdict import front_hop, judge, summarise

__all__ = [
    "Batch",
    "Options",
    "Probe",
    "Tick",
    "diagnose",
    "front_hop",
    "judge",
    "parse_cookie",
    "parse_header",
    "plan",
    "render_text",
    "summarise",
]


async def diagnose(options: Options) -> dict[str, Any]:
    """Run every probe at once, judge each and return the report (see ``--json``)."""
    probes = await measure(options)
    for probe in probes:
        judge(probe, options)
    report = build(options, probes)
    for probe in probes:
        log.event(
            "doctor.probe", endpoint=probe.endpoint, transport=probe.transport,
            verdict=probe.verdict, hop=probe.hop, ticks=len(probe.ticks),
        )  # fmt: skip
    return report
