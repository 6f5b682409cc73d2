"""Secret masking for job output (issue 25, interface 4): a streaming filter between the pty
and the log, so that a secret reaches neither the log file, nor a live stream, nor the stored
log (all of them read what the log was given).

``Masker(values).feed(chunk) -> bytes`` returns what may be shown now: every occurrence of a
value becomes ``***``, also when the script writes it in pieces (a partial match at the end of
a chunk is held back until the next chunk decides it, and only that), and also when colour
codes (ANSI CSI/OSC sequences) sit inside it (they are kept, the value's characters are not).
A line ``::add-mask::VALUE`` masks VALUE from then on; the line itself is shown as
``::add-mask::***``. ``flush()`` gives what is still held back, masked, when the process ends
or pploy writes one of its own lines.

The filter works on bytes with C-speed searches (``bytes.find``, one compiled pattern); the
common chunk without escape sequences or partial matches costs one pattern scan.
"""

from __future__ import annotations

import os
import re
from bisect import bisect_right
from collections.abc import Iterable

MASK = b"***"
DIRECTIVE = b"::add-mask::"
MIN_LENGTH = 4  # shorter values would mask ordinary text (config error for job.mask_env)
# A complete ANSI sequence: CSI (ESC [ params intermediates final) or OSC (ESC ] ... BEL/ST).
ESCAPE = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# The start of one cut off by the end of a chunk.
PARTIAL_ESCAPE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?\Z")
BETWEEN = b"(?:" + ESCAPE.pattern + b")*"
MAX_DIRECTIVE_LINE = 64 * 1024  # a longer "::add-mask::" line is shown (masked) as it is


