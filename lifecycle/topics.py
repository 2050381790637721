"""Kafka topics of SPEC.md and the client configurations every producer and consumer uses."""

from __future__ import annotations

import logging
from typing import Any

from lifecycle.settings import Settings

TRAINING_DATA = "lifecycle.training-data"
MODEL_EVENTS = "lifecycle.model-events"
INFERENCE_REQUESTS = "lifecycle.inference-requests"
INFERENCE_RESULTS = "lifecycle.inference-results"
PIPELINE_EVENTS = "lifecycle.pipeline-events"
FEEDBACK = "lifecycle.feedback"


def dlq(topic: str) -> str:
    """Where a consumer puts a message of ``topic`` it gave up on (``DeadLetter`` events)."""
    return f"{topic}.dlq"


#: Topics the project itself consumes: each has its dead-letter topic.
CONSUMED = (TRAINING_DATA, MODEL_EVENTS, INFERENCE_REQUESTS)
ALL = (TRAINING_DATA, MODEL_EVENTS, INFERENCE_REQUESTS, INFERENCE_RESULTS, PIPELINE_EVENTS, FEEDBACK,
       *map(dlq, CONSUMED))  # fmt: skip


def client_config(settings: Settings) -> dict[str, Any]:
    """Where the brokers are and how to authenticate to them (SASL/SCRAM when a user is set): the part of
    every Kafka client's configuration in the project (producers, consumers, admin, Airflow's connection)."""
    conf: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap}
    protocol = settings.kafka_security_protocol or ("SASL_PLAINTEXT" if settings.kafka_username else "")
    if protocol:
        conf["security.protocol"] = protocol
    if settings.kafka_username:
        conf.update({"sasl.mechanism": settings.kafka_sasl_mechanism, "sasl.username": settings.kafka_username,
                     "sasl.password": settings.kafka_password})  # fmt: skip
    return conf


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """Idempotent producer: acks=all, no duplicates on retry, order kept per partition."""
    return {
        **client_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        **extra,
    }


SESSION_TIMEOUT_MS = 10_000


def consumer_config(settings: Settings, group_id: str, **extra: Any) -> dict[str, Any]:
    """Consumer that commits only when told to (after its side effect), from the earliest offset.
    A member that dies (kill -9, OOM) holds its partitions until its session times out: 10 s here,
    not Kafka's default 45 s (heartbeats come from librdkafka's own thread, so a busy process does
    not miss them). Airflow's ``lifecycle_kafka`` connection sets the same."""
    return {
        **client_config(settings),
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        **extra,
    }


def ensure_topics(settings: Settings, names: tuple[str, ...] = ALL, timeout: float = 30.0) -> list[str]:
    """Create the missing topics; returns the names created. Idempotent."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(settings))
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(name, num_partitions=settings.kafka_partitions, replication_factor=1)
        for name in names
        if name not in existing
    ]
    if not wanted:
        return []
    created = []
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return created


def quiet_logger(name: str) -> logging.Logger:
    """A logger for librdkafka's own lines (``"logger"`` of a client config): they go nowhere. A broker
    that is briefly away is retried by the client and reported by our own code, not by a stream of
    librdkafka warnings in every process's log."""
    quiet = logging.getLogger(f"{name}.kafka")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    return quiet
