/* poolkernels: argument checking, dtype dispatch and threading around the generic kernels.
 * See poolkernels.h for the contract and pool_generic.inc for the arithmetic. */
#include "poolkernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if !defined(__FLT16_MAX__)
#error "poolkernels needs a compiler with _Float16 (GCC >= 12 or clang >= 15)"
#endif

/* Wide instructions are chosen at run time, never baked in with -march: the library may travel
 * in a container image to another CPU.  GCC's target_clones builds each hot function for every
 * listed ISA and an ifunc resolver picks one when the library is loaded. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(POOL_NO_CLONES)
#define POOL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define POOL_CLONES
#endif

/* The descriptor, checked and padded to three spatial axes (leading axes of size 1), with the
 * element strides of one (batch, channel) plane. */
typedef struct pool_geom {
    int64_t in[3], out[3], k[3], s[3], d[3], pb[3], pe[3];
    int64_t sx[3], sy[3];   /* element stride of each spatial axis in x and y */
    int64_t es;             /* element stride between spatial neighbours: 1, or C for channels-last */
    int64_t batch, channels, plane_size, out_plane_size;
    int64_t x_elems, y_elems;
    int count_include_pad;
    double p;
} pool_geom;

/* Taps of window o along axis a inside the input (padded = 0) or inside the padded input
 * (padded = 1). */
static inline int64_t axis_taps(const pool_geom *g, int a, int64_t o, int padded)
{
    const int64_t lo = padded ? -g->pb[a] : 0, hi = padded ? g->in[a] + g->pe[a] : g->in[a];
    const int64_t start = o * g->s[a] - g->pb[a];
    if (g->d[a] != 1) {
        int64_t n = 0;
        for (int64_t j = 0; j < g->k[a]; j++) n += start + j * g->d[a] >= lo && start + j * g->d[a] < hi;
        return n;
    }
    const int64_t b = start > lo ? start : lo, e = start + g->k[a] < hi ? start + g->k[a] : hi;
    return e > b ? e - b : 0;
}

/* The average's divisor with count_include_pad: the window's taps inside the padded input */
static int64_t padded_taps(const pool_geom *g, int64_t o0, int64_t o1, int64_t o2)
{
    return axis_taps(g, 0, o0, 1) * axis_taps(g, 1, o1, 1) * axis_taps(g, 2, o2, 1);
}

static inline double lp_pow(double a, double p)
{
    return p == 1.0 ? a : p == 2.0 ? a * a : pow(a, p);
}

static inline double lp_root(double s, double p)
{
    return p == 1.0 ? s : p == 2.0 ? sqrt(s) : pow(s, 1.0 / p);
}

/* ---- shape helpers of the fast paths (pool_fast.inc) ----------------------------------------- */
enum {
    COLS = 256,    /* output columns (or channels) folded together: the running values stay in L1 */
    MAX_ROWS = 64  /* input rows one channels-first window may read (kernel axes 0 and 1) */
};

/* The channels-first rows path takes a last axis of kernel 2 or 3, stride 2, no dilation (the
 * 2x2/s2, 3x3/s2 and 2x2x2/s2 poolings of common networks); the other axes are looped over. */
static int cf_rows_fits(const pool_geom *g)
{
    return g->es == 1 && (g->k[2] == 2 || g->k[2] == 3) && g->s[2] == 2 && g->d[2] == 1 &&
           g->k[0] * g->k[1] <= MAX_ROWS && g->plane_size <= INT32_MAX;
}

/* One output value per plane, its window the whole plane. */
static int is_global(const pool_geom *g)
{
    for (int a = 0; a < 3; a++)
        if (g->out[a] != 1 || g->k[a] != g->in[a] || g->pb[a] || g->pe[a]) return 0;
    return 1;
}

