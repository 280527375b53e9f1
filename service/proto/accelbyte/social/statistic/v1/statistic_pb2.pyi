from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatItem(_message.Message):
    __slots__ = ("namespace", "stat_code", "user_id", "latest_value", "inc")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STAT_CODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LATEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    INC_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    stat_code: str
    user_id: str
    latest_value: float
    inc: float
    def __init__(self, namespace: _Optional[str] = ..., stat_code: _Optional[str] = ..., user_id: _Optional[str] = ..., latest_value: _Optional[float] = ..., inc: _Optional[float] = ...) -> None: ...

class StatItemUpdated(_message.Message):
    __slots__ = ("payload", "id", "version", "name", "namespace", "parent_namespace", "timestamp", "client_id", "user_id", "session_id")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PARENT_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    payload: StatItem
    id: str
    version: int
    name: str
    namespace: str
    parent_namespace: str
    timestamp: str
    client_id: str
    user_id: str
    session_id: str
    def __init__(self, payload: _Optional[_Union[StatItem, _Mapping]] = ..., id: _Optional[str] = ..., version: _Optional[int] = ..., name: _Optional[str] = ..., namespace: _Optional[str] = ..., parent_namespace: _Optional[str] = ..., timestamp: _Optional[str] = ..., client_id: _Optional[str] = ..., user_id: _Optional[str] = ..., session_id: _Optional[str] = ...) -> None: ...
