"""Interop check: the Python reference client (vgi-rpc 0.52.2) against `spillway serve`.

Usage: python interop_demo.py <port> [--threshold BYTES] [--max-request-bytes BYTES]
                               [--local-dir DIR] [--object-encoding zstd|none]

The server must be `spillway serve` on http://127.0.0.1:<port> at the root prefix, serving the
demo protocol `spillway.Demo.v1` with its embedded object store. The two size options must match
the server's settings (defaults: the server's defaults, 1 MiB and 4 MiB). With --local-dir (the
server's SPILLWAY_LOCAL_DIR) the checks also count the stored objects; with --object-encoding
they check how the stored objects are compressed.

Checks, each printed as PASS/FAIL; the exit status is non-zero if any fails:
  - a small `blob` comes back inline (raw POST: one data row, no pointer; client: no URL fetched);
  - a `blob` above the threshold comes back as a pointer batch (raw POST: zero rows with
    `vgi_rpc.location` + sha256 on the server's own `/__storage__/` route) and the client
    resolves it to the right bytes;
  - `echo` of small data round-trips inline;
  - `echo` of data above the request cap goes through the upload-URL flow and round-trips;
  - an unknown method raises RpcError, and the next call on the same connection still works
    (100 rounds, so a server that drops keep-alive connections after a 404 is caught).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import socket
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from urllib.parse import urlparse

import pyarrow as pa
from pyarrow import ipc

from vgi_rpc.external import ClientExternalConfig
from vgi_rpc.http import http_capabilities, http_connect
from vgi_rpc.rpc import RpcError

from spillway_demo import PROTOCOL, STORAGE_ROUTE, SpillwayDemo, UrlRecorder, expect

ARROW_STREAM = "application/vnd.apache.arrow.stream"
LOCATION_KEY = b"vgi_rpc.location"
SHA256_KEY = b"vgi_rpc.location.sha256"
LOG_LEVEL_KEY = b"vgi_rpc.log_level"
LOG_MESSAGE_KEY = b"vgi_rpc.log_message"

# Raw requests go straight to the loopback server, whatever *_proxy variables say.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Results:
    """Collects PASS/FAIL lines."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.passes: list[str] = []

    def check(self, name: str, fn: Callable[[], str | None]) -> None:
        start = time.monotonic()
        try:
            detail = fn()
        except Exception as exc:  # every failure is reported, then the next check runs
            ms = (time.monotonic() - start) * 1000
            print(f"FAIL  {name} ({ms:.0f} ms): {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc(file=sys.stdout)
            self.failures.append(name)
            return
        ms = (time.monotonic() - start) * 1000
        print(f"PASS  {name} ({ms:.0f} ms){': ' + detail if detail else ''}", flush=True)
        self.passes.append(name)


def raw_call(base: str, method: str, params: pa.RecordBatch) -> tuple[int, list[tuple[pa.RecordBatch, dict[bytes, bytes]]]]:
    """POSTs one uncompressed request the way the wire spec describes; returns status and batches."""
    sink = io.BytesIO()
    with ipc.new_stream(sink, params.schema) as writer:
        writer.write_batch(
            params,
            custom_metadata={
                "vgi_rpc.method": method,
                "vgi_rpc.request_version": "1",
                "vgi_rpc.protocol": PROTOCOL,
            },
        )
    req = urllib.request.Request(
        f"{base}/{PROTOCOL}/{method}",
        data=sink.getvalue(),
        method="POST",
        headers={
            "Content-Type": ARROW_STREAM,
            "Accept-Encoding": "identity",
            "VGI-Accept-Max-Response-Bytes": str(256 * 1024 * 1024),
        },
    )
    try:
        with DIRECT.open(req, timeout=60) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    batches: list[tuple[pa.RecordBatch, dict[bytes, bytes]]] = []
    if body:
        reader = ipc.open_stream(pa.BufferReader(body))
        while True:
            try:
                batch, meta = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            batches.append((batch, dict(meta) if meta is not None else {}))
    return status, batches


def read_http_response(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """Reads one HTTP/1.1 response (Content-Length or chunked body); returns status and headers."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a complete response")
        buf += chunk
    raw_head, rest = buf.split(b"\r\n\r\n", 1)
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        done: Callable[[bytes], bool] = lambda b: len(b) >= int(headers["content-length"])  # noqa: E731
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        done = lambda b: b.endswith(b"0\r\n\r\n")  # noqa: E731
    else:
        done = lambda b: True  # noqa: E731
    while not done(rest):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed inside a response body")
        rest += chunk
    return status, headers


def data_batches(batches: list[tuple[pa.RecordBatch, dict[bytes, bytes]]]) -> list[tuple[pa.RecordBatch, dict[bytes, bytes]]]:
    """Drops log batches (zero rows with log level and message)."""
    return [
        (b, m)
        for b, m in batches
        if not (b.num_rows == 0 and LOG_LEVEL_KEY in m and LOG_MESSAGE_KEY in m)
    ]


def count_objects(root: str | None) -> int | None:
    """Regular files under the local store's directory (None without --local-dir)."""
    if root is None:
        return None
    return sum(len(files) for _, _, files in os.walk(root))


def expect_new_objects(root: str | None, before: int | None, at_least: int) -> str:
    if root is None or before is None:
        return ""
    after = count_objects(root)
    assert after is not None
    expect(after - before >= at_least, f"expected at least {at_least} new stored objects, got {after - before}")
    return f", {after - before} new stored objects"


def blob_params(size: int) -> pa.RecordBatch:
    schema = pa.schema([pa.field("size", pa.int64(), nullable=False)])
    return pa.record_batch([pa.array([size], pa.int64())], schema=schema)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("--threshold", type=int, default=1024 * 1024, help="server's SPILLWAY_THRESHOLD_BYTES")
    parser.add_argument(
        "--max-request-bytes", type=int, default=4 * 1024 * 1024, help="server's SPILLWAY_MAX_REQUEST_BYTES"
    )
    parser.add_argument("--local-dir", help="server's SPILLWAY_LOCAL_DIR: also count stored objects")
    parser.add_argument(
        "--object-encoding", choices=["zstd", "none"], help="expected Content-Encoding of stored objects"
    )
    args = parser.parse_args()
    if args.local_dir is not None and not os.path.isdir(args.local_dir):
        parser.error(f"--local-dir {args.local_dir} is not a directory")

    base = f"http://127.0.0.1:{args.port}"
    small = 100
    big = max(2 * 1024 * 1024, 2 * args.threshold)
    big_request = args.max_request_bytes + 2 * 1024 * 1024
    print(f"spillway interop: Python vgi-rpc client -> {base} protocol {PROTOCOL}", flush=True)
    print(f"  threshold {args.threshold} B, request cap {args.max_request_bytes} B", flush=True)

    results = Results()
    recorder = UrlRecorder(args.port)
    logs: list[object] = []
    config = ClientExternalConfig(url_validator=recorder)

    def capabilities() -> str:
        caps = http_capabilities(base)
        expect(caps.max_request_bytes == args.max_request_bytes, f"max_request_bytes advertised {caps.max_request_bytes}")
        expect(caps.upload_url_support is True, "upload URL support not advertised")
        expect(caps.externalization_enabled is True, "externalization not enabled")
        return f"request cap {caps.max_request_bytes} B, uploads on, externalization on"

    results.check("capabilities (OPTIONS /health)", capabilities)

    def raw_small_blob() -> str:
        status, batches = raw_call(base, "blob", blob_params(small))
        expect(status == 200, f"HTTP {status}")
        data = data_batches(batches)
        expect(len(data) == 1, f"expected 1 data batch, got {len(data)}")
        batch, meta = data[0]
        expect(LOCATION_KEY not in meta, f"small result came back as a pointer: {meta}")
        expect(batch.num_rows == 1, f"expected 1 row, got {batch.num_rows}")
        value = batch.column(0)[0].as_py()
        expect(len(value) == small, f"expected {small} bytes, got {len(value)}")
        return "inline 1-row batch"

    results.check(f"raw POST blob({small}) is inline", raw_small_blob)

    def raw_big_blob() -> str:
        before = count_objects(args.local_dir)
        status, batches = raw_call(base, "blob", blob_params(big))
        expect(status == 200, f"HTTP {status}")
        data = data_batches(batches)
        expect(len(data) == 1, f"expected 1 data batch, got {len(data)}")
        batch, meta = data[0]
        expect(batch.num_rows == 0, f"expected a zero-row pointer batch, got {batch.num_rows} rows")
        expect(LOCATION_KEY in meta, f"no vgi_rpc.location in metadata {meta}")
        expect(LOG_LEVEL_KEY not in meta, "pointer carries vgi_rpc.log_level")
        expect(
            batch.schema.field(0).name == "result" and batch.schema.field(0).type == pa.binary(),
            f"pointer schema {batch.schema}",
        )
        url = meta[LOCATION_KEY].decode()
        parsed = urlparse(url)
        expect(
            parsed.scheme == "http" and parsed.hostname == "127.0.0.1" and parsed.port == args.port,
            f"location not on this server: {url}",
        )
        expect(parsed.path.startswith(STORAGE_ROUTE), f"location not under {STORAGE_ROUTE}: {url}")
        digest = meta.get(SHA256_KEY, b"").decode()
        expect(len(digest) == 64 and digest == digest.lower(), f"bad sha256 {digest!r}")
        # Fetch the object by hand: it must be one IPC stream with one row of `big` bytes, and
        # its (decoded) bytes must hash to the pointer's sha256.
        req = urllib.request.Request(url, headers={"Accept-Encoding": "identity, zstd"})
        with DIRECT.open(req, timeout=60) as resp:
            encoding = resp.headers.get("Content-Encoding", "")
            raw = resp.read()
        if encoding == "zstd":
            payload = pa.input_stream(pa.BufferReader(raw), compression="zstd").read()
        else:
            expect(encoding in ("", "identity"), f"unexpected Content-Encoding {encoding!r}")
            payload = raw
        if args.object_encoding == "zstd":
            expect(encoding == "zstd", f"object served with Content-Encoding {encoding!r}, expected zstd")
        elif args.object_encoding == "none":
            expect(encoding in ("", "identity"), f"object served with Content-Encoding {encoding!r}, expected none")
        expect(hashlib.sha256(payload).hexdigest() == digest, "object sha256 does not match the pointer")
        table = ipc.open_stream(pa.BufferReader(payload)).read_all()
        expect(table.num_rows == 1, f"object holds {table.num_rows} rows")
        expect(len(table.column(0)[0].as_py()) == big, "object value has the wrong length")
        stored = expect_new_objects(args.local_dir, before, 1)
        return f"pointer -> {parsed.path[:36]}... ({len(raw)} B served, encoding {encoding or 'none'}{stored})"

    results.check(f"raw POST blob({big}) is a pointer batch", raw_big_blob)

    def raw_404_keeps_connection() -> str:
        # The request headers go first and the body only later, so the server routes (404)
        # before the body has arrived. It must then either say `Connection: close`, or read the
        # body and keep the connection usable; closing it silently breaks the client's next
        # request on it (the Python client does not retry POSTs).
        sink = io.BytesIO()
        params = pa.record_batch([pa.array([b"x" * small], pa.binary())], names=["data"])
        with ipc.new_stream(sink, params.schema) as writer:
            writer.write_batch(
                params, custom_metadata={"vgi_rpc.method": "no_such_method", "vgi_rpc.request_version": "1"}
            )
        body = sink.getvalue()
        head = (
            f"POST /{PROTOCOL}/no_such_method HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
            f"Content-Type: {ARROW_STREAM}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", args.port), timeout=30) as sock:
            sock.sendall(head)
            sock.settimeout(1.0)
            try:
                early = read_http_response(sock)  # a server that answers without the body
            except TimeoutError:
                early = None  # a server that waits for the body first
            sock.settimeout(30)
            if early is None:
                sock.sendall(body)
                status, headers = read_http_response(sock)
            else:
                status, headers = early
            expect(status == 404, f"unknown method answered HTTP {status}")
            if "close" in headers.get("connection", "").lower():
                return "404 with Connection: close"
            try:
                if early is not None:
                    sock.sendall(body)
                sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n\r\n".encode())
                next_status, _ = read_http_response(sock)
            except OSError as exc:
                raise AssertionError(
                    "the server answered 404 without `Connection: close` but then closed the "
                    f"connection; the next request on it failed ({type(exc).__name__}: {exc})"
                ) from exc
            expect(next_status == 200, f"next request on the connection answered HTTP {next_status}")
            return "404, then the same connection served the next request"

    results.check("raw POST unknown method (body after headers) leaves the connection usable", raw_404_keeps_connection)

    with http_connect(SpillwayDemo, base, external_location=config, on_log=logs.append) as client:

        def small_blob() -> str:
            recorder.take()
            before = count_objects(args.local_dir)
            value = client.blob(size=small)
            expect(isinstance(value, bytes), f"result type {type(value).__name__}")
            if before is not None:
                expect(count_objects(args.local_dir) == before, "small blob stored an object")
            expect(len(value) == small, f"expected {small} bytes, got {len(value)}")
            fetched = recorder.take()
            expect(not fetched, f"small blob fetched URLs {fetched}")
            return "inline"

        results.check(f"client blob({small}) inline", small_blob)

        def big_blob() -> str:
            recorder.take()
            before = count_objects(args.local_dir)
            value = client.blob(size=big)
            expect(len(value) == big, f"expected {big} bytes, got {len(value)}")
            fetched = recorder.take()
            expect(
                any(urlparse(u).path.startswith(STORAGE_ROUTE) for u in fetched),
                f"client resolved no storage URL (saw {fetched})",
            )
            expect(len(set(value[:4096])) > 64, "blob is not random-looking")
            stored = expect_new_objects(args.local_dir, before, 1)
            return f"externalized, resolved {len(value)} B{stored}"

        results.check(f"client blob({big}) externalized and resolved", big_blob)

        def small_echo() -> str:
            recorder.take()
            before = count_objects(args.local_dir)
            data = os.urandom(small)
            value = client.echo(data=data)
            expect(value == data, "echo returned different bytes")
            expect(not recorder.take(), "small echo used storage")
            if before is not None:
                expect(count_objects(args.local_dir) == before, "small echo stored an object")
            return "identical bytes"

        results.check(f"client echo({small} B)", small_echo)

        def big_echo() -> str:
            recorder.take()
            before = count_objects(args.local_dir)
            data = os.urandom(big_request)
            value = client.echo(data=data)
            expect(len(value) == len(data), f"echo returned {len(value)} bytes, sent {len(data)}")
            expect(value == data, "echo returned different bytes")
            urls = recorder.take()
            # The upload flow validates the vended upload and download URLs; the large result
            # then comes back as a pointer whose URL is validated again before the fetch.
            expect(len(urls) >= 2, f"expected the upload-URL flow, validator saw {urls}")
            # One object for the uploaded request, one for the externalized result.
            stored = expect_new_objects(args.local_dir, before, 2)
            return f"upload-URL flow, {len(data)} B round-tripped ({len(urls)} URLs validated{stored})"

        results.check(f"client echo({big_request} B) above the request cap", big_echo)

        def unknown_method() -> str:
            # After answering 404 the server must leave the keep-alive connection usable (read
            # the request body, or say Connection: close). If it drops the connection instead,
            # the client's next POST on it fails now and then ("Server disconnected without
            # sending a response"), so the pair is repeated to make such a failure show up.
            rounds = 100
            errors: list[str] = []
            broken: list[str] = []
            for _ in range(rounds):
                try:
                    client.no_such_method(data=os.urandom(small))
                except RpcError as err:
                    errors.append(f"{err.error_type}: {err.error_message}")
                except Exception as exc:  # anything else is a transport failure
                    broken.append(f"unknown method: {type(exc).__name__}: {exc}")
                    continue
                else:
                    raise AssertionError("calling an unknown method did not raise RpcError")
                try:
                    value = client.blob(size=small)
                    expect(len(value) == small, f"blob after the error returned {len(value)} bytes")
                except Exception as exc:
                    broken.append(f"next call: {type(exc).__name__}: {exc}")
            expect(
                not broken,
                f"{len(broken)} of {rounds} calls after an unknown-method 404 failed; first: {broken[:1]}",
            )
            data = b"still works"
            expect(client.echo(data=data) == data, "echo after the errors failed")
            return f"{rounds} rounds; RpcError {errors[0][:120]}"

        results.check("unknown method raises RpcError, next calls still work", unknown_method)

    config.fetch_config.close()

    total = len(results.passes) + len(results.failures)
    if logs:
        print(f"server log messages: {len(logs)}", flush=True)
    if results.failures:
        print(f"interop: {len(results.failures)} of {total} checks FAILED: {', '.join(results.failures)}", flush=True)
        return 1
    print(f"interop: all {total} checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
