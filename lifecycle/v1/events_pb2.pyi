import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingDataArrived(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "dataset", "records", "uri", "params")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    dataset: str
    records: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    uri: str
    params: _struct_pb2.Struct
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset: _Optional[str] = ..., records: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., uri: _Optional[str] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ModelRegistered(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "run_id", "source", "metrics")
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
    event_id: str
    type: str
    occurred_at: _timestamp_pb2.Timestamp
    model_name: str
    version: int
    run_id: str
    source: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., run_id: _Optional[str] = ..., source: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ModelPromoted(_message.Message):
    __slots__ = ("event_id", "type", "occurred_at", "model_name", "version", "alias", "run_id", "metrics", "previous_version", "reason", "digests")
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
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model_name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., run_id: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., previous_version: _Optional[int] = ..., reason: _Optional[str] = ..., digests: _Optional[_Mapping[str, str]] = ...) -> None: ...

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
