"""The registry's checks of an A2A agent card (services/registry/a2a_card.py)."""

from __future__ import annotations

import pytest
from a2a.types import AgentCard, AgentInterface, AgentSkill
from google.rpc import error_details_pb2

from agentmesh.runtime.errors import FailedPrecondition
from agentmesh.server.registry.a2a_card import check_card
from agentmesh.server.registry.validation import card_url_violation


def good(**kw: object) -> AgentCard:
    fields: dict[str, object] = {
        "name": "booking",
        "version": "2",
        "supported_interfaces": [
            AgentInterface(url="https://a.example/rpc", protocol_binding="JSONRPC")
        ],
        "skills": [AgentSkill(id="book", name="book")],
    }
    fields.update(kw)
    return AgentCard(**fields)  # type: ignore[arg-type]


def subjects(card: AgentCard) -> dict[str, str]:
    with pytest.raises(FailedPrecondition) as e:
        check_card(card, card_url="https://a.example/card")
    [pf] = [d for d in e.value.details if isinstance(d, error_details_pb2.PreconditionFailure)]
    assert {v.type for v in pf.violations} == {"A2A_AGENT_CARD"}
    return {v.subject: v.description for v in pf.violations}


def test_a_good_card_gives_semver_and_the_jsonrpc_url() -> None:
    info = check_card(good(), card_url="https://a.example/card")
    assert (info.version, info.url) == ("2.0.0", "https://a.example/rpc")


def test_every_problem_is_one_violation() -> None:
    bad = good(
        name="", version="next", skills=[AgentSkill(id="has space")],
        supported_interfaces=[AgentInterface(url="grpc://x:1", protocol_binding="GRPC")],
    )
    assert set(subjects(bad)) == {"name", "version", "skills[0].id", "supportedInterfaces"}
    assert set(subjects(good(skills=[], version=""))) == {"skills", "version"}


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://exa mple.com/", "http://\u2603\u0000.com", "http://x:99999/",
     "http://a/\x00", "ftp://a/card", "http:///card", "/relative/card.json"],
)
def test_urls_the_fetch_would_choke_on_are_refused_up_front(url: str) -> None:
    assert card_url_violation(url)


def test_good_card_urls_pass() -> None:
    for url in ("https://a.example/.well-known/agent-card.json", "http://127.0.0.1:8080/c",
                "http://[::1]:9/card"):
        assert card_url_violation(url) is None, url
