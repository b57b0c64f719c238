"""The bus gateway: Kafka-backed publish/subscribe over gRPC (agentmesh.bus.v1.BusService)."""
