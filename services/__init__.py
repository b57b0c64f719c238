"""The five AgentMesh daemons, one package each: bus, router, registry, saga, swarm."""
