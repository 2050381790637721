"""The inference worker process: ``server`` wires the engine, the gRPC services and the Kafka consumers."""
