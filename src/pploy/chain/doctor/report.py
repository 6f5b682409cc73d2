"""The doctor's output: the report as data (``--json``) and as text for a terminal."""

from __future__ import annotations

from typing import Any

from pploy.chain.doctor.model import Options, Probe
from pploy.chain.doctor.verdict import healthy, summarise


def build(options: Options, probes: list[Probe]) -> dict[str, Any]:
    """The report of judged probes, as ``--json`` prints it."""
    return {
        "url": options.url,
        "params": {
            "interval": options.interval,
            "duration": options.duration,
            "heartbeat": options.heartbeat,
        },
        "probes": [p.to_json() for p in probes],
        "summary": summarise(probes, options),
        "ok": healthy(probes),
    }


def render_text(report: dict[str, Any]) -> str:
    """The report for a human: one block per endpoint, one line per transport, then the
    summary lines."""
    out = [f"pploy doctor {report['url']}"]
    params = report["params"]
    heartbeat = params["heartbeat"]
    out.append(
        f"  ticks every {params['interval'] * 1000:.0f} ms for {params['duration']:g} s"
        + (
            ""
            if heartbeat is None
            else f", heartbeat {heartbeat:g} s"
            if heartbeat
            else ", heartbeat off"
        )
    )
    current = None
    for probe in report["probes"]:
        if probe["endpoint"] != current:
            current = probe["endpoint"]
            base = probe["url"].split("?")[0]
            out.append("")
            out.append(f"{current}  {base}")
        verdict = probe["verdict"].upper() if probe["verdict"] != "streaming" else "streaming"
        out.append(f"  {probe['transport']:<10} {verdict:<11} {probe['detail']}")
        if probe["hop"]:
            headers = ", ".join(
                f"{k}: {v}" for k, v in probe["headers"].items() if k in ("Server", "Via")
            )
            out.append(
                f"  {'':<10} answered by {probe['hop']}" + (f" ({headers})" if headers else "")
            )
        if probe["ticks"]:
            times = arrivals([round(t["at"] * 1000) for t in probe["ticks"]])
            out.append(f"  {'':<10} arrivals (ms): {times}")
        if probe["fix"]:
            out.append(f"  {'':<10} likely fix: {probe['fix']}")
    out.append("")
    for line in report["summary"]:
        out.append(f"=> {line}")
    return "\n".join(out)


def arrivals(ms: list[int]) -> str:
    """Arrival times in ms; a batch of ticks that came together shows as ``3024×30``."""
    parts: list[str] = []
    i = 0
    while i < len(ms):
        j = i
        while j + 1 < len(ms) and ms[j + 1] - ms[i] <= 1:
            j += 1
        parts.append(f"{ms[i]}" if j == i else f"{ms[i]}×{j - i + 1}")
        i = j + 1
    return " ".join(parts)
