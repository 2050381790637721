import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lifecycle.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingDataArrived(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "dataset", "records", "uri", "params", "base_dataset")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    BASE_DATASET_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    dataset: str
    records: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    uri: str
    params: _struct_pb2.Struct
    base_dataset: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset: _Optional[str] = ..., records: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., uri: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., base_dataset: _Optional[str] = ...) -> None: ...

class GateEvidence(_message.Message):
    __slots__ = ("metric", "test", "n", "candidate", "baseline", "effect", "ci_low", "ci_high", "p_value", "confidence", "margin")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    CI_LOW_FIELD_NUMBER: _ClassVar[int]
    CI_HIGH_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    metric: str
    test: str
    n: int
    candidate: float
    baseline: float
    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    confidence: float
    margin: float
    def __init__(self, metric: _Optional[str] = ..., test: _Optional[str] = ..., n: _Optional[int] = ..., candidate: _Optional[float] = ..., baseline: _Optional[float] = ..., effect: _Optional[float] = ..., ci_low: _Optional[float] = ..., ci_high: _Optional[float] = ..., p_value: _Optional[float] = ..., confidence: _Optional[float] = ..., margin: _Optional[float] = ...) -> None: ...

class ModelRegistered(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "run_id", "source", "metrics", "gate")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    run_id: str
    source: str
    metrics: _containers.ScalarMap[str, float]
    gate: GateEvidence
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., run_id: _Optional[str] = ..., source: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., gate: _Optional[_Union[GateEvidence, _Mapping]] = ...) -> None: ...

class ModelPromoted(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "alias", "run_id", "metrics", "previous_version", "reason", "digests", "gate")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DigestsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    alias: str
    run_id: str
    metrics: _containers.ScalarMap[str, float]
    previous_version: int
    reason: str
    digests: _containers.ScalarMap[str, str]
    gate: GateEvidence
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., run_id: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., previous_version: _Optional[int] = ..., reason: _Optional[str] = ..., digests: _Optional[_Mapping[str, str]] = ..., gate: _Optional[_Union[GateEvidence, _Mapping]] = ...) -> None: ...

class ModelRolledBack(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "alias", "from_version", "reason")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    alias: str
    from_version: int
    reason: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., from_version: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class ModelLoadFailed(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "worker", "error")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    worker: str
    error: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., worker: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class RolloutStarted(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "champion_version", "rollout_id", "policy", "seq", "stage", "share", "reason", "evidence")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    champion_version: int
    rollout_id: str
    policy: str
    seq: int
    stage: str
    share: float
    reason: str
    evidence: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., champion_version: _Optional[int] = ..., rollout_id: _Optional[str] = ..., policy: _Optional[str] = ..., seq: _Optional[int] = ..., stage: _Optional[str] = ..., share: _Optional[float] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RolloutStepped(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "champion_version", "rollout_id", "policy", "seq", "stage", "share", "reason", "evidence")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    champion_version: int
    rollout_id: str
    policy: str
    seq: int
    stage: str
    share: float
    reason: str
    evidence: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., champion_version: _Optional[int] = ..., rollout_id: _Optional[str] = ..., policy: _Optional[str] = ..., seq: _Optional[int] = ..., stage: _Optional[str] = ..., share: _Optional[float] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RolloutPromoted(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "champion_version", "rollout_id", "policy", "seq", "stage", "share", "reason", "evidence")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    champion_version: int
    rollout_id: str
    policy: str
    seq: int
    stage: str
    share: float
    reason: str
    evidence: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., champion_version: _Optional[int] = ..., rollout_id: _Optional[str] = ..., policy: _Optional[str] = ..., seq: _Optional[int] = ..., stage: _Optional[str] = ..., share: _Optional[float] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RolloutRolledBack(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "champion_version", "rollout_id", "policy", "seq", "stage", "share", "reason", "evidence")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHAMPION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    champion_version: int
    rollout_id: str
    policy: str
    seq: int
    stage: str
    share: float
    reason: str
    evidence: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., champion_version: _Optional[int] = ..., rollout_id: _Optional[str] = ..., policy: _Optional[str] = ..., seq: _Optional[int] = ..., stage: _Optional[str] = ..., share: _Optional[float] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class PipelineEvent(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "dag_id", "run_id", "task_id", "state", "try_number")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    DAG_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRY_NUMBER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    dag_id: str
    run_id: str
    task_id: str
    state: str
    try_number: int
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dag_id: _Optional[str] = ..., run_id: _Optional[str] = ..., task_id: _Optional[str] = ..., state: _Optional[str] = ..., try_number: _Optional[int] = ...) -> None: ...

