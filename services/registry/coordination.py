"""CoordinationService: leased locks with fencing tokens and consensus votes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeAlias

import grpc
from google.protobuf.duration_pb2 import Duration

from agentmesh.registry.v1 import coordination_pb2, coordination_pb2_grpc
from agentmesh.runtime.context import remaining_s
from agentmesh.runtime.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from agentmesh.server.registry import metrics
from agentmesh.server.registry.coordination_store import CoordinationStore
from agentmesh.server.registry.store import ts_ms
from agentmesh.server.registry.validation import authorize_identity

Ctx: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"

MIN_TTL_MS = 10
MAX_TTL_MS = 3_600_000
MAX_PROPOSAL_TTL_MS = 24 * 3_600_000
DEFAULT_PROPOSAL_TTL_MS = 60_000
#: How often AcquireLock re-tries a held lock while waiting, s.
LOCK_POLL_S = 0.05


def _name(value: str, field: str, bad: list[tuple[str, str]], *, limit: int = 256) -> None:
    if not value:
        bad.append((field, "required"))
    elif len(value) > limit:
        bad.append((field, f"at most {limit} characters"))


def _ttl_ms(d: Duration, field: str, bad: list[tuple[str, str]]) -> int:
    ms = d.ToMilliseconds()
    if not MIN_TTL_MS <= ms <= MAX_TTL_MS:
        bad.append((field, "must be between 10 ms and 1 h"))
    return ms


class CoordinationServicer(coordination_pb2_grpc.CoordinationServiceServicer):
    """The CoordinationService implementation.

    Args:
        store: locks and proposals in Redis.
    """

    def __init__(self, store: CoordinationStore) -> None:
        self.store = store

    async def AcquireLock(
        self, request: coordination_pb2.AcquireLockRequest, context: Ctx
    ) -> coordination_pb2.AcquireLockResponse:
        """See coordination.proto."""
        metrics.child(metrics.QUERIES, "lock").inc()
        bad: list[tuple[str, str]] = []
        _name(request.resource, "resource", bad)
        _name(request.owner, "owner", bad)
        ttl_ms = _ttl_ms(request.ttl, "ttl", bad)
        wait_s = request.wait_timeout.ToMilliseconds() / 1000.0
        if wait_s < 0:
            bad.append(("wait_timeout", "must not be negative"))
        if bad:
            raise InvalidArgument("invalid lock request", field_violations=bad)
        authorize_identity(request.owner, field="owner")
        # Leave a little of the caller's deadline to send the answer.
        budget = remaining_s(wait_s)
        give_up = time.monotonic() + max(0.0, (budget or 0.0) - 0.05)
        while True:
            grant = await self.store.acquire(request.resource, request.owner, ttl_ms=ttl_ms)
            if grant.acquired or time.monotonic() + LOCK_POLL_S > give_up:
                break
            await asyncio.sleep(LOCK_POLL_S)
        resp = coordination_pb2.AcquireLockResponse(
            acquired=grant.acquired, fencing_token=grant.token, holder=grant.holder
        )
        if grant.acquired:
            resp.expire_time.CopyFrom(ts_ms(grant.expire_ms))
        return resp

    async def RenewLock(
        self, request: coordination_pb2.RenewLockRequest, context: Ctx
    ) -> coordination_pb2.RenewLockResponse:
        """See coordination.proto."""
        bad: list[tuple[str, str]] = []
        _name(request.resource, "resource", bad)
        _name(request.owner, "owner", bad)
        ttl_ms = _ttl_ms(request.ttl, "ttl", bad)
        if not request.fencing_token:
            bad.append(("fencing_token", "required"))
        if bad:
            raise InvalidArgument("invalid renew request", field_violations=bad)
        authorize_identity(request.owner, field="owner")
        code, value = await self.store.renew(
            request.resource, request.owner, token=request.fencing_token, ttl_ms=ttl_ms
        )
        if code == 0:
            raise NotFound(f"no lock on {request.resource!r}: it expired or was released",
                           resource_type="lock", resource_name=request.resource)
        if code == -1:
            raise Aborted(f"lock on {request.resource!r} is held by {value!r} or under another "
                          "fencing token; stop using it")
        resp = coordination_pb2.RenewLockResponse()
        resp.expire_time.CopyFrom(ts_ms(int(value)))
        return resp

    async def ReleaseLock(
        self, request: coordination_pb2.ReleaseLockRequest, context: Ctx
    ) -> coordination_pb2.ReleaseLockResponse:
        """See coordination.proto."""
        bad: list[tuple[str, str]] = []
        _name(request.resource, "resource", bad)
        _name(request.owner, "owner", bad)
        if bad:
            raise InvalidArgument("invalid release request", field_violations=bad)
        authorize_identity(request.owner, field="owner")
        code = await self.store.release(request.resource, request.owner,
                                        token=request.fencing_token)
        return coordination_pb2.ReleaseLockResponse(
            status={1: coordination_pb2.RELEASE_LOCK_STATUS_RELEASED,
                    2: coordination_pb2.RELEASE_LOCK_STATUS_NOT_FOUND,
                    3: coordination_pb2.RELEASE_LOCK_STATUS_HELD_BY_OTHER}[code]
        )

    async def CreateProposal(
        self, request: coordination_pb2.CreateProposalRequest, context: Ctx
    ) -> coordination_pb2.CreateProposalResponse:
        """See coordination.proto."""
        metrics.child(metrics.QUERIES, "proposal").inc()
        bad: list[tuple[str, str]] = []
        _name(request.topic, "topic", bad)
        ratio = request.required_approval_ratio
        if not 0.0 < ratio <= 1.0:
            bad.append(("required_approval_ratio", "must be in (0, 1]"))
        voters = list(dict.fromkeys(request.voters))
        if any(not v or len(v) > 256 for v in voters):
            bad.append(("voters", "voter names must be 1-256 characters"))
        if len(voters) > 10_000:
            bad.append(("voters", "at most 10000 voters"))
        if not voters and request.quorum == 0:
            bad.append(("quorum", "required when voters is empty"))
        ttl_ms = request.ttl.ToMilliseconds() or DEFAULT_PROPOSAL_TTL_MS
        if not 0 < ttl_ms <= MAX_PROPOSAL_TTL_MS:
            bad.append(("ttl", "must be positive and at most 24 h"))
        if bad:
            raise InvalidArgument("invalid proposal", field_violations=bad)
        if request.proposer:
            authorize_identity(request.proposer, field="proposer")
        proposal = coordination_pb2.Proposal(
            topic=request.topic, proposer=request.proposer, required_approval_ratio=ratio,
            voters=voters, quorum=0 if voters else request.quorum,
        )
        if request.HasField("data"):
            proposal.data.CopyFrom(request.data)
        sec, usec = await self.store.r.time()
        deadline_ms = sec * 1000 + usec // 1000 + ttl_ms
        proposal = await self.store.create_proposal(
            proposal, deadline_ms=deadline_ms,
            expected_votes=len(voters) if voters else request.quorum,
        )
        return coordination_pb2.CreateProposalResponse(proposal=proposal)

    async def CastVote(
        self, request: coordination_pb2.CastVoteRequest, context: Ctx
    ) -> coordination_pb2.CastVoteResponse:
        """See coordination.proto."""
        bad: list[tuple[str, str]] = []
        _name(request.proposal_id, "proposal_id", bad, limit=64)
        _name(request.voter, "voter", bad)
        if request.choice not in (coordination_pb2.VOTE_CHOICE_APPROVE,
                                  coordination_pb2.VOTE_CHOICE_REJECT,
                                  coordination_pb2.VOTE_CHOICE_ABSTAIN):
            bad.append(("choice", "must be APPROVE, REJECT or ABSTAIN"))
        if bad:
            raise InvalidArgument("invalid vote", field_violations=bad)
        authorize_identity(request.voter, field="voter")
        outcome, state = await self.store.vote(request.proposal_id, request.voter, request.choice)
        if outcome == "NOT_FOUND":
            raise NotFound(f"no proposal {request.proposal_id!r}", resource_type="proposal",
                           resource_name=request.proposal_id)
        if outcome == "RESOLVED":
            raise FailedPrecondition(
                f"proposal {request.proposal_id!r} is already {state}",
                violations=[("STATE", request.proposal_id, f"proposal is {state}")],
            )
        if outcome == "NOT_ELIGIBLE":
            raise PermissionDenied(f"{request.voter!r} is not a voter of this proposal")
        if outcome == "CONFLICT":
            raise Aborted(f"{request.voter!r} already voted differently on this proposal")
        proposal = await self.store.get_proposal(request.proposal_id)
        if proposal is None:  # expired from Redis between the two calls
            raise NotFound(f"no proposal {request.proposal_id!r}")
        return coordination_pb2.CastVoteResponse(proposal=proposal)

    async def GetProposal(
        self, request: coordination_pb2.GetProposalRequest, context: Ctx
    ) -> coordination_pb2.GetProposalResponse:
        """See coordination.proto."""
        if not request.proposal_id or len(request.proposal_id) > 64:
            raise InvalidArgument("invalid proposal_id",
                                  field_violations={"proposal_id": "required, 1-64 characters"})
        proposal = await self.store.get_proposal(request.proposal_id)
        if proposal is None:
            raise NotFound(f"no proposal {request.proposal_id!r}", resource_type="proposal",
                           resource_name=request.proposal_id)
        return coordination_pb2.GetProposalResponse(proposal=proposal)
