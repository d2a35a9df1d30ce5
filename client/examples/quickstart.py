import numpy as np
from poolclient import PoolClient

with PoolClient("127.0.0.1:50051") as client:
    print(client.max_pool(np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4), kernel_size=2))
