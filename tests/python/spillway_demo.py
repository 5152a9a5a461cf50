"""What the Python interop scripts share: the demo protocol `spillway serve` hosts, a URL
validator that records what the client resolved, and `expect`. Imported by interop_demo.py and
interop_auth.py (their directory is on sys.path when they run as scripts)."""
from __future__ import annotations

from typing import ClassVar, Protocol
from urllib.parse import urlparse

PROTOCOL = "spillway.Demo.v1"
STORAGE_ROUTE = "/__storage__/"


class SpillwayDemo(Protocol):
    """The demo protocol `spillway serve` hosts (no protocol version declared)."""

    protocol_name: ClassVar[str] = PROTOCOL

    def blob(self, size: int) -> bytes:
        """`size` random bytes."""
        ...

    def echo(self, data: bytes) -> bytes:
        """Returns `data`."""
        ...

    def no_such_method(self, data: bytes) -> bytes:
        """Not served by spillway: calling it must raise RpcError."""
        ...


class UrlRecorder:
    """URL validator for the client: allows only plain-http URLs on this server, records them.

    The client calls it for every download URL it resolves from a pointer and for every vended
    upload/download URL pair, so the record shows which calls really went through storage.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[str] = []

    def __call__(self, url: str) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "http" or parsed.hostname != "127.0.0.1" or parsed.port != self.port:
            raise ValueError(f"URL not allowed (only http://127.0.0.1:{self.port}/): {url}")
        self.seen.append(url)

    def take(self) -> list[str]:
        out, self.seen = self.seen, []
        return out


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)
