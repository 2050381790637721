"""The one settings object of llm-lifecycle.

Every service and command reads a ``Settings`` passed in (``load_settings()`` at the edge, never a
module-level instance). Values come from ``LIFECYCLE_*`` environment variables; ``MLFLOW_TRACKING_URI``
is honoured as MLflow users expect. An unknown ``LIFECYCLE_*`` variable or an invalid value fails at
start with a ``SettingsError`` naming the variable (and the allowed values, where there is a set).
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "LIFECYCLE_"


class SettingsError(ValueError):
    """A setting is unknown or invalid; the message names the environment variable."""


def _default_home() -> Path:
    return Path(os.path.expanduser("~/.local/share/llm-lifecycle"))


def _default_cache() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "llm-lifecycle"


Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    """Settings for the local stack, training and serving. Env prefix ``LIFECYCLE_``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    home: Path = Field(default_factory=_default_home, description="State dir: data, logs, pids.")
    cache_dir: Path = Field(
        default_factory=_default_cache,
        description="Downloads kept across state resets: Kafka jars, FerretDB binary, model cache.",
    )
    host: str = Field("127.0.0.1", description="Address every local service binds to.")

    kafka_port: Port = Field(9092, description="Kafka broker port (the controller uses port+1).")
    kafka_bootstrap: str = Field("", description="Bootstrap servers; default HOST:KAFKA_PORT.")
    kafka_version: str = Field("4.1.1", description="Apache Kafka version fetched from Maven Central.")
    kafka_heap: str = Field("512m", description="Kafka broker JVM heap (-Xmx).")
    kafka_username: str = Field(
        "",
        description="SASL/SCRAM user of every Kafka client (and of the local broker, which then listens with "
        "SASL_PLAINTEXT and knows only this user); empty = no authentication.",
    )
    kafka_password: str = Field("", repr=False, description="SASL/SCRAM password of KAFKA_USERNAME.")
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when KAFKA_USERNAME is set."
    )
    kafka_security_protocol: Literal["", "SASL_PLAINTEXT", "SASL_SSL", "PLAINTEXT", "SSL"] = Field(
        "", description="Kafka security protocol; empty = SASL_PLAINTEXT with a user, else PLAINTEXT."
    )
    kafka_partitions: int = Field(3, ge=1, description="Partitions of each lifecycle topic.")

    mongo_port: Port = Field(27017, description="MongoDB wire-protocol port.")
    mongo_uri: str = Field("", description="MongoDB URI; default mongodb://HOST:MONGO_PORT/.")
    mongo_db: str = Field("lifecycle", description="Database name.")
    mongo_backend: Literal["auto", "mongod", "ferretdb"] = Field(
        "auto", description="Local server: mongod if on PATH (auto), else FerretDB with SQLite."
    )

    mlflow_port: Port = Field(5000, description="MLflow tracking server port.")
    mlflow_tracking_uri: str = Field(
        "",
        validation_alias=AliasChoices("LIFECYCLE_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"),
        description="Tracking URI (MLFLOW_TRACKING_URI also read); default http://HOST:MLFLOW_PORT.",
    )
    mlflow_tracking_username: str = Field(
        "",
        validation_alias=AliasChoices("MLFLOW_TRACKING_USERNAME"),
        description="MLflow's own variable: the user every MLflow client sends (HTTP basic auth); with it the local "
        "MLflow server (`lifecycle up`) runs MLflow's basic-auth app with this user as its admin.",
    )
    mlflow_tracking_password: str = Field(
        "",
        repr=False,
        validation_alias=AliasChoices("MLFLOW_TRACKING_PASSWORD"),
        description="Password of that MLflow user.",
    )

    airflow_port: Port = Field(
        8080, description="Airflow api-server (UI + REST) port; its log servers use port+1 and port+2."
    )
    airflow_db_url: str = Field("", description="Airflow metadata DB URL; default SQLite in HOME.")
    airflow_admin_user: str = Field("admin", description="Airflow admin user name.")
    airflow_parallelism: int = Field(2, ge=1, description="Task slots of the LocalExecutor.")

    gateway_port: Port = Field(8000, description="REST gateway port.")
    worker_port: Port = Field(50051, description="First gRPC inference worker port.")
    workers: int = Field(
        0,
        ge=0,
        description="Inference workers started by `lifecycle serve`; 0 = one per GPU, else one per 16 CPU cores "
        "(one engine batching on every core beats several splitting them, and keeps one copy of the weights).",
    )
    resident_versions: int = Field(
        8,
        ge=1,
        description="Model versions a worker keeps in memory (LoRA adapters on one resident base); "
        "the least recently used beyond this are dropped and loaded again when asked for.",
    )
    alias_poll_seconds: float = Field(
        30.0,
        gt=0,
        description="How often a worker compares what it serves with the registry's champion alias and follows "
        "it (model events make it follow at once; the poll catches a missed event or a restarted peer).",
    )
    worker_addresses: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="gRPC addresses the gateway routes to, comma-separated (e.g. dns:///workers:50051); "
        "default HOST:WORKER_PORT+i for i < WORKERS.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; empty disables auth."
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="API keys that may steer rollouts over REST (comma-separated; also valid as API keys). "
        "With API keys set and none of these, the admin routes are closed.",
    )
    allow_open_gateway: bool = Field(
        False,
        description="Let the gateway listen beyond loopback without API keys (only behind a proxy that "
        "authenticates); otherwise it refuses to start.",
    )
    rate_limit_per_minute: int = Field(
        600, ge=0, description="Gateway requests a minute per API key (with keys set); 0 = no limit."
    )
    token_limit_per_minute: int = Field(
        200_000,
        ge=0,
        description="Tokens a minute per API key (with keys set): each request's max_tokens plus its prompt "
        "(about 4 bytes a token), a job's summed over its items; 0 = no limit.",
    )
    inference_log_days: float = Field(
        30.0,
        ge=0,
        description="Days the gateway keeps inference-log records; older ones are deleted (swept hourly); "
        "0 = kept for ever.",
    )
    inference_log_content: Literal["full", "metadata"] = Field(
        "full",
        description="What the inference log keeps of a request: `full` (prompt, messages and answer) or "
        "`metadata` (model, version, tokens, latency, finish reason and a sha256 of the prompt and of the answer).",
    )

    rollout_policy: Literal["direct", "shadow", "canary"] = Field(
        "direct",
        description="How a version that passes the gate reaches users: direct (champion at once), canary "
        "(steps of users, decided on live evidence) or shadow (mirrored first, then canary).",
    )
    rollout_steps: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Canary steps, percent of users answered by the challenger, comma-separated.",
    )
    rollout_shadow_share: float = Field(0.25, gt=0, le=1, description="Share of requests mirrored in a shadow stage.")
    rollout_shadow_budget: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Share of a worker's engine time shadow requests may take while user requests run (0: idle only).",
    )
    rollout_margin: float = Field(
        0.15, gt=0, lt=1, description="A bad-answer rate this far above the champion's rolls a challenger back."
    )
    rollout_min_requests: int = Field(20, ge=1, description="Challenger answers a rollout stage needs to step up.")
    k8s_namespace: str = Field("llm-lifecycle", description="Namespace of training pods (kubernetes backend).")
    trainer_image: str = Field(
        "ghcr.io/llm-lifecycle/trainer:0.1.0", description="Image of training pods (kubernetes backend)."
    )
    trainer_gpus: int = Field(0, ge=0, description="nvidia.com/gpu per training pod; 0 trains on CPU.")
    trainer_cpu: str = Field("4", description="CPU request and limit of a training pod.")
    trainer_memory: str = Field("16Gi", description="Memory request and limit of a training pod.")
    trainer_node_selector: dict[str, str] = Field(
        default_factory=dict, description='Node selector of training pods, JSON (e.g. {"gpu": "a100"}).'
    )
    trainer_tolerations: list[dict[str, str]] = Field(
        default_factory=list, description="Tolerations of training pods, JSON list of Kubernetes tolerations."
    )
    hub_offline: bool = Field(
        True,
        description="Trainer pods may not reach the Hugging Face hub (HF_HUB_OFFLINE=1); false lets them "
        "download a base model given as a hub id, cached on the shared volume (HF_HOME under LIFECYCLE_HOME).",
    )
    trainer_env_secret: str = Field(
        "",
        description="Kubernetes Secret whose keys become every training pod's environment (the chart's "
        "`<release>-llm-lifecycle-secrets`: MongoDB URI, Kafka and MLflow credentials), so the pod spec holds "
        "no credential; without it a setting with a password refuses to be written into a pod spec.",
    )
    shared_volume_claim: str = Field(
        "llm-lifecycle-state", description="PVC holding LIFECYCLE_HOME, mounted by Airflow workers and trainer pods."
    )

    base_model: str = Field("HuggingFaceTB/SmolLM2-135M-Instruct", description="Base model: hub id or local HF folder.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of evaluation and serving; auto: measured per device (runtime/hardware.py)."
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N.")
    stream_interval: float = Field(
        0.05, ge=0, le=5,
        description="Seconds a worker's stream waits at least between two messages of one answer: tokens made "
        "meanwhile go out together (0: a message every token). The first token and the last go out at once.",
    )  # fmt: skip
    stream_rate: float = Field(
        200, ge=0,
        description="Messages per second a worker's streams send at most together: with n answers streaming, each "
        "waits at least n / this between two messages (and at least LIFECYCLE_STREAM_INTERVAL), so a full batch "
        "sends a few tokens a message instead of a message a token. 0: no such limit.",
    )  # fmt: skip
    serve_weights: Literal["auto", "float", "int8"] = Field(
        "auto",
        description="Weights of a worker's resident base: int8 (int8 weights and activations, SmoothQuant, "
        "CPU only), float (LIFECYCLE_DTYPE), or auto: int8 where a timed probe shows int8 matmuls 1.5x faster and "
        "the model's quality holds (NLL on a check text +2 % at most, next-token agreement with float >= 93 %; "
        "serving/worker/int8.py).",
    )
    model_name: str = Field("lifecycle-assistant", description="Registered model name in MLflow.")
    retrain_schedule: str = Field("0 3 * * 0", description="Cron of scheduled retraining.")
    dags_paused: bool = Field(
        False, description="Create new DAGs paused (Airflow's dags_are_paused_at_creation). Default: the scheduled "
        "and event-driven DAGs run as soon as Airflow parses them, and a run triggered through the API starts.",
    )  # fmt: skip
    curate_min_feedback: int = Field(
        50, ge=1, description="Feedback items not curated yet that start a curation (llm_curate) when they arrive."
    )
    curate_schedule: str = Field(
        "0 2 * * *", description="Cron of llm_curate's run on whatever feedback is pending (empty: on events only)."
    )
    taint_margin: float = Field(
        0.05, ge=0, le=1,
        description="Against a tainted champion (trained on a deleted record) the gate promotes a candidate that is "
        "not worse by more than this (non-inferiority), instead of asking for an improvement.",
    )  # fmt: skip
    retry_delay: float = Field(
        15.0, gt=0, le=300,
        description="Seconds before a failed DAG task's first retry; each later one waits about twice as long "
        "(Airflow's exponential backoff, at most 5 minutes).",
    )  # fmt: skip
    startup_timeout: float = Field(180.0, gt=0, description="Seconds to wait for each service.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level of our processes.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Logs of the gateway and workers: text lines, or one JSON object per line."
    )
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated local folders training data may be read from (empty: any local path "
        "outside the state dir); object-store URIs (s3://…) are not affected.",
    )
    max_dataset_bytes: int = Field(4 << 30, gt=0, description="Largest training-data source accepted, in bytes.")
    notify_email: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated addresses told by mail when a lifecycle DAG run fails."
    )
    notify_webhook: str = Field(
        "", description="URL that gets a JSON POST (Slack-compatible `text`) when a lifecycle DAG run fails."
    )
    smtp_url: str = Field(
        "smtp://127.0.0.1:25", pattern=r"^smtps?://",
        description="Mail server of the failure notices: smtp://[user:password@]host:port (STARTTLS when offered), "
        "smtps:// for TLS from the start.",
    )  # fmt: skip
    notify_from: str = Field("llm-lifecycle@localhost", description="Sender address of the failure notices.")
    event_params: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Params a training-data event may set beyond the training recipe, comma-separated "
        "(base_model, model_name, promotion_margin, …): only for producers you trust.",
    )

    @field_validator("rollout_steps", mode="before")
    @classmethod
    def _steps(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = [float(p) for p in value.split(",") if p.strip()]
            except ValueError:
                raise ValueError("steps are percentages, e.g. 5,25,50,100") from None
        return value

    @field_validator("rollout_steps", mode="after")
    @classmethod
    def _rising(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < p <= 100 for p in value) or value != sorted(set(value)) or value[-1] != 100:
            raise ValueError("steps must rise within (0, 100] and end at 100, e.g. 5,25,50,100")
        return value

    @field_validator("api_keys", "admin_keys", "worker_addresses", "event_params", "data_roots", "notify_email",
                     mode="before")  # fmt: skip
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("home", "cache_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.kafka_port + 1 > 65535:
            raise ValueError("kafka_port must leave port+1 free for the KRaft controller")
        if self.airflow_port + 2 > 65535:
            raise ValueError("airflow_port must leave port+1 and port+2 free for Airflow's log servers")
        if not self.kafka_bootstrap:
            self.kafka_bootstrap = f"{self.host}:{self.kafka_port}"
        if bool(self.kafka_username) != bool(self.kafka_password):
            raise ValueError("kafka_username and kafka_password go together: set both or neither")
        if bool(self.mlflow_tracking_username) != bool(self.mlflow_tracking_password):
            raise ValueError("MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD go together: set both or neither")
        if not self.mongo_uri:
            self.mongo_uri = f"mongodb://{self.host}:{self.mongo_port}/"
        if not self.mlflow_tracking_uri:
            self.mlflow_tracking_uri = f"http://{self.host}:{self.mlflow_port}"
        return self

    # Paths under the state and cache dirs, in one place: every module asks these, none builds its own.
    logs_dir = property(lambda self: self.home / "logs", doc="Logs of the local stack and serving processes.")
    run_dir = property(lambda self: self.home / "run", doc="Pid files.")
    datasets_dir = property(lambda self: self.home / "datasets", doc="Ingested datasets, a folder per id.")
    runs_dir = property(lambda self: self.home / "runs", doc="Training runs' outputs, a folder per run id.")
    serving_dir = property(lambda self: self.home / "serving", doc="Versions a worker downloads, until loaded.")
    models_dir = property(lambda self: self.cache_dir / "models", doc="Base models (the model cache).")

    def service_data_dir(self, service: str) -> Path:
        """Data of one local-stack service (Kafka log dirs, FerretDB, MLflow, Airflow)."""
        return self.home / "data" / service

    def worker_count(self) -> int:
        """``workers``, or where it is 0 what the machine suits: one per GPU, else one per 16 CPU cores."""
        if self.workers:
            return self.workers
        gpus = len(glob.glob("/dev/nvidia[0-9]*"))
        return gpus or max(1, (os.cpu_count() or 1) // 16)

    @property
    def kafka_controller_port(self) -> int:
        return self.kafka_port + 1


def _env_name(field: str) -> str:
    info = Settings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def known_env_vars() -> set[str]:
    names = {_env_name(f) for f in Settings.model_fields}
    return names | {"MLFLOW_TRACKING_URI"}


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; raise ``SettingsError`` naming the bad variable."""
    known = known_env_vars()
    unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        raise SettingsError(
            f"unknown setting {unknown[0]}; known LIFECYCLE_ variables: "
            + ", ".join(sorted(n for n in known if n.startswith(ENV_PREFIX)))
        )
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        field = loc[0] if loc else ""
        name = _env_name(field) if field in Settings.model_fields else (field or "settings")
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        parts.append(f"{name}: {err['msg']}{shown}")
    return "invalid setting " + "; ".join(parts)
