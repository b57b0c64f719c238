"""Talking to worker agents found in the registry's catalog.

Drivers find agents with agentmesh.catalog.find_agents, which reads the
registry's Redis key schema (services/registry/README.md) directly: the
capability, service-type and tag index SETs and the ``am:reg:agent:{id}``
hashes. Reading Redis directly, rather than calling
RegistryService.DiscoverAgents, keeps the swarm engine working while the
registry daemon restarts; the indexes are the registry's published contract
for exactly this.
"""

from __future__ import annotations

import logging

import grpc

from agentmesh.agent.v1 import agent_pb2_grpc
from agentmesh.runtime.channels import create_channel

log = logging.getLogger("agentmesh.swarm.agents")


class AgentPool:
    """AgentService stubs by endpoint, with one channel per endpoint.

    Args:
        token: bearer token for calls to agents.
        tls_ca_file: CA for TLS to agents; empty for plaintext.
        client_cert_file / client_key_file: PEM identity presented to agents
            that require mTLS; empty for none.
    """

    def __init__(
        self,
        *,
        token: str = "",
        tls_ca_file: str = "",
        client_cert_file: str = "",
        client_key_file: str = "",
    ) -> None:
        self._token = token
        self._ca = tls_ca_file
        self._cert = client_cert_file
        self._key = client_key_file
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, agent_pb2_grpc.AgentServiceStub] = {}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata for every call: the bearer token, if any."""
        return (("authorization", f"Bearer {self._token}"),) if self._token else ()

    def stub(self, endpoint: str) -> agent_pb2_grpc.AgentServiceStub:
        """The stub for `endpoint`, creating its channel on first use.

        The channels do not use the runtime's propagating interceptor: drivers
        run in the background, outside any incoming RPC, so there is no
        deadline or request id to pass on, and the interceptor roughly doubles
        the client cost of a call. Pass `metadata` on each call instead; the
        deadline is the task's own (`partition_timeout`, `call_timeout`).
        """
        stub = self._stubs.get(endpoint)
        if stub is None:
            ch = create_channel(
                endpoint,
                token=self._token,
                tls_ca_file=self._ca,
                client_cert_file=self._cert,
                client_key_file=self._key,
                propagate=False,
            )
            self._channels[endpoint] = ch
            stub = self._stubs[endpoint] = agent_pb2_grpc.AgentServiceStub(ch)
        return stub

    async def drop(self, endpoint: str) -> None:
        """Close the channel to an endpoint that went away."""
        ch = self._channels.pop(endpoint, None)
        self._stubs.pop(endpoint, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        """Close every channel."""
        for ch in list(self._channels.values()):
            await ch.close()
        self._channels.clear()
        self._stubs.clear()
