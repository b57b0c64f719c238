"""Two router replicas agree on affinity and rules; rate limits, safety
rules, size limits and bad CEL are refused with the documented codes."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.router.v1 import router_pb2 as R
from agentmesh.runtime.errors import from_rpc_error
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
CAP = f"rep-{TAG}"


@pytest.fixture(scope="module")
def mesh(procs: Any) -> dict[str, Any]:
    """Three agents and two router replicas, plus a rate-limited third router."""
    for i in range(3):
        procs.agent(f"p{i}-{TAG}", capability=CAP)
    return {
        "r1": procs.router(),
        "r2": procs.router(),
        "limited": procs.router(
            "--rate-limit-per-s",
            "2",
            "--rate-limit-burst",
            "3",
            "--max-message-bytes",
            "2048",
            "--safety-halt-on-critical",
            "true",
        ),
    }


def affinity_req(key: str) -> R.RouteRequest:
    return R.RouteRequest(
        message=R.RouteMessage(message_type=CAP, affinity_key=key), strategy=R.STRATEGY_AFFINITY
    )


async def test_two_replicas_keep_affinity_the_same(mesh, stub_for) -> None:
    s1, s2 = stub_for(mesh["r1"]), stub_for(mesh["r2"])
    keys = [f"session-{i}" for i in range(30)]
    # the replicas race on fresh keys, alternating who binds first
    pairs = await asyncio.gather(
        *(
            asyncio.gather(s1.Route(affinity_req(k)), s2.Route(affinity_req(k)))
            if i % 2
            else asyncio.gather(s2.Route(affinity_req(k)), s1.Route(affinity_req(k)))
            for i, k in enumerate(keys)
        )
    )
    for a, b in pairs:
        assert a.targets[0].agent_id == b.targets[0].agent_id
    bound = {k: a.targets[0].agent_id for k, (a, _) in zip(keys, pairs, strict=True)}
    assert len(set(bound.values())) >= 2
    for k in keys[:10]:
        for stub in (s1, s2):
            assert (await stub.Route(affinity_req(k))).targets[0].agent_id == bound[k]


async def test_rules_created_on_one_replica_apply_on_the_other(mesh, stub_for) -> None:
    s1, s2 = stub_for(mesh["r1"]), stub_for(mesh["r2"])
    name = f"vip-{TAG}"
    target = f"p2-{TAG}"
    msg = R.RouteMessage(message_type=CAP, metadata={"tier": "vip"})
    before = await s2.Route(R.RouteRequest(message=msg))
    assert before.rule_name == ""
    await s1.CreateRouteRule(
        R.CreateRouteRuleRequest(
            rule=R.RouteRule(
                name=name,
                priority=1,
                condition='message.metadata.tier == "vip"',
                target_ids=[target],
                strategy=R.STRATEGY_FAILOVER,
            )
        )
    )
    # r2 sees the rule after its next generation poll (gen_poll_ms): wait for
    # that instead of a fixed sleep, which a loaded machine can overrun.
    async def rule_applied() -> R.RouteResponse | None:
        r = await s2.Route(R.RouteRequest(message=msg))
        return r if r.rule_name else None

    after = await eventually(rule_applied, timeout_s=15, every_s=0.05, what="rule seen by r2")
    assert after.rule_name == name and after.targets[0].agent_id == target
    got = await s2.GetRouteRule(R.GetRouteRuleRequest(name=name))
    assert got.rule.condition == 'message.metadata.tier == "vip"'
    listed = await s2.ListRouteRules(R.ListRouteRulesRequest())
    assert name in [r.name for r in listed.rules]
    await s2.DeleteRouteRule(R.DeleteRouteRuleRequest(name=name))

    async def rule_gone() -> bool:
        return (await s1.Route(R.RouteRequest(message=msg))).rule_name == ""

    await eventually(rule_gone, timeout_s=15, every_s=0.05, what="deletion seen by r1")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await s1.GetRouteRule(R.GetRouteRuleRequest(name=name))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_rate_limit_per_caller_with_retry_info(mesh, stub_for) -> None:
    stub = stub_for(mesh["limited"])
    caller = f"caller-{TAG}"
    req = R.RouteRequest(message=R.RouteMessage(message_type=CAP, sender_id=caller))
    for _ in range(3):  # the burst
        await stub.Route(req)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Route(req)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = from_rpc_error(e.value).detail(error_details_pb2.RetryInfo)
    assert isinstance(retry, error_details_pb2.RetryInfo)
    delay_s = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    assert 0 < delay_s <= 0.5  # 2 tokens/s: the next token is at most 0.5 s away
    # another caller has its own bucket
    other = R.RouteRequest(message=R.RouteMessage(message_type=CAP, sender_id=f"o-{TAG}"))
    await stub.Route(other)
    # after waiting as told, the caller gets through again
    await asyncio.sleep(delay_s + 0.05)
    await stub.Route(req)


async def test_safety_rules_block_critical_and_count_warnings(mesh, stub_for) -> None:
    stub = stub_for(mesh["r1"])
    crit, crit2, warn = f"max-temp-{TAG}", f"sender-allow-{TAG}", f"ratio-{TAG}"
    rules = [
        R.SafetyRule(
            name=crit,
            description="temperature above 600",
            level=R.SAFETY_LEVEL_CRITICAL,
            condition="!has(payload.temperature) || payload.temperature <= 600.0",
            message_types=[f"thermal-{TAG}"],
        ),
        R.SafetyRule(
            name=crit2,
            description="sender not allowed",
            level=R.SAFETY_LEVEL_CRITICAL,
            condition='message.sender_id in ["ops", "scada"]',
            message_types=[f"thermal-{TAG}"],
        ),
        R.SafetyRule(
            name=warn,
            description="ratio out of range",
            level=R.SAFETY_LEVEL_WARNING,
            condition="payload.ratio >= 0.0 && payload.ratio <= 1.0",
            message_types=[f"thermal-{TAG}"],
        ),
    ]
    for r in rules:
        await stub.CreateSafetyRule(R.CreateSafetyRuleRequest(rule=r))
    try:

        def msg(temp: float, sender: str, ratio: float) -> R.RouteMessage:
            m = R.RouteMessage(
                message_type=f"thermal-{TAG}", sender_id=sender, target_ids=[f"p0-{TAG}"]
            )
            m.payload.struct_value.update({"temperature": temp, "ratio": ratio})
            return m

        ok = await stub.Route(R.RouteRequest(message=msg(550, "ops", 0.5)))
        assert ok.targets and not ok.safety_violations
        warned = await stub.Route(R.RouteRequest(message=msg(550, "ops", 1.5)))
        assert [v.rule_name for v in warned.safety_violations] == [warn]
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Route(R.RouteRequest(message=msg(650, "intruder", 0.5)))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        pf = from_rpc_error(e.value).detail(error_details_pb2.PreconditionFailure)
        assert isinstance(pf, error_details_pb2.PreconditionFailure)
        assert sorted(v.subject for v in pf.violations) == sorted([crit, crit2])
        # Invoke is guarded too
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Invoke(
                R.InvokeRequest(message=msg(650, "ops", 0.5), action="heat"), timeout=5
            )
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        listed = await stub.ListSafetyRules(R.ListSafetyRulesRequest(page_size=2))
        assert len(listed.rules) == 2 and listed.next_page_token
        rest = await stub.ListSafetyRules(
            R.ListSafetyRulesRequest(page_size=2, page_token=listed.next_page_token)
        )
        assert {r.name for r in [*listed.rules, *rest.rules]} >= {crit, crit2, warn}
    finally:
        for r in rules:
            await stub.DeleteSafetyRule(R.DeleteSafetyRuleRequest(name=r.name))


async def test_bad_input_is_refused(mesh, stub_for) -> None:
    stub = stub_for(mesh["limited"])
    # CEL that does not parse, or refers to unknown names: the parser's message comes back
    for cond, words in (
        ("payload.amount >", "parse error"),
        ("amount > 3", "undeclared reference to 'amount'"),
        ("1 + 2", "must evaluate to a bool"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.CreateRouteRule(
                R.CreateRouteRuleRequest(
                    rule=R.RouteRule(name=f"bad-{TAG}", condition=cond, target_ids=["x"])
                )
            )
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert words in (e.value.details() or "")
        bad = from_rpc_error(e.value).detail(error_details_pb2.BadRequest)
        assert isinstance(bad, error_details_pb2.BadRequest)
        assert bad.field_violations[0].field == "rule.condition"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.CreateRouteRule(
            R.CreateRouteRuleRequest(
                rule=R.RouteRule(name=f"s-{TAG}", condition="true", target_ids=["x"], strategy=99)  # type: ignore[arg-type]
            )
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # over the 2 KiB message limit
    big = R.RouteMessage(message_type=CAP, sender_id=f"big-{TAG}")
    big.payload.bytes_value = b"x" * 4096
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Route(R.RouteRequest(message=big))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # unknown strategy on Route
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.Route(
            R.RouteRequest(
                message=R.RouteMessage(message_type=CAP, sender_id=f"s2-{TAG}"),
                strategy=10,  # type: ignore[arg-type]
            )
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
