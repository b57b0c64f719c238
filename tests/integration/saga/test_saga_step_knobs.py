"""Step.metadata, compensation timeouts and the coordinator's timeout defaults,
against real coordinators and the real test agent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from agentmesh.saga.v1 import saga_pb2, saga_pb2_grpc
from agentmesh.server.saga.state import struct_to_dict
from tests.integration.saga.conftest import chain, ms, order, run, start_coordinator, step
from tests.procs import DaemonProcess

pytestmark = pytest.mark.integration
S = saga_pb2



def _violations(e: grpc.aio.AioRpcError) -> dict[str, str]:
    md = dict(e.trailing_metadata() or ())
    st = status_pb2.Status.FromString(md["grpc-status-details-bin"])
    br = error_details_pb2.BadRequest()
    assert st.details[0].Unpack(br)
    return {v.field: v.description for v in br.field_violations}


async def test_step_metadata_reaches_the_agent_beside_the_coordinators_keys(stub) -> None:
    s = step("m", action="meta_m")
    s.metadata.update({"tenant": "acme", "cost.center": "c-7"})
    saga = await run(stub, [s])
    assert saga.state == S.SAGA_STATE_COMPLETED
    got = struct_to_dict(saga.steps[0].output)["metadata"]
    assert got["tenant"] == "acme" and got["cost.center"] == "c-7"
    assert got["saga_id"] == saga.saga_id and got["step"] == "m"
    # The definition the saga keeps still has the labels (GetSaga shows them).
    assert dict(saga.definition.steps[0].metadata) == {"tenant": "acme", "cost.center": "c-7"}


async def test_bad_step_metadata_and_timeouts_get_field_violations(stub) -> None:
    s = step("a")
    s.metadata.update({"saga_id": "mine", "Bad Key": "x", "long": "v" * 1025})
    s.compensation_timeout.CopyFrom(ms(0))
    d = S.SagaDefinition(steps=[s], default_compensation_timeout=ms(0))
    with pytest.raises(grpc.aio.AioRpcError) as ei:
        await stub.StartSaga(S.StartSagaRequest(definition=d))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    v = _violations(ei.value)
    assert "reserved" in v["definition.steps[0].metadata[saga_id]"], v
    assert "must match" in v["definition.steps[0].metadata[Bad Key]"]
    assert "1024" in v["definition.steps[0].metadata[long]"]
    assert v["definition.steps[0].compensation_timeout"] == "must be positive"
    assert v["definition.default_compensation_timeout"] == "must be positive"


async def test_compensation_timeout_is_separate_from_the_action_timeout(stub, rsync) -> None:
    """cslow_a takes 1.5 s: within the 5 s action timeout it would succeed, with a
    300 ms compensation timeout every attempt runs out and the saga is FAILED."""
    one_try = S.RetryPolicy(max_attempts=1)

    def steps() -> list[saga_pb2.Step]:
        st = chain("a", "b")
        st[0].compensation_action = "cslow_a"
        st[0].timeout.CopyFrom(ms(5000))
        st[0].retry_policy.CopyFrom(one_try)
        st[1].action = "fail_b"
        return st

    slow_ok = await run(stub, steps())
    assert slow_ok.state == S.SAGA_STATE_COMPENSATED
    assert order(rsync, slow_ok.saga_id) == ["b", "a"]  # the failed step is undone too

    short = steps()
    short[0].compensation_timeout.CopyFrom(ms(300))
    timed_out = await run(stub, short)
    assert timed_out.state == S.SAGA_STATE_FAILED
    a = {x.name: x for x in timed_out.steps}["a"]
    assert a.status == S.STEP_STATUS_COMPENSATION_FAILED
    assert a.error.code == "DEADLINE_EXCEEDED"

    # The definition-wide default applies to steps that set none.
    wide = await run(stub, steps(), default_compensation_timeout=ms(300))
    assert wide.state == S.SAGA_STATE_FAILED


@pytest.fixture(scope="module")
def tuned_coordinator(
    saga_redis_url: str, agent: DaemonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """A coordinator with the seeds' SAGA_DEFAULT_TIMEOUT_MS / SAGA_COMPENSATION_TIMEOUT_MS
    set through the environment, as a deployment would."""
    log_dir: Path = tmp_path_factory.mktemp("saga-tuned")
    proc = start_coordinator(
        saga_redis_url, log_dir, "--default-timeout-ms", "600", "--compensation-timeout-ms", "300"
    )
    with proc as p:
        yield p


async def test_coordinator_defaults_are_written_into_each_saga(
    tuned_coordinator: DaemonProcess, rsync
) -> None:
    async with grpc.aio.insecure_channel(tuned_coordinator.target) as ch:
        tuned = saga_pb2_grpc.SagaServiceStub(ch)
        # No timeout in the definition: the daemon's 600 ms compensates the slow saga.
        st = chain("a", "b")
        st[1].action = "slow_b"
        saga = await run(tuned, st, {"delay_ms": 1500})
        assert saga.state == S.SAGA_STATE_COMPENSATED
        assert saga.error.code == "DEADLINE_EXCEEDED"
        assert saga.definition.timeout.ToMilliseconds() == 600
        assert saga.definition.default_compensation_timeout.ToMilliseconds() == 300

        # A definition's own values win over the daemon's.
        own = chain("a")
        saga = await run(
            tuned, own, timeout=ms(20_000), default_compensation_timeout=ms(4000)
        )
        assert saga.state == S.SAGA_STATE_COMPLETED
        assert saga.definition.timeout.ToMilliseconds() == 20_000
        assert saga.definition.default_compensation_timeout.ToMilliseconds() == 4000
