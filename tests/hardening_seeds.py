"""Valid requests for the RPCs of the five daemons, the starting points the
hardening tests mutate one field at a time (a request the daemon rejects
for another reason would never reach the code a mutation is meant to hit).

They assume the `mesh` fixture of tests/integration/hardening: an agent
`agent-fuzz-1` with capability `noop` registered, bus topic `fuzz.t1`.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory, text_format

_ENVELOPE = 'topic: "fuzz.t1" payload { bytes_value: "x" }'

#: Full method name → request in protobuf text format.
SEEDS: dict[str, str] = {
    # bus
    "agentmesh.bus.v1.BusService.Publish": f"message {{ {_ENVELOPE} }}",
    "agentmesh.bus.v1.BusService.PublishStream": f"messages {{ {_ENVELOPE} }}",
    "agentmesh.bus.v1.BusService.Subscribe": (
        'open { topic_patterns: "fuzz.t1" consumer_group: "fuzz-g" max_unacked: 10 }'
    ),
    "agentmesh.bus.v1.BusService.Request": (
        'message { topic: "fuzz.t1" payload { bytes_value: "x" } } timeout { nanos: 200000000 }'
    ),
    "agentmesh.bus.v1.BusService.ScatterGather": (
        'message { topic: "fuzz.t1" payload { bytes_value: "x" } } topics: "fuzz.t1"'
        " expected_responses: 1"
        " timeout { nanos: 200000000 }"
    ),
    "agentmesh.bus.v1.BusService.ListDeadLetters": 'topic: "fuzz.t1" page_size: 10',
    "agentmesh.bus.v1.BusService.RedriveDeadLetters": 'topic: "fuzz.t1" max_messages: 1',
    "agentmesh.bus.v1.BusService.CreateTopic": 'topic { name: "fuzz.t2" partitions: 1 }',
    "agentmesh.bus.v1.BusService.ListTopics": 'pattern: "fuzz.*"',
    "agentmesh.bus.v1.BusService.VerifyChain": 'topic: "fuzz.t1" partition: 0 end_offset: 10',
    # router
    "agentmesh.router.v1.RouterService.Route": (
        'message { message_type: "noop" routing_key: "k" } max_targets: 1'
    ),
    "agentmesh.router.v1.RouterService.RouteBatch": 'requests { message { message_type: "noop" } }',
    "agentmesh.router.v1.RouterService.RouteStream": (
        'request_id: "r1" request { message { message_type: "noop" } }'
    ),
    "agentmesh.router.v1.RouterService.Invoke": (
        'message { message_type: "noop" } action: "echo"'
        " retry_policy { max_attempts: 2 initial_backoff { nanos: 1000000 } multiplier: 2"
        " max_backoff { nanos: 5000000 } attempt_timeout { seconds: 2 } }"
    ),
    "agentmesh.router.v1.RouterService.ScatterGather": (
        'message { message_type: "noop" } action: "echo" target_ids: "agent-fuzz-1"'
        " min_responses: 1 timeout { seconds: 2 }"
    ),
    "agentmesh.router.v1.RouterService.CreateRouteRule": (
        'rule { name: "fuzz-rule" priority: 1 condition: "true" target_ids: "agent-fuzz-1" }'
    ),
    "agentmesh.router.v1.RouterService.ListRouteRules": "page_size: 10",
    "agentmesh.router.v1.RouterService.ReportLoad": (
        'agent_id: "agent-fuzz-1" load { cpu_percent: 10 queue_size: 1 capacity: 10 }'
    ),
    "agentmesh.router.v1.RouterService.ListTargetStates": "page_size: 10",
    # registry
    "agentmesh.registry.v1.RegistryService.RegisterAgent": (
        'agent { agent_id: "agent-fuzz-2" agent_type: "Fuzz" version: "1.0.0"'
        ' endpoint: "127.0.0.1:9" capabilities: "fuzz" }'
    ),
    # port 9 (discard) refuses at once: mutations reach the card fetch without waiting on it
    "agentmesh.registry.v1.RegistryService.RegisterA2AAgent": (
        'agent_id: "agent-fuzz-3" agent_card_url: "http://127.0.0.1:9/.well-known/agent-card.json"'
    ),
    "agentmesh.registry.v1.RegistryService.GetAgent": 'agent_id: "agent-fuzz-1"',
    "agentmesh.registry.v1.RegistryService.ListAgents": "page_size: 10",
    "agentmesh.registry.v1.RegistryService.Heartbeat": (
        'agent_id: "agent-fuzz-1" load { cpu_percent: 1 }'
    ),
    "agentmesh.registry.v1.RegistryService.HeartbeatStream": (
        'heartbeats { agent_id: "agent-fuzz-1" }'
    ),
    "agentmesh.registry.v1.RegistryService.DiscoverAgents": (
        'selector { capabilities: "noop" } max_results: 5'
    ),
    "agentmesh.registry.v1.RegistryService.WatchAgents": 'selector { capabilities: "noop" }',
    "agentmesh.registry.v1.CoordinationService.AcquireLock": (
        'resource: "fuzz-lock" owner: "o1" ttl { seconds: 5 }'
    ),
    "agentmesh.registry.v1.CoordinationService.RenewLock": (
        'resource: "fuzz-lock" owner: "o1" fencing_token: 1 ttl { seconds: 5 }'
    ),
    "agentmesh.registry.v1.CoordinationService.ReleaseLock": (
        'resource: "fuzz-lock" owner: "o1" fencing_token: 1'
    ),
    "agentmesh.registry.v1.CoordinationService.CreateProposal": (
        'topic: "fuzz" proposer: "p1" voters: "v1" voters: "v2" quorum: 1'
        " required_approval_ratio: 0.5 ttl { seconds: 30 }"
    ),
    # saga
    "agentmesh.saga.v1.SagaService.StartSaga": (
        'definition { name: "fuzz_saga" steps { name: "a" action: "echo"'
        ' agent_id: "agent-fuzz-1" } }'
    ),
    "agentmesh.saga.v1.SagaService.RegisterSagaDefinition": (
        'definition { name: "fuzz_def" steps { name: "a" action: "echo"'
        ' agent_id: "agent-fuzz-1" } }'
    ),
    "agentmesh.saga.v1.SagaService.GetSagaDefinition": 'name: "fuzz_def"',
    "agentmesh.saga.v1.SagaService.ListSagaDefinitions": "page_size: 10",
    "agentmesh.saga.v1.SagaService.ListSagas": "states: SAGA_STATE_RUNNING page_size: 10",
    # swarm
    "agentmesh.swarm.v1.SwarmService.DeploySwarm": (
        "task { max_iterations: 5 builtin { function: BENCHMARK_FUNCTION_SPHERE"
        " space { dimensions: 2 } } }"
    ),
    "agentmesh.swarm.v1.SwarmService.ListSwarms": "page_size: 10",
}


def seed_for(method: Any) -> Any:
    """A fresh request message for MethodDescriptor `method`: its seed, or an
    empty message when it has none."""
    msg = message_factory.GetMessageClass(method.input_type)()
    text = SEEDS.get(method.full_name)
    if text:
        text_format.Parse(text, msg)
    return msg
