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
    FLOAT32: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    INT8: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    INT64: _ClassVar[DType]

class Layout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNELS_FIRST: _ClassVar[Layout]
    CHANNELS_LAST: _ClassVar[Layout]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MAX: _ClassVar[Mode]
    AVG: _ClassVar[Mode]
    LP: _ClassVar[Mode]

class AutoPad(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOTSET: _ClassVar[AutoPad]
    SAME_UPPER: _ClassVar[AutoPad]
    SAME_LOWER: _ClassVar[AutoPad]
    VALID: _ClassVar[AutoPad]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT64: DType
FLOAT16: DType
BFLOAT16: DType
INT8: DType
UINT8: DType
INT64: DType
CHANNELS_FIRST: Layout
CHANNELS_LAST: Layout
MODE_UNSPECIFIED: Mode
MAX: Mode
AVG: Mode
LP: Mode
NOTSET: AutoPad
SAME_UPPER: AutoPad
SAME_LOWER: AutoPad
VALID: AutoPad

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "layout", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    layout: Layout
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., layout: _Optional[_Union[Layout, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PoolSpec(_message.Message):
    __slots__ = ("mode", "kernel_shape", "strides", "pads", "auto_pad", "dilations", "ceil_mode", "count_include_pad", "p", "return_indices", "global_pool", "backend", "provider")
    MODE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SHAPE_FIELD_NUMBER: _ClassVar[int]
    STRIDES_FIELD_NUMBER: _ClassVar[int]
    PADS_FIELD_NUMBER: _ClassVar[int]
    AUTO_PAD_FIELD_NUMBER: _ClassVar[int]
    DILATIONS_FIELD_NUMBER: _ClassVar[int]
    CEIL_MODE_FIELD_NUMBER: _ClassVar[int]
    COUNT_INCLUDE_PAD_FIELD_NUMBER: _ClassVar[int]
    P_FIELD_NUMBER: _ClassVar[int]
    RETURN_INDICES_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_POOL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    kernel_shape: _containers.RepeatedScalarFieldContainer[int]
    strides: _containers.RepeatedScalarFieldContainer[int]
    pads: _containers.RepeatedScalarFieldContainer[int]
    auto_pad: AutoPad
    dilations: _containers.RepeatedScalarFieldContainer[int]
    ceil_mode: bool
    count_include_pad: bool
    p: float
    return_indices: bool
    global_pool: bool
    backend: str
    provider: str
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., kernel_shape: _Optional[_Iterable[int]] = ..., strides: _Optional[_Iterable[int]] = ..., pads: _Optional[_Iterable[int]] = ..., auto_pad: _Optional[_Union[AutoPad, str]] = ..., dilations: _Optional[_Iterable[int]] = ..., ceil_mode: _Optional[bool] = ..., count_include_pad: _Optional[bool] = ..., p: _Optional[float] = ..., return_indices: _Optional[bool] = ..., global_pool: _Optional[bool] = ..., backend: _Optional[str] = ..., provider: _Optional[str] = ...) -> None: ...

class PoolRequest(_message.Message):
    __slots__ = ("input", "spec")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    input: Tensor
    spec: PoolSpec
    def __init__(self, input: _Optional[_Union[Tensor, _Mapping]] = ..., spec: _Optional[_Union[PoolSpec, _Mapping]] = ...) -> None: ...

class PoolResponse(_message.Message):
    __slots__ = ("output", "indices", "backend", "provider")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    output: Tensor
    indices: Tensor
    backend: str
    provider: str
    def __init__(self, output: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ..., backend: _Optional[str] = ..., provider: _Optional[str] = ...) -> None: ...

class PoolChunkedRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PoolRequest
    chunk: bytes
    def __init__(self, header: _Optional[_Union[PoolRequest, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PoolChunkedResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: PoolResponse
    chunk: bytes
    def __init__(self, header: _Optional[_Union[PoolResponse, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PoolBackwardRequest(_message.Message):
    __slots__ = ("spec", "input_shape", "grad_output", "indices", "input")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    GRAD_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    spec: PoolSpec
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    grad_output: Tensor
    indices: Tensor
    input: Tensor
    def __init__(self, spec: _Optional[_Union[PoolSpec, _Mapping]] = ..., input_shape: _Optional[_Iterable[int]] = ..., grad_output: _Optional[_Union[Tensor, _Mapping]] = ..., indices: _Optional[_Union[Tensor, _Mapping]] = ..., input: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PoolBackwardResponse(_message.Message):
    __slots__ = ("grad_input", "backend", "provider")
    GRAD_INPUT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    grad_input: Tensor
    backend: str
    provider: str
    def __init__(self, grad_input: _Optional[_Union[Tensor, _Mapping]] = ..., backend: _Optional[str] = ..., provider: _Optional[str] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackendInfo(_message.Message):
    __slots__ = ("name", "available", "reason", "providers", "isa", "threads")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ISA_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    reason: str
    providers: _containers.RepeatedScalarFieldContainer[str]
    isa: str
    threads: int
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ..., providers: _Optional[_Iterable[str]] = ..., isa: _Optional[str] = ..., threads: _Optional[int] = ...) -> None: ...

class ModeDTypes(_message.Message):
    __slots__ = ("mode", "dtypes")
    MODE_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    dtypes: _containers.RepeatedScalarFieldContainer[DType]
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., dtypes: _Optional[_Iterable[_Union[DType, str]]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_elements", "max_concurrent_rpcs", "max_spatial_rank")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_RPCS_FIELD_NUMBER: _ClassVar[int]
    MAX_SPATIAL_RANK_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_elements: int
    max_concurrent_rpcs: int
    max_spatial_rank: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_elements: _Optional[int] = ..., max_concurrent_rpcs: _Optional[int] = ..., max_spatial_rank: _Optional[int] = ...) -> None: ...

class PolicyEntry(_message.Message):
    __slots__ = ("mode", "window", "dtype", "min_bytes", "max_bytes", "backend", "micros")
    class MicrosEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MICROS_FIELD_NUMBER: _ClassVar[int]
    mode: Mode
    window: str
    dtype: DType
    min_bytes: int
    max_bytes: int
    backend: str
    micros: _containers.ScalarMap[str, float]
    def __init__(self, mode: _Optional[_Union[Mode, str]] = ..., window: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., min_bytes: _Optional[int] = ..., max_bytes: _Optional[int] = ..., backend: _Optional[str] = ..., micros: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "pid", "worker_index", "workers", "default_backend", "backends", "dtypes", "limits", "worker_threads", "cpu_count", "policy", "policy_source")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    WORKER_INDEX_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_BACKEND_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    WORKER_THREADS_FIELD_NUMBER: _ClassVar[int]
    CPU_COUNT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    version: str
    pid: int
    worker_index: int
    workers: int
    default_backend: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendInfo]
    dtypes: _containers.RepeatedCompositeFieldContainer[ModeDTypes]
    limits: Limits
    worker_threads: int
    cpu_count: int
    policy: _containers.RepeatedCompositeFieldContainer[PolicyEntry]
    policy_source: str
    def __init__(self, version: _Optional[str] = ..., pid: _Optional[int] = ..., worker_index: _Optional[int] = ..., workers: _Optional[int] = ..., default_backend: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendInfo, _Mapping]]] = ..., dtypes: _Optional[_Iterable[_Union[ModeDTypes, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., worker_threads: _Optional[int] = ..., cpu_count: _Optional[int] = ..., policy: _Optional[_Iterable[_Union[PolicyEntry, _Mapping]]] = ..., policy_source: _Optional[str] = ...) -> None: ...