/* Output columns [*lo, *hi) whose window lies inside the input on the last axis. */
static void interior_columns(const pool_geom *g, int64_t *lo, int64_t *hi)
{
    const int64_t s = g->s[2], k = (g->k[2] - 1) * g->d[2] + 1; /* the dilated extent */
    int64_t l = (g->pb[2] + s - 1) / s;
    int64_t h = g->in[2] - k + g->pb[2] >= 0 ? (g->in[2] - k + g->pb[2]) / s + 1 : 0;
    if (h > g->out[2]) h = g->out[2];
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* The input rows, in scan order, that output row (o0, o1) reads: their offsets inside the plane
 * (when off is not NULL) and their count; *padded (when padded is not NULL) counts the rows
 * inside the padded input, the row factor of the count_include_pad divisor. */
static inline __attribute__((always_inline)) int window_rows(const pool_geom *g, int64_t o0, int64_t o1, int64_t *off,
                                                            int64_t *padded)
{
    int n = 0;
    for (int64_t j0 = 0; j0 < g->k[0]; j0++) {
        int64_t t0 = o0 * g->s[0] - g->pb[0] + j0 * g->d[0];
        if (t0 < 0 || t0 >= g->in[0]) continue;
        for (int64_t j1 = 0; j1 < g->k[1]; j1++) {
            int64_t t1 = o1 * g->s[1] - g->pb[1] + j1 * g->d[1];
            if (t1 < 0 || t1 >= g->in[1]) continue;
            if (off) off[n] = t0 * g->sx[0] + t1 * g->sx[1];
            n++;
        }
    }
    if (padded) *padded = axis_taps(g, 0, o0, 1) * axis_taps(g, 1, o1, 1);
    return n;
}

/* The outputs along axis a (0 or 1) whose window has input index t as a tap, ascending; at most
 * k[a] of them (one per tap). */
static int covering_outputs(const pool_geom *g, int a, int64_t t, int64_t *o)
{
    int n = 0;
    for (int64_t j = g->k[a] - 1; j >= 0; j--) {
        int64_t start = t + g->pb[a] - j * g->d[a]; /* the window start o * s must equal this */
        if (start >= 0 && start % g->s[a] == 0 && start / g->s[a] < g->out[a]) o[n++] = start / g->s[a];
    }
    return n;
}

/* Which fast path a call takes.  The fast paths cover float32/float64/float16 for max and avg
 * (int8/uint8 for max), forward; float32/float64 backward, and float16 backward channels-first.
 * Lp always runs the generic kernels. */
enum pool_path {
    PATH_GENERIC, PATH_CF_ROWS_K2, PATH_CF_ROWS_K3, PATH_CL, PATH_GLOBAL_CF, PATH_CF_WIN,
    PATH_MAX_BACK, PATH_AVG_BACK_K2, PATH_AVG_BACK_K3, PATH_AVG_BACK_CL, PATH_AVG_BACK_TILE,
    PATH_AVG_BACK_K3_2D, PATH_AVG_BACK_GLOBAL, PATH_AVG_BACK_WIN
};
static const char *const PATH_NAMES[] = {
    "generic", "cf_rows_k2", "cf_rows_k3", "cl", "global_cf", "cf_win",
    "max_back", "avg_back_k2", "avg_back_k3", "avg_back_cl", "avg_back_tile",
    "avg_back_k3_2d", "avg_back_global", "avg_back_win"
};

static int forward_path(const pool_desc *d, const pool_geom *g)
{
    if ((d->flags & POOL_FLAG_GENERIC_ONLY) || d->mode == POOL_LP) return PATH_GENERIC;
    /* the fast paths track argmax offsets inside one image in int32: half the work of int64 */
    if (d->layout == POOL_CHANNELS_LAST) return g->plane_size * g->channels <= INT32_MAX ? PATH_CL : PATH_GENERIC;
    if (is_global(g)) return PATH_GLOBAL_CF;
    if (cf_rows_fits(g)) return g->k[2] == 2 ? PATH_CF_ROWS_K2 : PATH_CF_ROWS_K3;
    /* any other channels-first window (argmax offsets in int32, as cf_rows) */
    if (g->es == 1 && g->k[0] * g->k[1] <= MAX_ROWS && g->plane_size <= INT32_MAX) return PATH_CF_WIN;
    return PATH_GENERIC;
}

/* Work items of a forward path: output rows, output positions x channel blocks, or planes. */
static int64_t forward_items(const pool_geom *g, int path)
{
    switch (path) {
    case PATH_CF_ROWS_K2:
    case PATH_CF_ROWS_K3:
    case PATH_CF_WIN: return g->batch * g->channels * g->out[0] * g->out[1];
    case PATH_CL: return g->batch * g->out_plane_size * ((g->channels + COLS - 1) / COLS);
    default: return g->batch * g->channels;
    }
}

/* The avg backward paths by output rows (avg_back_tile, avg_back_k3_2d) hold a few input rows of
 * W positions x es elements in scratch per thread: at most 64 Ki elements each. */
static int rows_fit_scratch(const pool_geom *g)
{
    return (g->in[2] + 3) * g->es <= 65536;
}

/* Windows that tile the input exactly: 2 wide with stride 2 on the last axis, 1 or 2 with the same
 * stride on the others, no padding or dilation, every input dimension the kernel times the
 * output's (2x2/s2, 2x2x2/s2 on even sizes), either layout.  Each input element then lies in one
 * window, and the divisor (2, 4 or 8) is a power of two. */
static int tiles_exactly(const pool_geom *g)
{
    if (g->k[2] != 2 || !rows_fit_scratch(g)) return 0;
    for (int a = 0; a < 3; a++)
        if (g->k[a] > 2 || g->s[a] != g->k[a] || g->d[a] != 1 || g->pb[a] || g->pe[a] ||
            g->in[a] != g->k[a] * g->out[a])
            return 0;
    return 1;
}

/* 3x3/s2-like on a plane (2-D, or 3-D of depth 1; any pads, ceil mode; either layout): 3 wide with
 * stride 2 on the last two axes, no dilation on them.  Input row 2o - p of a plane then takes
 * output rows o - 1 and o, and row 2o - p + 1 output row o alone, so one output row at a time
 * writes the rows it ends. */
static int k3_plane(const pool_geom *g)
{
    return rows_fit_scratch(g) && g->in[0] == 1 && g->out[0] == 1 && g->k[0] == 1 &&
           g->k[1] == 3 && g->s[1] == 2 && g->d[1] == 1 && g->k[2] == 3 && g->s[2] == 2 && g->d[2] == 1;
}

/* Stride 1 along both axes of a plane (2-D or 1-D windows, no depth): avg_back_win's separable
 * form, which holds an output row's column sums per output row (out[1] x in[2] elements of
 * scratch per thread): up to 4 Mi of them, larger planes take the scatter */
static int stride1_plane(const pool_geom *g)
{
    return g->in[0] == 1 && g->out[0] == 1 && g->k[0] == 1 && g->s[1] == 1 && g->s[2] == 1 &&
           g->out[1] <= ((int64_t)1 << 22) / g->in[2];
}

/* The outputs along axis a whose window's span (first tap to last, dilation included) covers input
 * index t: lo .. hi, none where lo > hi.  o * s - pb <= t <= o * s - pb + span - 1. */
static inline void spanning_outputs(const pool_geom *g, int a, int64_t t, int64_t *lo, int64_t *hi)
{
    const int64_t span = (g->k[a] - 1) * g->d[a] + 1, s = g->s[a], u = t + g->pb[a], v = u - span + 1;
    *lo = v <= 0 ? 0 : (v + s - 1) / s;
    *hi = u / s < g->out[a] - 1 ? u / s : g->out[a] - 1;
}

/* Channels-last max backward gathered by input position (max_back_cl_gather_avx2, pool_fast.inc)
 * keeps the codes of the output rows whose windows reach the current input row in a ring: as
 * many as cover one input row, ceil(span / stride) along axis 1. */
static int64_t cl_gather_ring(const pool_geom *g)
{
    const int64_t span = (g->k[1] - 1) * g->d[1] + 1, r = (span + g->s[1] - 1) / g->s[1];
    return r < g->out[1] ? r : g->out[1];
}

/* Whether it applies: channels-last windows on a plane (2-D, or 1-D; no depth), channels in
 * vectors of eight, an image's positions times channels in int32 (the codes), and a ring of at
 * most 16 rows and 256 Ki codes (1 MiB a thread; wider rows, or windows spanning more than 16
 * strides, take the scatter). */
#define CL_GATHER_MAX_RING 16
static int cl_gather_fits(const pool_geom *g)
{
    return g->es != 1 && g->channels % 8 == 0 && g->in[0] == 1 && g->out[0] == 1 && g->k[0] == 1 &&
           g->plane_size * g->channels <= INT32_MAX && cl_gather_ring(g) <= CL_GATHER_MAX_RING &&
           cl_gather_ring(g) * g->out[2] * g->channels <= ((int64_t)1 << 18);
}

static int backward_path(const pool_desc *d, const pool_geom *g)
{
    if ((d->flags & POOL_FLAG_GENERIC_ONLY) || d->mode == POOL_LP) return PATH_GENERIC;
    /* float16 gradients are summed in float32 scratch: channels-first planes (max), cf_rows rows
     * (avg) and channels-last blocks of channels (max, avg) have fast paths that do so */
    /* global average of channels-first planes: every element gets its plane's dy / P (the
     * generic path, summing per tap, took 3 ms for 32x512x7x7 float32, this one 57 us) */
    if (d->mode == POOL_AVG && g->es == 1 && is_global(g)) return PATH_AVG_BACK_GLOBAL;
    if (d->dtype == POOL_F16) {
        if (d->mode == POOL_MAX) return PATH_MAX_BACK;
        if (tiles_exactly(g)) return PATH_AVG_BACK_TILE;
        if (k3_plane(g)) return PATH_AVG_BACK_K3_2D;
        if (g->es != 1) return PATH_AVG_BACK_CL;
        if (cf_rows_fits(g)) return g->k[2] == 2 ? PATH_AVG_BACK_K2 : PATH_AVG_BACK_K3;
        return g->k[0] * g->k[1] <= MAX_ROWS ? PATH_AVG_BACK_WIN : PATH_GENERIC;
    }
    if (d->mode == POOL_MAX) return PATH_MAX_BACK;
    if (tiles_exactly(g)) return PATH_AVG_BACK_TILE;
    if (k3_plane(g)) return PATH_AVG_BACK_K3_2D;
    if (d->layout == POOL_CHANNELS_LAST) return PATH_AVG_BACK_CL;
    if (cf_rows_fits(g)) return g->k[2] == 2 ? PATH_AVG_BACK_K2 : PATH_AVG_BACK_K3;
    /* any other channels-first window: by planes, output row by output row */
    return g->k[0] * g->k[1] <= MAX_ROWS ? PATH_AVG_BACK_WIN : PATH_GENERIC;
}

/* The weight of a backward call in team_work (below): 1 where the windows tile the input, so that
 * each dx element takes at most one dy (a stream's cost per byte); 3 for the max scatter of
 * overlapping or stride-1 windows, 2 for their avg sums.  Alternating runs, 2026-11-28, one thread
 * vs two, median us, 3x3/s2/p1 channels-first float32 unless named: max 1x16x112x112 140/116,
 * 143/134; 1x24 173/130, 182/141; 1x64 476/285, 460/278 (channels-last 539/415, 573/460); 1x64x56x56
 * 3x3/s1 max 352/229, 381/244; 32x512x7x7 global max 227/153, 247/160; avg 1x24 136/109, 130/107;
 * 1x64 313/198, 291/194; global avg 213/142, 206/137 -- the scatter's cost per byte is the
 * argmax's, and both gained from the second thread where a stream of the same bytes would not. */
static int backward_weight(const pool_desc *d, const pool_geom *g)
{
    if (tiles_exactly(g)) return 1;
    /* 4 for the separable stride-1 avg of a channels-first plane (avg_back_sep), as forward's
     * cf_win stride-1 windows: at 2 its 1x64x56x56 3x3/s1 float32 (1.5 MiB) stayed on one thread,
     * 121-122 us, against 99 on two (same process, alternating, 2026-11-28) */
    if (d->mode == POOL_AVG && d->layout == POOL_CHANNELS_FIRST && stride1_plane(g)) return 4;
    return d->mode == POOL_MAX ? 3 : 2;
}

/* Channels-last backward splits the channels when there are fewer images than the `nthreads` that
 * will run it. */
static int64_t backward_channel_block(const pool_desc *d, const pool_geom *g, int nthreads)
{
    if (d->layout == POOL_CHANNELS_FIRST) return g->channels;
    int64_t cb = g->channels;
    if (g->batch < nthreads) {
        cb = (g->channels + nthreads - 1) / nthreads;
        cb = (cb + 15) / 16 * 16;
    }
    cb = cb < COLS ? cb : COLS; /* the per-block scratch of the avg path holds COLS channels */
    /* float16 sums a block in float32 scratch of plane_size x cb: at most 2 MiB where 16 channels
     * allow, so that it stays in cache (and a big image does not take plane_size x 256 floats) */
    if (d->dtype == POOL_F16 && g->es != 1) {
        int64_t cap = ((int64_t)2 << 20) / (4 * g->plane_size) / 16 * 16;
        if (cap < 16) cap = 16;
        if (cb > cap) cb = cap;
    }
    return cb;
}

/* Scratch of the avg rows backward (pool_fast.inc, avg_back_rows_range), per thread, in ACC
 * elements, every part 64-byte aligned: the shares of one output row (OW + 3), a direct-mapped
 * cache of expanded output rows (slots x slot_size) and a spare slot (for the second of two rows
 * that map to the same slot), their tags (int64), and one input row (W) where float16 sums in
 * float32. */
typedef struct avg_back_layout {
    int64_t slots, slot_size, cache_at, tags_at, row_at, total;
} avg_back_layout;

static void avg_back_plan(const pool_geom *g, int64_t acc_size, avg_back_layout *lay)
{
    const int64_t A = 64 / acc_size; /* elements per 64 bytes */
#define ROUND_A(n) (((n) + A - 1) / A * A)
    const int64_t W = g->in[2], OW = g->out[2];
    /* an expanded row holds columns -p .. W - 1 + 1 (p = pb[2] <= 2, the pair of the last column) */
    lay->slot_size = ROUND_A(W + 3);
    /* enough slots for the output rows the next input row shares (k[1] + 1) and, when a window
     * spans several planes of axis 0, for a whole band of out[1] rows, so the next plane finds
     * them; at most 2 MiB, at least one slot (then nothing is reused, still correct) */
    const int64_t want = (g->k[0] > 1 ? g->out[1] : 0) + g->k[1] + 1;
    const int64_t budget = ((int64_t)2 << 20) / (lay->slot_size * acc_size);
    int64_t slots = 1; /* a power of two: the slot of a row is a mask, not a division */
    while (slots < want && slots * 2 <= budget) slots *= 2;
    lay->slots = slots;
    lay->cache_at = ROUND_A(OW + 3);
    lay->tags_at = lay->cache_at + (slots + 1) * lay->slot_size; /* + a spare, untagged */
    lay->row_at = lay->tags_at + ROUND_A(slots * (int64_t)(8 / acc_size));
    lay->total = lay->row_at + ROUND_A(W);
#undef ROUND_A
}

/* Work items of a backward path.  es == 1 means contiguous planes: channels-first, or
 * channels-last with one channel (the same memory). */
static int64_t backward_items(const pool_geom *g, int path, int64_t cblock)
{
    switch (path) {
    case PATH_MAX_BACK:
        return g->es == 1 ? g->batch * g->channels : g->batch * ((g->channels + cblock - 1) / cblock);
    case PATH_AVG_BACK_CL: return g->batch * ((g->channels + cblock - 1) / cblock);
    case PATH_AVG_BACK_GLOBAL:
    case PATH_AVG_BACK_WIN: return g->batch * g->channels; /* planes */
    case PATH_AVG_BACK_TILE:
    case PATH_AVG_BACK_K3_2D: /* output rows, of a plane or (channels-last) of an image */
        return (g->es == 1 ? g->batch * g->channels : g->batch) * g->out[0] * g->out[1];
    default: return g->batch * g->channels * g->in[0] * g->in[1]; /* input rows */
    }
}

/* Threads for `items` work items of `work` (team_work, below): a small call runs on the calling
 * thread, where waking a second one would cost more than it saves.  Measured on the 2-vCPU
 * machines (OMP_WAIT_POLICY=PASSIVE with no spin, as the server and benchmarks ran until
 * 2026-12-07; they now spin briefly first, server.py tune_openmp), 2026-11-26: waking the
 * second thread and joining it cost ~40 us (1x16x32x32 max 2x2/s2: 5 us on one thread, 42 on two;
 * it was 15-20 us on earlier days), and two threads paid off once one thread took ~120 us or
 * more.  One thread vs two, 1xCx112x112, us:
 *   float32 max 2x2/s2, 3x3/s2, avg 3x3/s2 (no indices): 3.9 MiB moved 69/98, 109/153, 102/157;
 *     5.9 MiB 91/145, 159/202, 149/128; 7.7 MiB 121/111, 214/170, 197/165;
 *   max 3x3/s2 with indices, 5.4 MiB moved: channels-first float32 229/161, channels-last
 *     126/151; float16 channels-first (3.4 MiB) 240/172;
 *   max backward 3x3/s2, one thread alone: float32 channels-first 190 us for 5.5 MiB,
 *     channels-last 250, float16 250 for 3.6 MiB -- the scatter's cost per byte is the argmax's.
 * A server's typical request is below that, and its other core is busy with gRPC anyway. */
static int team_size(const pool_desc *d, int64_t items, int64_t work)
{
    const int64_t SMALL = 6 * 1024 * 1024;
    const int nthreads = d->nthreads;
    if ((work < SMALL && !(d->flags & POOL_FLAG_ALWAYS_SPLIT)) || items < 2) return 1;
    return items < nthreads ? (int)items : nthreads;
}

/* The work team_size weighs: the bytes a call reads and writes (x, y and the indices; backward
 * dy, dx and the indices), times `weight` where each byte costs that many times a stream's time
 * (2: any argmax, every 3-wide cf_rows window and every channels-last window of nine taps or
 * more.  The argmax: channels-first (cf_rows) 229 us for 5.4 MiB above; channels-last, 126 us
 * there, but 232-255 us on one thread in every make bench-kernels run since 2026-11-27 and 242 in
 * a one-process run of 2026-12-07, 147 split (1x64x112x112 3x3/s2/p1, 5.6 MiB); global,
 * 32x512x7x7, 138-207 us on one thread, 117-138 split, same runs.  Channels-last nine taps:
 * 1x64x112x112 3x3/s2/p1 max 148-170 us in the bench runs of 2026-12-07 (one thread: 4 MiB), and
 * in one process 145 / 81 and 109 / 75 us one thread / two, avg 117 / 68 and 120 / 72.
 * Every 3-wide cf_rows window, nine taps an output: alternating runs, 2026-11-27, one thread vs
 * two, 1x64x112x112 3x3/s2/p1, median us: max 199-208 / 173-190, avg 205-212 / 148-164, float16
 * max 230-354 / 168-197, avg 257-338 / 183-193; 1x32x112x112 (1.9 MiB, left on one thread)
 * max 155 / 111 -- the day before, 3.9 MiB read 109 / 153 above: the second vCPU's worth
 * varies from day to day, and the pair of threads won on every run of this one; 4:
 * cf_win's stride-1 windows, whose output is as large as the input and each value folds a whole
 * window: 1x64x56x56 3x3/s1 max took 165-173 us on one thread for 1.5 MiB, 101-165 on two, avg
 * 177-266 / 116-161, with indices 243-269 / 164-242, best of 300 calls, 2026-11-27), and twice for
 * float16 (converted to and from float32).  Backward: backward_weight (on 2026-11-26 float32 max
 * 3x3/s2 read level or slower on two threads, channels-first 190/200 us, channels-last 250/282; on
 * 11-28 two won, figures there).  The sizes were checked against the
 * caller's buffers, so this cannot overflow. */
static int64_t team_work(const pool_desc *d, const pool_geom *g, int with_indices, int weight, int64_t item)
{
    int64_t work = (g->x_elems + g->y_elems) * item + (with_indices ? g->y_elems * 8 : 0);
    work *= weight;
    if (d->dtype == POOL_F16) work *= 2;
    return work;
}

/* This thread's contiguous share [*first, *last) of `items`. */
static void thread_share(int64_t items, int64_t *first, int64_t *last)
{
#ifdef _OPENMP
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const int64_t t = 0, nt = 1;
#endif
    *first = items * t / nt;
    *last = items * (t + 1) / nt;
}

/* ---- the generic kernels and the fast paths, once per dtype ---------------------------------- */
typedef uint16_t __attribute__((may_alias)) half_bits; /* a float16's bits, read in place */

/* float16 <-> float32 over contiguous runs.  GCC 12 does not vectorise these conversions, not even
 * in the x86-64-v3/v4 clones (one vcvtph2ps per element), so the F16C forms are written with
 * intrinsics in functions built for AVX2+F16C, picked at run time; the plain loops elsewhere.
 * Both are exact up: float16 -> float32, and round to nearest even down, as (_Float16)f does. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define POOL_HAVE_F16C_PATH 1
__attribute__((target("avx2,f16c"))) static void half_to_float_f16c(const _Float16 *s, float *d, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(s + i))));
    for (; i < n; i++) d[i] = (float)s[i];
}

__attribute__((target("avx2,f16c"))) static void float_to_half_f16c(const float *s, _Float16 *d, int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(void *)(d + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) d[i] = (_Float16)s[i];
}

/* A row of float16 dy expanded to the two columns of each window (see tile_row_half) */
__attribute__((target("avx2,f16c"))) static void tile_row_half_f16c(const _Float16 *s, _Float16 *d, int64_t n,
                                                                    float share)
{
    const __m256 k = _mm256_set1_ps(share);
    int64_t m = 0;
    for (; m + 8 <= n; m += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(s + m))), k);
        const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * m), _mm_unpacklo_epi16(h, h)); /* h0 h0 h1 h1 .. */
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * m + 8), _mm_unpackhi_epi16(h, h));
    }
    for (; m < n; m++) d[2 * m] = d[2 * m + 1] = (_Float16)((float)s[m] * share);
}

