"""A2A agents in the catalog: fetch an agent card, check it, and map it to an Agent.

An A2A agent (Agent2Agent protocol, https://a2a-protocol.org) describes
itself with an agent card, a JSON document served at a URL (by default
`/.well-known/agent-card.json`). The card is fetched and parsed with the
official SDK (`a2a-sdk`, `A2ACardResolver`), never by hand. The mapping:

| card                         | Agent                                  |
|------------------------------|----------------------------------------|
| name                         | agent_type                             |
| version ("1.0" -> "1.0.0")   | version; metadata["a2a.card_version"]  |
| skills[].id                  | capabilities                           |
| supportedInterfaces JSONRPC  | metadata["a2a.url"], ["a2a.protocol_version"] |
| (the card URL)               | endpoint, protocol = AGENT_PROTOCOL_A2A |
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import semver
from a2a.client import A2ACardResolver, AgentCardResolutionError
from a2a.types import AgentCard
from a2a.utils.constants import TransportProtocol
from google.protobuf import json_format

from agentmesh.registry.v1 import registry_pb2
from agentmesh.runtime.errors import FailedPrecondition, InvalidArgument
from agentmesh.server.registry.store import RegistryStore
from agentmesh.server.registry.validation import LABEL, card_url_violation

#: PreconditionFailure violation type for every problem with a card.
CARD_VIOLATION = "A2A_AGENT_CARD"
#: Metadata keys the registry adds to an A2A agent.
META_CARD_VERSION = "a2a.card_version"
META_URL = "a2a.url"
META_PROTOCOL_VERSION = "a2a.protocol_version"
#: Longest a card fetch may take (registration and health probes), s.
CARD_TIMEOUT_S = 5.0
#: Redis set of the ids registered with RegisterA2AAgent (the prober's work
#: list; ids deregistered since are dropped by the prober).
A2A_SET = "a2a"
#: User metadata entries allowed, leaving room for the keys above (64 in all).
MAX_USER_METADATA = 56


def is_card_url(endpoint: str) -> bool:
    """True when a catalog endpoint is an A2A agent card URL (not host:port)."""
    return endpoint.startswith(("http://", "https://"))


async def fetch_card(url: str, *, timeout_s: float) -> AgentCard:
    """Fetch and parse the agent card at `url`.

    Raises:
        FailedPrecondition: the card cannot be fetched (network error, HTTP
            status) or is not an agent card (JSON, schema); one violation of
            type A2A_AGENT_CARD with the URL as subject.
    """
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        # relative_card_path "/" fetches `url` itself rather than url + the well-known path
        resolver = A2ACardResolver(http, url)
        try:
            return await resolver.get_agent_card(relative_card_path="/")
        except (AgentCardResolutionError, httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
            # the resolver maps network, HTTP, JSON and schema errors; the
            # rest (a URL httpx refuses, a redirect loop) reaches us as is
            raise FailedPrecondition(
                f"cannot read the A2A agent card at {url}",
                violations=[(CARD_VIOLATION, url, str(e)[:512])],
            ) from e


@dataclass(frozen=True, slots=True)
class CardInfo:
    """What the registry keeps from a checked card.

    Attributes:
        version: the card's version as semver ("1.0" becomes "1.0.0").
        url: the JSON-RPC interface URL calls go to.
        protocol_version: that interface's A2A protocol version ("" when unset).
    """

    version: str
    url: str
    protocol_version: str


def check_card(card: AgentCard, *, card_url: str) -> CardInfo:
    """Check that `card` describes an agent the mesh can call.

    Raises:
        FailedPrecondition: one A2A_AGENT_CARD violation per problem (subject
            the card field, e.g. "skills[1].id").
    """
    bad: list[tuple[str, str, str]] = []

    def problem(subject: str, why: str) -> None:
        bad.append((CARD_VIOLATION, subject, why))

    if not card.name:
        problem("name", "required")
    elif len(card.name) > 128:
        problem("name", "at most 128 characters")
    version = ""
    if not card.version:
        problem("version", "required")
    else:
        try:
            version = str(semver.Version.parse(card.version, optional_minor_and_patch=True))
        except ValueError:
            problem("version", f"{card.version!r} is not a version such as 1.0 or 1.2.3")
    if not card.skills:
        problem("skills", "at least one skill (the agent's capabilities)")
    if len(card.skills) > 64:
        problem("skills", "at most 64 skills")
    for i, skill in enumerate(card.skills):
        if not LABEL.match(skill.id):
            problem(f"skills[{i}].id", "1-128 characters of [A-Za-z0-9_.:/@+-]")
    iface = next(
        (
            x
            for x in card.supported_interfaces
            if x.protocol_binding == TransportProtocol.JSONRPC
            and card_url_violation(x.url) is None
        ),
        None,
    )
    if iface is None:
        problem("supportedInterfaces", "needs a JSONRPC interface with an http(s) URL")
    if bad:
        raise FailedPrecondition(f"the agent card at {card_url} is not usable", violations=bad)
    assert iface is not None
    return CardInfo(version=version, url=iface.url, protocol_version=iface.protocol_version)


def check_request(request: registry_pb2.RegisterA2AAgentRequest) -> None:
    """Field checks of a RegisterA2AAgentRequest before anything is fetched.

    Raises:
        InvalidArgument: with one field violation per bad field.
    """
    bad: list[tuple[str, str]] = []
    why = card_url_violation(request.agent_card_url)
    if why:
        bad.append(("agent_card_url", why))
    if len(request.metadata) > MAX_USER_METADATA:
        bad.append(("metadata", f"at most {MAX_USER_METADATA} entries"))
    for key in request.metadata:
        if key.startswith("a2a."):
            bad.append((f"metadata[{key}]", "keys starting with 'a2a.' are the registry's"))
    if bad:
        raise InvalidArgument("invalid RegisterA2AAgent request", field_violations=bad)


def agent_of(
    request: registry_pb2.RegisterA2AAgentRequest, card: AgentCard, info: CardInfo
) -> registry_pb2.Agent:
    """The catalog Agent for a checked card (see the module's mapping table)."""
    agent = registry_pb2.Agent(
        agent_id=request.agent_id,
        agent_type=card.name,
        version=info.version,
        capabilities=[s.id for s in card.skills],
        service_types=list(request.service_types),
        tags=list(request.tags),
        endpoint=request.agent_card_url,
        location=request.location,
        metadata=dict(request.metadata),
        protocol=registry_pb2.AGENT_PROTOCOL_A2A,
    )
    if request.HasField("heartbeat_interval"):
        agent.heartbeat_interval.CopyFrom(request.heartbeat_interval)
    agent.metadata[META_CARD_VERSION] = card.version
    agent.metadata[META_URL] = info.url
    if info.protocol_version:
        agent.metadata[META_PROTOCOL_VERSION] = info.protocol_version
    return agent


def card_json(card: AgentCard) -> str:
    """The card in its JSON form (camelCase field names, as served)."""
    return json_format.MessageToJson(card, indent=None)


def a2a_key(store: RegistryStore) -> str:
    """The Redis set of A2A agent ids."""
    return store.p + A2A_SET


async def remember(store: RegistryStore, agent_id: str) -> None:
    """Add `agent_id` to the prober's work list."""
    await store.r.sadd(a2a_key(store), agent_id)
