"""Auth interop: the Python reference client (vgi-rpc 0.52.2) with a bearer token against
`spillway serve --auth bearer`.

Usage: python interop_auth.py <port> <token> [--threshold BYTES] [--max-request-bytes BYTES]

The server must be `spillway serve` on http://127.0.0.1:<port> (root prefix) with bearer auth
accepting <token>, and the two size settings given here. Checks, each printed as PASS/FAIL; the
exit status is non-zero if any fails:
  - capability discovery works with the token (and without: OPTIONS /health is exempt);
  - with `http_connect(..., client=httpx2.Client(headers={"Authorization": "Bearer ..."}))`: an
    externalized `blob` is resolved, an `echo` above the request cap goes through the upload-URL
    flow, `request_upload_urls` vends URLs;
  - the same calls without a token, and with a wrong one, raise AuthenticationError with the
    reason `missing_credential` / `invalid_credential`.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable
from urllib.parse import urlparse

import httpx2

from vgi_rpc.external import ClientExternalConfig
from vgi_rpc.http import AuthenticationError, AuthReason, http_capabilities, http_connect, request_upload_urls

from spillway_demo import STORAGE_ROUTE, SpillwayDemo, UrlRecorder, expect


failures: list[str] = []


def check(name: str, fn: Callable[[], str | None]) -> None:
    start = time.monotonic()
    try:
        detail = fn()
    except Exception as exc:  # every failure is reported, then the next check runs
        print(f"FAIL  {name}: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc(file=sys.stdout)
        failures.append(name)
        return
    ms = (time.monotonic() - start) * 1000
    print(f"PASS  {name} ({ms:.0f} ms){': ' + detail if detail else ''}", flush=True)


def refused(call: Callable[[], object], reason: AuthReason) -> str:
    """`call` must raise AuthenticationError with `reason`."""
    try:
        call()
    except AuthenticationError as exc:
        expect(exc.reason == reason, f"reason {exc.reason!r}, expected {reason!r} ({exc})")
        return f"AuthenticationError({exc.reason.value}): {exc.detail}"
    raise AssertionError("the call succeeded without a valid token")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int)
    parser.add_argument("token")
    parser.add_argument("--threshold", type=int, default=1024 * 1024)
    parser.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    big = 2 * args.threshold
    big_request = args.max_request_bytes + 1024 * 1024
    auth = {"Authorization": f"Bearer {args.token}"}
    recorder = UrlRecorder(args.port)
    external = ClientExternalConfig(url_validator=recorder)
    print(f"spillway auth interop: Python vgi-rpc client -> {base}", flush=True)

    authed = httpx2.Client(base_url=base, headers=auth, follow_redirects=True)
    anonymous = httpx2.Client(base_url=base, follow_redirects=True)
    wrong = httpx2.Client(base_url=base, headers={"Authorization": "Bearer not-a-token-of-this-server"})

    def capabilities() -> str:
        caps = http_capabilities(client=authed)
        expect(caps.upload_url_support is True, "upload URL support not advertised")
        expect(caps.externalization_enabled is True, "externalization not enabled")
        expect(http_capabilities(client=anonymous).max_request_bytes == caps.max_request_bytes, "anonymous probe")
        return "with and without a token (OPTIONS /health is exempt)"

    check("capabilities", capabilities)

    with http_connect(SpillwayDemo, client=authed, external_location=external) as client:

        def externalized() -> str:
            recorder.take()
            value = client.blob(size=big)
            expect(len(value) == big, f"expected {big} bytes, got {len(value)}")
            seen = recorder.take()
            expect(any(urlparse(u).path.startswith(STORAGE_ROUTE) for u in seen), f"no storage URL resolved: {seen}")
            return f"resolved {len(value)} B from storage"

        check(f"blob({big}) externalized and resolved with a token", externalized)

        def upload() -> str:
            recorder.take()
            data = bytes(range(256)) * (big_request // 256)
            value = client.echo(data=data)
            expect(value == data, "echo differs")
            seen = recorder.take()
            expect(len(seen) >= 2, f"the upload flow was not used (URLs seen: {seen})")
            return f"{len(data)} B through the upload-URL flow"

        check(f"echo({big_request} B) through the upload-URL flow with a token", upload)

    def vend() -> str:
        urls = request_upload_urls(count=2, client=authed)
        expect(len(urls) == 2, f"got {len(urls)} URL pairs")
        return "2 URL pairs"

    check("request_upload_urls with a token", vend)

    for label, http in [("without a token", anonymous), ("with a wrong token", wrong)]:
        reason = AuthReason.MISSING_CREDENTIAL if http is anonymous else AuthReason.INVALID_CREDENTIAL
        with http_connect(SpillwayDemo, client=http, external_location=external) as client:
            check(f"blob {label} is refused", lambda c=client, r=reason: refused(lambda: c.blob(size=10), r))
            check(
                f"echo above the cap {label} is refused",
                lambda c=client, r=reason: refused(lambda: c.echo(data=b"x" * big_request), r),
            )
        check(
            f"request_upload_urls {label} is refused",
            lambda h=http, r=reason: refused(lambda: request_upload_urls(count=1, client=h), r),
        )

    for h in (authed, anonymous, wrong):
        h.close()
    if failures:
        print(f"{len(failures)} check(s) failed: {failures}", flush=True)
        return 1
    print("all auth checks passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
