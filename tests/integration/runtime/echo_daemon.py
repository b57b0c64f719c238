"""A daemon built on the shared runtime whose AgentService.Execute sleeps for
`input.sleep_s` and reports the deadline budget it saw; the runtime's tests
drive it as a real process (SIGTERM drain, TLS, auth).

Run: python tests/integration/runtime/echo_daemon.py --port 0 --metrics-port 0
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from google.protobuf import struct_pb2

from agentmesh.agent.v1 import agent_pb2, agent_pb2_grpc
from agentmesh.runtime.context import current_principal, remaining_s
from agentmesh.runtime.errors import InvalidArgument
from agentmesh.runtime.server import Daemon, run_daemon
from agentmesh.runtime.settings import Settings, setting


@dataclass(frozen=True)
class EchoSettings(Settings):
    """The echo daemon's own setting."""

    with_redis: bool = setting(False, help="probe Redis")


class EchoAgent(agent_pb2_grpc.AgentServiceServicer):
    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: Any
    ) -> agent_pb2.ExecuteResponse:
        if request.action != "echo":
            raise InvalidArgument("unknown action", field_violations={"action": "only 'echo'"})
        sleep_s = (
            request.input.fields["sleep_s"].number_value
            if "sleep_s" in request.input.fields
            else 0.0
        )
        await asyncio.sleep(sleep_s)
        out = struct_pb2.Struct()
        principal = current_principal()
        left = remaining_s()
        out.update(
            {
                "remaining_s": -1.0 if left is None else left,
                "identity": principal.identity if principal else "",
            }
        )
        return agent_pb2.ExecuteResponse(output=out, agent_id="echo")


def build(daemon: Daemon) -> None:
    daemon.add_service(
        agent_pb2_grpc.add_AgentServiceServicer_to_server,
        EchoAgent(),
        agent_pb2.DESCRIPTOR.services_by_name["AgentService"],
    )
    if daemon.config.settings_as(EchoSettings).with_redis:
        daemon.redis()


if __name__ == "__main__":
    # Port defaults of the "registry" slot are overridden by --port in tests.
    run_daemon("registry", build, settings=EchoSettings)
