"""SafetyService on real router processes and real Redis: constraints allow and
block (dry run and real calls), halt_on_critical both ways, named breakers
shared by two clients on two replicas, a rate limiter shared by two replicas,
ScatterGather's CUSTOM CEL reduce, and bad input."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import error_details_pb2

from agentmesh.client import CircuitOpen, Client
from agentmesh.router.v1 import router_pb2 as R
from agentmesh.router.v1 import safety_pb2 as S
from agentmesh.router.v1 import safety_pb2_grpc
from agentmesh.runtime.errors import ErrorReason, NotFound, ResourceExhausted, from_rpc_error
from tests.procs import scrape_metrics
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
CAP = f"safe-{TAG}"
AGENT = f"sa-{TAG}"
KG = {f"kg{i}-{TAG}": v for i, v in enumerate([2.5, 7, 4])}


@pytest.fixture(scope="module")
def mesh(procs: Any) -> dict[str, Any]:
    """One plain agent, three agents answering a `kg`, two strict replicas and
    one replica with halt-on-critical off."""
    procs.agent(AGENT, capability=CAP)
    for aid, kg in KG.items():
        procs.agent(aid, "--merge", f'{{"kg": {kg}}}', capability=f"kg-{TAG}")
    return {
        "r1": procs.router(),
        "r2": procs.router(),
        "soft": procs.router("--safety-halt-on-critical", "false"),
    }


@pytest.fixture
async def safety_for() -> Any:
    channels: list[grpc.aio.Channel] = []

    def make(p: Any) -> safety_pb2_grpc.SafetyServiceStub:
        ch = grpc.aio.insecure_channel(p.target)
        channels.append(ch)
        return safety_pb2_grpc.SafetyServiceStub(ch)

    yield make
    for ch in channels:
        await ch.close()


def value(v: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(v, str):
        out.string_value = v
    elif isinstance(v, bool):
        out.bool_value = v
    else:
        out.number_value = v
    return out


def params(**kw: Any) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


def invoke(op: str, sender: str = "", **payload: Any) -> R.InvokeRequest:
    msg = R.RouteMessage(message_type=op, target_ids=[AGENT], sender_id=sender)
    msg.payload.struct_value.update(payload)
    return R.InvokeRequest(message=msg, action=op)


def field_violations(e: grpc.aio.AioRpcError) -> dict[str, str]:
    err = from_rpc_error(e)
    return dict(getattr(err, "field_violations", []))


#: (constraint, [allowed (params, sender)], [blocked (params, sender)])
Examples = list[tuple[dict[str, Any], str]]
CASES: list[tuple[S.Constraint, Examples, Examples]] = [
    (
        S.Constraint(kind=S.CONSTRAINT_KIND_THRESHOLD, field="temperature", max=600),
        [({"temperature": 600}, ""), ({"temperature": 20.5}, ""), ({}, "")],
        [({"temperature": 600.5}, ""), ({"temperature": "hot"}, "")],
    ),
    (
        S.Constraint(kind=S.CONSTRAINT_KIND_RANGE, field="payload.valve.ratio", min=0, max=1,
                     required=True),
        [({"valve": {"ratio": 0}}, ""), ({"valve": {"ratio": 1.0}}, "")],
        [({"valve": {"ratio": 1.01}}, ""), ({"valve": {}}, ""), ({}, "")],
    ),
    (
        S.Constraint(kind=S.CONSTRAINT_KIND_ALLOWLIST, field="message.sender_id",
                     values=[value("scada-1"), value("ops")]),
        [({}, "scada-1"), ({}, "ops")],
        [({}, "intruder"), ({}, "")],
    ),
    (
        S.Constraint(kind=S.CONSTRAINT_KIND_DENYLIST, field="command",
                     values=[value("wipe"), value(13)]),
        [({"command": "read"}, ""), ({"command": 12}, ""), ({}, "")],
        [({"command": "wipe"}, ""), ({"command": 13.0}, "")],
    ),
    (
        S.Constraint(kind=S.CONSTRAINT_KIND_PATTERN, field="tag", pattern=r"^PLC-\d{3}$"),
        [({"tag": "PLC-042"}, ""), ({}, "")],
        [({"tag": "PLC-42"}, ""), ({"tag": "xPLC-042"}, ""), ({"tag": 42}, "")],
    ),
    (
        S.Constraint(kind=S.CONSTRAINT_KIND_REQUIRED_FIELDS,
                     fields=["site", "payload.setpoint.value"]),
        [({"site": "north", "setpoint": {"value": 3}}, "")],
        [({"site": "north"}, ""), ({"setpoint": {"value": 3}}, ""), ({}, "")],
    ),
]


async def test_each_constraint_kind_allows_and_blocks(mesh, safety_for, stub_for) -> None:
    safety, router = safety_for(mesh["r1"]), stub_for(mesh["r2"])
    for c, allowed, blocked in CASES:
        kind = S.ConstraintKind.Name(c.kind).removeprefix("CONSTRAINT_KIND_").lower()
        op = f"op-{kind}-{TAG}"
        c.name = f"c-{kind}-{TAG}"
        c.level = R.SAFETY_LEVEL_CRITICAL
        c.message_types.append(op)
        rule = (await safety.CreateConstraint(S.CreateConstraintRequest(constraint=c))).rule
        assert rule.name == c.name and rule.condition and rule.message_types == [op]
        # stored as an ordinary safety rule
        got = await router.GetSafetyRule(R.GetSafetyRuleRequest(name=c.name))
        assert got.rule.condition == rule.condition
        for p, sender in allowed:
            v = await safety.ValidateOperation(
                S.ValidateOperationRequest(
                    operation_type=op, agent_id=AGENT, parameters=params(**p), sender_id=sender
                )
            )
            assert v.is_safe and not v.violations, (kind, p, sender, v)
        for p, sender in blocked:
            v = await safety.ValidateOperation(
                S.ValidateOperationRequest(
                    operation_type=op, agent_id=AGENT, parameters=params(**p), sender_id=sender
                )
            )
            assert not v.is_safe, (kind, p, sender, rule.condition)
            assert [b.rule_name for b in v.blocking] == [c.name]
            assert v.blocking[0].level == R.SAFETY_LEVEL_CRITICAL and v.halt_on_critical
        # the one agent path enforces the same rule on a real call, on another replica
        p, sender = blocked[0]
        refused = await eventually(
            lambda p=p, sender=sender, op=op: _refused(router, invoke(op, sender, **p)),
            what=f"{kind} rule enforced by r2",
        )
        assert refused.error_reason == ErrorReason.ERROR_REASON_SAFETY_VIOLATION
        p, sender = allowed[0]
        ok = await router.Invoke(invoke(op, sender, **p), timeout=10)
        assert ok.agent_id == AGENT and not ok.safety_violations
    # an operation of another type is not touched by any of them
    v = await safety.ValidateOperation(
        S.ValidateOperationRequest(operation_type=f"other-{TAG}", parameters=params(tag="x"))
    )
    assert v.is_safe and not v.violations


async def _refused(router: Any, req: R.InvokeRequest) -> Any:
    """The FAILED_PRECONDITION error of an Invoke, None while it succeeds."""
    try:
        await router.Invoke(req, timeout=10)
        return None
    except grpc.aio.AioRpcError as e:
        assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e
        return from_rpc_error(e)


async def test_halt_on_critical_both_ways(mesh, safety_for, stub_for) -> None:
    op = f"halt-{TAG}"
    name = f"halt-{TAG}"
    strict, soft = safety_for(mesh["r1"]), safety_for(mesh["soft"])
    await strict.CreateConstraint(
        S.CreateConstraintRequest(
            constraint=S.Constraint(
                name=name, kind=S.CONSTRAINT_KIND_THRESHOLD, field="pressure", max=10,
                level=R.SAFETY_LEVEL_CRITICAL, message_types=[op],
            )
        )
    )
    await strict.CreateConstraint(
        S.CreateConstraintRequest(
            constraint=S.Constraint(
                name=f"{name}-warn", kind=S.CONSTRAINT_KIND_THRESHOLD, field="pressure", max=5,
                level=R.SAFETY_LEVEL_WARNING, message_types=[op],
            )
        )
    )
    req = S.ValidateOperationRequest(operation_type=op, parameters=params(pressure=12))
    hard = await strict.ValidateOperation(req)
    assert not hard.is_safe and hard.halt_on_critical
    assert [b.rule_name for b in hard.blocking] == [name]
    assert [v.rule_name for v in hard.violations] == [name, f"{name}-warn"]

    async def soft_sees_rule() -> Any:
        r = await soft.ValidateOperation(req)
        return r if len(r.violations) == 2 else None

    lenient = await eventually(soft_sees_rule, what="soft replica loaded both rules")
    assert lenient.is_safe and not lenient.halt_on_critical and not lenient.blocking
    assert [(v.rule_name, v.level) for v in lenient.violations] == [
        (name, R.SAFETY_LEVEL_CRITICAL),
        (f"{name}-warn", R.SAFETY_LEVEL_WARNING),
    ]
    # real calls: the strict replica blocks, the soft one lets it through and reports
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub_for(mesh["r1"]).Invoke(invoke(op, pressure=12), timeout=10)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    before = _critical_count(mesh["soft"])
    resp = await stub_for(mesh["soft"]).Invoke(invoke(op, pressure=12), timeout=10)
    assert resp.agent_id == AGENT
    assert {v.rule_name for v in resp.safety_violations} == {name, f"{name}-warn"}
    # ... and counts the CRITICAL violation it did not block
    assert await asyncio.to_thread(_critical_count, mesh["soft"]) == before + 1


def _critical_count(proc: Any) -> float:
    text = scrape_metrics(proc.metrics_port)
    m = re.search(r'^safety_violations_total\{level="SAFETY_LEVEL_CRITICAL"\} (\S+)$', text, re.M)
    return float(m[1]) if m else 0.0


def _breaker(name: str, threshold: int, open_ms: int, half_open: int) -> S.CircuitBreaker:
    d = duration_pb2.Duration()
    d.FromMilliseconds(open_ms)
    return S.CircuitBreaker(
        name=name, failure_threshold=threshold, open_duration=d, half_open_max_calls=half_open
    )


async def test_named_breaker_is_shared_by_two_clients(mesh, safety_for) -> None:
    name = f"scada-{TAG}"
    a, b = safety_for(mesh["r1"]), safety_for(mesh["r2"])
    made = await a.CreateCircuitBreaker(
        S.CreateCircuitBreakerRequest(breaker=_breaker(name, 3, 800, 2))
    )
    assert made.breaker.state == R.BREAKER_STATE_CLOSED
    # three failures, alternating clients on different replicas, open it
    states = []
    for stub in (a, b, a):
        r = await stub.RecordOutcome(S.RecordOutcomeRequest(name=name, success=False))
        states.append(r.breaker.state)
    assert states == [R.BREAKER_STATE_CLOSED, R.BREAKER_STATE_CLOSED, R.BREAKER_STATE_OPEN]
    seen = (await b.GetCircuitBreaker(S.GetCircuitBreakerRequest(name=name))).breaker
    assert seen.state == R.BREAKER_STATE_OPEN and seen.consecutive_failures == 3
    assert seen.failure_count == 3 and seen.success_count == 0
    retry_ms = seen.next_retry_time.ToMilliseconds()
    assert 0 < retry_ms - time.time() * 1000 <= 800
    # the client SDK refuses the guarded block while it is open
    async with Client(router=mesh["r2"].target) as c:
        ran = False
        with pytest.raises(CircuitOpen) as co:
            async with c.breaker(name):
                ran = True
        assert not ran and 0 < co.value.retry_after_s <= 0.8
        assert co.value.error_reason == ErrorReason.ERROR_REASON_CIRCUIT_OPEN
    # half-open once the duration has passed (seen from both replicas)
    await asyncio.sleep(max(0.0, retry_ms / 1000 - time.time()) + 0.05)
    for stub in (a, b):
        st = (await stub.GetCircuitBreaker(S.GetCircuitBreakerRequest(name=name))).breaker
        assert st.state == R.BREAKER_STATE_HALF_OPEN and not st.HasField("next_retry_time")
    # one failure in half-open reopens it ...
    r = await b.RecordOutcome(S.RecordOutcomeRequest(name=name, success=False))
    assert r.breaker.state == R.BREAKER_STATE_OPEN
    await asyncio.sleep(0.85)
    # ... and half_open_max_calls (2) successes, from two clients, close it
    async with Client(router=mesh["r1"].target) as c:
        async with c.breaker(name) as before:
            assert before.state == R.BREAKER_STATE_HALF_OPEN
    mid = (await b.GetCircuitBreaker(S.GetCircuitBreakerRequest(name=name))).breaker
    assert mid.state == R.BREAKER_STATE_HALF_OPEN and mid.half_open_successes == 1
    r = await b.RecordOutcome(S.RecordOutcomeRequest(name=name, success=True))
    assert r.breaker.state == R.BREAKER_STATE_CLOSED and r.breaker.consecutive_failures == 0
    assert r.breaker.success_count == 2 and r.breaker.failure_count == 4
    # a failing block is recorded as a failure and its error propagates
    async with Client(router=mesh["r1"].target) as c:
        with pytest.raises(RuntimeError):
            async with c.breaker(name):
                raise RuntimeError("plc did not answer")
    st = (await a.GetCircuitBreaker(S.GetCircuitBreakerRequest(name=name))).breaker
    assert st.consecutive_failures == 1 and st.state == R.BREAKER_STATE_CLOSED
    listed = await b.ListCircuitBreakers(S.ListCircuitBreakersRequest(page_size=1000))
    assert name in [x.name for x in listed.breakers]


def _limiter(name: str, max_requests: int, window_ms: int, per_key: bool) -> S.RateLimiter:
    d = duration_pb2.Duration()
    d.FromMilliseconds(window_ms)
    return S.RateLimiter(name=name, max_requests=max_requests, window=d, per_key=per_key)


async def _grants(stubs: list[Any], name: str, key: str, n: int) -> tuple[int, list[Any]]:
    async def one(i: int) -> Any:
        try:
            await stubs[i % len(stubs)].AcquirePermit(
                S.AcquirePermitRequest(name=name, key=key), timeout=10
            )
            return None
        except grpc.aio.AioRpcError as e:
            return e

    out = await asyncio.gather(*(one(i) for i in range(n)))
    return sum(1 for o in out if o is None), [o for o in out if o is not None]


async def test_rate_limiter_shared_by_two_replicas(mesh, safety_for) -> None:
    name = f"api-{TAG}"
    r1, r2 = safety_for(mesh["r1"]), safety_for(mesh["r2"])
    # 5 per 60 s: one permit refills every 12 s, far longer than this test
    await r1.CreateRateLimiter(S.CreateRateLimiterRequest(limiter=_limiter(name, 5, 60_000, True)))
    granted, refused = await _grants([r1, r2], name, "tenant-a", 24)
    assert granted == 5 and len(refused) == 19
    for e in refused:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        err = from_rpc_error(e)
        assert err.error_reason == ErrorReason.ERROR_REASON_RATE_LIMITED
        info = err.detail(error_details_pb2.RetryInfo)
        assert isinstance(info, error_details_pb2.RetryInfo)
        assert 0 < info.retry_delay.ToTimedelta().total_seconds() <= 12
    # another key has its own bucket, across both replicas too
    granted, _ = await _grants([r2, r1], name, "tenant-b", 9)
    assert granted == 5
    # per window: 4 per 2.4 s (one permit back every 0.6 s); after a whole
    # window the bucket is full again, never fuller, so each window's burst
    # across both replicas gets exactly 4 (a burst takes well under 0.6 s)
    win = f"win-{TAG}"
    await r2.CreateRateLimiter(S.CreateRateLimiterRequest(limiter=_limiter(win, 4, 2400, True)))
    first, _ = await _grants([r1, r2], win, "tenant-c", 12)
    await asyncio.sleep(2.5)  # a window and a bit: full, and capped at 4
    second, _ = await _grants([r2, r1], win, "tenant-c", 12)
    assert (first, second) == (4, 4)
    # a shared (not per-key) limiter counts every key together
    shared = f"shared-{TAG}"
    await r2.CreateRateLimiter(
        S.CreateRateLimiterRequest(limiter=_limiter(shared, 3, 60_000, False))
    )
    g1, _ = await _grants([r1], shared, "x", 2)
    g2, _ = await _grants([r2], shared, "y", 4)
    assert (g1, g2) == (2, 1)
    # the SDK's permit: granted, then refused with the wait, then waits for a refill
    fast = f"fast-{TAG}"
    await r1.CreateRateLimiter(S.CreateRateLimiterRequest(limiter=_limiter(fast, 2, 400, True)))
    async with Client(router=mesh["r2"].target) as c:
        await c.permit(fast, "k", 2)
        with pytest.raises(ResourceExhausted):
            await c.permit(fast, "k")
        t0 = time.monotonic()
        await c.permit(fast, "k", wait_s=2.0)
        assert time.monotonic() - t0 >= 0.1  # one permit every 200 ms
        with pytest.raises(NotFound):
            await c.permit(f"nope-{TAG}", "k")


async def test_custom_aggregation_reduces_with_cel(mesh, stub_for) -> None:
    router = stub_for(mesh["r1"])

    def sg(reduce: str) -> R.ScatterGatherRequest:
        msg = R.RouteMessage(message_type=f"kg-{TAG}")
        msg.payload.struct_value.update({})
        return R.ScatterGatherRequest(
            message=msg, action="weigh", target_ids=list(KG),
            aggregation=R.AGGREGATION_CUSTOM, reduce=reduce,
        )

    resp = await router.ScatterGather(sg("replies.map(r, r.kg).max()"), timeout=10)
    assert resp.aggregation == R.AGGREGATION_CUSTOM and resp.succeeded == 3
    assert resp.result["value"] == 7
    resp = await router.ScatterGather(
        sg('{"total": replies.map(r, r.kg).sum(), "who": agent_ids, "n": size(replies)}'),
        timeout=10,
    )
    assert resp.result["value"]["total"] == pytest.approx(13.5)
    assert list(resp.result["value"]["who"]) == sorted(KG)
    for bad, why in (
        ("replies.map(r, r.kg).max(", "parse error"),
        ("responses.size()", "undeclared reference to 'responses'"),
        ("", "empty"),
        ("replies.map(r, r.weight).max()", "reduce failed"),  # compiles; fails on the replies
    ):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await router.ScatterGather(sg(bad), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        fv = field_violations(e.value)
        assert "reduce" in fv, bad
        assert why in fv["reduce"] or why in (e.value.details() or ""), (bad, fv)


async def test_bad_input_is_refused_with_details(mesh, safety_for, stub_for) -> None:
    s = safety_for(mesh["r1"])

    async def code_of(call: Any) -> tuple[grpc.StatusCode, grpc.aio.AioRpcError]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        return e.value.code(), e.value

    # a rule that does not compile
    code, e = await code_of(
        stub_for(mesh["r1"]).CreateSafetyRule(
            R.CreateSafetyRuleRequest(
                rule=R.SafetyRule(name=f"bad-{TAG}", condition="payload.x >", level=2)
            )
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "rule.condition" in field_violations(e)
    bad_constraints = {
        "constraint.pattern": S.Constraint(
            name=f"bp-{TAG}", kind=S.CONSTRAINT_KIND_PATTERN, field="t", pattern="(?<=x)y",
            level=2,
        ),
        "constraint.min": S.Constraint(
            name=f"bm-{TAG}", kind=S.CONSTRAINT_KIND_RANGE, field="t", min=5, max=1, level=2
        ),
        "constraint.field": S.Constraint(
            name=f"bf-{TAG}", kind=S.CONSTRAINT_KIND_THRESHOLD, field="a.b-c", max=1, level=2
        ),
        "constraint.kind": S.Constraint(name=f"bk-{TAG}", field="t", level=2),
        "constraint.level": S.Constraint(
            name=f"bl-{TAG}", kind=S.CONSTRAINT_KIND_THRESHOLD, field="t", max=1
        ),
        "constraint.values": S.Constraint(
            name=f"bv-{TAG}", kind=S.CONSTRAINT_KIND_ALLOWLIST, field="t", level=2
        ),
    }
    for fld, c in bad_constraints.items():
        code, e = await code_of(s.CreateConstraint(S.CreateConstraintRequest(constraint=c)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fld in field_violations(e), fld
    # a negative window, a zero threshold
    neg = _limiter(f"neg-{TAG}", 5, 0, True)
    neg.window.seconds = -1
    code, e = await code_of(s.CreateRateLimiter(S.CreateRateLimiterRequest(limiter=neg)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "limiter.window" in field_violations(e)
    code, e = await code_of(
        s.CreateRateLimiter(S.CreateRateLimiterRequest(limiter=_limiter(f"z-{TAG}", 0, 1000, True)))
    )
    assert "limiter.max_requests" in field_violations(e)
    # a zero duration passes the runtime's generic Duration range check and
    # reaches the servicer, which reports every bad field at once
    zero = _breaker(f"zb-{TAG}", 0, 0, 0)
    code, e = await code_of(s.CreateCircuitBreaker(S.CreateCircuitBreakerRequest(breaker=zero)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(field_violations(e)) == {
        "breaker.failure_threshold", "breaker.open_duration", "breaker.half_open_max_calls"
    }
    # unknown names: NOT_FOUND with the resource named
    for call in (
        s.RecordOutcome(S.RecordOutcomeRequest(name=f"ghost-{TAG}", success=True)),
        s.GetCircuitBreaker(S.GetCircuitBreakerRequest(name=f"ghost-{TAG}")),
        s.AcquirePermit(S.AcquirePermitRequest(name=f"ghost-{TAG}", key="k")),
        s.GetRateLimiter(S.GetRateLimiterRequest(name=f"ghost-{TAG}")),
    ):
        code, e = await code_of(call)
        assert code == grpc.StatusCode.NOT_FOUND
        info = from_rpc_error(e).detail(error_details_pb2.ResourceInfo)
        assert isinstance(info, error_details_pb2.ResourceInfo)
        assert info.resource_name == f"ghost-{TAG}"
    # an unknown breaker never springs into existence by recording on it
    code, _ = await code_of(s.GetCircuitBreaker(S.GetCircuitBreakerRequest(name=f"ghost-{TAG}")))
    assert code == grpc.StatusCode.NOT_FOUND
    # duplicates; per-key limiter without a key; too many permits at once; no operation type
    await s.CreateCircuitBreaker(
        S.CreateCircuitBreakerRequest(breaker=_breaker(f"dup-{TAG}", 1, 1000, 1))
    )
    code, _ = await code_of(
        s.CreateCircuitBreaker(
            S.CreateCircuitBreakerRequest(breaker=_breaker(f"dup-{TAG}", 1, 1000, 1))
        )
    )
    assert code == grpc.StatusCode.ALREADY_EXISTS
    await s.CreateRateLimiter(
        S.CreateRateLimiterRequest(limiter=_limiter(f"pk-{TAG}", 2, 1000, True))
    )
    code, e = await code_of(s.AcquirePermit(S.AcquirePermitRequest(name=f"pk-{TAG}")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "key" in field_violations(e)
    code, e = await code_of(
        s.AcquirePermit(S.AcquirePermitRequest(name=f"pk-{TAG}", key="k", count=3))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "count" in field_violations(e)
    code, e = await code_of(s.ValidateOperation(S.ValidateOperationRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "operation_type" in field_violations(e)


async def test_agent_sdk_declares_constraints_and_validates(mesh, stub_for) -> None:
    from agentmesh.agent import ActionContext, Agent
    from agentmesh.runtime.errors import AlreadyExists, FailedPrecondition

    op = f"dose-{TAG}"
    name = f"max-dose-{TAG}"

    def dose_limit(max_dose: float) -> S.Constraint:
        return S.Constraint(
            name=name, kind=S.CONSTRAINT_KIND_THRESHOLD, field="dose", max=max_dose,
            level=R.SAFETY_LEVEL_CRITICAL, message_types=[op],
        )

    def make(agent_id: str, max_dose: float) -> Agent:
        a = Agent(agent_id, capabilities=[op], constraints=[dose_limit(max_dose)],
                  router_target=mesh["r1"].target)

        @a.action(op)
        async def dose(inp: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
            v = await ctx.validate(inp)  # operation type: this action
            out = {"safe": v.is_safe, "rules": [b.rule_name for b in v.blocking]}
            try:
                await ctx.validate(inp, raise_if_unsafe=True)
            except FailedPrecondition as e:
                out["refused"] = e.error_reason == ErrorReason.ERROR_REASON_SAFETY_VIOLATION
            return out

        return a

    async with make(f"agent-dose-a-{TAG}", 5) as a:
        got = await stub_for(mesh["r2"]).GetSafetyRule(R.GetSafetyRuleRequest(name=name))
        assert got.rule.message_types == [op] and "payload.dose <= 5.0" in got.rule.condition
        # a second replica of the same agent finds its constraint in place
        async with make(f"agent-dose-b-{TAG}", 5):
            pass
        # one that declares another limit under the same name does not start
        other = make(f"agent-dose-c-{TAG}", 50)
        try:
            with pytest.raises(AlreadyExists):
                await other.start()
        finally:
            await other.stop()
        async with Client() as c:
            ok, _ = await c.execute(a.endpoint, op, {"dose": 4})
            assert ok == {"safe": True, "rules": []}
            bad, _ = await c.execute(a.endpoint, op, {"dose": 9})
            assert bad == {"safe": False, "rules": [name], "refused": True}


async def test_cli_safety_commands(mesh) -> None:
    import json
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agentmesh.cli.main", "--router", mesh["r1"].target,
             "--timeout-s", "5", *args],
            capture_output=True, text=True, timeout=60,
        )

    op = f"cli-{TAG}"
    made = await asyncio.to_thread(
        cli, "safety", "constrain", f"cli-max-{TAG}", "--kind", "threshold",
        "--field", "rpm", "--max", "3000", "--type", op, "--output", "json",
    )
    assert made.returncode == 0, made.stderr
    assert "payload.rpm <= 3000.0" in json.loads(made.stdout)["condition"]
    ok = await asyncio.to_thread(cli, "safety", "validate", op, "-p", '{"rpm": 10}')
    assert ok.returncode == 0, ok.stderr
    bad = await asyncio.to_thread(
        cli, "safety", "validate", op, "-p", '{"rpm": 9000}', "--output", "json"
    )
    assert bad.returncode == 1 and json.loads(bad.stdout)["is_safe"] is False
    name = f"cli-br-{TAG}"
    assert (await asyncio.to_thread(
        cli, "safety", "breaker", "create", name, "--failures", "1", "--open-s", "30"
    )).returncode == 0
    rec = await asyncio.to_thread(
        cli, "safety", "breaker", "record", name, "--failure", "--output", "json"
    )
    assert json.loads(rec.stdout)["state"] == "BREAKER_STATE_OPEN"
    lim = f"cli-lim-{TAG}"
    assert (await asyncio.to_thread(
        cli, "safety", "limiter", "create", lim, "--max", "1", "--window-s", "60"
    )).returncode == 0
    first = await asyncio.to_thread(cli, "safety", "limiter", "permit", lim, "k")
    second = await asyncio.to_thread(cli, "safety", "limiter", "permit", lim, "k")
    assert first.returncode == 0 and second.returncode != 0
    assert "RESOURCE_EXHAUSTED" in second.stderr + second.stdout
    missing = await asyncio.to_thread(cli, "safety", "breaker", "get", f"nope-{TAG}")
    assert missing.returncode != 0 and "NOT_FOUND" in missing.stderr + missing.stdout
