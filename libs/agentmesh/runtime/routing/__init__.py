"""Target choice and guardrails of the one agent path (agentmesh.runtime.agents):
the routing engine, candidate pools, breakers and outlier ejection, rules,
strategies and rate limits, over the mesh's Redis state."""
