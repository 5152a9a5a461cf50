"""Dump the Arrow schemas of vgi-rpc's conformance protocols, as the Python reference derives them.

The Spillway conformance worker (conformance/) must declare exactly the schemas the Python client
sends and expects, for ``ConformanceService`` and the secondary protocol every conformance worker
hosts (``conformance.Secondary.v1``). Rather than re-deriving them by hand from type hints, this script asks vgi-rpc
itself:

- params and result schemas: ``vgi_rpc.rpc.rpc_methods`` (what the Python server and client use);
- stream output/input schemas: the reference implementation's ``Stream`` objects, built by calling
  ``ConformanceServiceImpl`` with sample arguments (they are decided at call time, not declared);
- stream header and nested dataclass schemas: ``ArrowSerializableDataclass.ARROW_SCHEMA``.

Each schema is written as the hex of an empty Arrow IPC stream (schema message + EOS, written with
vgi-rpc's own IPC options) plus its pyarrow text form for review. Regenerate after a vgi-rpc
upgrade:

    $(scripts/vgi-reference.sh python) tests/conformance/dump_schemas.py \
        > conformance/schemas/conformance_service.json
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys
from typing import Any

import pyarrow as pa

from vgi_rpc.conformance import ConformanceService, ConformanceServiceImpl, _types
from vgi_rpc.conformance.secondary import Secondary, SecondaryImpl
from vgi_rpc.rpc import MethodType, StreamState, rpc_methods
from vgi_rpc.utils import ArrowSerializableDataclass, new_ipc_stream

# Sample arguments for building the reference's Stream objects (only their schemas are read).
SAMPLE_ARGS: dict[type, Any] = {int: 1, float: 1.0, bool: False, str: "x"}


def encode_schema(schema: pa.Schema) -> dict[str, str]:
    sink = pa.BufferOutputStream()
    with new_ipc_stream(sink, schema):
        pass
    return {"text": schema.to_string(show_schema_metadata=False), "ipc_hex": sink.getvalue().to_pybytes().hex()}


def sample_kwargs(info: Any, **overrides: Any) -> dict[str, Any]:
    kwargs = {}
    for name, hint in info.param_types.items():
        kwargs[name] = overrides.get(name, SAMPLE_ARGS.get(hint, 1))
    return kwargs


def stream_variants(impl: Any, name: str, info: Any) -> list[dict[str, Any]]:
    """The output/input schemas of a stream method, one entry per distinct schema."""
    method = getattr(impl, name)
    if name == "produce_dynamic_schema":
        calls = [
            {"include_strings": s, "include_floats": f} for s in (False, True) for f in (False, True)
        ]
    else:
        calls = [{}]
    out = []
    for overrides in calls:
        try:
            stream = method(**sample_kwargs(info, **overrides))
        except Exception as e:  # noqa: BLE001 -- the *_error_on_init methods raise by design
            out.append({"args": overrides, "raises": f"{type(e).__name__}: {e}"})
            continue
        out.append(
            {
                "args": overrides,
                "output": encode_schema(stream.output_schema),
                "input": encode_schema(stream.input_schema),
            }
        )
    return out


def describe_method(impl: Any, name: str, info: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"params": encode_schema(info.params_schema)}
    defaults = {k: v for k, v in info.param_defaults.items()}
    if defaults:
        entry["defaults"] = defaults
    if info.method_type == MethodType.UNARY:
        entry["kind"] = "unary"
        entry["result"] = encode_schema(info.result_schema)
        return entry
    entry["kind"] = {True: "exchange", False: "producer", None: "stream"}[info.is_exchange]
    if info.header_type is not None:
        entry["header"] = {"dataclass": info.header_type.__name__, **encode_schema(info.header_type.ARROW_SCHEMA)}
    entry["variants"] = stream_variants(impl, name, info)
    return entry


def dataclass_schemas() -> dict[str, Any]:
    out = {}
    for name in sorted(dir(_types)):
        obj = getattr(_types, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, ArrowSerializableDataclass)
            and obj is not ArrowSerializableDataclass
            and not issubclass(obj, StreamState)
            and dataclasses.is_dataclass(obj)
        ):
            out[name] = encode_schema(obj.ARROW_SCHEMA)
    return out


def describe_protocol(protocol: type, impl: Any) -> dict[str, Any]:
    methods = rpc_methods(protocol)
    version = vars(protocol).get("protocol_version")
    return {
        "protocol_version": version if isinstance(version, str) else None,
        "methods": {name: describe_method(impl, name, methods[name]) for name in sorted(methods)},
    }


def main() -> None:
    doc = {
        "generated_by": "tests/conformance/dump_schemas.py",
        "vgi_rpc_version": importlib.metadata.version("vgi-rpc"),
        "protocols": {
            "ConformanceService": describe_protocol(ConformanceService, ConformanceServiceImpl()),
            vars(Secondary)["protocol_name"]: describe_protocol(Secondary, SecondaryImpl()),
        },
        "dataclasses": dataclass_schemas(),
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
