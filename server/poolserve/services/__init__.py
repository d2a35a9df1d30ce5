"""Protocol adapters ("servicers"): protobuf <-> numpy and PoolSpec, nothing about kernels.

:mod:`.pooling` is the native API (poolserve.v1.Pooling); :mod:`.inference` the Open Inference
Protocol (inference.GRPCInferenceService), with its tensor coding in :mod:`.oip_tensors`.

Each hands its requests to :class:`poolserve.dispatch.Dispatcher`; :mod:`.scope` gives every
RPC the same request id, error mapping, log line and metrics.
"""
