from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT16: DType
DTYPE_FLOAT32: DType

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushPredictionsRequest(_message.Message):
    __slots__ = ("run_id", "sender_id", "version", "step", "sample_ids", "temperature", "probs", "topk", "uint8")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    TOPK_FIELD_NUMBER: _ClassVar[int]
    UINT8_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    sender_id: int
    version: int
    step: int
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    temperature: float
    probs: Tensor
    topk: TopK
    uint8: Quantized
    def __init__(self, run_id: _Optional[str] = ..., sender_id: _Optional[int] = ..., version: _Optional[int] = ..., step: _Optional[int] = ..., sample_ids: _Optional[_Iterable[int]] = ..., temperature: _Optional[float] = ..., probs: _Optional[_Union[Tensor, _Mapping]] = ..., topk: _Optional[_Union[TopK, _Mapping]] = ..., uint8: _Optional[_Union[Quantized, _Mapping]] = ...) -> None: ...

class TopK(_message.Message):
    __slots__ = ("values", "classes", "num_classes")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    values: Tensor
    classes: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    def __init__(self, values: _Optional[_Union[Tensor, _Mapping]] = ..., classes: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ...) -> None: ...

class Quantized(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushPredictionsResponse(_message.Message):
    __slots__ = ("accepted_version",)
    ACCEPTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted_version: int
    def __init__(self, accepted_version: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeerStatus(_message.Message):
    __slots__ = ("peer_id", "last_version", "messages_received", "bytes_received")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    peer_id: int
    last_version: int
    messages_received: int
    bytes_received: int
    def __init__(self, peer_id: _Optional[int] = ..., last_version: _Optional[int] = ..., messages_received: _Optional[int] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class RegionStatus(_message.Message):
    __slots__ = ("run_id", "region_id", "state", "step", "version", "test_accuracy", "bytes_sent", "bytes_received", "peers", "node_id", "address")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEST_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    region_id: int
    state: str
    step: int
    version: int
    test_accuracy: float
    bytes_sent: int
    bytes_received: int
    peers: _containers.RepeatedCompositeFieldContainer[PeerStatus]
    node_id: str
    address: str
    def __init__(self, run_id: _Optional[str] = ..., region_id: _Optional[int] = ..., state: _Optional[str] = ..., step: _Optional[int] = ..., version: _Optional[int] = ..., test_accuracy: _Optional[float] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., peers: _Optional[_Iterable[_Union[PeerStatus, _Mapping]]] = ..., node_id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...
