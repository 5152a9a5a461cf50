"""A real OTLP/HTTP receiver for the OpenTelemetry tests: oteltest's `otelsink` (its HttpSink)
on an ephemeral port, writing every span it receives as one JSON line to a file.

    python otel_sink.py SPANS.jsonl

Prints `port=N` on stdout once listening, then serves until killed. Each line holds the
span's service name, ids (lowercase hex; parent "" for a root), name, kind, status code and
attributes (values as JSON scalars, arrays as lists).
"""

import json
import logging
import sys
import threading
import time

from oteltest.sink import HttpSink
from oteltest.sink.handler import RequestHandler

STARTUP_SECONDS = 30


def _value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind) if kind else None


class JsonLines(RequestHandler):
    def __init__(self, path):
        self.out = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def handle_logs(self, request, headers):
        pass

    def handle_metrics(self, request, headers):
        pass

    def handle_trace(self, request, headers):
        lines = []
        for rs in request.resource_spans:
            res = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    lines.append(
                        json.dumps(
                            {
                                "service": res.get("service.name"),
                                "scope": ss.scope.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": span.kind,
                                "status": span.status.code,
                                "attributes": {kv.key: _value(kv.value) for kv in span.attributes},
                                "events": [e.name for e in span.events],
                            }
                        )
                    )
        with self.lock:
            for line in lines:
                self.out.write(line + "\n")
            self.out.flush()


def main():
    logging.basicConfig(level=logging.WARNING)
    sink = HttpSink(JsonLines(sys.argv[1]), logging.getLogger("otelsink"), port=0, daemon=True)
    sink.start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while sink.httpd is None:
        if time.monotonic() > deadline:
            sys.exit("otelsink did not start")
        time.sleep(0.05)
    print(f"port={sink.httpd.server_port}", flush=True)
    sink.svr_thread.join()


if __name__ == "__main__":
    main()
