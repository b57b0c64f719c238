"""A tiny agent process that registers itself and heartbeats until killed.

Usage: python -m tests.integration.registry.hb_agent TARGET AGENT_ID INTERVAL_MS
Prints "registered" on stdout once registered.
"""

from __future__ import annotations

import sys
import time

import grpc

from agentmesh.common.v1 import common_pb2
from agentmesh.registry.v1 import registry_pb2, registry_pb2_grpc


def main() -> None:
    """Register, then heartbeat every INTERVAL_MS."""
    target, agent_id, interval_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with grpc.insecure_channel(target) as ch:
        stub = registry_pb2_grpc.RegistryServiceStub(ch)
        agent = registry_pb2.Agent(
            agent_id=agent_id, agent_type="HeartbeatAgent", version="1.0.0",
            endpoint="127.0.0.1:7001", capabilities=["beat"],
        )
        agent.heartbeat_interval.FromMilliseconds(interval_ms)
        stub.RegisterAgent(registry_pb2.RegisterAgentRequest(agent=agent), timeout=10)
        print("registered", flush=True)
        while True:
            stub.Heartbeat(
                registry_pb2.HeartbeatRequest(
                    agent_id=agent_id, load=common_pb2.LoadMetrics(cpu_percent=10)
                ),
                timeout=10,
            )
            time.sleep(interval_ms / 1000.0)


if __name__ == "__main__":
    main()
