"""Build the C kernels as a plain shared library inside the poolserve package.

The kernels are not a Python extension (no Python headers, no PyInit): poolserve loads them
with ctypes.  setuptools' build_ext still does the work -- compiler discovery, in-place builds
for `pip install -e .`, copying into the wheel -- we only give the file a plain name and flags.
"""
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIB_NAME = "libpoolkernels.so"

# No -march=native: the library must run on any x86-64 or aarch64 CPU it is copied to; the
# kernels pick wide instructions at run time (target_clones).  POOLSERVE_CFLAGS adds flags, e.g.
# sanitizers for `make test-asan`.
# -fno-tree-loop-distribute-patterns: GCC otherwise turns the fast paths' short copy loops (one
# output row, ~56 values) into an inline `rep movsq`, whose start-up cost showed in the profile of
# small calls; left as loops, they are vectorised like the rest.
CFLAGS = ["-std=c11", "-O3", "-fopenmp", "-fno-math-errno", "-fno-tree-loop-distribute-patterns", "-Wall", "-Wextra",
          "-Werror=implicit-function-declaration"]
LDFLAGS = ["-fopenmp", "-lm"]


class BuildPlainLibrary(build_ext):
    def get_ext_filename(self, fullname):
        # poolserve._kernels -> poolserve/libpoolkernels.so
        return os.path.join(*fullname.split(".")[:-1], LIB_NAME)

    def get_export_symbols(self, ext):
        return []  # not a Python module: nothing named PyInit_* to export

    def build_extension(self, ext):
        extra = os.environ.get("POOLSERVE_CFLAGS", "").split()
        ext.extra_compile_args = CFLAGS + extra
        ext.extra_link_args = LDFLAGS + extra
        super().build_extension(ext)


setup(
    ext_modules=[
        Extension(
            "poolserve._kernels",
            sources=["kernels/poolkernels.c"],
            depends=["kernels/poolkernels.h", "kernels/pool_generic.inc"],
            include_dirs=["kernels"],
        )
    ],
    cmdclass={"build_ext": BuildPlainLibrary},
)