def encode(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


class Masker:
    def __init__(self, values: Iterable[str | bytes] = ()) -> None:
        self.secrets: set[bytes] = set()
        self.pattern: re.Pattern[bytes] | None = None
        self.pending = b""
        self.at_line_start = True  # the last byte let through ended a line
        for value in values:
            self.add(value)

    def add(self, value: str | bytes) -> None:
        """Mask ``value`` from now on (values shorter than MIN_LENGTH are ignored)."""
        secret = encode(value) if isinstance(value, str) else value
        if len(secret) < MIN_LENGTH or secret in self.secrets:
            return
        self.secrets.add(secret)
        ordered = sorted(self.secrets, key=len, reverse=True)  # the longest wins at one place
        # Each value with any colour codes between its characters: one scan of the raw bytes.
        self.pattern = re.compile(
            b"|".join(BETWEEN.join(re.escape(s[i : i + 1]) for i in range(len(s))) for s in ordered)
        )
        self.window = 8 * len(ordered[0]) + 256  # where a held-back partial match is looked for

    def feed(self, data: bytes) -> bytes:
        """What of ``data`` (after what was held back) may be shown now, masked."""
        return self._run(self.pending + data, final=False)

    def flush(self) -> bytes:
        """Everything held back, masked: the output ended (or pploy writes a line)."""
        return self._run(self.pending, final=True)

    # -- inside ----------------------------------------------------------------------------

    def _run(self, buf: bytes, final: bool) -> bytes:
        self.pending = b""
        out: list[bytes] = []
        start = 0
        while True:
            at = self._directive(buf, start)
            if at < 0:
                break
            end = buf.find(b"\n", at)
            if end < 0 and not final and len(buf) - at < MAX_DIRECTIVE_LINE:
                out.append(self._mask(buf[start:at], final=True)[0])
                self.pending = buf[at:]  # the line is not complete: wait for its end
                self._consumed(buf[:at])
                return b"".join(out)
            end = len(buf) if end < 0 else end + 1
            out.append(self._mask(buf[start:at], final=True)[0])
            line = buf[at:end]
            ending = line[len(line.rstrip(b"\r\n")) :]
            value = line[len(DIRECTIVE) : len(line) - len(ending)].strip()
            out.append(DIRECTIVE + MASK + ending)
            self.add(value)
            start = end
        rest = buf[start:]
        held = 0 if final else self._held_directive(buf, start)
        body = rest[: len(rest) - held]
        shown, kept = self._mask(body, final=final)
        out.append(shown)
        self.pending = kept + rest[len(rest) - held :]
        self._consumed(buf[: len(buf) - len(self.pending)])
        return b"".join(out)

    def _consumed(self, shown: bytes) -> None:
        if shown:
            self.at_line_start = shown.endswith(b"\n")

    def _directive(self, buf: bytes, start: int) -> int:
        """Where the next complete-or-not ``::add-mask::`` at a line start begins, or -1."""
        at = buf.find(DIRECTIVE, start)
        while at >= 0:
            if (at == 0 and self.at_line_start) or (at > 0 and buf[at - 1 : at] == b"\n"):
                return at
            at = buf.find(DIRECTIVE, at + 1)
        return -1

    def _held_directive(self, buf: bytes, start: int) -> int:
        """How many bytes at the end may be the start of a ``::add-mask::`` line."""
        line_start = buf.rfind(b"\n", start) + 1
        if line_start == 0 and not (start == 0 and self.at_line_start):
            return 0
        if line_start == 0:
            line_start = start
        tail = buf[line_start:]
        return len(tail) if tail and DIRECTIVE.startswith(tail) else 0

    def _mask(self, raw: bytes, final: bool) -> tuple[bytes, bytes]:
        """``raw`` with every secret masked, and (unless ``final``) what is held back: a
        possible partial match at its end, left out of the first."""
        if not raw or self.pattern is None:
            return raw, b""
        cut_escape = b""
        if not final and b"\x1b" in raw[-64:]:
            partial = PARTIAL_ESCAPE.search(raw, max(0, len(raw) - 64))
            if partial is not None:  # a colour code cut in two: decided with the next chunk
                raw, cut_escape = raw[: partial.start()], raw[partial.start() :]
        cut = len(raw)
        if not final:
            cut = self._held_from(raw)
        if cut == len(raw) and not self.pattern.search(raw):
            return raw, cut_escape  # the common case: nothing to mask, nothing to hold
        out, last = [], 0
        for match in self.pattern.finditer(raw, 0, cut):
            out.append(raw[last : match.start()])
            out.append(MASK + b"".join(ESCAPE.findall(match.group())))  # colours stay
            last = match.end()
        out.append(raw[last:cut])
        return b"".join(out), raw[cut:] + cut_escape

    def _held_from(self, raw: bytes) -> int:
        """Where the possible partial match at the end of ``raw`` starts (``len(raw)``: none),
        looked for in its last ``window`` bytes with colour codes left out."""
        start = max(0, len(raw) - self.window)
        tail = raw[start:]
        if b"\x1b" not in tail:
            held = self._partial_start(tail)
            return len(raw) if held is None else start + held
        runs: list[tuple[int, int]] = []  # (visible start, raw start) of each run of text
        pieces, position, seen = [], 0, 0
        for match in ESCAPE.finditer(tail):
            if match.start() > position:
                runs.append((seen, position))
                pieces.append(tail[position : match.start()])
                seen += match.start() - position
            position = match.end()
        runs.append((seen, position))
        pieces.append(tail[position:])
        held = self._partial_start(b"".join(pieces))
        return len(raw) if held is None else start + self._raw_index(runs, held)

    def _partial_start(self, visible: bytes) -> int | None:
        """The earliest index from which the end of ``visible`` is a proper prefix of a
        secret (it may turn into one with the next chunk), or None."""
        best: int | None = None
        for secret in self.secrets:
            first = secret[:1]
            low = max(0, len(visible) - len(secret) + 1)
            at = visible.find(first, low)
            while at >= 0:
                if secret.startswith(visible[at:]):
                    if best is None or at < best:
                        best = at
                    break
                at = visible.find(first, at + 1)
        return best

    @staticmethod
    def _raw_index(runs: list[tuple[int, int]], visible_index: int) -> int:
        """The raw index of visible byte ``visible_index`` (runs: (visible start, raw start))."""
        starts = [seen for seen, _ in runs]
        i = bisect_right(starts, visible_index) - 1
        seen, raw = runs[i]
        return raw + (visible_index - seen)


def for_env(names: Iterable[str], environ: dict[str, str] | os._Environ[str]) -> Masker:
    """A job's masker: the values of the ``job.mask_env`` variables pploy runs with (an unset
    or empty one masks nothing)."""
    return Masker(environ[name] for name in names if environ.get(name))


def short_values(names: Iterable[str], environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """The ``job.mask_env`` names whose value is set but too short to mask safely."""
    return [n for n in names if environ.get(n) and len(encode(environ[n])) < MIN_LENGTH]
