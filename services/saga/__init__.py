"""The saga coordinator daemon: durable compensating transactions and pipelines."""
