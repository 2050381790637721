"""Apache Kafka 4.x, single node in KRaft mode, from the Apache jars on Maven Central.

The jars are resolved once with the machine's Maven (``kafka-pom.xml`` beside this file) into
``CACHE_DIR/kafka/VERSION/libs``; when ``KAFKA_HOME`` points to an Apache Kafka install its
``libs/`` is used instead. Storage is formatted once, so data survives ``down``/``up``.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from lifecycle import topics
from lifecycle.stack.base import Launch, MissingToolError, Service, StackError

POM = Path(__file__).with_name("kafka-pom.xml")
LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
    <Logger name="kafka.request.logger" level="WARN"/>
  </Loggers>
</Configuration>
"""


def kafka_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding (as kafka-storage)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):  # Kafka's Uuid.randomUuid avoids ids that look like flags
            return cid


class KafkaService(Service):
    name = "kafka"

    def ports(self) -> list[int]:
        return [self.settings.kafka_port, self.settings.kafka_controller_port]

    @property
    def address(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def libs_dir(self) -> Path:
        home = os.environ.get("KAFKA_HOME")
        if home:
            return Path(home) / "libs"
        return self.settings.cache_dir / "kafka" / self.settings.kafka_version / "libs"

    def required_tools(self) -> list[tuple[str, str]]:
        tools = [("java", "install a Java 17+ runtime (e.g. `apt-get install openjdk-17-jre-headless`)")]
        if not os.environ.get("KAFKA_HOME") and not self._libs_ready():
            tools.append(("mvn", "install Maven (`apt-get install maven`) or set KAFKA_HOME"))
        return tools

    def _libs_ready(self) -> bool:
        return (self.libs_dir / ".complete").exists() or bool(
            os.environ.get("KAFKA_HOME") and any(self.libs_dir.glob("kafka_2.13-*.jar"))
        )

    def prepare(self) -> None:
        if not self._libs_ready():
            self._fetch_jars()
        cfg = self.data_dir / "config"
        cfg.mkdir(parents=True, exist_ok=True)
        (cfg / "log4j2.xml").write_text(LOG4J2)
        (cfg / "server.properties").write_text(self._server_properties())
        if not (self.data_dir / "logs" / "meta.properties").exists():
            self._format()

    def _fetch_jars(self) -> None:
        if os.environ.get("KAFKA_HOME"):
            raise StackError(f"kafka: KAFKA_HOME={os.environ['KAFKA_HOME']} has no kafka_2.13 jars in libs/")
        if shutil.which("mvn") is None:
            raise MissingToolError("kafka: `mvn` is not installed; install Maven or set KAFKA_HOME")
        tmp = self.libs_dir.with_name("libs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            "mvn", "-q", "-B", "-f", str(POM), f"-Dkafka.version={self.settings.kafka_version}",
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(
                f"kafka: Maven could not fetch org.apache.kafka:kafka_2.13:{self.settings.kafka_version}:\n"
                + (done.stdout + done.stderr)[-2000:]
            )
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        tmp.rename(self.libs_dir)
        (self.libs_dir / ".complete").write_text(self.settings.kafka_version + "\n")

    def _server_properties(self) -> str:
        s = self.settings
        # With a user set the client listener takes SASL/SCRAM (only that user, created at format time);
        # the controller listener stays on the node's own address, unauthenticated, as in a one-node KRaft.
        name = "SASL_PLAINTEXT" if s.kafka_username else "PLAINTEXT"
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers={s.host}:{s.kafka_controller_port}",
                f"listeners={name}://{s.host}:{s.kafka_port},CONTROLLER://{s.host}:{s.kafka_controller_port}",
                f"advertised.listeners={name}://{s.host}:{s.kafka_port}",
                "controller.listener.names=CONTROLLER",
                f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{name}:{name}",
                *self._sasl_properties(),
                f"log.dirs={self.data_dir / 'logs'}",
                f"num.partitions={s.kafka_partitions}",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                # A single local node: no reason to wait for more members before the first rebalance.
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )

    def _sasl_properties(self) -> list[str]:
        s = self.settings
        if not s.kafka_username:
            return []
        mech = s.kafka_sasl_mechanism
        if not mech.startswith("SCRAM-"):
            raise StackError(f"kafka: the local broker takes SCRAM-SHA-256 or SCRAM-SHA-512, not {mech}")
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{s.kafka_username}" '
                f'password="{s.kafka_password}";')  # fmt: skip
        return [f"sasl.enabled.mechanisms={mech}", f"sasl.mechanism.inter.broker.protocol={mech}",
                "inter.broker.listener.name=SASL_PLAINTEXT",
                f"listener.name.sasl_plaintext.{mech.lower()}.sasl.jaas.config={jaas}"]  # fmt: skip

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'config' / 'log4j2.xml'}",
            "-cp", f"{self.libs_dir}/*", main, *args,
        ]  # fmt: skip

    def _format(self) -> None:
        props = self.data_dir / "config" / "server.properties"
        cmd = self._java(
            "kafka.tools.StorageTool", "format", "--standalone", "-t", kafka_cluster_id(), "-c", str(props)
        )
        s = self.settings
        if s.kafka_username:  # the SCRAM credential, stored in the cluster metadata from the start
            cmd += ["--add-scram", f"{s.kafka_sasl_mechanism}=[name={s.kafka_username},password={s.kafka_password}]"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise StackError(f"kafka: formatting storage failed:\n{(done.stdout + done.stderr)[-2000:]}")

    def launch(self) -> Launch:
        props = self.data_dir / "config" / "server.properties"
        heap = self.settings.kafka_heap
        argv = self._java("kafka.Kafka", str(props), heap=heap)
        argv.insert(1, f"-Xms{heap}")
        return Launch(argv=argv)

    def probe(self) -> bool:
        from confluent_kafka.admin import AdminClient

        # librdkafka logs every refused connection to stderr; while we poll, that is expected.
        config: dict[str, Any] = {
            **topics.client_config(self.settings),
            "socket.timeout.ms": 2000,
            "logger": topics.quiet_logger(__name__),
        }
        admin = AdminClient(config)
        meta = admin.list_topics(timeout=2)
        return bool(meta.brokers)

    def after_start(self) -> None:
        topics.ensure_topics(self.settings)

    def version(self) -> str:
        jars = sorted(self.libs_dir.glob("kafka_2.13-*.jar"))
        return jars[0].stem.removeprefix("kafka_2.13-") if jars else self.settings.kafka_version