class InferenceJobQueued(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "job_id", "model", "items")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    job_id: str
    model: str
    items: _containers.RepeatedCompositeFieldContainer[JobItem]
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., model: _Optional[str] = ..., items: _Optional[_Iterable[_Union[JobItem, _Mapping]]] = ...) -> None: ...

class JobItem(_message.Message):
    __slots__ = ("id", "prompt", "messages", "max_tokens", "temperature")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_inference_pb2.ChatMessage]
    max_tokens: int
    temperature: float
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_inference_pb2.ChatMessage, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ...) -> None: ...

class InferenceJobCompleted(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "job_id", "model", "status", "total", "completed", "results")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    job_id: str
    model: str
    status: str
    total: int
    completed: int
    results: _containers.RepeatedCompositeFieldContainer[JobResult]
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., job_id: _Optional[str] = ..., model: _Optional[str] = ..., status: _Optional[str] = ..., total: _Optional[int] = ..., completed: _Optional[int] = ..., results: _Optional[_Iterable[_Union[JobResult, _Mapping]]] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("item_id", "text", "finish_reason", "error", "version", "worker", "usage")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    text: str
    finish_reason: str
    error: str
    version: str
    worker: str
    usage: _inference_pb2.Usage
    def __init__(self, item_id: _Optional[str] = ..., text: _Optional[str] = ..., finish_reason: _Optional[str] = ..., error: _Optional[str] = ..., version: _Optional[str] = ..., worker: _Optional[str] = ..., usage: _Optional[_Union[_inference_pb2.Usage, _Mapping]] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "topic", "partition", "offset", "consumer", "error", "attempts", "payload")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    topic: str
    partition: int
    offset: int
    consumer: str
    error: str
    attempts: int
    payload: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., consumer: _Optional[str] = ..., error: _Optional[str] = ..., attempts: _Optional[int] = ..., payload: _Optional[str] = ...) -> None: ...

class FeedbackReceived(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "response_id", "rating", "correction", "comment", "model", "version", "rollout_id", "arm")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_ID_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    response_id: str
    rating: int
    correction: str
    comment: str
    model: str
    version: str
    rollout_id: str
    arm: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., response_id: _Optional[str] = ..., rating: _Optional[int] = ..., correction: _Optional[str] = ..., comment: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., rollout_id: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class RecordDeleted(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "deletion_id", "content_hash", "reason", "datasets", "runs", "model_versions", "retrain_events")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    DELETION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_EVENTS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    deletion_id: str
    content_hash: str
    reason: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    runs: _containers.RepeatedScalarFieldContainer[str]
    model_versions: _containers.RepeatedScalarFieldContainer[str]
    retrain_events: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deletion_id: _Optional[str] = ..., content_hash: _Optional[str] = ..., reason: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., runs: _Optional[_Iterable[str]] = ..., model_versions: _Optional[_Iterable[str]] = ..., retrain_events: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelTainted(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "deletion_id", "run_id", "alias", "retrain_event_id")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DELETION_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    deletion_id: str
    run_id: str
    alias: str
    retrain_event_id: str
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., deletion_id: _Optional[str] = ..., run_id: _Optional[str] = ..., alias: _Optional[str] = ..., retrain_event_id: _Optional[str] = ...) -> None: ...
