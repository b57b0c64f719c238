"""Small builders shared by the registry tests."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

from agentmesh.registry.v1 import registry_pb2


def agent(agent_id: str, **kw: Any) -> registry_pb2.Agent:
    """A valid Agent descriptor with overridable fields."""
    fields: dict[str, Any] = {
        "agent_id": agent_id,
        "agent_type": "TestAgent",
        "version": "1.0.0",
        "endpoint": "127.0.0.1:7000",
        "capabilities": ["calc"],
    }
    fields.update(kw)
    return registry_pb2.Agent(**fields)


def field_violations(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """field → description from the BadRequest detail of a rich error."""
    out: dict[str, str] = {}
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for d in status.details:
                br = error_details_pb2.BadRequest()
                if d.Unpack(br):
                    out.update({v.field: v.description for v in br.field_violations})
    return out
