"""One CEL dialect: the same expressions on the same integer and fractional
fields give the same answers as a saga step condition (real saga coordinator,
real agent process), as a route rule and as a safety rule (real router), on one
real Redis. Python's own number semantics are the oracle, since the dialect's
number rule is "ints and doubles compare as numbers".

Both daemons receive the values as `google.protobuf.Struct` numbers, i.e. as
doubles on the wire: the saga as its input, the router as the message payload.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
import redis
from google.rpc import error_details_pb2

from agentmesh.router.v1 import router_pb2 as R
from agentmesh.router.v1 import router_pb2_grpc
from agentmesh.runtime.errors import from_rpc_error
from agentmesh.saga.v1 import saga_pb2 as S
from agentmesh.saga.v1 import saga_pb2_grpc
from tests.infra import flush_db
from tests.integration.saga.conftest import FAST, start_agent, wait_final
from tests.procs import DaemonProcess, ProcessGroup, daemon

pytestmark = pytest.mark.integration

#: A logical DB no other test module uses.
CEL_DB = 11
AGENT = "cel-agent"
#: `{v}` is the context's root variable: `input` in a saga, `payload` in a router rule.
EXPRESSIONS = [
    "{v}.n == 5",
    "{v}.n == 5.0",
    "{v}.n != 5",
    "{v}.n < 3",
    "{v}.n in [1, 5]",
    "{v}.n + 1 == 6",
    "{v}.amount > 1000",
    "{v}.amount > 1000.0",
    "{v}.amount >= 1000 && {v}.amount <= 1000.5",
    "{v}.amount * 1.1 > 1100.5",
]
#: Integers (sent as 5 and as 5.0 alike: a Struct has only doubles) and one fraction.
PAYLOADS: list[dict[str, Any]] = [
    {"n": 5, "amount": 1001},
    {"n": 2.0, "amount": 1000.5},
    {"n": 4, "amount": 1000.0},
]


def python_says(expr: str, payload: dict[str, Any]) -> bool:
    """The expected answer: the expression read as Python (same syntax for these)."""
    py = expr.format(v="p").replace("&&", "and")
    return bool(eval(py, {"p": SimpleNamespace(**payload)}))


def test_the_table_can_fail() -> None:
    # every expression is true for some payload and false for another
    for expr in EXPRESSIONS:
        assert {python_says(expr, p) for p in PAYLOADS} == {True, False}, expr


@pytest.fixture(scope="module")
def mesh(
    redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DaemonProcess]]:
    """An agent, a saga coordinator and a router on one flushed Redis DB."""
    url = flush_db(redis_server.url_for_db(CEL_DB))
    logs = tmp_path_factory.mktemp("cel")
    group = ProcessGroup()
    r = redis.Redis.from_url(url)
    try:
        # start_agent starts the process itself; the group stops it at the end
        group.started.append(start_agent(AGENT, url, logs, r))
        fast = ("--state-ttl-ms", "100", "--gen-poll-ms", "50")
        yield {
            "saga": group.start(daemon("saga", logs, "--redis-url", url, *FAST, *fast)),
            "router": group.start(daemon("router", logs, "--redis-url", url, *fast)),
        }
    finally:
        group.stop_all(timeout_s=10)
        r.close()


async def saga_answers(saga: DaemonProcess, payload: dict[str, Any]) -> list[bool]:
    """One saga with a step per expression as its condition; ran = true, skipped = false."""
    steps = [
        S.Step(
            name=f"c{i}",
            agent_id=AGENT,
            action=f"do_c{i}",
            condition=expr.format(v="input"),
        )
        for i, expr in enumerate(EXPRESSIONS)
    ]
    req = S.StartSagaRequest(definition=S.SagaDefinition(steps=steps))
    req.input.update(payload)
    async with grpc.aio.insecure_channel(saga.target) as ch:
        stub = saga_pb2_grpc.SagaServiceStub(ch)
        started = await stub.StartSaga(req)
        done = await wait_final(stub, started.saga.saga_id)
    assert done.state == S.SAGA_STATE_COMPLETED, done.error
    status = {s.name: s.status for s in done.steps}
    assert set(status.values()) <= {S.STEP_STATUS_COMPLETED, S.STEP_STATUS_SKIPPED}, status
    return [status[f"c{i}"] == S.STEP_STATUS_COMPLETED for i in range(len(EXPRESSIONS))]


def route_message(message_type: str, payload: dict[str, Any]) -> R.RouteMessage:
    m = R.RouteMessage(message_type=message_type, target_ids=[AGENT])
    m.payload.struct_value.update(payload)
    return m


async def router_answers(router: DaemonProcess, expr: str) -> tuple[list[bool], list[bool]]:
    """The expression as a route rule (matched?) and as a WARNING safety rule (held?),
    for every payload."""
    tag = uuid.uuid4().hex[:8]
    rule, guard, mtype = f"cel-r-{tag}", f"cel-s-{tag}", f"cel-{tag}"
    cond = expr.format(v="payload")
    async with grpc.aio.insecure_channel(router.target) as ch:
        stub = router_pb2_grpc.RouterServiceStub(ch)
        await stub.CreateRouteRule(
            R.CreateRouteRuleRequest(
                rule=R.RouteRule(name=rule, condition=cond, target_ids=[AGENT])
            )
        )
        await stub.CreateSafetyRule(
            R.CreateSafetyRuleRequest(
                rule=R.SafetyRule(
                    name=guard,
                    condition=cond,
                    level=R.SAFETY_LEVEL_WARNING,
                    message_types=[mtype],
                )
            )
        )
        try:
            resp = await stub.RouteBatch(
                R.RouteBatchRequest(
                    requests=[R.RouteRequest(message=route_message(mtype, p)) for p in PAYLOADS]
                )
            )
        finally:
            await stub.DeleteRouteRule(R.DeleteRouteRuleRequest(name=rule))
            await stub.DeleteSafetyRule(R.DeleteSafetyRuleRequest(name=guard))
    matched, held = [], []
    for res in resp.results:
        assert res.WhichOneof("result") == "decision", res
        matched.append(res.decision.rule_name == rule)
        violated = [v for v in res.decision.safety_violations if v.rule_name == guard]
        # a violation that says "could not be evaluated" would be a dialect error
        assert all("could not be evaluated" not in v.description for v in violated), violated
        held.append(not violated)
    return matched, held


async def test_same_expressions_same_answers_in_saga_conditions_and_router_rules(
    mesh: dict[str, DaemonProcess],
) -> None:
    by_payload = await asyncio.gather(*(saga_answers(mesh["saga"], p) for p in PAYLOADS))
    for i, expr in enumerate(EXPRESSIONS):
        expected = [python_says(expr, p) for p in PAYLOADS]
        saga = [answers[i] for answers in by_payload]
        matched, held = await router_answers(mesh["router"], expr)
        assert saga == expected, f"saga condition {expr.format(v='input')}"
        assert matched == expected, f"route rule {expr.format(v='payload')}"
        assert held == expected, f"safety rule {expr.format(v='payload')}"


async def test_a_bad_expression_is_refused_by_both_with_the_field_named(
    mesh: dict[str, DaemonProcess],
) -> None:
    # the same unknown variable: refused when the saga starts and when the rule is created
    async with grpc.aio.insecure_channel(mesh["saga"].target) as ch:
        step = S.Step(name="a", agent_id=AGENT, action="do_a", condition="amount > 1000")
        with pytest.raises(grpc.aio.AioRpcError) as saga_err:
            await saga_pb2_grpc.SagaServiceStub(ch).StartSaga(
                S.StartSagaRequest(definition=S.SagaDefinition(steps=[step]))
            )
    async with grpc.aio.insecure_channel(mesh["router"].target) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as rule_err:
            await router_pb2_grpc.RouterServiceStub(ch).CreateRouteRule(
                R.CreateRouteRuleRequest(
                    rule=R.RouteRule(name="cel-bad", condition="amount > 1000", target_ids=[AGENT])
                )
            )
    for err, field in (
        (saga_err.value, "definition.steps[0].condition"),
        (rule_err.value, "rule.condition"),
    ):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad = from_rpc_error(err).detail(error_details_pb2.BadRequest)
        assert isinstance(bad, error_details_pb2.BadRequest)
        assert [v.field for v in bad.field_violations] == [field]
        assert "undeclared reference to 'amount'" in bad.field_violations[0].description
