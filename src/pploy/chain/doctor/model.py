"""What the doctor observes and is asked: the options of a run and one probe's record.

Kept apart from the network code and the judging so both stand on the same plain data and the
verdict rules can be exercised on hand-made observations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

TRANSPORTS = ("chunked", "sse", "websocket")


@dataclass
class Tick:
    """One tick of the stream-test endpoint, as it arrived here."""

    n: int
    at: float  # seconds from the request to its arrival at this client
    sent: float  # seconds from the stream's start to its sending, by the server's clock

    @property
    def lag(self) -> float:
        """Arrival minus sending: constant when streamed, growing while a buffer holds ticks."""
        return self.at - self.sent


@dataclass
class Batch:
    """One network read that carried ticks: how many and how many bytes."""

    at: float
    ticks: int
    bytes: int


@dataclass
class Probe:
    """One transport read from one endpoint, and what the doctor made of it."""

    endpoint: str  # gate | pploy | url
    transport: str
    url: str
    expected: int = 0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    ticks: list[Tick] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    done: bool = False
    ended_at: float | None = None
    close_code: int | None = None
    error: str | None = None
    unresolved: bool = False  # the URL's host name did not resolve (DNS)
    verdict: str = "broken"
    detail: str = ""
    hop: str = ""
    fix: str | None = None
    available: bool = True

    def to_json(self) -> dict[str, Any]:
        """The probe as ``--json`` shows it (times rounded to 0.1 ms)."""
        data = asdict(self)
        data["ticks"] = [
            {"n": t.n, "at": round(t.at, 4), "sent": round(t.sent, 4)} for t in self.ticks
        ]
        data["batches"] = [
            {"at": round(b.at, 4), "ticks": b.ticks, "bytes": b.bytes} for b in self.batches
        ]
        if self.ended_at is not None:
            data["ended_at"] = round(self.ended_at, 4)
        return data


@dataclass
class Options:
    """What to probe and how: the site's URL, credentials, tick pacing, TLS trust."""

    url: str
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    interval: float = 0.1
    duration: float = 3.0
    heartbeat: float | None = None  # None: the server's default; 0: off
    timeout: float | None = None
    insecure: bool = False
    cafile: str | None = None
    endpoints: tuple[str, ...] = ("gate", "pploy")

    @property
    def expected(self) -> int:
        """Ticks a complete stream carries."""
        return max(1, round(self.duration / self.interval))

    @property
    def query(self) -> str:
        """The stream-test query string asking for this pacing."""
        params: dict[str, str] = {
            "interval": f"{self.interval:g}",
            "duration": f"{self.duration:g}",
        }
        if self.heartbeat is not None:
            params["heartbeat"] = f"{self.heartbeat:g}"
        return urlencode(params)

    @property
    def credentials(self) -> str | None:
        """What the run authenticates with, as said to the user (None: nothing)."""
        names = {name.lower() for name in self.headers}
        if self.cookies or "cookie" in names:
            return "a cookie"
        if "authorization" in names:
            return "an Authorization header"
        return None

    @property
    def host_header(self) -> str | None:
        """The ``Host`` a ``--header`` sets instead of the URL's, if any."""
        return next((v for k, v in self.headers.items() if k.lower() == "host"), None)

    @property
    def read_timeout(self) -> float:
        """Longest silence tolerated on a read before the probe gives up."""
        return self.timeout if self.timeout is not None else self.duration + 15.0


def parse_cookie(text: str) -> tuple[str, str]:
    """``--cookie NAME=VALUE`` as a pair; the error names the option."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--cookie wants NAME=VALUE, not {text!r}")
    return name.strip(), value.strip()


def parse_header(text: str) -> tuple[str, str]:
    """``--header 'Name: value'`` as a pair; the error names the option."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--header wants 'Name: value', not {text!r}")
    return name.strip(), value.strip()
