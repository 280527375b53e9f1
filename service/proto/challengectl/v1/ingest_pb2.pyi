import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_KIND_UNSPECIFIED: _ClassVar[EventKind]
    EVENT_KIND_LOGIN: _ClassVar[EventKind]
    EVENT_KIND_STAT: _ClassVar[EventKind]
EVENT_KIND_UNSPECIFIED: EventKind
EVENT_KIND_LOGIN: EventKind
EVENT_KIND_STAT: EventKind

class Event(_message.Message):
    __slots__ = ("id", "user_id", "namespace", "kind", "stat_code", "latest_value", "inc", "timestamp")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STAT_CODE_FIELD_NUMBER: _ClassVar[int]
    LATEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    INC_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    namespace: str
    kind: EventKind
    stat_code: str
    latest_value: float
    inc: float
    timestamp: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., namespace: _Optional[str] = ..., kind: _Optional[_Union[EventKind, str]] = ..., stat_code: _Optional[str] = ..., latest_value: _Optional[float] = ..., inc: _Optional[float] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("batch_id", "events")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, batch_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class EventRejection(_message.Message):
    __slots__ = ("index", "event_id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    event_id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., event_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PublishResult(_message.Message):
    __slots__ = ("batch_id", "accepted", "duplicates", "skipped", "rejected", "committed")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    accepted: int
    duplicates: int
    skipped: int
    rejected: _containers.RepeatedCompositeFieldContainer[EventRejection]
    committed: bool
    def __init__(self, batch_id: _Optional[str] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., skipped: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[EventRejection, _Mapping]]] = ..., committed: _Optional[bool] = ...) -> None: ...
