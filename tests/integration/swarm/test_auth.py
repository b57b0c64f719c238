"""With bearer auth on, a swarm records its owner and only the owner or an
admin may stop it."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from agentmesh.swarm.v1 import swarm_pb2 as pb
from agentmesh.swarm.v1 import swarm_pb2_grpc
from tests.integration.swarm.conftest import FAST_FLAGS
from tests.procs import daemon

pytestmark = pytest.mark.integration


async def test_only_owner_or_admin_stops(swarm_redis_url: str, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({
        "tok-alice": {"identity": "alice", "roles": []},
        "tok-bob": {"identity": "bob", "roles": []},
        "tok-ops": {"identity": "ops", "roles": ["admin"]},
    }))
    proc = daemon(
        "swarm", tmp_path, "--redis-url", swarm_redis_url, "--auth-tokens-file", str(tokens),
        *FAST_FLAGS,
    ).start()
    try:
        async with grpc.aio.insecure_channel(proc.target) as ch:
            stub = swarm_pb2_grpc.SwarmServiceStub(ch)

            def md(tok: str) -> tuple[tuple[str, str]]:
                return (("authorization", f"Bearer {tok}"),)

            task = pb.SwarmTask(
                max_iterations=10_000_000,
                builtin=pb.BuiltinFitness(
                    function=pb.BENCHMARK_FUNCTION_ACKLEY, space=pb.SearchSpace(dimensions=20)
                ),
            )
            ids = []
            for _ in range(2):
                req = pb.DeploySwarmRequest(task=task)
                r = await stub.DeploySwarm(req, metadata=md("tok-alice"))
                assert r.swarm.owner == "alice"
                ids.append(r.swarm.swarm_id)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.StopSwarm(pb.StopSwarmRequest(swarm_id=ids[0]), metadata=md("tok-bob"))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.GetSwarm(pb.GetSwarmRequest(swarm_id=ids[0]))
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for sid, tok in zip(ids, ("tok-alice", "tok-ops"), strict=True):
                stop = pb.StopSwarmRequest(swarm_id=sid)
                s = (await stub.StopSwarm(stop, metadata=md(tok))).swarm
                assert s.state == pb.SWARM_STATE_STOPPED
    finally:
        proc.stop()
