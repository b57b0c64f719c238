"""ScatterGather aggregation over real agent processes: FIRST, ALL,
MAJORITY_VOTE with and without ties, AVERAGE, MERGE, partial results and
min_responses."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from agentmesh.common.v1 import common_pb2
from agentmesh.router.v1 import router_pb2 as R
from agentmesh.runtime.errors import from_rpc_error

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
VOTERS = {
    f"v1-{TAG}": ("yes", 1.0, '{"a": {"x": 1}}'),
    f"v2-{TAG}": ("yes", 2.0, '{"a": {"y": 2}}'),
    f"v3-{TAG}": ("no", 6.0, '{"b": 3}'),
    f"v4-{TAG}": ("no", 7.0, '{"b": 4}'),
}
SLOW = f"v5-{TAG}"


@pytest.fixture(scope="module")
def sg(procs: Any) -> dict[str, Any]:
    """Four voters (yes, yes, no, no), a slow agent (2 s) and a router."""
    for aid, (vote, number, merge) in VOTERS.items():
        procs.agent(
            aid,
            "--vote",
            vote,
            "--number",
            str(number),
            "--merge",
            merge,
            capability=f"vote-{TAG}",
        )
    procs.agent(
        SLOW, "--vote", "yes", "--number", "100", "--delay-ms", "2000", capability=f"slow-{TAG}"
    )
    return {"router": procs.router()}


def request(targets: list[str], agg: int, **kw: Any) -> R.ScatterGatherRequest:
    msg = R.RouteMessage(message_type="poll")
    msg.payload.struct_value.update({"question": "ship it?"})
    return R.ScatterGatherRequest(
        message=msg,
        action="vote",
        target_ids=targets,
        aggregation=agg,
        **kw,  # type: ignore[arg-type]
    )


async def test_majority_vote_reports_a_tie_and_breaks_it_deterministically(sg, stub_for) -> None:
    stub = stub_for(sg["router"])
    resp = await stub.ScatterGather(
        request(list(VOTERS), R.AGGREGATION_MAJORITY_VOTE, field_path="vote"), timeout=10
    )
    assert resp.succeeded == 4 and not resp.partial
    assert resp.vote.tie and not resp.vote.majority
    assert list(resp.vote.tied_values) == ['"no"', '"yes"']
    assert resp.result["value"] == "no" and resp.result["votes"] == 2
    # without the last "no" voter there is a clear majority
    three = sorted(VOTERS)[:3]
    resp = await stub.ScatterGather(
        request(three, R.AGGREGATION_MAJORITY_VOTE, field_path="vote"), timeout=10
    )
    assert not resp.vote.tie and resp.vote.majority
    assert resp.result["value"] == "yes" and resp.vote.winner_votes == 2


async def test_average_merge_all_and_first(sg, stub_for) -> None:
    stub = stub_for(sg["router"])
    avg = await stub.ScatterGather(
        request(list(VOTERS), R.AGGREGATION_AVERAGE, field_path="number"), timeout=10
    )
    assert avg.result["average"] == pytest.approx(4.0) and avg.result["count"] == 4
    merged = await stub.ScatterGather(request(list(VOTERS), R.AGGREGATION_MERGE), timeout=10)
    assert merged.result["a"]["x"] == 1 and merged.result["a"]["y"] == 2
    assert merged.result["b"] == 4  # later agent (by id) wins the conflict
    assert "b" in merged.merge_conflicts
    everyone = await stub.ScatterGather(request(list(VOTERS), R.AGGREGATION_ALL), timeout=10)
    got = [r["agent_id"] for r in everyone.result["results"]]
    assert got == sorted(VOTERS)
    assert all(r.code == 0 for r in everyone.responses)
    first = await stub.ScatterGather(request([*VOTERS, SLOW], R.AGGREGATION_FIRST), timeout=10)
    assert first.result["agent_id"] in VOTERS and first.succeeded >= 1
    # FIRST does not wait for the slow agent; the cancelled call is not a failure
    slow = next(r for r in first.responses if r.agent_id == SLOW)
    assert slow.code == grpc.StatusCode.CANCELLED.value[0]


async def test_partial_results_are_marked(sg, stub_for) -> None:
    stub = stub_for(sg["router"])
    resp = await stub.ScatterGather(
        request(
            [*VOTERS, SLOW],
            R.AGGREGATION_AVERAGE,
            field_path="number",
            min_responses=3,
            timeout=duration_pb2.Duration(nanos=700_000_000),
        ),
        timeout=10,
    )
    assert resp.partial and resp.succeeded == 4 and resp.failed == 1
    late = next(r for r in resp.responses if r.agent_id == SLOW)
    assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert resp.result["average"] == pytest.approx(4.0)  # the slow 100 is not in it
    # min_responses not met: UNAVAILABLE with the counts
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ScatterGather(
            request(
                [SLOW],
                R.AGGREGATION_ALL,
                min_responses=1,
                timeout=duration_pb2.Duration(nanos=300_000_000),
            ),
            timeout=10,
        )
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    info = from_rpc_error(e.value).detail(error_details_pb2.ErrorInfo)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "INSUFFICIENT_RESPONSES" and info.metadata["succeeded"] == "0"


async def test_selector_targets_and_bad_input(sg, stub_for) -> None:
    stub = stub_for(sg["router"])
    msg = R.RouteMessage(message_type="poll")
    resp = await stub.ScatterGather(
        R.ScatterGatherRequest(
            message=msg,
            action="vote",
            selector=common_pb2.AgentSelector(capabilities=[f"vote-{TAG}"]),
            aggregation=R.AGGREGATION_MAJORITY_VOTE,
            field_path="vote",
        ),
        timeout=10,
    )
    assert resp.succeeded == 4
    for bad in (
        request(list(VOTERS), R.AGGREGATION_AVERAGE),  # no field_path
        request(list(VOTERS), 42),  # unknown aggregation
        request(list(VOTERS), R.AGGREGATION_ALL, min_responses=9),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ScatterGather(bad, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
