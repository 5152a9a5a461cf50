# Copied from the harness of the vgi-rpc 0.52.2 HTTP wire specification Spillway implements: the
# runner that verified it against the Python reference. It starts the server named by
# VGI_SERVER_CMD (default: serve_ref.py, the Python reference, next to this file) with the flags
# of each fixture; scripts/test.d/60-conformance.check.sh points it at
# target/debug/spillway-conformance. Spillway's additions, at the end of the file: the optional
# fixtures the suite asks for with request.getfixturevalue (strict response cap, small request
# cap, cold call-state cache, compression disabled, the reject-all auth worker, the CORS
# worker, and the protocol connector the
# multi-protocol and error-model groups use), which both servers get alike; and _connect, the
# one connection helper of conformance_conn and the protocol connector.
"""Runner conftest: drive the shared vgi-rpc 0.52.2 conformance suite against a FOREIGN HTTP server.

The server is any executable that prints ``PORT:<n>`` on stdout once listening.  Its command line
comes from ``VGI_SERVER_CMD`` (shlex-split); storage/cap settings are appended as flags, so the
foreign binary must accept (or translate) these flags:

  --fake-storage URL  --externalize-threshold N  --max-request-bytes N  --compression zstd
  --max-fetch-bytes N  --max-decompressed-fetch-bytes N  --reject-localhost-redirects
  --max-externalized-response-bytes N  --max-response-bytes N
"""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

SERVER_CMD = shlex.split(
    os.environ.get("VGI_SERVER_CMD", f"{sys.executable} {os.path.join(os.path.dirname(__file__), 'serve_ref.py')}")
)


