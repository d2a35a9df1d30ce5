"""System shared memory for the Open Inference Protocol: registered regions, checked accesses.

A client on the same host creates a POSIX shared-memory object (shm_open; tritonclient's
``tritonclient.utils.shared_memory`` does), registers ``byte_size`` bytes of it at ``offset``
under a name, and then names (region, offset, byte_size) in an inference instead of sending the
tensor's bytes.  The server maps the object once, at registration.

Every access is checked, because the numbers come from the network:

* at registration: the key names one object directly under /dev/shm (no path tricks), and
  ``offset + byte_size`` lies inside the object's current size;
* at every read and write: ``offset + size`` lies inside the registered ``byte_size``, and the
  object has not shrunk since (a client that truncates it would otherwise make our copy touch
  unmapped pages: SIGBUS, the whole server gone).  A truncation racing with the copy itself
  cannot be excluded from here; only a hostile local process could do it.

Inputs are *copied* out of the region (one memcpy, far cheaper than the socket), so a backend
never reads memory the client may rewrite or unregister mid-request, and unregistering never
waits on an exported buffer.
"""

from __future__ import annotations

import mmap
import os
import threading
from dataclasses import dataclass

import numpy as np

from .errors import AlreadyExists, LimitExceeded, NotFound
from .spec import SpecError

SHM_DIR = "/dev/shm"
MAX_REGIONS = 256  # each holds a mapping and a file descriptor


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    fd: int
    map: mmap.mmap


def _object_path(key: str) -> str:
    """/dev/shm/<name> for a shm_open key ("/input0" or "input0"), refusing anything else."""
    name = key.lstrip("/")  # shm_open ignores leading slashes, as glibc does
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > 255:
        raise SpecError("key", key, "must name one shared-memory object, like '/input0' (no other '/')")
    return os.path.join(SHM_DIR, name)


class SharedMemoryRegistry:
    def __init__(self, max_regions: int = MAX_REGIONS):
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    # -- the three RPCs ---------------------------------------------------------------------------
    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise SpecError("name", name, "a region needs a name")
        if byte_size <= 0:
            raise SpecError("byte_size", byte_size, "must be > 0")
        path = _object_path(key)
        with self._lock:
            if name in self._regions:
                raise AlreadyExists(f"shared-memory region {name!r} is already registered; unregister it first")
            if len(self._regions) >= self.max_regions:
                raise LimitExceeded("name", name, f"{self.max_regions} regions are registered already")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                raise NotFound(f"shared-memory key {key!r}: no such object (create it with shm_open first)") from None
            except OSError as e:
                raise SpecError("key", key, f"cannot open {path}: {e.strerror}") from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise SpecError("byte_size", byte_size,
                                    f"offset {offset} + byte_size {byte_size} is past the end of {key!r} "
                                    f"({size} bytes)")
                m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except BaseException:
                os.close(fd)
                raise
            self._regions[name] = Region(name, key, offset, byte_size, fd, m)

    def unregister(self, name: str = "") -> None:
        """Forget one region, or every region for an empty name.  An unknown name is not an
        error (Triton's behaviour): unregistering is idempotent."""
        with self._lock:
            names = [name] if name else list(self._regions)
            for n in names:
                region = self._regions.pop(n, None)
                if region is not None:
                    region.map.close()
                    os.close(region.fd)

    def status(self, name: str = "") -> list[Region]:
        with self._lock:
            if not name:
                return list(self._regions.values())
            if name not in self._regions:
                raise NotFound(f"shared-memory region {name!r} is not registered")
            return [self._regions[name]]

    # -- checked access ---------------------------------------------------------------------------
    def _locate(self, field: str, name: str, offset: int, size: int) -> tuple[Region, int]:
        """The region and the absolute offset of [offset, offset+size) inside its object.
        Called with the lock held."""
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"{field}: shared-memory region {name!r} is not registered")
        if offset < 0 or size < 0:
            raise SpecError(f"{field}.shared_memory_offset", offset, "offset and byte size must be >= 0")
        if offset + size > region.byte_size:
            raise SpecError(f"{field}.shared_memory_byte_size", size,
                            f"offset {offset} + {size} bytes is past the end of region {name!r} "
                            f"({region.byte_size} bytes registered)")
        start = region.offset + offset
        if start + size > os.fstat(region.fd).st_size:  # the object shrank after registration
            raise SpecError(f"{field}.shared_memory_region", name,
                            "the shared-memory object is now smaller than the registered region")
        return region, start

    def read(self, field: str, name: str, offset: int, size: int) -> bytes:
        """A copy of ``size`` bytes at ``offset`` in region ``name``."""
        with self._lock:
            region, start = self._locate(field, name, offset, size)
            return region.map[start:start + size]

    def write(self, field: str, name: str, offset: int, capacity: int, data: np.ndarray) -> None:
        """Write ``data``'s bytes at ``offset``; they must fit in ``capacity`` (the byte size the
        request gave for this output) as well as in the region."""
        nbytes = data.nbytes
        if nbytes > capacity:
            raise SpecError(f"{field}.shared_memory_byte_size", capacity,
                            f"the output needs {nbytes} bytes")
        with self._lock:
            region, start = self._locate(field, name, offset, capacity)
            region.map[start:start + nbytes] = np.ascontiguousarray(data).view(np.uint8).reshape(-1)

    def close(self) -> None:
        self.unregister("")
