"""The five AgentMesh daemons, one package each: bus, router, registry, saga, swarm.

This folder is the package `agentmesh.server` (libs/agentmesh/server links
here), so the installed distribution claims no top-level module but
`agentmesh`: `python -m agentmesh.server.<daemon>`, `agentmesh-<daemon>`.
"""

if __name__ == "services":
    # Imported as a top-level package from a checkout: a second copy of every
    # daemon module (and of its Prometheus metrics) would load beside the
    # agentmesh.server one, so refuse with the name to use instead.
    raise ImportError(
        "the daemons are imported as agentmesh.server.<daemon>, not services.<daemon>"
    )