@contextlib.contextmanager
def _spawn(extra: list[str]) -> Iterator[int]:
    proc = subprocess.Popen(SERVER_CMD + extra, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("PORT:"), f"expected PORT:<n>, got {line!r}"
        port = int(line.split(":", 1)[1])
        import httpx2

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx2.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
                break
            except httpx2.TransportError:
                time.sleep(0.1)
        yield port
    finally:
        proc.terminate()  # terminates only the process this fixture started
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def conformance_fake_storage() -> Iterator[str]:
    from vgi_rpc.conformance.fake_storage import serve_in_thread

    url, shutdown = serve_in_thread()
    try:
        yield url
    finally:
        shutdown()


@pytest.fixture(scope="session")
def conformance_http_port() -> Iterator[int]:
    with _spawn([]) as port:
        yield port


@pytest.fixture(scope="class")
def conformance_http_with_storage_port(conformance_fake_storage: str) -> Iterator[int]:
    with _spawn(["--fake-storage", conformance_fake_storage]) as port:
        yield port


@pytest.fixture(scope="class")
def conformance_http_with_zstd_storage_port(conformance_fake_storage: str) -> Iterator[int]:
    with _spawn(["--fake-storage", conformance_fake_storage, "--compression", "zstd"]) as port:
        yield port


@pytest.fixture(scope="class")
def conformance_http_external_security_port(conformance_fake_storage: str) -> Iterator[int]:
    with _spawn(
        [
            "--fake-storage", conformance_fake_storage,
            "--max-request-bytes", "1048576",
            "--max-fetch-bytes", "4096",
            "--max-decompressed-fetch-bytes", "8192",
            "--reject-localhost-redirects",
        ]
    ) as port:
        yield port


@pytest.fixture(scope="class")
def conformance_http_externalized_cap_port(conformance_fake_storage: str) -> Iterator[int]:
    with _spawn(
        [
            "--fake-storage", conformance_fake_storage,
            "--max-externalized-response-bytes", str(64 * 1024),
            "--max-response-bytes", str(8 * 1024 * 1024),
        ]
    ) as port:
        yield port


@pytest.fixture(scope="session")
def conformance_http_externalize_always_port(conformance_fake_storage: str) -> Iterator[int]:
    with _spawn(
        ["--fake-storage", conformance_fake_storage, "--externalize-threshold", "1", "--max-request-bytes", "1048576"]
    ) as port:
        yield port


def _connect(
    request: pytest.FixtureRequest, protocol: type, transport: str, on_log: Any = None
) -> contextlib.AbstractContextManager[Any]:
    """A proxy bound to *protocol* on the worker the *transport* names: ``"http"``, or any other
    name for the externalize-always worker (its client fetches externalized data)."""
    from vgi_rpc.external import ClientExternalConfig
    from vgi_rpc.http import http_connect

    if transport == "http":
        port = request.getfixturevalue("conformance_http_port")
        return http_connect(protocol, f"http://127.0.0.1:{port}", on_log=on_log)

    @contextlib.contextmanager
    def _ext() -> Iterator[Any]:
        port = request.getfixturevalue("conformance_http_externalize_always_port")
        cfg = ClientExternalConfig(url_validator=None)
        try:
            with http_connect(
                protocol, f"http://127.0.0.1:{port}", on_log=on_log, external_location=cfg
            ) as proxy:
                yield proxy
        finally:
            cfg.fetch_config.close()

    return _ext()


@pytest.fixture(params=["http", "http_externalize_always"])
def conformance_conn(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """HTTP-only connection factory; param names must start with 'http' (the suite checks)."""
    from vgi_rpc.conformance import ConformanceService

    def factory(on_log: Any = None) -> contextlib.AbstractContextManager[Any]:
        return _connect(request, ConformanceService, request.param, on_log)

    return factory


# ---------------------------------------------------------------------------
# Spillway's additions: optional fixtures of the suite (both servers get them alike).
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def conformance_http_strict_cap_port() -> Iterator[int]:
    """No storage, 1 MiB response cap: oversized answers must fail (TestHttpResponseCap*)."""
    with _spawn(["--max-response-bytes", str(1024 * 1024)]) as port:
        yield port


@pytest.fixture(scope="session")
def conformance_http_small_request_cap_port() -> Iterator[int]:
    """A deliberately small request cap (TestCompressedHttpRequestCap: 512..64 KiB)."""
    with _spawn(["--max-request-bytes", "4096"]) as port:
        yield port


@pytest.fixture(scope="session")
def conformance_http_cold_call_cache_port() -> Iterator[int]:
    """Call-state cache disabled: every continuation re-opens the call token."""
    with _spawn(["--call-state-cache-entries", "0"]) as port:
        yield port


@pytest.fixture(scope="session")
def conformance_http_no_compression_port() -> Iterator[int]:
    """Response compression disabled (an empty VGI-Supported-Encodings)."""
    with _spawn(["--http-compression-level", "none"]) as port:
        yield port


@pytest.fixture(scope="session")
def conformance_protocol_connector(
    request: pytest.FixtureRequest,
) -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """``connector(transport, protocol, on_log=None)``: a proxy bound to *protocol* on the worker
    the ``conformance_conn`` transport names (multi-protocol hosting and the error model)."""

    def connect(transport: str, protocol: type, on_log: Any = None) -> contextlib.AbstractContextManager[Any]:
        return _connect(request, protocol, transport, on_log)

    return connect


@pytest.fixture(scope="session")
def conformance_http_auth_port() -> Iterator[int]:
    """Every RPC request refused with 401; /health and OPTIONS stay open (TestHealth,
    TestUnauthorized)."""
    with _spawn(["--reject-all-auth"]) as port:
        yield port


@pytest.fixture(scope="session")
def conformance_http_auth_reason_port(conformance_http_auth_port: int) -> int:
    """The same worker: it refuses with the reason X-Conformance-Auth-Reason asks for."""
    return conformance_http_auth_port


@pytest.fixture(scope="session")
def conformance_http_cors_port(conformance_fake_storage: str) -> Iterator[int]:
    """CORS for the suite's origin, on a storage-enabled worker so that every optional
    capability header is advertised (TestCors)."""
    with _spawn(["--fake-storage", conformance_fake_storage, "--cors-origins", "https://conformance.example"]) as port:
        yield port
