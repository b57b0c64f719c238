"""CoordinationService: fenced locks and consensus, against real processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct

from agentmesh.registry.v1 import coordination_pb2 as cpb
from agentmesh.registry.v1 import coordination_pb2_grpc
from tests.integration.registry.conftest import Clients, StartRegistry
from tests.integration.registry.helpers import field_violations
from tests.waiting import eventually

pytestmark = pytest.mark.integration

APPROVE, REJECT, ABSTAIN = (cpb.VOTE_CHOICE_APPROVE, cpb.VOTE_CHOICE_REJECT,
                            cpb.VOTE_CHOICE_ABSTAIN)


def _struct(**kw: Any) -> Struct:
    s = Struct()
    s.update(kw)
    return s


def ms(n: int) -> Duration:
    d = Duration()
    d.FromMilliseconds(n)
    return d


async def test_lock_acquire_renew_release(registry: Clients) -> None:
    c = registry.coord
    a = await c.AcquireLock(cpb.AcquireLockRequest(resource="r1", owner="o1", ttl=ms(5000)))
    assert a.acquired and a.fencing_token == 1
    # Re-acquiring by the holder refreshes it and keeps the token.
    again = await c.AcquireLock(cpb.AcquireLockRequest(resource="r1", owner="o1", ttl=ms(5000)))
    assert again.acquired and again.fencing_token == 1
    other = await c.AcquireLock(cpb.AcquireLockRequest(resource="r1", owner="o2", ttl=ms(5000)))
    assert not other.acquired and other.holder == "o1" and other.fencing_token == 0
    # Waiting for a held lock gives up after wait_timeout.
    waited = await c.AcquireLock(cpb.AcquireLockRequest(
        resource="r1", owner="o2", ttl=ms(5000), wait_timeout=ms(200)))
    assert not waited.acquired
    renewed = await c.RenewLock(cpb.RenewLockRequest(resource="r1", owner="o1",
                                                     fencing_token=1, ttl=ms(5000)))
    assert renewed.expire_time.ToMilliseconds() >= a.expire_time.ToMilliseconds()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await c.RenewLock(cpb.RenewLockRequest(resource="r1", owner="o2", fencing_token=1,
                                               ttl=ms(5000)))
    assert e.value.code() == grpc.StatusCode.ABORTED
    rel = c.ReleaseLock
    assert (await rel(cpb.ReleaseLockRequest(resource="r1", owner="o2"))).status == \
        cpb.RELEASE_LOCK_STATUS_HELD_BY_OTHER
    assert (await rel(cpb.ReleaseLockRequest(resource="r1", owner="o1", fencing_token=7))
            ).status == cpb.RELEASE_LOCK_STATUS_HELD_BY_OTHER
    assert (await rel(cpb.ReleaseLockRequest(resource="r1", owner="o1", fencing_token=1))
            ).status == cpb.RELEASE_LOCK_STATUS_RELEASED
    assert (await rel(cpb.ReleaseLockRequest(resource="r1", owner="o1"))).status == \
        cpb.RELEASE_LOCK_STATUS_NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await c.RenewLock(cpb.RenewLockRequest(resource="r1", owner="o1", fencing_token=1,
                                               ttl=ms(5000)))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # The next holder gets a higher token.
    b = await c.AcquireLock(cpb.AcquireLockRequest(resource="r1", owner="o2", ttl=ms(5000)))
    assert b.acquired and b.fencing_token == 2
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await c.AcquireLock(cpb.AcquireLockRequest(resource="", owner="o", ttl=ms(1)))
    assert set(field_violations(e.value)) == {"resource", "ttl"}


async def test_expired_lock_goes_to_new_owner_with_higher_token(registry: Clients) -> None:
    c = registry.coord
    a = await c.AcquireLock(cpb.AcquireLockRequest(resource="job", owner="old", ttl=ms(300)))
    assert a.acquired
    # The waiter gets it once the TTL runs out, without a release.
    b = await c.AcquireLock(cpb.AcquireLockRequest(
        resource="job", owner="new", ttl=ms(5000), wait_timeout=ms(10_000)))
    assert b.acquired and b.fencing_token > a.fencing_token
    # The old owner has lost it.
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await c.RenewLock(cpb.RenewLockRequest(resource="job", owner="old",
                                               fencing_token=a.fencing_token, ttl=ms(300)))
    assert e.value.code() == grpc.StatusCode.ABORTED
    assert (await c.ReleaseLock(cpb.ReleaseLockRequest(
        resource="job", owner="old", fencing_token=a.fencing_token))).status == \
        cpb.RELEASE_LOCK_STATUS_HELD_BY_OTHER


async def test_fencing_tokens_increase_across_restart(start_registry: StartRegistry) -> None:
    tokens: list[int] = []
    for _ in range(2):
        d = start_registry()
        async with grpc.aio.insecure_channel(d.target) as ch:
            c = coordination_pb2_grpc.CoordinationServiceStub(ch)
            for owner in ("x", "y"):
                r = await c.AcquireLock(cpb.AcquireLockRequest(resource="fenced", owner=owner,
                                                               ttl=ms(5000)))
                assert r.acquired
                tokens.append(r.fencing_token)
                await c.ReleaseLock(cpb.ReleaseLockRequest(resource="fenced", owner=owner))
        assert d.stop() == 0
    assert tokens == sorted(set(tokens)) and len(tokens) == 4


async def _propose(c: coordination_pb2_grpc.CoordinationServiceStub, **kw: object
                   ) -> cpb.Proposal:
    r = await c.CreateProposal(cpb.CreateProposalRequest(topic="t", **kw))  # type: ignore[arg-type]
    assert r.proposal.state == cpb.PROPOSAL_STATE_OPEN
    return r.proposal


async def _vote(c: coordination_pb2_grpc.CoordinationServiceStub, pid: str, voter: str,
                choice: int) -> cpb.Proposal:
    r = await c.CastVote(cpb.CastVoteRequest(proposal_id=pid, voter=voter,
                                             choice=choice))  # type: ignore[arg-type]
    return r.proposal


async def test_consensus_achieved_rejected_and_errors(registry: Clients) -> None:
    c = registry.coord
    # The seeds' example: 2 of 3 approve at 50% → ACHIEVED, decided by the 2nd approval.
    p = await _propose(c, required_approval_ratio=0.5, voters=["a1", "a2", "a3"],
                       data=_struct(temp=500))
    assert (await _vote(c, p.proposal_id, "a1", APPROVE)).state == cpb.PROPOSAL_STATE_OPEN
    assert (await _vote(c, p.proposal_id, "a3", REJECT)).state == cpb.PROPOSAL_STATE_OPEN
    done = await _vote(c, p.proposal_id, "a2", APPROVE)
    assert done.state == cpb.PROPOSAL_STATE_ACHIEVED
    assert (done.approvals, done.rejections, done.abstentions) == (2, 1, 0)
    assert done.data.fields["temp"].number_value == 500
    assert done.HasField("resolve_time")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _vote(c, p.proposal_id, "a3", APPROVE)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    # REJECTED as soon as the ratio is out of reach: 2 rejections of 3 at 0.6.
    p = await _propose(c, required_approval_ratio=0.6, voters=["a1", "a2", "a3"])
    assert (await _vote(c, p.proposal_id, "a1", REJECT)).state == cpb.PROPOSAL_STATE_OPEN
    assert (await _vote(c, p.proposal_id, "a2", REJECT)).state == cpb.PROPOSAL_STATE_REJECTED

    # Abstentions do not count toward the ratio.
    p = await _propose(c, required_approval_ratio=1.0, voters=["a1", "a2"])
    await _vote(c, p.proposal_id, "a1", ABSTAIN)
    assert (await _vote(c, p.proposal_id, "a2", APPROVE)).state == cpb.PROPOSAL_STATE_ACHIEVED

    # Open vote decided by quorum.
    p = await _propose(c, required_approval_ratio=0.6, quorum=3)
    assert (await _vote(c, p.proposal_id, "anyone", APPROVE)).state == cpb.PROPOSAL_STATE_OPEN
    assert (await _vote(c, p.proposal_id, "someone", APPROVE)).state == \
        cpb.PROPOSAL_STATE_ACHIEVED  # 2 of 3 approvals reach 0.6 whatever the third says

    # Errors.
    p = await _propose(c, required_approval_ratio=0.5, voters=["a1", "a2", "a3"])
    await _vote(c, p.proposal_id, "a1", APPROVE)
    assert (await _vote(c, p.proposal_id, "a1", APPROVE)).approvals == 1  # idempotent
    cases = [
        (cpb.CastVoteRequest(proposal_id=p.proposal_id, voter="a1", choice=REJECT),
         grpc.StatusCode.ABORTED),
        (cpb.CastVoteRequest(proposal_id=p.proposal_id, voter="intruder", choice=APPROVE),
         grpc.StatusCode.PERMISSION_DENIED),
        (cpb.CastVoteRequest(proposal_id="prop-missing", voter="a1", choice=APPROVE),
         grpc.StatusCode.NOT_FOUND),
        (cpb.CastVoteRequest(proposal_id=p.proposal_id, voter="a2"),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for req, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.CastVote(req)
        assert e.value.code() == code
    for bad in (cpb.CreateProposalRequest(topic="t", required_approval_ratio=1.5, quorum=1),
                cpb.CreateProposalRequest(topic="t", required_approval_ratio=0.5)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.CreateProposal(bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_consensus_expires(registry: Clients) -> None:
    c = registry.coord
    # The vote must land before the deadline even on a loaded machine (a 300 ms
    # TTL did not always leave room for it), so the TTL is 1.5 s and the test
    # waits for the proposal to leave OPEN instead of sleeping past the deadline.
    p = await _propose(c, required_approval_ratio=0.5, voters=["a1", "a2", "a3"], ttl=ms(1500))
    await _vote(c, p.proposal_id, "a1", APPROVE)

    async def resolved() -> cpb.Proposal | None:
        got = (await c.GetProposal(cpb.GetProposalRequest(proposal_id=p.proposal_id))).proposal
        return got if got.state != cpb.PROPOSAL_STATE_OPEN else None

    got = await eventually(resolved, timeout_s=15, every_s=0.05, what="proposal resolved")
    assert got.state == cpb.PROPOSAL_STATE_EXPIRED and got.approvals == 1
    assert got.resolve_time == got.deadline
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _vote(c, p.proposal_id, "a2", APPROVE)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_owner_must_be_caller(start_registry: StartRegistry, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tok-a": "agent-a"}))
    d = start_registry("--auth-tokens-file", str(tokens))
    md = (("authorization", "Bearer tok-a"),)
    async with grpc.aio.insecure_channel(d.target) as ch:
        c = coordination_pb2_grpc.CoordinationServiceStub(ch)
        ok = await c.AcquireLock(cpb.AcquireLockRequest(resource="r", owner="agent-a",
                                                        ttl=ms(1000)), metadata=md)
        assert ok.acquired
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await c.AcquireLock(cpb.AcquireLockRequest(resource="r", owner="agent-b",
                                                       ttl=ms(1000)), metadata=md)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
