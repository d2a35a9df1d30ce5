"""The descriptor pool of poolclient's inference stubs (written by protos/generate.py).

Not protobuf's default pool: tritonclient defines the same names there (see protos/generate.py).
"""
from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
