"""poolclient: the Python client of poolserve.

It imports and works without onnxruntime or the C kernels installed; the gRPC client itself
arrives with the service (issue 4).
"""

__version__ = "0.1.0"
