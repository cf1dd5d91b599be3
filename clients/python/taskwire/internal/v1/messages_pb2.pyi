import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from taskwire.v1 import task_pb2 as _task_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskMessage(_message.Message):
    __slots__ = ("task_id", "kind", "input", "max_attempts", "timeout", "labels", "created_at", "traceparent", "run_at", "run", "parent_id", "fan_in", "child_failure", "cancel_policy")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    MAX_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    RUN_AT_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAN_IN_FIELD_NUMBER: _ClassVar[int]
    CHILD_FAILURE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_POLICY_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: str
    input: _struct_pb2.Value
    max_attempts: int
    timeout: _duration_pb2.Duration
    labels: _containers.ScalarMap[str, str]
    created_at: _timestamp_pb2.Timestamp
    traceparent: str
    run_at: _timestamp_pb2.Timestamp
    run: int
    parent_id: str
    fan_in: FanIn
    child_failure: _task_pb2.ChildFailurePolicy
    cancel_policy: _task_pb2.CancelPolicy
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., max_attempts: _Optional[int] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., traceparent: _Optional[str] = ..., run_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., run: _Optional[int] = ..., parent_id: _Optional[str] = ..., fan_in: _Optional[_Union[FanIn, _Mapping]] = ..., child_failure: _Optional[_Union[_task_pb2.ChildFailurePolicy, str]] = ..., cancel_policy: _Optional[_Union[_task_pb2.CancelPolicy, str]] = ...) -> None: ...

class FanIn(_message.Message):
    __slots__ = ("children", "step_output", "waiting_seq")
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    STEP_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    WAITING_SEQ_FIELD_NUMBER: _ClassVar[int]
    children: _containers.RepeatedCompositeFieldContainer[ChildResult]
    step_output: _struct_pb2.Value
    waiting_seq: int
    def __init__(self, children: _Optional[_Iterable[_Union[ChildResult, _Mapping]]] = ..., step_output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., waiting_seq: _Optional[int] = ...) -> None: ...

class ChildResult(_message.Message):
    __slots__ = ("task_id", "kind", "state", "output", "error")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    kind: str
    state: _task_pb2.TaskState
    output: _struct_pb2.Value
    error: _task_pb2.TaskError
    def __init__(self, task_id: _Optional[str] = ..., kind: _Optional[str] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("task_id", "time", "state", "progress", "attempt", "output", "error", "message", "kind", "run", "worker", "children", "fan_in_kind", "fan_in_of")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    FAN_IN_KIND_FIELD_NUMBER: _ClassVar[int]
    FAN_IN_OF_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    time: _timestamp_pb2.Timestamp
    state: _task_pb2.TaskState
    progress: _task_pb2.Progress
    attempt: int
    output: _struct_pb2.Value
    error: _task_pb2.TaskError
    message: str
    kind: str
    run: int
    worker: str
    children: _containers.RepeatedCompositeFieldContainer[TaskMessage]
    fan_in_kind: str
    fan_in_of: int
    def __init__(self, task_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[_task_pb2.TaskState, str]] = ..., progress: _Optional[_Union[_task_pb2.Progress, _Mapping]] = ..., attempt: _Optional[int] = ..., output: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., error: _Optional[_Union[_task_pb2.TaskError, _Mapping]] = ..., message: _Optional[str] = ..., kind: _Optional[str] = ..., run: _Optional[int] = ..., worker: _Optional[str] = ..., children: _Optional[_Iterable[_Union[TaskMessage, _Mapping]]] = ..., fan_in_kind: _Optional[str] = ..., fan_in_of: _Optional[int] = ...) -> None: ...
