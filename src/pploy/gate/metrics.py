"""Prometheus metrics in the text exposition format, kept in memory.

Written by hand (a few counters, gauges and one histogram) to avoid a dependency; label values
come from the configuration (route labels), never from the request, so cardinality is bounded.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pploy.promtext import LabelKey
from pploy.promtext import labels as _labels  # the one copy, shared with pploy serve

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """gate's counters: requests, latency, upstream errors, open streams/WebSockets, logins."""

    def __init__(self) -> None:
        self.requests: dict[LabelKey, int] = defaultdict(int)
        self.upstream_errors: dict[LabelKey, int] = defaultdict(int)
        self.logins: dict[LabelKey, int] = defaultdict(int)
        self.open_streams = 0
        self.open_websockets = 0
        # The fast path (pploy.gate.fastpath): requests it answered itself, and connections
        # it handed to aiohttp, by why.
        self.fast_path_requests = 0
        self.fast_path_handovers: dict[LabelKey, int] = defaultdict(int)
        self._hist: dict[LabelKey, list[int]] = {}
        self._hist_sum: dict[LabelKey, float] = defaultdict(float)
        self._hist_count: dict[LabelKey, int] = defaultdict(int)
        # With several worker processes: the other workers' latest snapshots, added to this
        # worker's own figures when rendering (see pploy.gate.workers).
        self.peers: Callable[[], list[dict[str, Any]]] | None = None

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests[(("route", route), ("method", method), ("code", str(status)))] += 1
        key = (("route", route),)
        counts = self._hist.setdefault(key, [0] * len(BUCKETS))
        index = bisect.bisect_left(BUCKETS, seconds)
        if index < len(BUCKETS):
            counts[index] += 1
        self._hist_sum[key] += seconds
        self._hist_count[key] += 1

    def upstream_error(self, route: str, kind: str) -> None:
        self.upstream_errors[(("route", route), ("kind", kind))] += 1

    def handover(self, reason: str) -> None:
        self.fast_path_handovers[(("reason", reason),)] += 1

    def login(self, provider: str, result: str) -> None:
        self.logins[(("provider", provider), ("result", result))] += 1

    def snapshot(self) -> dict[str, Any]:
        """Every figure as plain JSON data, for another process to add up."""

        def pairs(values: dict[LabelKey, int]) -> list[Any]:
            return [[list(map(list, key)), value] for key, value in values.items()]

        return {
            "requests": pairs(self.requests),
            "upstream_errors": pairs(self.upstream_errors),
            "logins": pairs(self.logins),
            "fast_path_handovers": pairs(self.fast_path_handovers),
            "fast_path_requests": self.fast_path_requests,
            "open_streams": self.open_streams,
            "open_websockets": self.open_websockets,
            "hist": [
                [list(map(list, key)), counts, self._hist_sum[key], self._hist_count[key]]
                for key, counts in self._hist.items()
            ],
        }

    def add(self, snapshot: dict[str, Any]) -> None:
        """Add another process's :meth:`snapshot` to these figures."""

        def key_of(raw: list[list[str]]) -> LabelKey:
            return tuple((str(k), str(v)) for k, v in raw)

        for name in ("requests", "upstream_errors", "logins", "fast_path_handovers"):
            table: dict[LabelKey, int] = getattr(self, name)
            for raw, value in snapshot.get(name, []):
                table[key_of(raw)] += int(value)
        self.fast_path_requests += int(snapshot.get("fast_path_requests", 0))
        self.open_streams += int(snapshot.get("open_streams", 0))
        self.open_websockets += int(snapshot.get("open_websockets", 0))
        for raw, counts, total, count in snapshot.get("hist", []):
            key = key_of(raw)
            mine = self._hist.setdefault(key, [0] * len(BUCKETS))
            for index, value in enumerate(counts[: len(BUCKETS)]):
                mine[index] += int(value)
            self._hist_sum[key] += float(total)
            self._hist_count[key] += int(count)

    def render(self) -> str:
        """The Prometheus text; with worker processes, the sum over all of them."""
        if self.peers is None:
            return self._render()
        total = Metrics()
        total.add(self.snapshot())
        for snapshot in self.peers():
            total.add(snapshot)
        return total._render()

    def _render(self) -> str:
        lines: list[str] = []

        def counter(name: str, help_text: str, values: dict[LabelKey, int]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} counter")
            for key, value in sorted(values.items()):
                lines.append(f"{name}{_labels(key)} {value}")

        counter(
            "gate_requests_total", "Requests answered, by route, method and status.", self.requests
        )
        counter(
            "gate_upstream_errors_total",
            "Upstream failures, by route and kind.",
            self.upstream_errors,
        )
        counter("gate_logins_total", "Login attempts, by provider and result.", self.logins)
        lines.append(
            "# HELP gate_fast_path_requests_total Requests answered by the fast path itself."
        )
        lines.append("# TYPE gate_fast_path_requests_total counter")
        lines.append(f"gate_fast_path_requests_total {self.fast_path_requests}")
        counter(
            "gate_fast_path_handovers_total",
            "Connections the fast path handed to the full server, by reason.",
            self.fast_path_handovers,
        )
        lines.append("# HELP gate_open_streams Proxied HTTP responses being streamed now.")
        lines.append("# TYPE gate_open_streams gauge")
        lines.append(f"gate_open_streams {self.open_streams}")
        lines.append("# HELP gate_open_websockets Proxied WebSocket connections open now.")
        lines.append("# TYPE gate_open_websockets gauge")
        lines.append(f"gate_open_websockets {self.open_websockets}")
        name = "gate_request_duration_seconds"
        lines.append(f"# HELP {name} Time to answer a request (whole stream), by route.")
        lines.append(f"# TYPE {name} histogram")
        for key, counts in sorted(self._hist.items()):
            running = 0
            for bound, count in zip(BUCKETS, counts, strict=True):
                running += count
                lines.append(f"{name}_bucket{_labels(key, (('le', repr(bound)),))} {running}")
            lines.append(f"{name}_bucket{_labels(key, (('le', '+Inf'),))} {self._hist_count[key]}")
            lines.append(f"{name}_sum{_labels(key)} {self._hist_sum[key]:.6f}")
            lines.append(f"{name}_count{_labels(key)} {self._hist_count[key]}")
        return "\n".join(lines) + "\n"
