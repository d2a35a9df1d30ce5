/* poolkernels: max, average and Lp pooling over 1 to 3 spatial axes, forward and backward.
 *
 * A plain C11 shared library with no Python in it; poolserve loads it with ctypes
 * (server/poolserve/backends/_kernels.py mirrors every declaration below, keep the two in step).
 *
 * Every entry point checks its arguments -- the descriptor's fields against each other and every
 * buffer's byte length against the shapes -- and returns a pool_status instead of touching memory
 * it was not given.  The caller resolves auto_pad to explicit pads first; the output shape it
 * passes must be the one the spec's rule gives (floor, or ceil with the last-window rule), and the
 * kernels recompute it to check.
 */
#ifndef POOLKERNELS_H
#define POOLKERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define POOL_ABI_VERSION 2
#define POOL_MAX_RANK 3
#define POOL_MAX_THREADS 256

enum pool_mode { POOL_MAX = 0, POOL_AVG = 1, POOL_LP = 2 };
enum pool_dtype { POOL_F32 = 0, POOL_F64 = 1, POOL_F16 = 2, POOL_I8 = 3, POOL_U8 = 4 };
enum pool_layout { POOL_CHANNELS_FIRST = 0, POOL_CHANNELS_LAST = 1 };

/* pool_desc.flags bits; every other bit must be 0. */
enum pool_flags {
    /* Run the generic per-plane kernels even where a specialised fast path exists: the tests use
     * it to check every fast path against the obviously correct code. */
    POOL_FLAG_GENERIC_ONLY = 1,
    /* Split every fast-path call over all nthreads, even one small enough to run on the calling
     * thread alone (team_size): the tests use it so the parallel split is checked on inputs small
     * enough for property-based testing. */
    POOL_FLAG_ALWAYS_SPLIT = 2,
    /* A max backward fast path that reads its indices as taps of their window (the AVX2 and
     * AVX-512 tile2, k3s2 and channels-last gather forms) reports POOL_E_INDEX where one is not,
     * instead of handing the call to the scatter, which takes any index in its plane: the tests
     * use it to show that the fast path itself took a call of valid indices. */
    POOL_FLAG_NO_FALLBACK = 4
};
#define POOL_FLAGS_KNOWN 7

enum pool_status {
    POOL_OK = 0,
    POOL_E_NULL = 1,      /* a required pointer is NULL, or an unexpected one is not */
    POOL_E_ENUM = 2,      /* mode, dtype or layout out of range, or dtype not valid for mode */
    POOL_E_RANK = 3,      /* rank not in 1..3 */
    POOL_E_SHAPE = 4,     /* a dimension < 1, or out_shape differs from the pooling rule */
    POOL_E_PARAM = 5,     /* kernel, stride, dilation < 1, pad < 0 or >= dilated kernel, p <= 0 */
    POOL_E_SIZE = 6,      /* a buffer's byte length differs from its shape times item size */
    POOL_E_OVERFLOW = 7,  /* an element or byte count does not fit in int64 */
    POOL_E_WINDOW = 8,    /* a window covers only padding */
    POOL_E_INDEX = 9,     /* a max-backward index outside its own (batch, channel) plane */
    POOL_E_THREADS = 10,  /* nthreads not in 1..POOL_MAX_THREADS */
    POOL_E_NOMEM = 11     /* scratch allocation failed */
};

/* Everything about one pooling call except the data.  Unused trailing axes are ignored. */
typedef struct pool_desc {
    int32_t mode;               /* enum pool_mode */
    int32_t dtype;              /* enum pool_dtype: of x and y (forward), of dy and dx (backward) */
    int32_t layout;             /* enum pool_layout */
    int32_t rank;               /* spatial axes, 1..3 */
    int32_t ceil_mode;          /* 0: floor output size, 1: ceil with the last-window rule */
    int32_t count_include_pad;  /* avg: padded taps count in the divisor */
    int32_t nthreads;           /* worker threads, 1..POOL_MAX_THREADS */
    int32_t flags;              /* enum pool_flags bits; unknown bits must be 0 */
    int64_t batch;
    int64_t channels;
    int64_t in_shape[POOL_MAX_RANK];
    int64_t out_shape[POOL_MAX_RANK];
    int64_t kernel[POOL_MAX_RANK];
    int64_t stride[POOL_MAX_RANK];
    int64_t dilation[POOL_MAX_RANK];
    int64_t pad_begin[POOL_MAX_RANK];
    int64_t pad_end[POOL_MAX_RANK];
    double p;                   /* lp: exponent > 0 */
} pool_desc;

/* y = pool(x).  indices (int64, one per output element, flat offsets into x in its own layout)
 * is written only for max, and only when not NULL; for avg and lp it must be NULL. */
int pool_forward(const pool_desc *d, const void *x, int64_t x_bytes, void *y, int64_t y_bytes,
                 int64_t *indices, int64_t indices_bytes);

/* dx = gradient of the input from dy, the gradient of the output (same dtype, a float type).
 * max: indices from the forward are required, x is ignored (pass NULL);
 * avg: neither is used (pass NULL);
 * lp:  x, the forward input in dx's dtype, is required; indices must be NULL. */
int pool_backward(const pool_desc *d, const void *dy, int64_t dy_bytes, const void *x, int64_t x_bytes,
                  const int64_t *indices, int64_t indices_bytes, void *dx, int64_t dx_bytes);

const char *pool_strerror(int status);
/* The instruction set the kernels run with on this CPU: "x86-64-v4" (AVX-512), "x86-64-v3" (AVX2,
 * FMA, F16C), "x86-64" (SSE2), "neon" or "generic". */
const char *pool_isa(void);
int pool_abi_version(void);
/* Which kernel a call with this descriptor runs (forward, or backward when `backward` is not 0):
 * "generic" or the name of a fast path; NULL when the descriptor is refused.  For tests and
 * benchmarks: it shows that a case reaches the path it is meant to test. */
const char *pool_path(const pool_desc *d, int backward);

/* The memory-bandwidth floor, for benchmarks: read nbytes (a sum of float32 words, returned so
 * it cannot be optimised away) or write nbytes, split over nthreads the way the kernels split. */
double pool_stream_read(const void *buf, int64_t nbytes, int nthreads);
void pool_stream_write(void *buf, int64_t nbytes, int nthreads);

#ifdef __cplusplus
}
#endif
#endif
