"""Writes `services_gen.py`: one typed wrapper method per RPC of every landed service.

Per service, a sub-client class (`RegistryServiceClient`, ...) holds the typed
raw stub (`client.registry.stub`, the mypy-protobuf `...AsyncStub`) and one
method per RPC (`client.registry.get_agent(...)`). `ServiceMethods` gives each
sub-client a property (`client.registry`, `client.bus`, ...) and, for the
flat style `client.get_agent(...)`, a delegate per RPC, except the names in
`HELPERS`, which hand-written helpers of `agentmesh.client.Client` take.

Run `python -m agentmesh.client._codegen` after a proto change; the unit test
`tests/unit/sdk/test_client_codegen.py` fails while `services_gen.py` is stale.
The wrappers are read from the generated descriptors, so they always match the
contracts; behaviour (deadlines, retries, errors) lives in `agentmesh.client.base`,
and which calls are retried comes from each RPC's `idempotency_level` through
`agentmesh.runtime.retry`.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from google.protobuf.descriptor import MethodDescriptor

from agentmesh.runtime.retry import IdempotencyLevel, idempotency_of, key_field_of

#: (area, proto module, client attribute of the raw stub) per service, in output order.
SERVICES: list[tuple[str, str, str, str]] = [
    # (area, module, service name, stub attribute on Client)
    ("registry", "registry", "RegistryService", "registry"),
    ("registry", "coordination", "CoordinationService", "coordination"),
    ("router", "router", "RouterService", "router"),
    ("router", "safety", "SafetyService", "safety"),
    ("bus", "bus", "BusService", "bus"),
    ("saga", "saga", "SagaService", "saga"),
    ("task", "task", "TaskService", "task"),
    ("swarm", "swarm", "SwarmService", "swarm"),
]

#: Wrapper names that would collide or read badly: (service, rpc) → name.
RENAMES = {
    ("BusService", "Request"): "bus_request",
    ("BusService", "ScatterGather"): "bus_scatter_gather",
    # `wait_task` is the helper that returns the result (agentmesh.client.client)
    ("TaskService", "WaitTask"): "watch_task",
}

#: Flat names a hand-written Client helper takes (its raw RPC stays on the sub-client):
#: `Client.subscribe` (the resuming iterator), `Client.deploy_swarm` (deploy and
#: wait) and `Client.run_saga` (start and wait; the raw stream is `client.saga.run_saga`).
HELPERS = {"subscribe", "deploy_swarm", "run_saga"}

OUT = Path(__file__).with_name("services_gen.py")


def snake(name: str) -> str:
    """CamelCase → snake_case; an acronym stays one word ("RegisterA2AAgent"
    → "register_a2a_agent", "GetHTTPRoute" → "get_http_route")."""
    name = re.sub(r"([A-Z0-9]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _py_type(module_alias: str, full_name: str, own_package: str) -> str:
    pkg, _, msg = full_name.rpartition(".")
    if pkg != own_package:
        raise ValueError(f"{full_name} is not in {own_package}")
    return f"{module_alias}.{msg}"


def _method(area: str, mod: str, svc: str, stub_attr: str, m: MethodDescriptor, pkg: str) -> str:
    alias = f"{area}_{mod}_pb2" if mod != area else f"{area}_pb2"
    name = RENAMES.get((svc, m.name), snake(m.name))
    req_t = _py_type(alias, m.input_type.full_name, pkg)
    resp_t = _py_type(alias, m.output_type.full_name, pkg)
    where = f"`{pkg}.{svc}.{m.name}`"
    if m.client_streaming:
        return f'''
    def {name}(
        self,
        requests: Requests[{req_t}],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[{resp_t}]:
        """{where}.

        A bidirectional stream; errors raise AgentMeshError.
        """
        return self._base._stream(
            self.stub.{m.name}, requests, timeout_s=timeout_s, metadata=metadata
        )
'''
    if m.server_streaming:
        return f'''
    def {name}(
        self,
        request: {req_t} | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> AsyncIterator[{resp_t}]:
        """{where}.

        A server stream (no default deadline); errors raise AgentMeshError.
        """
        return self._base._server_stream(
            self.stub.{m.name},
            _build({req_t}, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
        )
'''
    rpc = f"/{m.containing_service.full_name}/{m.name}"
    level = idempotency_of(rpc)
    key_field = key_field_of(rpc)
    # Retries follow agentmesh.runtime.retry.is_retryable for the level.
    if level != IdempotencyLevel.IDEMPOTENCY_UNKNOWN:
        note = f"{level.name}: retried on the codes `is_retryable` allows for it"
    elif key_field:
        note = (
            f"IDEMPOTENT when `{key_field}` is set (retried like one); otherwise\n"
            "        retried only when the call provably took no effect"
        )
    else:
        note = "IDEMPOTENCY_UNKNOWN: retried only when the call provably took no effect"
    return f'''
    async def {name}(
        self,
        request: {req_t} | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> {resp_t}:
        """{where}.

        {note}.
        """
        return await self._base._unary(
            self.stub.{m.name},
            _build({req_t}, request, fields),
            timeout_s=timeout_s,
            metadata=metadata,
            rpc="{rpc}",
        )
'''


def _flat(area: str, mod: str, svc: str, stub_attr: str, m: MethodDescriptor, pkg: str) -> str:
    """The flat `Client.<name>` delegate of one RPC to its sub-client method."""
    alias = f"{area}_{mod}_pb2" if mod != area else f"{area}_pb2"
    name = RENAMES.get((svc, m.name), snake(m.name))
    req_t = _py_type(alias, m.input_type.full_name, pkg)
    resp_t = _py_type(alias, m.output_type.full_name, pkg)
    doc = f'"""`{pkg}.{svc}.{m.name}`.\n\n        Same as `client.{stub_attr}.{name}`.\n        """'
    if m.client_streaming:
        return f'''
    def {name}(
        self,
        requests: Requests[{req_t}],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> AsyncIterator[{resp_t}]:
        {doc}
        return self.{stub_attr}.{name}(requests, timeout_s=timeout_s, metadata=metadata)
'''
    head = f'''
    {"" if m.server_streaming else "async "}def {name}(
        self,
        request: {req_t} | None = None,
        /,
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        **fields: Any,
    ) -> {"AsyncIterator[" + resp_t + "]" if m.server_streaming else resp_t}:
        {doc}
'''
    call = (f"self.{stub_attr}.{name}(\n            request, timeout_s=timeout_s, "
            "metadata=metadata, **fields\n        )")
    return head + f"        return {'' if m.server_streaming else 'await '}{call}\n"


def _class_name(svc: str) -> str:
    return f"{svc}Client"


def render() -> str:
    """The source of services_gen.py."""
    imports: list[str] = []
    grpc_imports: list[str] = []
    classes: list[str] = []
    props: list[str] = []
    flat: list[str] = []
    seen: dict[str, str] = {}
    for area, mod, svc, stub_attr in SERVICES:
        try:
            pb = importlib.import_module(f"agentmesh.{area}.v1.{mod}_pb2")
        except ImportError:
            continue
        if svc not in pb.DESCRIPTOR.services_by_name:
            continue
        alias = f"{area}_{mod}_pb2" if mod != area else f"{area}_pb2"
        imports.append(
            f"from agentmesh.{area}.v1 import {mod}_pb2"
            + (f" as {alias}" if alias != f"{mod}_pb2" else "")
        )
        grpc_imports.append(
            f"    from agentmesh.{area}.v1 import {mod}_pb2_grpc as {alias}_grpc"
        )
        sd = pb.DESCRIPTOR.services_by_name[svc]
        cls = _class_name(svc)
        methods: list[str] = []
        flat.append(f"\n    # ---- {sd.full_name} " + "-" * max(0, 60 - len(sd.full_name)) + "\n")
        for m in sd.methods:
            name = RENAMES.get((svc, m.name), snake(m.name))
            if name in seen:
                raise SystemExit(f"{svc}.{m.name} and {seen[name]} both map to {name}")
            seen[name] = f"{svc}.{m.name}"
            methods.append(_method(area, mod, svc, stub_attr, m, pb.DESCRIPTOR.package))
            if name not in HELPERS:
                flat.append(_flat(area, mod, svc, stub_attr, m, pb.DESCRIPTOR.package))
        classes.append(
            f"\n\nclass {cls}:\n"
            f'    """Typed calls of `{sd.full_name}`: `client.{stub_attr}`."""\n\n'
            "    def __init__(self, base: ClientBase) -> None:\n"
            "        self._base = base\n\n"
            "    @property\n"
            f"    def stub(self) -> {alias}_grpc.{svc}AsyncStub:\n"
            f'        """The raw `{svc}Stub` on the shared channel."""\n'
            f"        stub: {alias}_grpc.{svc}AsyncStub\n"
            f'        stub = self._base._stub("{stub_attr}")\n'
            "        return stub\n"
            + "".join(methods)
        )
        props.append(
            "\n    @property\n"
            f"    def {stub_attr}(self) -> {cls}:\n"
            f'        """`{sd.full_name}`: typed calls, and the raw stub as `.stub`."""\n'
            f'        return self._service("{stub_attr}", {cls})\n'
        )
    return (
        "# Code generated by python -m agentmesh.client._codegen. DO NOT EDIT.\n"
        '"""Typed wrappers, one per RPC, on per-service sub-clients and flat on\n'
        "`ServiceMethods`. Written by `python -m agentmesh.client._codegen` from the\n"
        'generated descriptors; do not edit by hand."""\n\n'
        "from __future__ import annotations\n\n"
        "from collections.abc import AsyncIterator, Sequence\n"
        "from typing import TYPE_CHECKING, Any\n\n"
        + "\n".join(
            sorted([*imports, "from agentmesh.client.base import ClientBase, Requests, _build"])
        )
        + "\n\nif TYPE_CHECKING:\n"
        + "\n".join(sorted(grpc_imports))
        + "\n"
        + "".join(classes)
        + "\n\nclass ServiceMethods(ClientBase):\n"
        '    """A sub-client per service and one flat method per RPC; see\n'
        '    `agentmesh.client.base.ClientBase` for behaviour."""\n'
        + "".join(props)
        + "".join(flat)
    )


def main() -> None:
    """Write services_gen.py, or with `--check` exit 1 when it is stale."""
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == text else 1)
    OUT.write_text(text)


if __name__ == "__main__":
    main()
