"""poolserve: max, average and Lp pooling as a service.

The pooling rules live in :mod:`poolserve.spec`, the numpy oracle in :mod:`poolserve.reference`,
the backends under :mod:`poolserve.backends`.
"""

from .spec import PoolSpec, SpecError

__version__ = "0.1.0"
__all__ = ["PoolSpec", "SpecError", "__version__"]
