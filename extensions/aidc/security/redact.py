"""Keep a job's secrets out of what the platform stores about it.

A job that names secrets (:mod:`aidc.jobs.secrets`) gets their values in its kernel's
environment; whatever its cells print, display, raise or record goes through a
:class:`Redactor` before it is sent, kept or shown: stream output (the job's logs and
events), the output notebook, the job's error and its metrics. Each value is replaced
by ``[secret NAME]`` in these forms:

- the value itself, and as Python's ``repr``/``ascii`` and JSON write it inside a string
  (escaped quotes, backslashes, non-ASCII), its UTF-8 bytes' ``repr``, hex (either case)
  and URL-encoding;
- base64 and base64url (with or without padding) of the value alone *or inside longer
  data* (``base64(f"user:{token}")``): the characters that depend only on the value, at
  each of the three byte offsets it may start at;
- split across output chunks (``print(v[:5], end=""); print(v[5:])``): stream output is
  scanned as one text, a chunk's end that could begin a value being held back until the
  next chunk (or the cell's end) shows whether it does.

What it cannot recognize, and so does not hide (documented for users): a value
transformed otherwise (reversed, compressed, encrypted, hashed, every other character),
printed with other characters between its pieces (a subprocess's own output, captured from
the kernel's file descriptors, may arrive amid the pieces of a print), split across stdout
and stderr or across cells, written to files, or sent over the network by the job itself.
The values travel to the worker with the job's task (see :class:`SecretValues`).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

#: the shortest form worth matching: a shorter one (a base64 core of a short value) would
#: hide ordinary text where the same characters happen to occur
MIN_FORM = 6


def marker(name: str) -> str:
    """What a secret's value is replaced with."""
    return f"[secret {name}]"


def _base64_cores(data: bytes) -> set[str]:
    """The base64 and base64url characters that encode ``data`` wherever it starts in a
    longer byte string (offset 0, 1 or 2 within a 3-byte group): the characters whose six
    bits all come from ``data``."""
    cores = set()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode()
        first = -(-8 * shift // 6)  # the first 6-bit group entirely after the prefix
        last = 8 * (shift + len(data)) // 6  # groups ending within the data
        core = encoded[first:last]
        cores.add(core)
        cores.add(core.replace("+", "-").replace("/", "_"))
    return cores


def forms(value: str) -> set[str]:
    """The ways ``value`` may show up in output (see the module's docstring)."""
    raw = value.encode("utf-8")
    found = {
        value,
        repr(value)[1:-1], ascii(value)[1:-1],
        json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
        repr(raw)[2:-1],
        raw.hex(), raw.hex().upper(),
        quote(value, safe=""),
        *_base64_cores(raw),
    }
    return {f for f in found if len(f) >= MIN_FORM}


class Redactor:
    """Replaces the values of ``secrets`` (name -> value) in text and in JSON-like data."""

    def __init__(self, secrets: Mapping[str, str] | None = None):
        self.names: dict[str, str] = {}  # form -> secret name
        for name, value in sorted((secrets or {}).items()):
            for form in forms(value):
                self.names.setdefault(form, name)
        ordered = sorted(self.names, key=len, reverse=True)  # the longest form wins
        self.pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        #: the longest form: how much of a chunk's end may be the start of one
        self.longest = len(ordered[0]) if ordered else 0
        self.first = {form[0] for form in ordered}

    def __bool__(self) -> bool:
        return self.pattern is not None

    def text(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(lambda m: marker(self.names[m.group(0)]), text)

    def scrub(self, data: Any) -> Any:
        """``data`` (strings, lists, dicts: an event, a notebook output, an outcome) with
        every string in it, keys included, redacted; other values as they are."""
        if self.pattern is None:
            return data
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, Mapping):
            return {self.scrub(k): self.scrub(v) for k, v in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.scrub(v) for v in data]
        return data

    def held_back(self, text: str) -> int:
        """How many characters at the end of ``text`` begin some form (and so must wait
        for what comes next before they can be let out)."""
        if self.pattern is None:
            return 0
        for i in range(max(0, len(text) - self.longest + 1), len(text)):
            if text[i] in self.first:  # the earliest start is the longest hold
                tail = text[i:]
                if any(form.startswith(tail) for form in self.names if len(form) > len(tail)):
                    return len(tail)
        return 0


class StreamRedactor:
    """Redacts a stream that arrives in chunks, a value split across chunks included."""

    def __init__(self, redactor: Redactor):
        self.redactor = redactor
        self.pending = ""

    def feed(self, chunk: str) -> str:
        """What of ``pending + chunk`` may be let out now, redacted."""
        if not self.redactor:
            return chunk
        text = self.redactor.text(self.pending + chunk)
        keep = self.redactor.held_back(text)
        self.pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def release(self) -> str:
        """The rest, at the stream's end (or where a value can no longer continue)."""
        rest, self.pending = self.pending, ""
        return self.redactor.text(rest)


class SecretValues(dict):
    """A job's secrets (name -> value) on their way to its worker: a dict whose ``repr``
    names them only, so a log line that shows a task's arguments (Dask's "Compute Failed")
    does not show the values."""

    def __repr__(self) -> str:
        return f"<secrets {', '.join(sorted(self)) or 'none'}>"

    __str__ = __repr__
