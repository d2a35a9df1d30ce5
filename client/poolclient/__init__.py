"""poolclient: the Python client of poolserve (max, average and Lp pooling over gRPC).

    from poolclient import PoolClient
    with PoolClient("127.0.0.1:50051") as client:
        y = client.max_pool(x, kernel_size=2)

It needs numpy, grpcio and protobuf only: no onnxruntime, no C kernels.
"""

from ._calls import TLS
from .aio import AsyncPoolClient
from .client import PoolClient
from .errors import (Cancelled, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, PoolError,
                     ResourceExhausted, Unavailable, Unimplemented)
from .specs import Spec

__version__ = "0.1.0"
__all__ = ["PoolClient", "AsyncPoolClient", "Spec", "TLS", "PoolError", "InvalidArgument", "ResourceExhausted",
           "FailedPrecondition", "DeadlineExceeded", "Unavailable", "Internal", "Cancelled", "Unimplemented"]
