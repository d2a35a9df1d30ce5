"""Protocol adapters ("servicers"): protobuf <-> numpy and PoolSpec, nothing about kernels.

Each hands its requests to :class:`poolserve.dispatch.Dispatcher`; :mod:`.scope` gives every
RPC the same request id, error mapping, log line and metrics.
"""
