# Copied from the harness of the vgi-rpc 0.52.2 HTTP wire specification: the Python reference
# conformance worker, with the same flags as spillway-conformance. conftest.py runs it when
# VGI_SERVER_CMD is unset, to measure the reference under the same harness. Spillway's one
# additions: --call-state-cache-entries (make_wsgi_app's call_state_cache_entries; 0 = cold),
# --reject-all-auth (an authenticate hook refusing every request, with the reason the
# X-Conformance-Auth-Reason header asks for) and --cors-origins (make_wsgi_app's cors_origins).
"""Reference vgi-rpc 0.52.2 conformance HTTP server with optional external storage + capture.

Stands in for the "foreign server" a Rust port would spawn from its conftest.
Prints PORT:<n> once listening.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import threading
from urllib.parse import urlparse

from vgi_rpc.conformance import ConformanceService, ConformanceServiceImpl
from vgi_rpc.conformance.secondary import conformance_extra_protocols
from vgi_rpc.external import Compression, FetchConfig, ServerExternalConfig
from vgi_rpc.http import make_wsgi_app
from vgi_rpc.rpc import RpcServer


class Capture:
    """WSGI middleware: dump request/response (headers + body) to capture_dir."""

    def __init__(self, app, capture_dir: str) -> None:
        self.app = app
        self.dir = capture_dir
        self.n = 0
        self.lock = threading.Lock()
        os.makedirs(capture_dir, exist_ok=True)

    def __call__(self, environ, start_response):
        import io

        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        with self.lock:
            self.n += 1
            n = self.n
        path = environ.get("PATH_INFO", "")
        req_headers = {k[5:].replace("_", "-").title(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if environ.get("CONTENT_TYPE"):
            req_headers["Content-Type"] = environ["CONTENT_TYPE"]
        if environ.get("CONTENT_LENGTH"):
            req_headers["Content-Length"] = environ["CONTENT_LENGTH"]
        meta = {"n": n, "method": environ["REQUEST_METHOD"], "path": path, "request_headers": req_headers}
        captured = {}

        def sr(status, headers, exc_info=None):
            captured["status"] = status
            captured["headers"] = headers
            return start_response(status, headers, exc_info)

        out = b"".join(self.app(environ, sr))
        meta["status"] = captured.get("status")
        meta["response_headers"] = captured.get("headers")
        stem = os.path.join(self.dir, f"{n:03d}")
        with open(stem + ".json", "w") as f:
            json.dump(meta, f, indent=1)
        with open(stem + ".req.bin", "wb") as f:
            f.write(body)
        with open(stem + ".resp.bin", "wb") as f:
            f.write(out)
        return [out]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--prefix", default="")
    p.add_argument("--fake-storage", default=None)
    p.add_argument("--externalize-threshold", type=int, default=4096)
    p.add_argument("--max-request-bytes", type=int, default=None)
    p.add_argument("--compression", choices=("none", "zstd", "gzip"), default="none")
    p.add_argument("--max-fetch-bytes", type=int, default=None)
    p.add_argument("--max-decompressed-fetch-bytes", type=int, default=None)
    p.add_argument("--reject-localhost-redirects", action="store_true")
    p.add_argument("--max-externalized-response-bytes", type=int, default=None)
    p.add_argument("--max-response-bytes", type=int, default=None)
    p.add_argument("--http-compression-level", default="1", help="'none' disables response compression")
    p.add_argument("--call-state-cache-entries", type=int, default=4096)
    p.add_argument("--capture-dir", default=None)
    p.add_argument("--reject-all-auth", action="store_true")
    p.add_argument("--cors-origins", default=None)
    a = p.parse_args()

    ext = None
    backend = None
    upload_provider = None
    max_request_bytes = a.max_request_bytes
    if a.fake_storage:
        from vgi_rpc.conformance.fake_storage import FakeStorageBackend

        backend = FakeStorageBackend(a.fake_storage)
        upload_provider = backend

        def validator(url: str) -> None:
            if urlparse(url).hostname != "127.0.0.1":
                raise ValueError("external-security fixture permits only 127.0.0.1")

        d = FetchConfig()
        ext = ServerExternalConfig(
            storage=backend,
            externalize_threshold_bytes=a.externalize_threshold,
            compression=Compression(algorithm=a.compression) if a.compression != "none" else None,
            fetch_config=FetchConfig(
                max_fetch_bytes=d.max_fetch_bytes if a.max_fetch_bytes is None else a.max_fetch_bytes,
                max_decompressed_bytes=a.max_decompressed_fetch_bytes,
            ),
            url_validator=validator if a.reject_localhost_redirects else None,
        )
        if max_request_bytes is None:
            max_request_bytes = a.externalize_threshold

    impl = ConformanceServiceImpl(
        external_storage=ext.storage if ext else None,
        external_compression=ext.compression if ext else None,
    )
    server = RpcServer(
        ConformanceService,
        impl,
        enable_describe=True,
        external_location=ext,
        extra_protocols=conformance_extra_protocols(),
    )
    lvl = None if a.http_compression_level == "none" else int(a.http_compression_level)
    authenticate = None
    if a.reject_all_auth:
        from vgi_rpc.http import AuthFailure, AuthReason

        requestable = {"missing_credential", "invalid_credential", "expired_credential", "insufficient_scope"}

        def authenticate(req):
            asked = req.get_header("X-Conformance-Auth-Reason")
            if asked in requestable:
                raise AuthFailure(AuthReason(asked))
            raise ValueError("the conformance auth worker refuses every request")

    app = make_wsgi_app(
        server,
        prefix=a.prefix,
        token_key=b"k" * 32,
        upload_url_provider=upload_provider,
        max_upload_bytes=64 * 1024 * 1024 if upload_provider else None,
        max_request_bytes=max_request_bytes,
        max_externalized_response_bytes=a.max_externalized_response_bytes,
        max_response_bytes=a.max_response_bytes,
        compression_level=lvl,
        call_state_cache_entries=a.call_state_cache_entries,
        authenticate=authenticate,
        cors_origins=a.cors_origins.split(",") if a.cors_origins else None,
    )
    if a.capture_dir:
        app = Capture(app, a.capture_dir)

    import waitress

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", a.port))
    print(f"PORT:{sock.getsockname()[1]}", flush=True)
    waitress.serve(app, sockets=[sock], _quiet=True)


if __name__ == "__main__":
    main()
