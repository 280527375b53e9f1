from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class UserLoggedIn(_message.Message):
    __slots__ = ("id", "namespace", "timestamp", "user_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    namespace: str
    timestamp: str
    user_id: str
    def __init__(self, id: _Optional[str] = ..., namespace: _Optional[str] = ..., timestamp: _Optional[str] = ..., user_id: _Optional[str] = ...) -> None: ...