/* The hand-written kernels each level may run, settled once when the library loads.  The
 * target_clones resolver picks the compiled clones by the CPU alone; these flags pick the
 * intrinsic paths, and POOLSERVE_KERNEL_ISA may cap them ("x86-64-v3": no AVX-512 path;
 * "x86-64": none but the plain C) so that a test run on an AVX-512 machine also checks the AVX2
 * and the plain forms. */
static int have_f16c, have_avx2, have_avx512;
__attribute__((constructor)) static void detect_isa(void)
{
    __builtin_cpu_init();
    const char *cap = getenv("POOLSERVE_KERNEL_ISA");
    const int level = !cap ? 4 : strcmp(cap, "x86-64-v3") == 0 ? 3 : strcmp(cap, "x86-64") == 0 ? 1 : 4;
    have_f16c = level >= 3 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    have_avx2 = have_f16c && __builtin_cpu_supports("fma");
    /* F, BW and VL (every AVX-512 CPU but Xeon Phi): the row loops load and store float16 with
     * BW's 16-bit masks */
    have_avx512 = level >= 4 && have_avx2 && __builtin_cpu_supports("avx512f") &&
                  __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}
#endif

static void half_to_float(const _Float16 *restrict s, float *restrict d, int64_t n)
{
#ifdef POOL_HAVE_F16C_PATH
    if (have_f16c) {
        half_to_float_f16c(s, d, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) d[i] = (float)s[i];
}

static void float_to_half(const float *restrict s, _Float16 *restrict d, int64_t n)
{
#ifdef POOL_HAVE_F16C_PATH
    if (have_f16c) {
        float_to_half_f16c(s, d, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) d[i] = (_Float16)s[i];
}

/* float16 average backward where 2-wide windows tile a channels-first row (avg_back_tile): each of
 * the n values of dy times share, a power of two -- exact in float32, then rounded once, as the
 * float32 route of the other layouts rounds -- written to both columns of its window.  In one
 * pass: converting the row to float32 scratch, expanding it there and converting it back took
 * 1.35x float32's time for half the bytes (1x64x224x224 2x2/s2, perf: the scratch stores). */
static void tile_row_half(const _Float16 *restrict s, _Float16 *restrict d, int64_t n, float share)
{
#ifdef POOL_HAVE_F16C_PATH
    if (have_f16c) {
        tile_row_half_f16c(s, d, n, share);
        return;
    }
#endif
    for (int64_t m = 0; m < n; m++) d[2 * m] = d[2 * m + 1] = (_Float16)((float)s[m] * share);
}

#define T float
#define ACC float
#define LOAD(v) (v)
#define STORE(a) (a)
#define SUF f32
#define HAS_ARITH 1
#define NAN_AT(p, i) ((p)[i] != (p)[i])
#include "pool_generic.inc"
#include "pool_fast.inc"
#undef T
#undef ACC
#undef LOAD
#undef STORE
#undef SUF
#undef HAS_ARITH
#undef NAN_AT

#define T double
#define ACC double
#define LOAD(v) (v)
#define STORE(a) (a)
#define SUF f64
#define HAS_ARITH 1
#define NAN_AT(p, i) ((p)[i] != (p)[i])
#include "pool_generic.inc"
#include "pool_fast.inc"
#undef T
#undef ACC
#undef LOAD
#undef STORE
#undef SUF
#undef HAS_ARITH
#undef NAN_AT

/* float16 is accumulated in float32 and rounded once, to nearest even, on the way out */
#define T _Float16
#define ACC float
#define LOAD(v) ((float)(v))
#define STORE(a) ((_Float16)(a))
#define SUF f16
#define HAS_ARITH 1
/* on the bits: GCC folds (float)h != (float)h back into a float16 compare, a libgcc call */
#define NAN_AT(p, i) ((((const half_bits *)(p))[i] & 0x7fff) > 0x7c00)
#define HALF_VIA_F32 1 /* pool_fast.inc: cf_rows max folds rows converted to float32, backward sums in float32 scratch */
#include "pool_generic.inc"
#include "pool_fast.inc"
#undef HALF_VIA_F32
#undef T
#undef ACC
#undef LOAD
#undef STORE
#undef SUF
#undef HAS_ARITH
#undef NAN_AT

#define T int8_t
#define ACC int
#define LOAD(v) ((int)(v))
#define SUF i8
#define HAS_ARITH 0
#define NAN_AT(p, i) 0
#include "pool_generic.inc"
#include "pool_fast.inc"
#undef T
#undef ACC
#undef LOAD
#undef SUF
#undef HAS_ARITH
#undef NAN_AT

#define T uint8_t
#define ACC int
#define LOAD(v) ((int)(v))
#define SUF u8
#define HAS_ARITH 0
#define NAN_AT(p, i) 0
#include "pool_generic.inc"
#include "pool_fast.inc"
#undef T
#undef ACC
#undef LOAD
#undef SUF
#undef HAS_ARITH
#undef NAN_AT

/* ---- checking -------------------------------------------------------------------------------- */
static const int64_t DIM_LIMIT = (int64_t)1 << 40;   /* any one dimension */
static const int64_t PARAM_LIMIT = (int64_t)1 << 31; /* kernel, stride, dilation, pads */

static int64_t item_size(int32_t dtype)
{
    switch (dtype) {
    case POOL_F32: return 4;
    case POOL_F64: return 8;
    case POOL_F16: return 2;
    case POOL_I8:
    case POOL_U8: return 1;
    default: return 0;
    }
}

static int mul_ok(int64_t a, int64_t b, int64_t *out) { return !__builtin_mul_overflow(a, b, out); }

/* Check everything in the descriptor and fill g.  Buffers are checked by the callers. */
static int check_desc(const pool_desc *d, pool_geom *g, int backward)
{
    if (!d) return POOL_E_NULL;
    if (d->mode < POOL_MAX || d->mode > POOL_LP) return POOL_E_ENUM;
    if (d->layout != POOL_CHANNELS_FIRST && d->layout != POOL_CHANNELS_LAST) return POOL_E_ENUM;
    if (item_size(d->dtype) == 0) return POOL_E_ENUM;
    int is_float = d->dtype == POOL_F32 || d->dtype == POOL_F64 || d->dtype == POOL_F16;
    if ((d->mode != POOL_MAX || backward) && !is_float) return POOL_E_ENUM;
    if (d->rank < 1 || d->rank > POOL_MAX_RANK) return POOL_E_RANK;
    if (d->nthreads < 1 || d->nthreads > POOL_MAX_THREADS) return POOL_E_THREADS;
    if ((d->flags & ~POOL_FLAGS_KNOWN) != 0 || (d->ceil_mode != 0 && d->ceil_mode != 1) ||
        (d->count_include_pad != 0 && d->count_include_pad != 1))
        return POOL_E_PARAM;
    if (d->mode == POOL_LP && !(d->p > 0 && isfinite(d->p))) return POOL_E_PARAM;
    if (d->batch < 1 || d->channels < 1 || d->batch > DIM_LIMIT || d->channels > DIM_LIMIT) return POOL_E_SHAPE;

    memset(g, 0, sizeof *g);
    const int lead = POOL_MAX_RANK - d->rank; /* unused leading axes: size 1, kernel 1 */
    for (int a = 0; a < POOL_MAX_RANK; a++) {
        g->in[a] = g->out[a] = g->k[a] = g->s[a] = g->d[a] = 1;
    }
    for (int i = 0; i < d->rank; i++) {
        const int a = lead + i;
        int64_t in = d->in_shape[i], k = d->kernel[i], s = d->stride[i], dil = d->dilation[i];
        int64_t pb = d->pad_begin[i], pe = d->pad_end[i];
        if (in < 1 || in > DIM_LIMIT || d->out_shape[i] < 1) return POOL_E_SHAPE;
        if (k < 1 || s < 1 || dil < 1 || k > PARAM_LIMIT || s > PARAM_LIMIT || dil > PARAM_LIMIT) return POOL_E_PARAM;
        int64_t extent = dil * (k - 1) + 1; /* < 2^62: no overflow */
        if (pb < 0 || pe < 0 || pb >= extent || pe >= extent) return POOL_E_PARAM;
        int64_t span = in + pb + pe - extent;
        if (span < 0) return POOL_E_SHAPE;
        int64_t out;
        if (d->ceil_mode) {
            out = (span + s - 1) / s + 1;
            if ((out - 1) * s >= in + pb) out--; /* the last window may not start in the end pad */
        } else {
            out = span / s + 1;
        }
        if (out != d->out_shape[i]) return POOL_E_SHAPE;
        /* windows starting in the begin padding may step over the input with their dilation */
        for (int64_t o = 0; o < out && o * s - pb < 0; o++) {
            int64_t start = o * s - pb;
            int64_t first = (-start + dil - 1) / dil; /* first tap at or after 0 */
            if (first >= k || start + first * dil >= in) return POOL_E_WINDOW;
        }
        g->in[a] = in; g->out[a] = out; g->k[a] = k; g->s[a] = s; g->d[a] = dil;
        g->pb[a] = pb; g->pe[a] = pe;
    }
    g->batch = d->batch;
    g->channels = d->channels;
    g->count_include_pad = d->count_include_pad;
    g->p = d->p;
    if (!mul_ok(g->in[0], g->in[1], &g->plane_size) || !mul_ok(g->plane_size, g->in[2], &g->plane_size))
        return POOL_E_OVERFLOW;
    g->out_plane_size = g->out[0] * g->out[1] * g->out[2]; /* each out <= its in: no overflow */
    int64_t planes, xb, yb;
    if (!mul_ok(g->batch, g->channels, &planes) || !mul_ok(planes, g->plane_size, &g->x_elems) ||
        !mul_ok(g->x_elems, item_size(d->dtype), &xb) || !mul_ok(g->x_elems, 8, &yb))
        return POOL_E_OVERFLOW;
    g->y_elems = planes * g->out_plane_size;
    g->es = d->layout == POOL_CHANNELS_FIRST ? 1 : g->channels;
    g->sx[2] = g->es; g->sx[1] = g->in[2] * g->es; g->sx[0] = g->in[1] * g->in[2] * g->es;
    g->sy[2] = g->es; g->sy[1] = g->out[2] * g->es; g->sy[0] = g->out[1] * g->out[2] * g->es;
    return POOL_OK;
}

static int bytes_ok(int64_t bytes, int64_t elems, int64_t item) { return bytes == elems * item; }

/* Offset of plane q = (n, c) in a tensor of planes of `size` elements. */
static int64_t plane_base(const pool_geom *g, int64_t q, int64_t size)
{
    int64_t n = q / g->channels, c = q % g->channels;
    return g->es == 1 ? q * size : n * g->channels * size + c;
}

/* ---- forward --------------------------------------------------------------------------------- */
int pool_forward(const pool_desc *d, const void *x, int64_t x_bytes, void *y, int64_t y_bytes,
                 int64_t *indices, int64_t indices_bytes)
{
    pool_geom g;
    int status = check_desc(d, &g, 0);
    if (status) return status;
    const int64_t item = item_size(d->dtype);
    if (!x || !y) return POOL_E_NULL;
    if (indices && d->mode != POOL_MAX) return POOL_E_NULL;
    if (!bytes_ok(x_bytes, g.x_elems, item) || !bytes_ok(y_bytes, g.y_elems, item)) return POOL_E_SIZE;
    if (indices && !bytes_ok(indices_bytes, g.y_elems, 8)) return POOL_E_SIZE;
    if (!indices && indices_bytes != 0) return POOL_E_SIZE;

    if (!(d->flags & POOL_FLAG_GENERIC_ONLY)) {
        int done = 0;
        switch (d->dtype) {
        case POOL_F32: done = fast_forward_f32(d, &g, x, y, indices); break;
        case POOL_F64: done = fast_forward_f64(d, &g, x, y, indices); break;
        case POOL_F16: done = fast_forward_f16(d, &g, x, y, indices); break;
        case POOL_I8: done = fast_forward_i8(d, &g, x, y, indices); break;
        case POOL_U8: done = fast_forward_u8(d, &g, x, y, indices); break;
        default: break;
        }
        if (done) return POOL_OK;
    }

    const int64_t planes = g.batch * g.channels;
    const int mode = d->mode, dtype = d->dtype;
#pragma omp parallel for num_threads(d->nthreads) if (d->nthreads > 1 && planes > 1) schedule(static)
    for (int64_t q = 0; q < planes; q++) {
        const int64_t xo = plane_base(&g, q, g.plane_size), yo = plane_base(&g, q, g.out_plane_size);
        int64_t *ind = indices ? indices + yo : NULL;
        switch (dtype * 3 + mode) {
#define CASE(DT, SUF, TYPE)                                                                                  \
    case DT * 3 + POOL_MAX: max_plane_##SUF(&g, (const TYPE *)x + xo, (TYPE *)y + yo, ind, xo); break;
#define CASE_ARITH(DT, SUF, TYPE)                                                                            \
    CASE(DT, SUF, TYPE)                                                                                      \
    case DT * 3 + POOL_AVG: avg_plane_##SUF(&g, (const TYPE *)x + xo, (TYPE *)y + yo); break;              \
    case DT * 3 + POOL_LP: lp_plane_##SUF(&g, (const TYPE *)x + xo, (TYPE *)y + yo); break;
            CASE_ARITH(POOL_F32, f32, float)
            CASE_ARITH(POOL_F64, f64, double)
            CASE_ARITH(POOL_F16, f16, _Float16)
            CASE(POOL_I8, i8, int8_t)
            CASE(POOL_U8, u8, uint8_t)
#undef CASE
#undef CASE_ARITH
        default: break; /* unreachable: check_desc rejected the combination */
        }
    }
    return POOL_OK;
}

/* ---- backward -------------------------------------------------------------------------------- */
int pool_backward(const pool_desc *d, const void *dy, int64_t dy_bytes, const void *x, int64_t x_bytes,
                  const int64_t *indices, int64_t indices_bytes, void *dx, int64_t dx_bytes)
{
    pool_geom g;
    int status = check_desc(d, &g, 1);
    if (status) return status;
    const int64_t item = item_size(d->dtype);
    if (!dy || !dx) return POOL_E_NULL;
    if (!bytes_ok(dy_bytes, g.y_elems, item) || !bytes_ok(dx_bytes, g.x_elems, item)) return POOL_E_SIZE;
    if (d->mode == POOL_MAX) {
        if (!indices) return POOL_E_NULL;
        if (!bytes_ok(indices_bytes, g.y_elems, 8)) return POOL_E_SIZE;
    } else if (indices || indices_bytes != 0) {
        return POOL_E_NULL;
    }
    if (d->mode == POOL_LP) {
        if (!x) return POOL_E_NULL;
        if (!bytes_ok(x_bytes, g.x_elems, item)) return POOL_E_SIZE;
    }

    if (!(d->flags & POOL_FLAG_GENERIC_ONLY)) {
        int rc = -1;
        if (d->dtype == POOL_F32)
            rc = fast_backward_f32(d, &g, (const float *)dy, indices, (float *)dx);
        else if (d->dtype == POOL_F64)
            rc = fast_backward_f64(d, &g, (const double *)dy, indices, (double *)dx);
        else if (d->dtype == POOL_F16)
            rc = fast_backward_f16(d, &g, (const _Float16 *)dy, indices, (_Float16 *)dx);
        if (rc >= 0) return rc;
    }

    const int64_t planes = g.batch * g.channels;
    const int mode = d->mode, dtype = d->dtype;
    /* one accumulator plane per thread, in float64 for float64 and float32 otherwise */
    const size_t acc_bytes = (size_t)g.plane_size * (dtype == POOL_F64 ? sizeof(double) : sizeof(float));
#pragma omp parallel num_threads(d->nthreads) if (d->nthreads > 1 && planes > 1)
    {
        void *acc = malloc(acc_bytes);
        if (!acc) {
#pragma omp atomic write
            status = POOL_E_NOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t q = 0; q < planes; q++) {
            int failed;
#pragma omp atomic read
            failed = status;
            if (failed || !acc) continue;
            const int64_t xo = plane_base(&g, q, g.plane_size), yo = plane_base(&g, q, g.out_plane_size);
            memset(acc, 0, acc_bytes);
            int rc = POOL_OK;
            switch (dtype * 3 + mode) {
#define CASES(DT, SUF, TYPE, ACCT)                                                                            \
    case DT * 3 + POOL_MAX:                                                                                   \
        rc = max_back_plane_##SUF(&g, (const TYPE *)dy + yo, indices + yo, (ACCT *)acc, xo, g.es);            \
        break;                                                                                                \
    case DT * 3 + POOL_AVG: avg_back_plane_##SUF(&g, (const TYPE *)dy + yo, (ACCT *)acc); break;            \
    case DT * 3 + POOL_LP: lp_back_plane_##SUF(&g, (const TYPE *)dy + yo, (const TYPE *)x + xo, (ACCT *)acc); break;
                CASES(POOL_F32, f32, float, float)
                CASES(POOL_F64, f64, double, double)
                CASES(POOL_F16, f16, _Float16, float)
#undef CASES
            default: break;
            }
            if (rc) {
#pragma omp atomic write
                status = rc;
                continue;
            }
            switch (dtype) {
            case POOL_F32: store_plane_f32(&g, (const float *)acc, (float *)dx + xo); break;
            case POOL_F64: store_plane_f64(&g, (const double *)acc, (double *)dx + xo); break;
            case POOL_F16: store_plane_f16(&g, (const float *)acc, (_Float16 *)dx + xo); break;
            default: break;
            }
        }
        free(acc);
    }
    return status;
}

/* ---- information ----------------------------------------------------------------------------- */
const char *pool_strerror(int status)
{
    switch (status) {
    case POOL_OK: return "ok";
    case POOL_E_NULL: return "a required buffer is missing, or a buffer was given that this mode does not take";
    case POOL_E_ENUM: return "mode, dtype or layout is out of range, or the dtype does not support this mode";
    case POOL_E_RANK: return "the number of spatial axes must be 1, 2 or 3";
    case POOL_E_SHAPE: return "a dimension is < 1, or the output shape differs from the pooling rule";
    case POOL_E_PARAM: return "kernel, stride or dilation < 1, a pad < 0 or not smaller than the dilated kernel, or p <= 0";
    case POOL_E_SIZE: return "a buffer's byte length differs from its shape times the item size";
    case POOL_E_OVERFLOW: return "an element or byte count overflows int64";
    case POOL_E_WINDOW: return "a pooling window covers only padding";
    case POOL_E_INDEX: return "a max-pool index lies outside its own (batch, channel) plane";
    case POOL_E_THREADS: return "the thread count must be between 1 and 256";
    case POOL_E_NOMEM: return "out of memory for the backward accumulator";
    default: return "unknown status";
    }
}

const char *pool_isa(void)
{
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    /* the hand-written paths' level: the CPU's, or below it where POOLSERVE_KERNEL_ISA caps it */
    return have_avx512 ? "x86-64-v4" : have_avx2 ? "x86-64-v3" : "x86-64";
#elif defined(__aarch64__)
    return "neon";
#else
    return "generic";
#endif
}

int pool_abi_version(void) { return POOL_ABI_VERSION; }

/* ---- the bandwidth floor, measured the way the kernels move memory ---------------------------
 * bench/kernels.py times these on buffers of a call's input and output sizes, with the call's
 * thread count: reading the input once plus writing the output once is the floor for pooling. */
POOL_CLONES
static float stream_read_part(const float *p, int64_t n)
{
    enum { L = 32 };
    float s[L] = {0};
    int64_t i = 0;
    for (; i + L <= n; i += L)
        for (int l = 0; l < L; l++) s[l] += p[i + l];
    for (; i < n; i++) s[0] += p[i];
    float t = 0;
    for (int l = 0; l < L; l++) t += s[l];
    return t;
}

POOL_CLONES
static void stream_write_part(float *p, int64_t n, float v)
{
    for (int64_t i = 0; i < n; i++) p[i] = v; /* a value other than 0: plain stores, no memset */
}

double pool_stream_read(const void *buf, int64_t nbytes, int nthreads)
{
    if (!buf || nbytes < 0 || nthreads < 1 || nthreads > POOL_MAX_THREADS) return 0;
    const int64_t n = nbytes / 4;
    double total = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1) reduction(+ : total)
    {
        int64_t first, last;
        thread_share(n, &first, &last);
        total += stream_read_part((const float *)buf + first, last - first);
    }
    return total;
}

void pool_stream_write(void *buf, int64_t nbytes, int nthreads)
{
    if (!buf || nbytes < 0 || nthreads < 1 || nthreads > POOL_MAX_THREADS) return;
    const int64_t n = nbytes / 4;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int64_t first, last;
        thread_share(n, &first, &last);
        stream_write_part((float *)buf + first, last - first, 1.0f);
    }
}

const char *pool_path(const pool_desc *d, int backward)
{
    pool_geom g;
    if (check_desc(d, &g, backward != 0)) return NULL;
    return PATH_NAMES[backward ? backward_path(d, &g) : forward_path(d, &g)];
}
