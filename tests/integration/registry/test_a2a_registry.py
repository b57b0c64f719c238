"""RegisterA2AAgent against a real registry daemon and a real A2A agent
(tests/a2a_agent.py, built with a2a-sdk): the card is fetched, checked and
mapped; bad URLs and cards are refused with details; the card endpoint is the
agent's heartbeat."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from agentmesh.registry.v1 import registry_pb2 as pb
from agentmesh.runtime.errors import from_rpc_error
from tests.infra import free_port
from tests.integration.registry.conftest import Clients
from tests.integration.registry.helpers import field_violations
from tests.procs import ROOT, DaemonProcess, ProcessGroup
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def a2a_agent(tmp: Path, name: str) -> DaemonProcess:
    """tests/a2a_agent.py as a process."""
    return DaemonProcess(
        [str(ROOT / "tests" / "a2a_agent.py"), "--name", name], tmp / f"a2a-{name}.log"
    )


@pytest.fixture(scope="module")
def a2a_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One A2A agent process for the module."""
    group = ProcessGroup()
    p = group.start(a2a_agent(tmp_path_factory.mktemp("a2a"), "booking"))
    yield p
    group.stop_all()


def card_url(p: DaemonProcess) -> str:
    return f"http://127.0.0.1:{p.port}/.well-known/agent-card.json"


def precondition(err: grpc.aio.AioRpcError) -> list[tuple[str, str, str]]:
    pf = from_rpc_error(err).detail(error_details_pb2.PreconditionFailure)
    assert isinstance(pf, error_details_pb2.PreconditionFailure), err
    return [(v.type, v.subject, v.description) for v in pf.violations]


async def test_register_by_card_maps_skills_version_and_protocol(
    registry: Clients, a2a_proc: DaemonProcess
) -> None:
    url = card_url(a2a_proc)
    resp = await registry.reg.RegisterA2AAgent(
        pb.RegisterA2AAgentRequest(agent_id="agent-a2a-booking", agent_card_url=url, tags=["ext"])
    )
    a = resp.agent
    assert resp.created
    assert a.protocol == pb.AGENT_PROTOCOL_A2A
    assert a.endpoint == url
    assert a.agent_type == "booking"
    assert a.version == "1.4.0" and a.metadata["a2a.card_version"] == "1.4"
    assert a.metadata["a2a.url"] == f"http://127.0.0.1:{a2a_proc.port}/"
    assert a.metadata["a2a.protocol_version"] == "1.0"
    assert list(a.capabilities) == [
        "quote", "book_fail", "reject", "cancel_me", "slow", "undo", "calls", "traceparent"
    ]
    assert list(a.tags) == ["ext"]
    assert a.status == pb.AGENT_STATUS_ACTIVE
    assert json.loads(resp.agent_card_json)["name"] == "booking"
    found = await registry.reg.DiscoverAgents(
        pb.DiscoverAgentsRequest(selector={"capabilities": ["book_fail"]})
    )
    assert [x.agent_id for x in found.agents] == ["agent-a2a-booking"]
    got = (await registry.reg.GetAgent(pb.GetAgentRequest(agent_id="agent-a2a-booking"))).agent
    assert got.protocol == pb.AGENT_PROTOCOL_A2A
    again = await registry.reg.RegisterA2AAgent(
        pb.RegisterA2AAgentRequest(agent_id="agent-a2a-booking", agent_card_url=url)
    )
    assert not again.created


async def test_bad_urls_are_invalid_argument(registry: Clients) -> None:
    for url in ("", "ftp://x/card.json", "not a url", "http:///card.json"):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await registry.reg.RegisterA2AAgent(
                pb.RegisterA2AAgentRequest(agent_id="agent-a2a-bad", agent_card_url=url)
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, url
        assert "agent_card_url" in field_violations(e.value), url
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await registry.reg.RegisterA2AAgent(
            pb.RegisterA2AAgentRequest(
                agent_id="agent-a2a-bad", agent_card_url="http://h/c", metadata={"a2a.url": "x"}
            )
        )
    assert "metadata[a2a.url]" in field_violations(e.value)
    # RegisterAgent cannot claim A2A: protocol is output-only
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await registry.reg.RegisterAgent(
            pb.RegisterAgentRequest(
                agent=pb.Agent(
                    agent_id="agent-a2a-bad", agent_type="t", version="1.0.0",
                    endpoint="http://127.0.0.1:1/card", protocol=pb.AGENT_PROTOCOL_A2A,
                )
            )
        )
    assert "agent.endpoint" in field_violations(e.value)


async def test_unreachable_or_non_card_urls_are_failed_precondition(
    registry: Clients, a2a_proc: DaemonProcess
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/.well-known/agent-card.json"
    not_card = f"http://127.0.0.1:{a2a_proc.port}/no-such-card.json"
    for url in (dead, not_card):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await registry.reg.RegisterA2AAgent(
                pb.RegisterA2AAgentRequest(agent_id="agent-a2a-gone", agent_card_url=url)
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, url
        [(kind, subject, why)] = precondition(e.value)
        assert kind == "A2A_AGENT_CARD" and subject == url and why
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await registry.reg.GetAgent(pb.GetAgentRequest(agent_id="agent-a2a-gone"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # nothing half-written


async def test_card_endpoint_is_the_heartbeat(
    registry: Clients, tmp_path: Path
) -> None:
    group = ProcessGroup()
    p = group.start(a2a_agent(tmp_path, "beating"))
    try:
        aid = "agent-a2a-beating"
        await registry.reg.RegisterA2AAgent(
            pb.RegisterA2AAgentRequest(
                agent_id=aid, agent_card_url=card_url(p),
                heartbeat_interval=duration_pb2.Duration(nanos=200_000_000),
            )
        )

        async def last_beat_ms() -> int:
            a = (await registry.reg.GetAgent(pb.GetAgentRequest(agent_id=aid))).agent
            return int(a.last_heartbeat_time.ToMilliseconds())

        first = await last_beat_ms()
        # the prober fetches the card every 200 ms: heartbeats keep coming
        async def beat_again() -> bool:
            return await last_beat_ms() > first + 300

        await eventually(beat_again, timeout_s=10, what="a card probe heartbeat")
        a = (await registry.reg.GetAgent(pb.GetAgentRequest(agent_id=aid))).agent
        assert a.status == pb.AGENT_STATUS_ACTIVE
        group.stop_all()  # the card stops answering: the agent goes stale, then INACTIVE

        async def inactive() -> bool:
            try:
                a = (await registry.reg.GetAgent(pb.GetAgentRequest(agent_id=aid))).agent
            except grpc.aio.AioRpcError as e:  # expired already
                return e.code() == grpc.StatusCode.NOT_FOUND
            return a.status == pb.AGENT_STATUS_INACTIVE

        await eventually(inactive, timeout_s=15, what="INACTIVE after the card stopped")
    finally:
        group.stop_all()
