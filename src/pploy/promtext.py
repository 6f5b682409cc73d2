"""Prometheus's text exposition format, written by hand (no dependency) for gate's and
pploy serve's ``/metrics``. Label values must come from a bounded set (configuration, route
patterns, job kinds), never from a request."""

from __future__ import annotations

from collections.abc import Iterable

LabelKey = tuple[tuple[str, str], ...]


def labels(key: LabelKey, extra: LabelKey = ()) -> str:
    """``{a="x",b="y"}`` with ``\\`` and ``"`` escaped; empty for no labels."""
    items = key + extra
    if not items:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in items
    )
    return "{" + ",".join(escaped) + "}"


def family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[LabelKey, float]]
) -> list[str]:
    """One metric family: its HELP and TYPE lines, then a line per sample."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for key, value in samples:
        text = str(int(value)) if float(value).is_integer() else f"{value:.6f}"
        lines.append(f"{name}{labels(key)} {text}")
    return lines
