# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""
Parallel normalization kernels.

Design
------
Every op is one of three reduction patterns over the same three cores (moments, apply,
backward sums) from ``_core.h``:

* planes (channels-first): x viewed as (N, C, S). A *unit* of statistics is a block of
  ``nb`` samples by ``cb`` channels: batch norm (nb=N, cb=1), instance norm (nb=1, cb=1),
  group norm (nb=1, cb=C/G); layer norm is N rows with C=1 and an element-wise affine.
* cols (channels-last): x viewed as (G0, R, C) with statistics per (g0, group of cg
  columns): batch norm (G0=1, R=N*S), instance norm (G0=N, R=S, cg=1), group norm (cg=C/G).
  Lanes run across C, so every lane shares one count.
* rows backward (layer norm): dweight/dbias need a column reduction across rows.

Determinism: each contiguous run of data is cut into chunks at fixed offsets (FN_CHUNK
elements, or whole row blocks: cols_chunk_rows) that depend only on the shape and dtype, never
on the thread count. A chunk's partial is computed from zero, and partials are merged in index
order. Two schedules produce the same partials and the same merges, so their results are
bitwise equal:

* fused: one thread owns a whole unit: statistics, then the apply while the unit is still in
  its L2 (one read of x when the unit fits in cache);
* split: (unit, chunk) work items in parallel for the partials, a merge per unit, then the
  apply over the items again (used when there are fewer units than threads or a unit is large).

Kernels take typed memoryviews, sizes and ``n_threads``; they write into the buffers they are
given. Work buffers are allocated here, before the GIL is released, never inside a loop.
"""
import numpy as np

from fastnorm._kernels._buffers import (empty as _buf_empty, is_fresh as _buf_is_fresh,
                                        scratch as _buf_scratch)
cimport numpy as cnp
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport sqrt

from fastnorm._kernels._openmp cimport (fn_openmp_enabled, fn_team_size, fn_team_rank,
                                       fn_team_barrier)

cnp.import_array()

ctypedef fused floating:
    float
    double

cdef extern from "_core.h" nogil:
    ctypedef Py_ssize_t fn_idx
    int FN_BLK
    fn_idx fn_col_block_rows(fn_idx C)
    int FN_VB
    void fn_pf_bytes(const void *p, fn_idx bytes)
    void fn_chan_merge(double *n, double *mean, double *m2, double nb, double mb, double m2b)
    void fn_unit_finalize(double n, double mean, double m2, double eps, int rms,
                          double *mean_out, double *rstd_out)
    void fn_split_mean_f32(double m, float *mh, float *ml)
    void fn_split_mean_f64(double m, double *mh, double *ml)
    void fn_col_group_moments(double n, fn_idx cg, const double *mean, const double *m2,
                              double *gmean, double *gm2)
    void fn_cols_unit_coef_f32(fn_idx R, fn_idx C, fn_idx cg, const double *mean,
                               const double *m2, const float *w, const float *b, double eps,
                               double *mean_out, double *rstd_out, float *mh, float *ml,
                               float *a, float *bb)
    void fn_cols_unit_coef_f64(fn_idx R, fn_idx C, fn_idx cg, const double *mean,
                               const double *m2, const double *w, const double *b, double eps,
                               double *mean_out, double *rstd_out, double *mh, double *ml,
                               double *a, double *bb)
    void fn_chan_merge_vec(double *n, double *mean, double *m2, fn_idx C, double nb,
                           const double *mb, const double *m2b)
    const char *fn_simd_level()
    int fn_act_portable
    void fn_act_buf_f32(const float *s, float *d, fn_idx n, int act, int nt)
    void fn_copy_stream(const float *s, float *d, fn_idx n)
    fn_idx fn_nt_head_f32(const float *p, fn_idx n)
    fn_idx fn_nt_head_f64(const double *p, fn_idx n)
    void fn_sfence()
    int fn_cpu_intel()
    long fn_l2_bytes()
    void fn_set_row_tiles(long apply_bytes, long dx_values)
    long fn_row_tile_bytes, fn_dx_tile_values

    ctypedef struct fn_bm_f32:
        float K
    ctypedef struct fn_bm_f64:
        double K
    void fn_bm_begin_f32(fn_bm_f32 *s, const float *x, fn_idx n)
    void fn_bm_begin_f64(fn_bm_f64 *s, const double *x, fn_idx n)
    void fn_bm_end_f32(fn_bm_f32 *s, const float *x, fn_idx n, double *mean, double *m2)
    void fn_bm_end_f64(fn_bm_f64 *s, const double *x, fn_idx n, double *mean, double *m2)
    void fn_apply_bm_f32(const float *x, float *y, fn_idx n, float mh, float ml, float a,
                         float b, const float *g, const float *bb, int act, int nt,
                         fn_bm_f32 *s, const float *xn, fn_idx j0, fn_idx j1)
    void fn_apply_bm_f64(const double *x, double *y, fn_idx n, double mh, double ml, double a,
                         double b, const double *g, const double *bb, int act, int nt,
                         fn_bm_f64 *s, const double *xn, fn_idx j0, fn_idx j1)
    void fn_seg_moments_f32(const float *x, fn_idx n, double *cnt, double *mean, double *m2)
    void fn_seg_moments_f64(const double *x, fn_idx n, double *cnt, double *mean, double *m2)
    void fn_seg_bwd_sums2_f32(const float *dya, const float *xa, const float *dyb,
                              const float *xb, fn_idx n, float mh, float ml, double *sdya,
                              double *sdyxa, double *sdyb, double *sdyxb, const float *const *nxt,
                              fn_idx pd)
    void fn_seg_bwd_sums2_f64(const double *dya, const double *xa, const double *dyb,
                              const double *xb, fn_idx n, double mh, double ml, double *sdya,
                              double *sdyxa, double *sdyb, double *sdyxb, const double *const *nxt,
                              fn_idx pd)
    void fn_seg_moments2_f32(const float *xa, const float *xb, fn_idx n, double *na,
                             double *meana, double *m2a, double *nb, double *meanb,
                             double *m2b, const float *nxa,
                             const float *nxb, fn_idx pd)
    void fn_seg_moments2_f64(const double *xa, const double *xb, fn_idx n, double *na,
                             double *meana, double *m2a, double *nb, double *meanb,
                             double *m2b, const double *nxa,
                             const double *nxb, fn_idx pd)
    void fn_planes_col_moments_f32(const float *x, fn_idx rows, fn_idx ld, fn_idx nc,
                                   fn_idx S, fn_idx rb, float *scr, double *n, double *mean,
                                   double *m2)
    void fn_planes_col_moments_f64(const double *x, fn_idx rows, fn_idx ld, fn_idx nc,
                                   fn_idx S, fn_idx rb, double *scr, double *n, double *mean,
                                   double *m2)
    void fn_planes_col_bwd_sums_f32(const float *dy, const float *x, fn_idx rows, fn_idx ld,
                                    fn_idx nc, fn_idx S, fn_idx rb, const float *mh,
                                    const float *ml, float *scr, double *sdy, double *sdyx)
    void fn_planes_col_bwd_sums_f64(const double *dy, const double *x, fn_idx rows, fn_idx ld,
                                    fn_idx nc, fn_idx S, fn_idx rb, const double *mh,
                                    const double *ml, double *scr, double *sdy, double *sdyx)
    int fn_set_col_rows(int n)
    void fn_planes_col_apply_f32(const float *x, float *y, fn_idx rows, fn_idx ld, fn_idx L,
                                 const float *mh, const float *ml, const float *a,
                                 const float *b, int act, int nt)
    void fn_planes_col_apply_f64(const double *x, double *y, fn_idx rows, fn_idx ld, fn_idx L,
                                 const double *mh, const double *ml, const double *a,
                                 const double *b, int act, int nt)
    void fn_planes_col_bwd_apply_f32(const float *dy, const float *x, float *dx, fn_idx rows,
                                     fn_idx ld, fn_idx L, const float *Q, const float *R,
                                     const float *mh, const float *ml, const float *B, int nt)
    void fn_planes_col_bwd_apply_f64(const double *dy, const double *x, double *dx, fn_idx rows,
                                     fn_idx ld, fn_idx L, const double *Q, const double *R,
                                     const double *mh, const double *ml, const double *B, int nt)
    void fn_rows_group_bwd_f32(const float *dy, const float *x, float *dx, fn_idx nr, fn_idx n,
                               const float *w, const double *mean, const double *rstd, int rms,
                               float *dwa, float *dba, const float *ds, int nt, fn_idx pf)
    void fn_rows_group_bwd_f64(const double *dy, const double *x, double *dx, fn_idx nr,
                               fn_idx n, const double *w, const double *mean,
                               const double *rstd, int rms, double *dwa, double *dba,
                               const double *ds, int nt, fn_idx pf)
    void fn_planes_bwd_sums_f32(const float *dy, const float *x, fn_idx nplanes, fn_idx S,
                                float mh, float ml, double *psum)
    void fn_planes_bwd_sums_f64(const double *dy, const double *x, fn_idx nplanes, fn_idx S,
                                double mh, double ml, double *psum)
    void fn_planes_bwd_apply_f32(const float *dy, const float *x, float *dx, fn_idx nplanes,
                                 fn_idx S, const float *w, float Q, float R, float mh, float ml,
                                 float B, int nt, fn_idx pf)
    void fn_planes_bwd_apply_f64(const double *dy, const double *x, double *dx, fn_idx nplanes,
                                 fn_idx S, const double *w, double Q, double R, double mh,
                                 double ml, double B, int nt, fn_idx pf)
    void fn_runs_apply_f32(const float *x, float *y, fn_idx np_, fn_idx S, const float *MH,
                           const float *ML, const float *A, const float *B, int act, int nt)
    void fn_runs_apply_f64(const double *x, double *y, fn_idx np_, fn_idx S, const double *MH,
                           const double *ML, const double *A, const double *B, int act, int nt)
    void fn_runs_bwd_apply_f32(const float *dy, const float *x, float *dx, fn_idx np_,
                               fn_idx S, const float *Q, const float *R, const float *MH,
                               const float *ML, const float *B, int nt)
    void fn_runs_bwd_apply_f64(const double *dy, const double *x, double *dx, fn_idx np_,
                               fn_idx S, const double *Q, const double *R, const double *MH,
                               const double *ML, const double *B, int nt)
    void fn_planes_apply_f32(const float *x, float *y, fn_idx np_, fn_idx S, float mh,
                             float ml, float r, const float *w, const float *b, int act,
                             int nt, fn_idx pf)
    void fn_planes_apply_f64(const double *x, double *y, fn_idx np_, fn_idx S, double mh,
                             double ml, double r, const double *w, const double *b, int act,
                             int nt, fn_idx pf)
    void fn_units_group_bwd_f32(const float *dy, const float *x, float *dx, fn_idx u0,
                                fn_idx u1, fn_idx ncb, fn_idx S, fn_idx cb, const float *w,
                                const float *mh, const float *ml, const double *rstd,
                                double *psum, float *cQ, float *cB, int frozen,
                                fn_idx pf)
    void fn_units_group_bwd_f64(const double *dy, const double *x, double *dx, fn_idx u0,
                                fn_idx u1, fn_idx ncb, fn_idx S, fn_idx cb, const double *w,
                                const double *mh, const double *ml, const double *rstd,
                                double *psum, double *cQ, double *cB, int frozen,
                                fn_idx pf)
    void fn_seg_col_moments_f32(const float *x, fn_idx rows, fn_idx C, fn_idx rb, float *scr,
                                double *bm, double *bm2, double *n, double *mean, double *m2)
    void fn_seg_col_moments_f64(const double *x, fn_idx rows, fn_idx C, fn_idx rb, double *scr,
                                double *bm, double *bm2, double *n, double *mean, double *m2)
    void fn_seg_apply_f32(const float *x, float *y, fn_idx n, float mh, float ml, float a,
                          float b, int act, int stream, fn_idx pf)
    void fn_seg_apply_f64(const double *x, double *y, fn_idx n, double mh, double ml, double a,
                          double b, int act, int stream, fn_idx pf)
    void fn_seg_apply_cold_f32(const float *x, float *y, fn_idx n, float mh, float ml,
                               float a, float b, int act, int stream)
    void fn_seg_apply_cold_f64(const double *x, double *y, fn_idx n, double mh, double ml,
                               double a, double b, int act, int stream)
    void fn_rows_group_fwd_f32(const float *x, float *y, fn_idx nr, fn_idx n, const float *g,
                               const float *b, double eps, int rms, double *mean_out,
                               double *rstd_out, int act, int nt, fn_idx pf)
    void fn_rows_group_fwd_f64(const double *x, double *y, fn_idx nr, fn_idx n,
                               const double *g, const double *b, double eps, int rms,
                               double *mean_out, double *rstd_out, int act, int nt, fn_idx pf)
    void fn_units_group_fwd_f32(const float *x, float *y, fn_idx u0, fn_idx nr, fn_idx ncb,
                                fn_idx cb, fn_idx S, const float *w, const float *b, int ew,
                                double eps, int rms, double *mean_out, double *rstd_out,
                                int act, int nt, fn_idx pf, int vec)
    void fn_units_group_fwd_f64(const double *x, double *y, fn_idx u0, fn_idx nr, fn_idx ncb,
                                fn_idx cb, fn_idx S, const double *w, const double *b, int ew,
                                double eps, int rms, double *mean_out, double *rstd_out,
                                int act, int nt, fn_idx pf, int vec)
    void fn_seg_apply_ew_f32(const float *x, float *y, fn_idx n, float mh, float ml, float r,
                             const float *g, const float *b, int act, int stream,
                             fn_idx pf)
    void fn_seg_apply_ew_f64(const double *x, double *y, fn_idx n, double mh, double ml,
                             double r, const double *g, const double *b, int act, int stream,
                             fn_idx pf)
    void fn_rows_apply_f32(const float *x, float *y, fn_idx rows, fn_idx C, const float *mh,
                           const float *ml, const float *a, const float *b, int act, int stream)
    void fn_rows_apply_f64(const double *x, double *y, fn_idx rows, fn_idx C, const double *mh,
                           const double *ml, const double *a, const double *b, int act, int stream)
    void fn_seg_bwd_sums_f32(const float *dy, const float *x, fn_idx n, float mh, float ml,
                             double *sdy, double *sdyx)
    void fn_seg_bwd_sums_f64(const double *dy, const double *x, fn_idx n, double mh, double ml,
                             double *sdy, double *sdyx)
    void fn_seg_bwd_apply_f32(const float *dy, const float *x, float *dx, fn_idx n, float P,
                              float Q, float R, float mh, float ml, float B, int stream, fn_idx pf)
    void fn_seg_bwd_apply_f64(const double *dy, const double *x, double *dx, fn_idx n, double P,
                              double Q, double R, double mh, double ml, double B, int stream,
                              fn_idx pf)
    void fn_rowsn_bwd_sums_f32(int nr, const float *const *dy, const float *const *x, fn_idx n,
                              const float *mh, const float *ml, const float *r, const float *w,
                              double *sg, double *sgx, float *dwa, float *dba, int fresh)
    void fn_rowsn_bwd_sums_f64(int nr, const double *const *dy, const double *const *x,
                              fn_idx n, const double *mh, const double *ml, const double *r,
                              const double *w, double *sg, double *sgx, double *dwa,
                              double *dba, int fresh)
    void fn_row_bwd_apply_ew_f32(const float *dy, const float *x, float *dx, fn_idx n,
                                 const float *w, float Q, float r, float mh, float ml, float B,
                                 const float *ds, int stream, fn_idx pf)
    void fn_row_bwd_apply_ew_f64(const double *dy, const double *x, double *dx, fn_idx n,
                                 const double *w, double Q, double r, double mh, double ml,
                                 double B, const double *ds, int stream,
                                 fn_idx pf)
    void fn_seg2_apply_ew_f32(const float *x0, const float *x1, float *y0, float *y1, fn_idx n,
                              float mh0, float ml0, float r0, float mh1, float ml1, float r1,
                              const float *g, const float *b, int act, int stream)
    void fn_seg2_apply_ew_f64(const double *x0, const double *x1, double *y0, double *y1,
                              fn_idx n, double mh0, double ml0, double r0, double mh1,
                              double ml1, double r1, const double *g, const double *b, int act,
                              int stream)
    void fn_rowsn_bwd_apply_ew_f32(int nr, const float *const *dy, const float *const *x,
                                   float *const *dx, fn_idx n, const float *w, const float *Q,
                                   const float *r, const float *mh, const float *ml,
                                   const float *B, const float *const *ds, int stream)
    void fn_rowsn_bwd_apply_ew_f64(int nr, const double *const *dy, const double *const *x,
                                   double *const *dx, fn_idx n, const double *w,
                                   const double *Q, const double *r, const double *mh,
                                   const double *ml, const double *B,
                                   const double *const *ds, int stream)
    void fn_rows_minmax_f32(const float *x, fn_idx rows, fn_idx C, float *mn, float *mx,
                            float *z)
    void fn_rows_minmax_f64(const double *x, fn_idx rows, fn_idx C, double *mn, double *mx,
                            double *z)
    void fn_seg_add_f32(const float *x, const float *r, float *s, fn_idx n)
    void fn_seg_add_f64(const double *x, const double *r, double *s, fn_idx n)
    void fn_seg_add_moments_f32(const float *x, const float *r, fn_idx n, double *cnt,
                                double *mean, double *m2)
    void fn_seg_add_moments_f64(const double *x, const double *r, fn_idx n, double *cnt,
                                double *mean, double *m2)
    void fn_seg_apply_res_f32(const float *x, const float *r, float *s, float *y, fn_idx n,
                              float mh, float ml, float a, float b, const float *g,
                              const float *bb, int act, int stream)
    void fn_seg_apply_res_f64(const double *x, const double *r, double *s, double *y, fn_idx n,
                              double mh, double ml, double a, double b, const double *g,
                              const double *bb, int act, int stream)
    void fn_rows_bwd_sums_f32(const float *dy, const float *x, fn_idx rows, fn_idx C,
                              fn_idx rb, const float *mh, const float *ml, double *sdy,
                              double *sdyx)
    void fn_rows_bwd_sums_f64(const double *dy, const double *x, fn_idx rows, fn_idx C,
                              fn_idx rb, const double *mh, const double *ml, double *sdy,
                              double *sdyx)
    void fn_rows_bwd_apply_f32(const float *dy, const float *x, float *dx, fn_idx rows, fn_idx C,
                               const float *P, const float *Q, const float *R, const float *mh,
                               const float *ml, const float *B, int stream)
    void fn_rows_bwd_apply_f64(const double *dy, const double *x, double *dx, fn_idx rows,
                               fn_idx C, const double *P, const double *Q, const double *R,
                               const double *mh, const double *ml, const double *B, int stream)

# Elements per plane chunk (a multiple of FN_BLK): 128 KiB of float32.
# Outputs of this size or more come from the reusable blocks of _buffers (glibc unmaps them)
DEF CACHED_BYTES = 33554432
DEF FN_CHUNK = 32768
# Row blocks per channels-last chunk: up to CHUNK_BLOCKS_LONG (and CHUNK_BYTES), down to
# CHUNK_BLOCKS where a tensor would otherwise have fewer than CHUNK_ITEMS chunks in all
# (cols_chunk_rows).
DEF CHUNK_BLOCKS = 16
DEF CHUNK_BLOCKS_LONG = 64
DEF CHUNK_ITEMS = 16
DEF CHUNK_BYTES = 1048576
# Layer-norm backward: rows per dweight partial hold about this many elements (at most; see
# rowblock_rows) ...
DEF ROWBLOCK_ELEMS = 1048576
# ... and there are at most this many partials (bounds the float64 buffer to 256 * D * 16 bytes).
DEF MAX_ROWBLOCKS = 256



# SERIAL_NOTE: with one thread the kernels' loops run outside any parallel region. A team of
# one still costs one: libgomp wakes the waiters of every barrier with a futex call whether or
# not anyone waits (measured here: an empty `parallel for num_threads(1)` takes 0.33 us, an
# `if(0)` one the same), which is a tenth of a small tensor's call (batch-norm inference on
# (1, 64, 14, 14): about 3.6 us). Same loop bodies in the same order: the same bits. Streaming
# stores are fenced at the end, as a region's end would order them.


def openmp_enabled():
    return bool(fn_openmp_enabled())


def simd_level():
    return fn_simd_level().decode()


def activation_f32(const float[::1] src, float[::1] dst, int act, bint portable=False):
    """dst = act(src) through the kernels' float32 activation (1 relu, 2 silu, 3 gelu);
    portable=True forces the portable vector code instead of the CPU-specific one. For tests
    and benchmarks of the epilogue itself."""
    global fn_act_portable
    if dst.shape[0] != src.shape[0]:
        raise ValueError("dst must have the length of src")
    if act < 1 or act > 3:
        raise ValueError("act must be 1 (relu), 2 (silu) or 3 (gelu)")
    prev = fn_act_portable
    fn_act_portable = 1 if portable else 0
    try:
        with nogil:
            fn_act_buf_f32(&src[0] if src.shape[0] else NULL, &dst[0] if dst.shape[0] else NULL,
                           src.shape[0], act, 0)
    finally:
        fn_act_portable = prev


cpdef bint use_fused(Py_ssize_t units, int n_threads) noexcept nogil:
    """Fused (one unit per thread) or split (chunk items) schedule; results are bitwise equal
    either way. Fused saves a read of x when a unit fits in cache, but only pays when the units
    share out evenly over the threads."""
    cdef Py_ssize_t rounds
    if n_threads <= 1 or units == 0:
        return True
    if units < n_threads:
        return False
    rounds = (units + n_threads - 1) // n_threads
    return rounds * n_threads <= 1.15 * units


DEF SPLIT_GRAIN_BYTES = 131072


cpdef int split_threads(Py_ssize_t nbytes, int n_threads):
    """Threads for a channels-last training forward on the split schedule (statistics partials,
    merge, apply: three parallel regions): one per SPLIT_GRAIN_BYTES. Measured, batch norm
    channels-last (8192, 64) float32 (256 KiB) forward: 13.3 us on one thread, 22.6 on two;
    even at 512 KiB, 4 MiB twice as fast on two."""
    return <int>max(1, min(n_threads, nbytes // SPLIT_GRAIN_BYTES))


cdef inline Py_ssize_t cols_block_rows(Py_ssize_t C) noexcept nogil:
    """Rows per channels-last moment block: about FN_BLK elements, 32 to 256 rows. Each
    block ends in per-column work (pivots, float64 sums, a merge with divisions) that its rows
    share: with 8 rows of 256 float32 channels that work cost more than the sums themselves
    (batch norm (32, 28, 28, 256) forward / copy, one thread, same process: 8 rows 4.36 or
    4.62, 16 rows 3.62, 32 rows 2.98 or 2.74, 64 rows 3.05; (32, 28, 14, 512): 4.00 -> 2.57).
    Channel counts up to 64 float32 or float64 keep their FN_BLK / C rows. The moments sum
    such a block in T, then add it into float64 and do the per-column work once per
    FN_COL_SUBS blocks (fn_block_col_moments): T sums stay this short. (One sum of 128 rows of
    64 float32 channels instead: the rstd of data at 1e5 times its spread was off by 4.6e-7
    relative, against 6e-11 in blocks of 32.)"""
    return fn_col_block_rows(C)


# A channels-last pass sweeps a chunk's rows as FN_COL_STREAMS runs a quarter chunk apart. With
# chunks of 16 blocks (512 rows of 64 float32 channels, 128 KiB) each read stream ran 32 KiB,
# then all four started over at the next chunk, where the hardware prefetch had to find them
# again. Now chunks of up to 64 blocks and CHUNK_BYTES of x, unless the tensor would then have
# fewer than CHUNK_ITEMS chunks in all (units times chunks: the split schedule shares them out
# between the threads), and as equal as whole blocks allow. CHUNK_BYTES bounds the chunk for
# wide rows (256 float64 channels keep 16 blocks), and with it the last chunk, which the fused
# schedules apply first while it may still be in L2. Measured on an AMD EPYC (Zen 4, 1 MiB L2),
# (32, 64, 56, 56) channels-last, 16 blocks against these chunks in one process on the same
# arrays (bench/chunk_probe.py), time / copy at one thread: float32 forward batch / instance /
# group 1.74 / 1.44 / 1.48 -> 1.56 / 1.29 / 1.32, backward 2.84 / 2.56 / 2.52 -> 2.63 / 2.18 /
# 2.12; float64 forward 1.72 / 1.49 / 1.47 -> 1.59 / 1.40 / 1.36, backward 2.86 / 2.51 / 2.78
# -> 2.78 / 2.41 / 2.74; float64 chunks of 512 KiB against 1 MiB 1.00-1.05 (the README has
# two threads and other shapes).


cdef Py_ssize_t _chunk_bytes = CHUNK_BYTES


def _set_chunk_bytes(Py_ssize_t cap):
    """A/B only: the channels-last chunks' cap in bytes of x (CHUNK_BYTES; 0: CHUNK_BLOCKS
    blocks, the chunks before); returns the previous cap. The bits depend on it (the chunks
    are the merge order)."""
    global _chunk_bytes
    prev = _chunk_bytes
    _chunk_bytes = cap
    return prev


def _set_col_rows(int n):
    """Tests and A/B only: rows per sweep of the small batch-norm planes' passes (4, or 1 for
    row by row; fn_col_rows in _core.h); returns the previous setting. The bits do not depend
    on it."""
    if n not in (1, 4):
        raise ValueError(f"n must be 1 or 4, got {n}")
    return fn_set_col_rows(n)


def _set_row_tiles(long apply_bytes, long dx_values):
    """Tests and A/B only: the column tiles of the per-channel passes over wide channels-last
    rows (fn_row_tile_bytes in _core.h), the apply's in bytes and the dx pass's in values;
    returns the previous pair. The bits do not depend on them."""
    prev = (fn_row_tile_bytes, fn_dx_tile_values)
    fn_set_row_tiles(apply_bytes, dx_values)
    return prev


cdef inline Py_ssize_t cols_chunk_rows(Py_ssize_t G0, Py_ssize_t R, Py_ssize_t rb,
                                       Py_ssize_t rowbytes) noexcept nogil:
    """Rows per chunk of a channels-last tensor (G0 units of R rows of rowbytes, blocks of rb
    rows). Chunks wanted per unit: one per CHUNK_BLOCKS_LONG blocks or _chunk_bytes (whichever
    is less, but at least CHUNK_BLOCKS blocks), more (up to one per CHUNK_BLOCKS blocks) while
    the G0 units would have fewer than CHUNK_ITEMS in all; the unit's blocks are then shared
    as evenly as whole blocks allow between them (its last chunk may be shorter, and
    nchunks(R, chunk rows) may come out fewer). Depends on the shape and dtype only."""
    cdef Py_ssize_t nb = (R + rb - 1) // rb
    cdef Py_ssize_t lb = min(<Py_ssize_t>CHUNK_BLOCKS_LONG,
                             max(<Py_ssize_t>CHUNK_BLOCKS, _chunk_bytes // max(rb * rowbytes, 1)))
    cdef Py_ssize_t k = max((nb + lb - 1) // lb,
                            (CHUNK_ITEMS + G0 - 1) // max(G0, <Py_ssize_t>1))
    k = max(<Py_ssize_t>1, min(k, (nb + CHUNK_BLOCKS - 1) // CHUNK_BLOCKS))
    return rb * ((nb + k - 1) // k)


cdef inline Py_ssize_t cols_cut(Py_ssize_t G0, Py_ssize_t R, Py_ssize_t C, Py_ssize_t itemsize,
                                Py_ssize_t *rb, Py_ssize_t *chr_) noexcept nogil:
    """How every channels-last pass cuts G0 units of R rows of C values of itemsize bytes:
    rb (block rows), chr_ (chunk rows); returns the chunks per unit."""
    rb[0] = cols_block_rows(C)
    chr_[0] = cols_chunk_rows(G0, R, rb[0], C * itemsize)
    return nchunks(R, chr_[0])


def cols_chunks(Py_ssize_t G0, Py_ssize_t R, Py_ssize_t C, Py_ssize_t itemsize):
    """(block rows, chunk rows, chunks per unit) of a channels-last tensor of G0 units of R
    rows of C values of itemsize bytes, as its passes cut it (for the tests)."""
    cdef Py_ssize_t rb, ch
    cdef Py_ssize_t K = cols_cut(G0, R, C, itemsize, &rb, &ch)
    return rb, ch, K


# ---- fused-type shims over the C helpers -----------------------------------------------------

cdef inline void seg_moments(const floating *x, Py_ssize_t n, double *cnt, double *mean,
                             double *m2) noexcept nogil:
    if floating is float:
        fn_seg_moments_f32(x, n, cnt, mean, m2)
    else:
        fn_seg_moments_f64(x, n, cnt, mean, m2)


cdef inline void zero_pair(double *a, double *b) noexcept nogil:
    """Two empty moment triples (count, mean, M2)."""
    a[0] = 0
    a[1] = 0
    a[2] = 0
    b[0] = 0
    b[1] = 0
    b[2] = 0


cdef inline void seg_moments2(const floating *xa, const floating *xb, Py_ssize_t n, double *a,
                              double *b, const floating *nxa=NULL, const floating *nxb=NULL,
                              Py_ssize_t pd=0) noexcept nogil:
    """seg_moments of two segments of n values read side by side, from zero: a[0:3] and b[0:3]
    (count, mean, M2), each with its own seg_moments' bits; pd > 0: prefetch pd values ahead,
    past the end into nxa / nxb (when not NULL)."""
    zero_pair(a, b)
    if floating is float:
        fn_seg_moments2_f32(xa, xb, n, &a[0], &a[1], &a[2], &b[0], &b[1], &b[2], nxa, nxb, pd)
    else:
        fn_seg_moments2_f64(xa, xb, n, &a[0], &a[1], &a[2], &b[0], &b[1], &b[2], nxa, nxb, pd)


cdef inline void seg_col_moments(const floating *x, Py_ssize_t rows, Py_ssize_t C, Py_ssize_t rb,
                                 floating *scr, double *bm, double *bm2, double *n, double *mean,
                                 double *m2) noexcept nogil:
    if floating is float:
        fn_seg_col_moments_f32(x, rows, C, rb, scr, bm, bm2, n, mean, m2)
    else:
        fn_seg_col_moments_f64(x, rows, C, rb, scr, bm, bm2, n, mean, m2)


cdef inline void seg_apply(const floating *x, floating *y, Py_ssize_t n, floating mh, floating ml,
                           floating a, floating b, int act, int stream,
                           Py_ssize_t pf=0) noexcept nogil:
    if floating is float:
        fn_seg_apply_f32(x, y, n, mh, ml, a, b, act, stream, pf)
    else:
        fn_seg_apply_f64(x, y, n, mh, ml, a, b, act, stream, pf)


cdef inline void seg_apply_cold(const floating *x, floating *y, Py_ssize_t n, floating mh,
                                floating ml, floating a, floating b, int act,
                                int stream) noexcept nogil:
    """seg_apply of an input read from memory (fn_seg_apply_cold: ascending at any placement)."""
    if floating is float:
        fn_seg_apply_cold_f32(x, y, n, mh, ml, a, b, act, stream)
    else:
        fn_seg_apply_cold_f64(x, y, n, mh, ml, a, b, act, stream)


cdef inline void seg_apply_ew(const floating *x, floating *y, Py_ssize_t n, floating mh,
                              floating ml, floating r, const floating *g, const floating *b,
                              int act, int stream, Py_ssize_t pf) noexcept nogil:
    if floating is float:
        fn_seg_apply_ew_f32(x, y, n, mh, ml, r, g, b, act, stream, pf)
    else:
        fn_seg_apply_ew_f64(x, y, n, mh, ml, r, g, b, act, stream, pf)


cdef inline void rows_apply(const floating *x, floating *y, Py_ssize_t rows, Py_ssize_t C,
                            const floating *mh, const floating *ml, const floating *a,
                            const floating *b, int act, int stream) noexcept nogil:
    if floating is float:
        fn_rows_apply_f32(x, y, rows, C, mh, ml, a, b, act, stream)
    else:
        fn_rows_apply_f64(x, y, rows, C, mh, ml, a, b, act, stream)


cdef inline void seg_bwd_sums(const floating *dy, const floating *x, Py_ssize_t n, floating mh,
                              floating ml, double *sdy, double *sdyx) noexcept nogil:
    if floating is float:
        fn_seg_bwd_sums_f32(dy, x, n, mh, ml, sdy, sdyx)
    else:
        fn_seg_bwd_sums_f64(dy, x, n, mh, ml, sdy, sdyx)


cdef inline void seg_bwd_apply(const floating *dy, const floating *x, floating *dx, Py_ssize_t n,
                               floating P, floating Q, floating R, floating mh, floating ml,
                               floating B, int stream, Py_ssize_t pf=0) noexcept nogil:
    if floating is float:
        fn_seg_bwd_apply_f32(dy, x, dx, n, P, Q, R, mh, ml, B, stream, pf)
    else:
        fn_seg_bwd_apply_f64(dy, x, dx, n, P, Q, R, mh, ml, B, stream, pf)


cdef inline void rows_bwd_sums(const floating *dy, const floating *x, Py_ssize_t rows,
                               Py_ssize_t C, Py_ssize_t rb, const floating *mh,
                               const floating *ml, double *sdy, double *sdyx) noexcept nogil:
    if floating is float:
        fn_rows_bwd_sums_f32(dy, x, rows, C, rb, mh, ml, sdy, sdyx)
    else:
        fn_rows_bwd_sums_f64(dy, x, rows, C, rb, mh, ml, sdy, sdyx)


cdef inline void rows_bwd_apply(const floating *dy, const floating *x, floating *dx,
                                Py_ssize_t rows, Py_ssize_t C, const floating *P,
                                const floating *Q, const floating *R, const floating *mh,
                                const floating *ml, const floating *B, int stream) noexcept nogil:
    if floating is float:
        fn_rows_bwd_apply_f32(dy, x, dx, rows, C, P, Q, R, mh, ml, B, stream)
    else:
        fn_rows_bwd_apply_f64(dy, x, dx, rows, C, P, Q, R, mh, ml, B, stream)


cdef inline void split_mean(double m, floating *mh, floating *ml) noexcept nogil:
    if floating is float:
        fn_split_mean_f32(m, mh, ml)
    else:
        fn_split_mean_f64(m, mh, ml)


cdef inline Py_ssize_t nchunks(Py_ssize_t length, Py_ssize_t chunk) noexcept nogil:
    return (length + chunk - 1) // chunk if length > 0 else 0


# Per-thread scratch rows: each thread's row starts on a 64-byte line and spans whole pairs of
# lines (the adjacent-line prefetcher fetches them in pairs), so no two threads ever write the
# same line. Rows of exactly count values from malloc or np.empty (16-byte aligned) put the end
# of one thread's row and the start of the next in one line: the layer-norm rows backward, whose
# per-thread dweight / dbias accumulators (2 * D values) are written at every row, took 5.6 ms
# at two threads against 2.7-3.4 at one on (65536, 64) float32 (AMD EPYC Zen 4).
DEF THREAD_ROW_ALIGN = 128


cdef inline Py_ssize_t thread_stride(Py_ssize_t count, Py_ssize_t itemsize) noexcept nogil:
    """Values per thread row for count values: a whole number of THREAD_ROW_ALIGN bytes."""
    return max(<Py_ssize_t>1, (count * itemsize + THREAD_ROW_ALIGN - 1) // THREAD_ROW_ALIGN
               * THREAD_ROW_ALIGN // itemsize)


cdef inline void *align64(void *p) noexcept nogil:
    return <void *>((<size_t>p + 63) & ~(<size_t>63))


cdef object thread_rows(Py_ssize_t nt, Py_ssize_t count, object dt):
    """(nt, thread_stride(count)) array of dt, rows on 64-byte lines."""
    cdef Py_ssize_t itemsize = np.dtype(dt).itemsize
    cdef Py_ssize_t stride = thread_stride(count, itemsize)
    raw = np.empty(nt * stride + 64 // itemsize, dtype=dt)
    cdef size_t addr = raw.ctypes.data
    cdef Py_ssize_t off = <Py_ssize_t>(<size_t>align64(<void *>addr) - addr) // itemsize
    return raw[off:off + nt * stride].reshape(nt, stride)


# ---- planes (channels-first) -----------------------------------------------------------------

cdef inline void plane_chunk_moments(const floating *x, Py_ssize_t S, Py_ssize_t p, Py_ssize_t k,
                                     const floating *res, double *out) noexcept nogil:
    """Moments (count, mean, M2) of chunk k of plane p, from zero. With a residual, of
    x + res, formed block by block in L1 (nothing is stored here)."""
    cdef Py_ssize_t off = p * S + k * FN_CHUNK
    cdef Py_ssize_t ln = min(FN_CHUNK, S - k * FN_CHUNK)
    out[0] = 0
    out[1] = 0
    out[2] = 0
    if res != NULL:
        if floating is float:
            fn_seg_add_moments_f32(x + off, res + off, ln, &out[0], &out[1], &out[2])
        else:
            fn_seg_add_moments_f64(x + off, res + off, ln, &out[0], &out[1], &out[2])
    else:
        seg_moments(x + off, ln, &out[0], &out[1], &out[2])


# Layer norm rows unit by unit: the moments of a row read it from memory, then its apply with
# the element-wise weight runs from L1 and L2 with no read of memory in flight. Rows of up to
# PF_ROW_BYTES have their successor prefetched into L2 during the apply. Measured on an AMD EPYC
# (Zen 4), layer norm with weight and bias, forward / copy, without vs with, one thread, two
# threads (same process, min of 5 interleaved rounds): 64 MiB float64 rows of 1024 1.62 -> 1.22,
# 1.35 -> 1.07; float32 rows of 2048 1.66 -> 1.34, 1.68 -> 1.32; rows of 4 KiB unchanged (1.15
# vs 1.14); 4 MiB float64 rows of 1024, in cache, 2.34 -> 2.41. Rows of 16 KiB gained nothing
# past the cache and lost 5% in it.
DEF PF_ROW_BYTES = 8192


# Units whose runs of memory are short (a plane of a batch-norm channel, an instance-norm
# plane, a group of a few small planes: at most PF_RUN_BYTES) apply with a prefetch of the
# same offset one unit on (the same plane of the next channel, or the next unit), in tensors
# past the caches (PF_TOTAL_BYTES): the next unit's statistics then start from L2 instead of
# restarting the hardware prefetch on every run. Measured on an AMD EPYC (Zen 4), (32, 64, 56,
# 56), forward / copy, without vs with, 1T, 2T (same process, min of 4 interleaved rounds,
# twice): batch float32 1.61 / 1.69 -> 1.27 / 1.34, 1.49 / 1.39 -> 1.44 / 1.35; float64 1.36 /
# 1.39 -> 1.18 / 1.27; instance float32 1.63 -> 1.37; group float32 (runs of 24.5 KiB) 1.71 /
# 1.78 -> 1.38 / 1.33. Runs of 49 KiB and more lost (group float64: 1.08 / 1.17 -> 1.23 /
# 1.37; (8, 32, 128, 128) group float32 1.74 -> 1.94), and so did tensors in cache (by 3-6%).
# Element-wise layer-norm rows have their own window (PF_ROW_BYTES).
DEF PF_RUN_BYTES = 32768
DEF PF_TOTAL_BYTES = 8388608


cdef inline Py_ssize_t run_pf(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t cb,
                              Py_ssize_t streams, Py_ssize_t itemsize) noexcept nogil:
    """Prefetch distance (values) of a per-channel unit's runs of cb planes read by a pass over
    `streams` arrays (1: the forward's x; 2: the backward's dy and x): one unit on, when the
    runs of all the streams together are at most PF_RUN_BYTES in tensors of PF_TOTAL_BYTES or
    more; else 0."""
    if streams * cb * S * itemsize <= PF_RUN_BYTES and N * C * S * itemsize >= PF_TOTAL_BYTES:
        return cb * S
    return 0


cdef inline Py_ssize_t apply_pf(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t cb,
                                bint ew, Py_ssize_t itemsize) noexcept nogil:
    """How far ahead (in values) the apply of a unit of cb planes prefetches x, 0 for not at
    all: layer-norm rows (element-wise affine) of up to PF_ROW_BYTES; per-channel units as
    run_pf decides."""
    if ew:
        return S if S * itemsize <= PF_ROW_BYTES else 0
    return run_pf(N, C, S, cb, 1, itemsize)


cdef inline void plane_chunk_apply(const floating *x, floating *y, Py_ssize_t S, Py_ssize_t p,
                                   Py_ssize_t k, Py_ssize_t c, bint ew, floating mh, floating ml,
                                   floating r, const floating *w, const floating *b,
                                   int act, int stream, const floating *res,
                                   floating *xs, Py_ssize_t pf=0) noexcept nogil:
    """Apply to chunk k of plane p. With a residual, xs = x + res is stored and normalized.
    pf > 0: the apply prefetches x pf values on (apply_pf)."""
    cdef Py_ssize_t off = k * FN_CHUNK
    cdef Py_ssize_t ln = min(FN_CHUNK, S - off)
    cdef Py_ssize_t q = p * S + off
    if res != NULL:
        if floating is float:
            fn_seg_apply_res_f32(x + q, res + q, xs + q, y + q, ln, mh, ml,
                                 r if ew else r * w[c], 0 if ew else b[c],
                                 w + off if ew else NULL, b + off, act, stream)
        else:
            fn_seg_apply_res_f64(x + q, res + q, xs + q, y + q, ln, mh, ml,
                                 r if ew else r * w[c], 0 if ew else b[c],
                                 w + off if ew else NULL, b + off, act, stream)
        return
    if ew:
        seg_apply_ew(x + q, y + q, ln, mh, ml, r, w + off, b + off, act, stream, pf)
    else:
        seg_apply(x + q, y + q, ln, mh, ml, r * w[c], b[c], act, stream, pf)


cdef inline void unit_finalize(double un, double um, double um2, double eps, bint rms,
                               double *mean, double *rstd) noexcept nogil:
    """Statistics of a unit from its merged moments (fn_unit_finalize)."""
    fn_unit_finalize(un, um, um2, eps, rms, mean, rstd)


# A batch-norm channel's planes are N runs one sample (C * S values) apart: planes of a few KiB
# are streams too short for the hardware prefetcher, and each one starts with a miss. While a
# channel's planes are read (forward moments, backward sums), the same planes of the next
# channel, which follow them in memory, are prefetched into L2 (fn_pf_bytes), for planes under
# PF_NEXT_FWD_BYTES / PF_NEXT_BWD_BYTES. Measured on an AMD EPYC (Zen 4), time / copy, same
# process, with and without, one thread: float32 (32, 256, 28, 28) forward 1.92 -> 1.34,
# (32, 512, 20, 20) forward 1.99 -> 1.58 and backward 2.70 -> 2.31; float64 (32, 512, 14, 14)
# backward 2.84 -> 2.47 (2.43 -> 2.18 at two threads), (32, 512, 12, 12) 2.89 -> 2.43. Larger
# planes gained nothing (float32 40 x 40 and 56 x 56 read 0.97-1.14, the spread of two
# identical builds on this machine).
DEF PF_NEXT_FWD_BYTES = 4096
DEF PF_NEXT_BWD_BYTES = 2048
cdef int _pfnext = 1

# CHAN_ORDER_NOTE. A batch-norm channel's backward (planes_unit_bwd_fused, cb == 1) reads its
# N planes of dy and x for the sums, then again for dx. Where the dx pass prefetched the next
# channel (run_pf: runs of at most PF_RUN_BYTES in tensors past the caches), a channel of
# (32, 64, 56, 56) float32 is 784 KiB of dy and x, and with the next one beside it 1.5 MiB:
# more than this Zen 4's 1 MiB L2. The lines the dx pass has just used are the newest, so the
# prefetches evicted the planes it had yet to read (the oldest), and the sums of the next
# channel read the planes of 12.5 KiB far apart, each a stream the hardware prefetcher starts
# afresh. Now: the sums pass prefetches PF_SUMS_BYTES ahead in every plane and across into the
# next pair of planes (fn_seg_bwd_sums2's nxt), and the dx pass goes last plane first (the
# newest in L2) and prefetches the next channel only for as many planes as L2 has room for
# beside this channel (fn_l2_bytes). Every dx value has the same operations (the same bits).
# Backward / copy, same process, the two schedules alternating round by round (_set_chan_order,
# abmodes scratch script), median of the paired new / old ratios, one thread / two threads,
# float32: (32, 64, 56, 56) 0.98 / 0.97 (21 rounds; in three runs before, new / old medians
# 0.91 / 0.91, 0.98 / 0.89 and 1.00 / 0.85: a slower old schedule in some processes); (8, 64,
# 56, 56) 0.97 / 1.00; (64, 64, 56, 56) 0.98 / 1.03; (32, 256, 28, 28) 0.99 / 1.00; (32, 128,
# 40, 40) 0.97 / 0.99; float64 (32, 256, 28, 28) 0.99 / 0.94. The dx pass without any prefetch of the next channel
# lost 10-15% on (32, 256, 28, 28) and (32, 128, 40, 40), where two channels fit L2. The
# sums' prefetch alone, in a C probe of 32 planes of 12.5 KiB a channel: 1.75-1.84 -> 1.35-1.52
# times a copy's time (a channel read as one contiguous run: 1.20-1.29). The forward's
# moments of a channel (planes_unit_fused, the same runs of x, whose apply prefetches the next
# channel: two channels of x fit L2 here) take the same prefetch across planes
# (fn_seg_moments2's nxa / nxb): forward / copy, paired new / old as above, one thread / two:
# float32 (32, 64, 56, 56) 0.94 / 0.95 and 0.96 / 0.93 (two runs of 15 rounds); (8, 64, 56,
# 56) 0.91 / 1.01; (32, 256, 28, 28) 1.01 / 0.97; float64 (32, 64, 56, 56) 0.94 / 0.96, (32,
# 256, 28, 28) 0.88 / 0.94. The other schedules keep theirs.
DEF PF_SUMS_BYTES = 4096
cdef bint _chan_order = True
cdef Py_ssize_t _l2_bytes = fn_l2_bytes()


cdef inline Py_ssize_t pair_pf(Py_ssize_t pf, Py_ssize_t itemsize) noexcept nogil:
    """How far ahead (values) a batch-norm channel's pair loops prefetch across its planes
    (CHAN_ORDER_NOTE): PF_SUMS_BYTES where the apply prefetches the next channel (pf > 0), else
    0 (not at all)."""
    return PF_SUMS_BYTES // itemsize if pf and _chan_order else 0


def _set_chan_order(bint on):
    """Tests and A/B only: the batch-norm channel schedules of CHAN_ORDER_NOTE (on: the
    forward's and the backward's prefetch across planes, the backward's dx order) or the ones
    before them (off); returns the previous setting. The bits do not depend on it."""
    global _chan_order
    prev = _chan_order
    _chan_order = on
    return prev


def _set_pfnext(int mode):
    """Tests and A/B only: whether batch-norm planes prefetch the next channel's (channel by
    channel, under PF_NEXT_FWD_BYTES / PF_NEXT_BWD_BYTES) or the next unit's (mid_planes);
    returns the previous setting. The bits do not depend on it."""
    global _pfnext
    prev = _pfnext
    _pfnext = mode
    return prev


cdef inline void pf_plane2(const floating *dy, const floating *x, Py_ssize_t p,
                           Py_ssize_t S) noexcept nogil:
    """Plane p of dy and of x into L2 (fn_pf_bytes), for a backward's next planes."""
    fn_pf_bytes(dy + p * S, S * sizeof(floating))
    fn_pf_bytes(x + p * S, S * sizeof(floating))


cdef void planes_pair_moments(const floating *x, Py_ssize_t S, Py_ssize_t p, Py_ssize_t q,
                              Py_ssize_t K, double *a, double *b, Py_ssize_t p2=-1,
                              Py_ssize_t q2=-1, Py_ssize_t pd=0) noexcept nogil:
    """Moments of plane p into a[0:3] and of plane q (q >= 0) into b[0:3], each chunk by chunk
    (FN_CHUNK) merged in order as the one-plane loop does, the two planes read side by side;
    pd > 0 (one chunk a plane): prefetch pd values ahead, then into planes p2 and q2 (p2 >= 0)."""
    cdef Py_ssize_t k, ln
    cdef double pa[3]
    cdef double pb[3]
    if K != 1:
        pd = 0
    zero_pair(a, b)
    for k in range(K):
        if q < 0:
            plane_chunk_moments(x, S, p, k, NULL, pa)
        else:
            ln = min(FN_CHUNK, S - k * FN_CHUNK)
            seg_moments2(x + p * S + k * FN_CHUNK, x + q * S + k * FN_CHUNK, ln, pa, pb,
                         x + p2 * S if p2 >= 0 else NULL, x + q2 * S if p2 >= 0 else NULL, pd)
            fn_chan_merge(&b[0], &b[1], &b[2], pb[0], pb[1], pb[2])
        fn_chan_merge(&a[0], &a[1], &a[2], pa[0], pa[1], pa[2])


cdef inline void unit_run_moments(const floating *x, Py_ssize_t n, Py_ssize_t u,
                                  const floating *res, double *un, double *um,
                                  double *um2) noexcept nogil:
    """Moments of unit u, one run of n values (x + u * n), merged chunk by chunk into (un,
    um, um2)."""
    cdef Py_ssize_t k
    cdef double part[3]
    for k in range(nchunks(n, FN_CHUNK)):
        plane_chunk_moments(x, n, u, k, res, part)
        fn_chan_merge(un, um, um2, part[0], part[1], part[2])


cdef void planes_unit_fused(const floating *x, floating *y, Py_ssize_t u, Py_ssize_t C,
                            Py_ssize_t S, Py_ssize_t nb, Py_ssize_t cb, const floating *w,
                            const floating *b, bint ew, bint rms, double eps, double *mean_out,
                            double *rstd_out, int act, const floating *res,
                            floating *xs, int stream, Py_ssize_t pf) noexcept nogil:
    """Unit u: statistics, then the apply while the unit is in cache; pf > 0: the apply of
    a per-channel affine prefetches x pf values on (see PF_RUN_BYTES)."""
    cdef Py_ssize_t ncb = C // cb, K = nchunks(S, FN_CHUNK)
    cdef Py_ssize_t n0 = (u // ncb) * nb, c0 = (u % ncb) * cb
    cdef Py_ssize_t n, c, k, p
    cdef double un = 0, um = 0, um2 = 0, pn, pm, pm2
    cdef bint pfn
    cdef double part[3]
    cdef double pa[3]
    cdef double pb[3]
    cdef floating mh, ml
    if nb == 1:
        # one sample: the unit's cb planes are adjacent, so its moments are those of one run of
        # cb*S values in FN_CHUNK chunks (group norm of 16x16 planes: one block instead of 8)
        unit_run_moments(x, cb * S, u, res, &un, &um, &um2)
    elif cb == 1 and res == NULL:
        # a batch-norm channel: its planes two at a time, side by side (seg_moments2), merged
        # in the order one plane after the other would merge them
        pfn = (_pfnext and c0 + 1 < C
               and S * <Py_ssize_t>sizeof(floating) < PF_NEXT_FWD_BYTES)
        for n in range(n0, n0 + nb - 1, 2):
            if pfn:
                fn_pf_bytes(x + (n * C + c0 + 1) * S, S * sizeof(floating))
                fn_pf_bytes(x + ((n + 1) * C + c0 + 1) * S, S * sizeof(floating))
            planes_pair_moments(x, S, n * C + c0, (n + 1) * C + c0, K, pa, pb,
                                (n + 2) * C + c0 if n + 3 < n0 + nb else -1, (n + 3) * C + c0,
                                pair_pf(pf, sizeof(floating)))
            fn_chan_merge(&un, &um, &um2, pa[0], pa[1], pa[2])
            fn_chan_merge(&un, &um, &um2, pb[0], pb[1], pb[2])
        if nb % 2:
            planes_pair_moments(x, S, (n0 + nb - 1) * C + c0, -1, K, pa, pb)
            fn_chan_merge(&un, &um, &um2, pa[0], pa[1], pa[2])
    else:
        for n in range(n0, n0 + nb):
            for c in range(c0, c0 + cb):
                p = n * C + c
                pn = 0
                pm = 0
                pm2 = 0
                for k in range(K):
                    plane_chunk_moments(x, S, p, k, res, part)
                    fn_chan_merge(&pn, &pm, &pm2, part[0], part[1], part[2])
                fn_chan_merge(&un, &um, &um2, pn, pm, pm2)
    unit_finalize(un, um, um2, eps, rms, &mean_out[u], &rstd_out[u])
    split_mean(mean_out[u], &mh, &ml)
    if nb == 1 and cb > 1 and K == 1 and not ew and res == NULL and act <= 1:
        # a group-norm unit of small planes: one run in vectors across its planes
        # (fn_planes_apply), the same bits. Forward / copy against plane by plane, same
        # process: (32, 1024, 14, 14) float32 one thread 2.43 -> 1.59 (0.65), two 0.62;
        # float64 (32, 512, 14, 14) two threads 0.92; (32, 64, 56, 56) 0.995. Not for the
        # grouped units (fn_units_group_fwd): in cache with a plane's apply inlined, the
        # blended vectors cost what the scalar tails did (group (128, 128, 7, 7) 1.07)
        p = n0 * C + c0
        if floating is float:
            fn_planes_apply_f32(x + p * S, y + p * S, cb, S, mh, ml, <float>rstd_out[u],
                                w + c0, b + c0, act, stream, pf)
        else:
            fn_planes_apply_f64(x + p * S, y + p * S, cb, S, mh, ml, rstd_out[u], w + c0,
                                b + c0, act, stream, pf)
        return
    for n in range(n0, n0 + nb):
        for c in range(c0, c0 + cb):
            p = n * C + c
            # last chunk first: it was read last and may still be in L2 (layer norm over
            # (64, 56, 56) with weight and bias, forward / copy, float32 one thread, medians of
            # three: 1.75 -> 1.70, float64 two threads 1.66 -> 1.57)
            for k in range(K - 1, -1, -1):
                plane_chunk_apply(x, y, S, p, k, c, ew, mh, ml, <floating>rstd_out[u], w, b,
                                  act, stream, res, xs, pf)


# Pipelined units (planes_team_pipelined): a thread writes the y of its unit in the same loop
# that reads its next unit for the statistics (fn_apply_bm), so reads and writes overlap as they
# do in a copy; one after the other, the apply's stores stall with no read in flight. For units
# of one sample up to PIPE_MAX_BYTES, whose moment blocks fn_bm_* compute in resumable parts
# with fn_block_moments' bits. Measured, forward / copy into out=, float32, one thread, unit by
# unit vs pipelined: layer norm (64, 1024) (256 KiB, in L2) 2.01 vs 1.74, (8192, 1024) 1.17 vs
# 1.10, (1, 197, 768) 2.15 vs 1.98; group norm (1, 64, 128, 8) 2.01 vs 1.67; instance norm of
# 32 MiB with planes of 512 / 1024 / 2048 values 1.38 / 1.34 / 1.18 vs 1.20 / 1.10 / 1.10.
# Larger units gain nothing (planes of 4096 values 1.12 vs 1.11) or lose (group norm
# (32, 64, 56, 56), units of 6272 values: 1.10 vs 1.16): a unit that large streams well alone.
# That was an Intel Xeon. On an AMD EPYC (Zen 4) the pipelined loop gains only on float32 in
# cache and loses past it, most with an element-wise weight (layer norm (M, 1024) forward /
# copy, pipelined vs unit by unit, one thread; "w" with weight and bias): float32 4 MiB 2.13 vs
# 2.25, w 2.41 vs 2.52; 32 MiB 1.09 vs 1.07, w 1.66 vs 1.18; 256 MiB w 1.45 vs 1.07; float64
# 0.5 MiB w 2.41 vs 2.18, 64 MiB 1.10 vs 0.95, w 1.79 vs 1.62; group norm of 24.5 MiB 1.35 vs
# 1.10. So off Intel only float32 runs of up to PIPE_SMALL_BYTES are pipelined.
# Units of one sample of at most GROUP_UNIT_BYTES (layer-norm rows of 64-256 values, small
# groups) go in groups of UNIT_GROUP: the moments of the group's units, then their statistics,
# then their applies (units_group_fwd). One unit at a time, each unit's lane sums,
# divisions and square root stand between its moments and its apply; in groups the core can
# overlap one unit's chain with the other units' work (the divider's throughput is not the
# cost: dropping the two divisions of each merge into an empty state, exactly 1 and 0 there,
# gained nothing measurable). Measured on an AMD EPYC (Zen 4), layer norm with weight
# and bias, forward / copy into out=, one thread, unit by unit vs groups of 4 / 8 / 16 / 32
# (same process, min of 4 interleaved rounds, the same bits): float32 rows of 64, 64 MiB 5.49
# vs 4.50 / 4.51 / 4.42 / 4.49, 1 MiB 11.03 vs 10.15 / 9.54 / 9.54 / 9.47; float32 rows of 128,
# 64 MiB 3.12 vs 2.65 / 2.51 / 2.83 / 2.65; float64 rows of 128, 2 MiB 3.60 vs 3.48 / 3.43 /
# 3.43 / 3.48. Rows of 2 KiB gained nothing or lost (float64 rows of 256, 64 MiB: 1.22 vs
# 1.26 in groups of 8, 1.51 in groups of 32), as did float32 rows of 4 KiB in cache (1024 rows:
# 2.34 vs 2.50). Groups also beat the pipelined units there (float32 rows of 128 in cache:
# 5.96 vs 5.70; rows of 64: 10.21 vs 9.50), so off Intel they take precedence for such units.
# With the rule as built (groups of 8 vs the schedule otherwise chosen), one thread, two
# threads: float32 rows of 64, 64 MiB 5.99 -> 4.47, 4.57 -> 3.41; rows of 128, 64 MiB 3.33 ->
# 2.57, 2.40 -> 2.31, 2 MiB 5.98 -> 5.56, 5.92 -> 5.15; float64 rows of 128, 2 MiB 3.73 ->
# 3.21, 3.40 -> 3.17, 64 MiB 1.95 -> 1.91, 1.50 -> 1.52.
# In tensors under GROUP_VEC_BYTES a group's statistics go side by side, one unit per float64
# lane (fn_units_group_fwd), with each unit's pivot taken while the unit before it is summed;
# past it they go unit by unit (layer-norm rows: fn_rows_group_fwd). Measured on an AMD EPYC
# (Zen 4), forward / copy into out=, new over old in one process (alternating calls, median
# of paired ratios; the old build also without the vector tail of fn_bm_tail): instance norm
# (32, 2048, 7, 7) float32 one thread 0.66, (8, 256, 7, 7) 0.66, float64 0.85; group norm
# (256, 64, 7, 7) two threads 0.85; layer norm rows (4096, 64) 0.84, (8192, 64) 0.84. Side by
# side vs unit by unit past 16 MiB: instance norm (128, 2048, 7, 7) 0.82, (64, 1024, 14, 14)
# 0.94, (64, 256, 16, 16) 1.00, but rows of 512 bytes lost (float64 rows of 64, 32 MiB: 1.09
# - 1.15; float32 rows of 128: 1.15). The pivots of a group all taken first (one load per unit
# at the unit's stride) lost more past the caches: rows of 256 float32 1.17, 16 x 16 planes
# 1.14.
# Float32 units go side by side at every size: measured again on an AMD EPYC (Zen 4), forward /
# copy, unit by unit vs side by side, same process (median of 7 paired rounds), two threads:
# layer norm rows (65536, 64) 16 MiB 5.19 vs 3.94, (262144, 64) 64 MiB 1.55 vs 1.14, (65536,
# 128) 32 MiB 1.29 vs 1.21; instance norm (128, 2048, 7, 7) 49 MiB 2.22 vs 1.57, (64, 256, 16,
# 16) 16 MiB 2.02 vs 1.96 (one thread: rows (65536, 64) 5.02 vs 3.89, (131072, 64) 3.06 vs
# 2.27, (16384, 256) 1.91 vs 1.61). Float64 keeps the size rule: past it rows of 64 lost
# (32 MiB: 1.86 vs 1.92 at one thread, 1.15 vs 1.29 at two), the rest within 0.92-1.02.
DEF UNIT_GROUP = 8  # FN_GROUP in _core_tmpl.h
DEF GROUP_UNIT_BYTES = 1024
DEF GROUP_VEC_BYTES = 16777216
cdef bint _grouped = True


def _set_grouped(bint on):
    """Tests and A/B only: whether short one-sample units go in groups (the default) or one
    at a time; returns the previous setting. The bits do not depend on it."""
    global _grouped
    prev = _grouped
    _grouped = on
    return prev


cdef int _group_vec = -1


def _set_group_vec(int mode):
    """Tests and A/B only: whether grouped units take their statistics side by side (1) or
    unit by unit (0), -1 (the default) by the tensor's size (GROUP_VEC_BYTES); returns the
    previous setting. The bits do not depend on it."""
    global _group_vec
    prev = _group_vec
    _group_vec = mode
    return prev


#: bytes per vector of the kernels' lane arithmetic (FN_VB in _core.h)
VECTOR_BYTES = FN_VB


def _stream_head(floating[::1] a, Py_ssize_t n):
    """Tests only: the values a streamed segment of n values starting at a[0] stores one by
    one before its streaming stores begin (fn_nt_head), or -1 if it never streams."""
    cdef fn_idx h
    if floating is float:
        h = fn_nt_head_f32(&a[0], n)
    else:
        h = fn_nt_head_f64(&a[0], n)
    return h


DEF PIPE_MAX_BYTES = 16384
DEF PIPE_SMALL_BYTES = 4194304
cdef int _pipeline = 1
cdef bint _pipe_any = fn_cpu_intel()


def _set_pipeline(int mode):
    """Tests and A/B only: 0 runs every unit unit by unit, 2 pipelines every unit that can be,
    1 (the default) decides by CPU, dtype and size; returns the previous mode. The bits do not
    depend on it."""
    global _pipeline
    prev = _pipeline
    _pipeline = mode
    return prev


cdef inline bint pipelined(Py_ssize_t nbytes, Py_ssize_t itemsize) noexcept nogil:
    """Whether units of one sample (each within PIPE_MAX_BYTES) totalling nbytes run
    pipelined."""
    if _pipeline != 1:
        return _pipeline == 2
    return _pipe_any or (itemsize == 4 and nbytes <= PIPE_SMALL_BYTES)


cdef inline void bm_begin(void *s, const floating *x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        fn_bm_begin_f32(<fn_bm_f32 *>s, x, n)
    else:
        fn_bm_begin_f64(<fn_bm_f64 *>s, x, n)


cdef inline void bm_end(void *s, const floating *x, Py_ssize_t n, double *mean,
                        double *m2) noexcept nogil:
    if floating is float:
        fn_bm_end_f32(<fn_bm_f32 *>s, x, n, mean, m2)
    else:
        fn_bm_end_f64(<fn_bm_f64 *>s, x, n, mean, m2)


# On Intel, a thread's run of units is taken from WAYS regions in turn once it holds
# WAYS_BYTES: reads and streamed writes from several DRAM pages at once keep more in flight
# than one stream, which slows down past the last-level cache (as a four-page copy beats
# memcpy there). Measured on a Xeon, layer norm (D = 1024) forward / copy, 2 threads, one
# region vs 4 / 8 / 16: 128 MiB 1.68 vs 1.55 / 1.41 / 1.59, 1 GiB 1.61 vs 1.40 / 1.36 / 1.50;
# 32 MiB 1.10 either way. On an AMD EPYC (Zen 4) every added region costs instead, one thread,
# one region vs 2 / 4 / 8: 32 MiB 1.16 vs 1.05 / 1.57 / 2.05, 256 MiB 1.07 vs 1.36 / 1.61 /
# 2.35; two threads 256 MiB 1.10 vs 1.12 / 1.33 / 1.60. So the regions are Intel's default
# and one region everyone else's.
# Pipelined units only: group norm's 25 KiB units one after the other gained nothing at 1 GiB
# (1.67 vs 1.71), each unit's read being a long stream of its own.
DEF WAYS = 8
DEF WAYS_BYTES = 33554432
cdef Py_ssize_t _ways = WAYS if fn_cpu_intel() else 1


def _set_ways(Py_ssize_t n):
    """Tests only: the number of regions (>= 1) for runs of WAYS_BYTES or more; returns the
    previous one. The bits do not depend on it."""
    global _ways
    prev = _ways
    _ways = max(1, n)
    return prev


cdef inline Py_ssize_t ways(Py_ssize_t run_bytes) noexcept nogil:
    return _ways if run_bytes >= WAYS_BYTES else 1


cdef inline Py_ssize_t ways_next(Py_ssize_t k, Py_ssize_t L, Py_ssize_t W,
                                 Py_ssize_t Q) noexcept nogil:
    """The next step after k of a run of L units taken from W regions of Q units in turn
    (step k is unit (k % W) * Q + k // W): k + 1, past the steps beyond the run's end."""
    k += 1
    while k < W * Q and (k % W) * Q + k // W >= L:
        k += 1
    return k


cdef inline void apply_bm(const floating *x, floating *y, Py_ssize_t n, floating mh, floating ml,
                          floating a, floating b, const floating *g, const floating *bb, int act,
                          int stream, fn_bm_f64 *st, const floating *xn, Py_ssize_t j0,
                          Py_ssize_t j1) noexcept nogil:
    if floating is float:
        fn_apply_bm_f32(x, y, n, mh, ml, a, b, g, bb, act, stream, <fn_bm_f32 *>st, xn, j0, j1)
    else:
        fn_apply_bm_f64(x, y, n, mh, ml, a, b, g, bb, act, stream, st, xn, j0, j1)


cdef void planes_team_pipelined(const floating *x, floating *y, Py_ssize_t U, Py_ssize_t C,
                                Py_ssize_t S, Py_ssize_t cb, const floating *w,
                                const floating *b, bint ew, bint rms, double eps,
                                double *mean_out, double *rstd_out, int act,
                                int stream) noexcept nogil:
    """This team thread's run of one-sample units (nb == 1, at most PIPE_MAX_BYTES), pipelined:
    the unit's apply goes in pieces cut at its channels' ends and at the moment blocks of the
    next unit, each piece fused with the next unit's moment steps over the same positions.
    The next unit's moments are its blocks merged in order from zero, as fn_seg_moments does:
    the same statistics and the same y bits as planes_unit_fused."""
    cdef Py_ssize_t n = cb * S, ncb = C // cb, u, ci, c, p, q, ce, bs, bl, bnv, done, tgt
    cdef Py_ssize_t lo = team_lo(U), hi = team_lo_next(U), L = hi - lo, k, kn
    cdef Py_ssize_t W = ways(L * n * <Py_ssize_t>sizeof(floating))
    cdef Py_ssize_t Q = (L + W - 1) // W
    cdef Py_ssize_t step = 2 * (FN_VB // sizeof(floating))  # fn_bm_step's pair of vectors
    cdef fn_bm_f64 st  # the larger of the two states
    cdef double un = 0, um = 0, um2 = 0, cn, cm, cm2, bm, bm2
    cdef floating mh, ml, r
    cdef const floating *xn
    cdef bint nxt
    if lo >= hi:
        return
    seg_moments(x + lo * n, n, &un, &um, &um2)
    k = 0
    while k < W * Q:
        u = lo + (k % W) * Q + k // W
        kn = ways_next(k, L, W, Q)
        unit_finalize(un, um, um2, eps, rms, &mean_out[u], &rstd_out[u])
        split_mean(mean_out[u], &mh, &ml)
        r = <floating>rstd_out[u]
        nxt = kn < W * Q
        xn = x + (lo + (kn % W) * Q + kn // W) * n if nxt else x
        cn = 0
        cm = 0
        cm2 = 0
        bs = 0
        bl = min(<Py_ssize_t>FN_BLK, n)
        bnv = bl - bl % step
        done = 0
        if nxt:
            bm_begin(&st, xn, bl)
        p = 0
        for ci in range(cb):
            c = (u % ncb) * cb + ci
            ce = (ci + 1) * S
            while p < ce:
                q = min(ce, bs + bl)
                tgt = max(done, min(bnv, (q - bs) - (q - bs) % step)) if nxt else done
                if ew:
                    apply_bm(x + u * n + p, y + u * n + p, q - p, mh, ml, r, 0,
                             w + (p - ci * S), b + (p - ci * S), act, stream, &st, xn + bs,
                             done, tgt)
                else:
                    apply_bm(x + u * n + p, y + u * n + p, q - p, mh, ml, r * w[c], b[c],
                             <const floating *>NULL, <const floating *>NULL, act, stream, &st,
                             xn + bs, done, tgt)
                done = tgt
                p = q
                if p == bs + bl:
                    if nxt:
                        bm_end(&st, xn + bs, bl, &bm, &bm2)
                        fn_chan_merge(&cn, &cm, &cm2, <double>bl, bm, bm2)
                    bs += bl
                    bl = min(<Py_ssize_t>FN_BLK, n - bs)
                    bnv = bl - bl % step
                    done = 0
                    if nxt and bl > 0:
                        bm_begin(&st, xn + bs, bl)
        if nxt:
            un = cn
            um = cm
            um2 = cm2
        k = kn


# Batch norm over planes of fewer than SMALL_PLANE_BYTES (7 x 7 to 12 x 12 float32 values,
# 7 x 7 and 8 x 8 float64): a channel's planes are N short runs far apart, and plane by plane
# (moments, merge, apply per plane) every plane paid a call, a pivot, horizontal sums and a
# merge of its own: (32, 2048, 7, 7) float32 forward took 13 copies at one thread (PyTorch
# about the same). Instead a unit is a block of adjacent channels, whose planes in one sample
# are one run of nc * S values: the moments go down the columns of those runs
# (fn_planes_col_moments, vectorized along the run), the apply along them with per-column
# coefficients (fn_planes_col_apply, one run per sample), while the unit (at most
# SMALL_UNIT_BYTES) is in L2; the backward likewise (fn_planes_col_bwd_sums,
# fn_planes_col_bwd_apply). All four go four samples' runs a sweep (fn_col_rows). The blocks
# depend on the shape alone. Measured on a Zen 4, one thread, time / copy plane by plane ->
# by blocks (same process, builds alternating): float32 (32, 2048, 7, 7) forward 13.95 ->
# 4.24, backward 12.01 -> 5.46; (32, 1024, 11, 11) 5.95 -> 3.39, 7.58 -> 5.06; (32, 1024, 12,
# 12) 4.55 -> 2.30, 5.66 -> 3.97; (64, 128, 10, 10) backward 7.05 -> 5.36; float64 (32, 2048,
# 7, 7) 4.78 -> 3.57, 5.86 -> 4.84. Larger planes gained less or lost: float32 14 x 14
# forward 3.43 -> 3.12 but backward 4.33 -> 4.44, 16 x 16 2.49 -> 3.59 and 4.00 -> 5.28,
# 18 x 18 backward 3.45 -> 4.51; float64 9 x 9 backward 4.75 -> 4.58, 14 x 14 forward 2.12
# -> 3.61.
DEF SMALL_PLANE_BYTES = 640
DEF SMALL_UNIT_BYTES = 262144
DEF SMALL_RUN_VALUES = 1024
DEF SMALL_BLOCK_ROWS = 64


cdef inline bint small_planes(Py_ssize_t N, Py_ssize_t nb, Py_ssize_t cb, Py_ssize_t S,
                              bint ew, bint rms, const floating *res) noexcept nogil:
    """Whether batch-norm planes go by channel blocks (small_planes_run)."""
    return (nb == N and N > 1 and cb == 1 and not ew and not rms and res == NULL
            and S * <Py_ssize_t>sizeof(floating) < SMALL_PLANE_BYTES)


cdef inline Py_ssize_t small_planes_nc(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                       Py_ssize_t itemsize) noexcept nogil:
    """Channels per unit of small_planes_run: runs of at most SMALL_RUN_VALUES, units of at
    most SMALL_UNIT_BYTES, at least one channel."""
    cdef Py_ssize_t nc = min(SMALL_RUN_VALUES // S, SMALL_UNIT_BYTES // (N * S * itemsize))
    return max(<Py_ssize_t>1, min(nc, C))


cdef void small_planes_unit(const floating *x, floating *y, Py_ssize_t g, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, Py_ssize_t nc, const floating *w,
                            const floating *b, double eps, double *mean_out, double *rstd_out,
                            int act, int stream) noexcept nogil:
    """Channels [g * nc, g * nc + nc) of x (N, C, S): statistics, then y (nc * S is at most
    SMALL_RUN_VALUES)."""
    cdef Py_ssize_t c0 = g * nc, m = min(nc, C - c0), L, k, j, c
    cdef floating mh, ml, a
    cdef floating scr[4 * SMALL_RUN_VALUES]
    cdef double st[5 * SMALL_RUN_VALUES]
    L = m * S
    if floating is float:
        fn_planes_col_moments_f32(x + c0 * S, N, C * S, m, S, SMALL_BLOCK_ROWS, scr, st,
                                  st + m, st + 2 * m)
    else:
        fn_planes_col_moments_f64(x + c0 * S, N, C * S, m, S, SMALL_BLOCK_ROWS, scr, st,
                                  st + m, st + 2 * m)
    for k in range(m):
        c = c0 + k
        unit_finalize(st[k], st[m + k], st[2 * m + k], eps, False, &mean_out[c],
                      &rstd_out[c])
        split_mean(mean_out[c], &mh, &ml)
        a = <floating>rstd_out[c] * w[c]
        for j in range(k * S, (k + 1) * S):
            scr[j] = mh
            scr[L + j] = ml
            scr[2 * L + j] = a
            scr[3 * L + j] = b[c]
    if floating is float:
        fn_planes_col_apply_f32(x + c0 * S, y + c0 * S, N, C * S, L, scr, scr + L, scr + 2 * L,
                                scr + 3 * L, act, stream)
    else:
        fn_planes_col_apply_f64(x + c0 * S, y + c0 * S, N, C * S, L, scr, scr + L, scr + 2 * L,
                                scr + 3 * L, act, stream)


cdef void small_planes_run(const floating *x, floating *y, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t S, const floating *w, const floating *b, double eps,
                           double *mean_out, double *rstd_out, int act, int n_threads,
                           int stream) noexcept nogil:
    """Batch norm over small planes (small_planes), units of small_planes_nc channels in
    parallel."""
    cdef Py_ssize_t nc = small_planes_nc(N, C, S, sizeof(floating))
    cdef Py_ssize_t G = (C + nc - 1) // nc, g
    if n_threads == 1 or G == 1:  # no parallel region (SERIAL_NOTE)
        for g in range(G):
            small_planes_unit(x, y, g, N, C, S, nc, w, b, eps, mean_out, rstd_out, act,
                              stream)
        if stream:
            fn_sfence()
        return
    for g in prange(G, schedule="static", num_threads=n_threads):
        small_planes_unit(x, y, g, N, C, S, nc, w, b, eps, mean_out, rstd_out, act, stream)


cdef void small_planes_bwd_unit(const floating *dy, const floating *x, floating *dx,
                                Py_ssize_t g, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                Py_ssize_t nc, const floating *w, const double *mean,
                                const double *rstd, double *dweight, double *dbias, int stream,
                                bint frozen) noexcept nogil:
    """The batch-norm backward of channels [g * nc, g * nc + nc) of (N, C, S): the sums, the
    coefficients (planes_unit_bwd_coef's form for one channel: P = 1, Q = mean(dy),
    R = r * w, B = -r^3 w mean(dy * (x - m))), dweight and dbias, then dx run by run."""
    cdef Py_ssize_t c0 = g * nc, m = min(nc, C - c0), L, k, j, c, off
    cdef floating mh, ml, q, rw, bb
    cdef double r, cnt = <double>(N * S)
    cdef floating scr[5 * SMALL_RUN_VALUES]
    cdef double st[4 * SMALL_RUN_VALUES]
    L = m * S
    for k in range(m):
        split_mean(mean[c0 + k], &mh, &ml)
        for j in range(k * S, (k + 1) * S):
            scr[j] = mh
            scr[L + j] = ml
    if floating is float:
        fn_planes_col_bwd_sums_f32(dy + c0 * S, x + c0 * S, N, C * S, m, S, SMALL_BLOCK_ROWS,
                                   scr, scr + L, scr + 2 * L, st, st + m)
    else:
        fn_planes_col_bwd_sums_f64(dy + c0 * S, x + c0 * S, N, C * S, m, S, SMALL_BLOCK_ROWS,
                                   scr, scr + L, scr + 2 * L, st, st + m)
    for k in range(m):
        c = c0 + k
        r = rstd[c]
        q = <floating>(st[k] / cnt)
        bb = <floating>(-r * r * r * (<double>w[c] * st[m + k]) / cnt)
        rw = <floating>r * w[c]
        if frozen:  # statistics are constants (eval mode): dx = dy * w * r
            q = 0
            bb = 0
        dweight[c] = st[m + k] * r
        dbias[c] = st[k]
        for j in range(k * S, (k + 1) * S):
            scr[2 * L + j] = q
            scr[3 * L + j] = rw
            scr[4 * L + j] = bb
    off = c0 * S
    if floating is float:
        fn_planes_col_bwd_apply_f32(dy + off, x + off, dx + off, N, C * S, L, scr + 2 * L,
                                    scr + 3 * L, scr, scr + L, scr + 4 * L, stream)
    else:
        fn_planes_col_bwd_apply_f64(dy + off, x + off, dx + off, N, C * S, L, scr + 2 * L,
                                    scr + 3 * L, scr, scr + L, scr + 4 * L, stream)


cdef void small_planes_bwd_run(const floating *dy, const floating *x, floating *dx,
                               Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, const floating *w,
                               const double *mean, const double *rstd, double *dweight,
                               double *dbias, int n_threads, int stream,
                               bint frozen) noexcept nogil:
    """Batch-norm backward over small planes (small_planes), the forward's units in
    parallel."""
    cdef Py_ssize_t nc = small_planes_nc(N, C, S, sizeof(floating))
    cdef Py_ssize_t G = (C + nc - 1) // nc, g
    if n_threads == 1 or G == 1:  # no parallel region (SERIAL_NOTE)
        for g in range(G):
            small_planes_bwd_unit(dy, x, dx, g, N, C, S, nc, w, mean, rstd, dweight, dbias,
                                  stream, frozen)
        if stream:
            fn_sfence()
        return
    for g in prange(G, schedule="static", num_threads=n_threads):
        small_planes_bwd_unit(dy, x, dx, g, N, C, S, nc, w, mean, rstd, dweight, dbias,
                              stream, frozen)


# Batch norm over planes of 640 B to 2 KiB (ResNet's 14 x 14 stage: (32, 1024, 14, 14)) went
# channel by channel, each plane a short stream of its own, and past the streaming threshold
# every plane that is not whole lines wrote its first and last line with ordinary stores into
# lines another channel's planes share, written much later: float32 (32, 1024, 13, 13) forward
# took 7 copies, backward 7.7. Such planes now go by units of adjacent channels (about
# MID_UNIT_BYTES of x): the unit's samples' runs read in turn, two samples side by side, the
# next unit's planes prefetched meanwhile; then y (dx) run by run with each plane's
# coefficients (fn_runs_apply, fn_runs_bwd_apply), streaming every line but a run's first and
# last. Each plane's moments and sums are formed and merged as channel by channel: the same
# bits. Measured on an AMD EPYC (Zen 4), time / copy, same process, the channel-by-channel
# schedule (without the next-channel prefetch above) -> these, median of nine alternating
# rounds, forward | backward, one thread: float32 (32, 1024, 13, 13) 6.96 -> 2.75 | 7.67 ->
# 3.21, (32, 1024, 14, 14) 4.57 -> 2.17 | 5.16 -> 3.03, (32, 1024, 16, 16) 2.60 -> 1.51 |
# 3.48 -> 2.42, (32, 512, 22, 22) 2.06 -> 1.38 | 2.73 -> 2.01; float64 (32, 1024, 9, 9)
# 6.25 -> 2.08 | 6.94 -> 3.44, (32, 512, 15, 15) 2.60 -> 1.66 | 3.35 -> 2.97; two threads
# float32 (32, 1024, 13, 13) 5.43 -> 2.32 | 7.97 -> 3.55, (32, 1024, 14, 14) 4.50 -> 2.72 |
# 5.89 -> 3.88, float64 (32, 1024, 9, 9) 6.22 -> 2.86 | 8.20 -> 3.68. Where a plane is whole
# 32-byte pieces the channel-by-channel backward with the next-channel prefetch did as well or
# better (float64 (32, 512, 14, 14) at two threads 2.18 against 2.61, (32, 512, 12, 12) 2.00
# against 2.08; float32 16 x 16 2.38 against 2.21), and so did the forward over whole-line
# planes from 1.5 KiB (float32 (32, 512, 20, 20) 1.47 against 1.59): those keep it.
# Units of 64 / 128 / 256 / 512 KiB were within the noise of each other but for the backward
# at two threads (float64 (32, 512, 14, 14) 256 KiB: 1.41 of the old time, 128 KiB: 1.15).
# The backward took this schedule from planes of 320 B for a while, ahead of the small planes'
# column sums (then row by row); since those go four samples a sweep (fn_col_rows) the small
# planes' schedule is the faster one under SMALL_PLANE_BYTES in the backward too, and the
# backward's planes of 320 to 640 B are back on it (their bits are its own, the same at every
# thread count). Same process, this schedule -> the small planes', median of nine rounds, one |
# two threads: float32 (32, 1024, 9, 9) 0.84 | 0.84, (32, 1024, 10, 10) 0.93 | 0.83,
# (32, 1024, 11, 11) 0.99 | 0.91, (256, 64, 9, 9) 0.38 | 0.75, (64, 512, 10, 10) two threads
# 0.63; float64 (256, 64, 7, 7) 0.57 | 0.72, (32, 2048, 7, 7) 0.89 | 0.84, (64, 256, 7, 7)
# 0.75 | 0.91, (32, 512, 8, 8) 1.01 | 1.00; (32, 1024, 12, 12) float32 1.00 at one thread.
DEF MID_PLANE_BYTES = 2048
DEF MID_ALIGNED_BYTES = 1536
DEF MID_UNIT_BYTES = 131072
DEF MID_MAX_PLANES = 256
cdef int _mid = 1


def _set_mid(int mode):
    """Tests and A/B only: whether batch-norm planes of SMALL_PLANE_BYTES to MID_PLANE_BYTES go
    by runs of channels (mid_planes); returns the previous setting. The bits do not depend on
    it."""
    global _mid
    prev = _mid
    _mid = mode
    return prev


cdef inline bint mid_planes(Py_ssize_t N, Py_ssize_t nb, Py_ssize_t cb, Py_ssize_t S,
                            bint ew, bint rms, const floating *res, int act,
                            bint bwd) noexcept nogil:
    """Whether batch-norm planes go by runs of channels (mid_planes_run, mid_planes_bwd_unit):
    planes of SMALL_PLANE_BYTES to MID_PLANE_BYTES that are not whole 32-byte pieces, and in
    the forward also those under MID_ALIGNED_BYTES."""
    cdef Py_ssize_t pb = S * <Py_ssize_t>sizeof(floating)
    return (_mid and nb == N and N > 1 and cb == 1 and not ew and not rms and res == NULL
            and act <= 1 and SMALL_PLANE_BYTES <= pb
            and pb < MID_PLANE_BYTES
            and (pb % 32 != 0 or (not bwd and pb < MID_ALIGNED_BYTES)))


cdef inline Py_ssize_t mid_planes_nc(Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                                     Py_ssize_t itemsize, int n_threads) noexcept nogil:
    """Channels per unit of mid_planes_run: about MID_UNIT_BYTES of x a unit, at most
    MID_MAX_PLANES, and at least four units a thread."""
    cdef Py_ssize_t nc = MID_UNIT_BYTES // (N * S * itemsize)
    nc = min(nc, <Py_ssize_t>MID_MAX_PLANES, C // (4 * n_threads))
    return max(<Py_ssize_t>1, nc)


cdef void mid_planes_unit(const floating *x, floating *y, Py_ssize_t g, Py_ssize_t N,
                          Py_ssize_t C, Py_ssize_t S, Py_ssize_t nc, const floating *w,
                          const floating *b, double eps, double *mean_out, double *rstd_out,
                          int act, int stream) noexcept nogil:
    """Channels [g * nc, g * nc + nc) of x (N, C, S): each channel's moments as
    planes_unit_fused forms them (its planes two samples at a time, merged in sample order),
    the samples' runs of the unit's planes read in turn while the next unit's planes are
    prefetched; then y run by run (fn_runs_apply), last sample first."""
    cdef Py_ssize_t c0 = g * nc, m = min(nc, C - c0), K = nchunks(S, FN_CHUNK), n, k, c
    cdef Py_ssize_t mn = min(nc, C - c0 - m), sb = S * sizeof(floating)
    cdef double acc[3 * MID_MAX_PLANES]
    cdef double pa[3]
    cdef double pb[3]
    cdef floating MH[MID_MAX_PLANES]
    cdef floating ML[MID_MAX_PLANES]
    cdef floating A[MID_MAX_PLANES]
    cdef floating B[MID_MAX_PLANES]
    for k in range(3 * m):
        acc[k] = 0
    n = 0
    while n + 1 < N:
        for k in range(m):
            if _pfnext and k < mn:
                fn_pf_bytes(x + (n * C + c0 + m + k) * S, sb)
                fn_pf_bytes(x + ((n + 1) * C + c0 + m + k) * S, sb)
            planes_pair_moments(x, S, n * C + c0 + k, (n + 1) * C + c0 + k, K, pa, pb)
            fn_chan_merge(&acc[3 * k], &acc[3 * k + 1], &acc[3 * k + 2], pa[0], pa[1], pa[2])
            fn_chan_merge(&acc[3 * k], &acc[3 * k + 1], &acc[3 * k + 2], pb[0], pb[1], pb[2])
        n += 2
    if n < N:
        for k in range(m):
            if _pfnext and k < mn:
                fn_pf_bytes(x + (n * C + c0 + m + k) * S, sb)
            planes_pair_moments(x, S, n * C + c0 + k, -1, K, pa, pb)
            fn_chan_merge(&acc[3 * k], &acc[3 * k + 1], &acc[3 * k + 2], pa[0], pa[1], pa[2])
    for k in range(m):
        c = c0 + k
        unit_finalize(acc[3 * k], acc[3 * k + 1], acc[3 * k + 2], eps, False, &mean_out[c],
                      &rstd_out[c])
        split_mean(mean_out[c], &MH[k], &ML[k])
        A[k] = <floating>rstd_out[c] * w[c]
        B[k] = b[c]
    for n in range(N - 1, -1, -1):
        if floating is float:
            fn_runs_apply_f32(x + (n * C + c0) * S, y + (n * C + c0) * S, m, S, MH, ML, A, B,
                              act, stream)
        else:
            fn_runs_apply_f64(x + (n * C + c0) * S, y + (n * C + c0) * S, m, S, MH, ML, A, B,
                              act, stream)


cdef void mid_planes_run(const floating *x, floating *y, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t S, const floating *w, const floating *b, double eps,
                         double *mean_out, double *rstd_out, int act, int n_threads,
                         int stream) noexcept nogil:
    """Batch norm over planes of SMALL_PLANE_BYTES to MID_PLANE_BYTES (mid_planes), units of
    mid_planes_nc channels in parallel."""
    cdef Py_ssize_t nc = mid_planes_nc(N, C, S, sizeof(floating), n_threads)
    cdef Py_ssize_t G = (C + nc - 1) // nc, g
    if n_threads == 1 or G == 1:  # no parallel region (SERIAL_NOTE)
        for g in range(G):
            mid_planes_unit(x, y, g, N, C, S, nc, w, b, eps, mean_out, rstd_out, act, stream)
        if stream:
            fn_sfence()
        return
    for g in prange(G, schedule="static", num_threads=n_threads):
        mid_planes_unit(x, y, g, N, C, S, nc, w, b, eps, mean_out, rstd_out, act, stream)


cdef void planes_fused_run(const floating *x, floating *y, Py_ssize_t N, Py_ssize_t C,
                           Py_ssize_t S, Py_ssize_t nb, Py_ssize_t cb, const floating *w,
                           const floating *b, bint ew, bint rms, double eps, double *mean_out,
                           double *rstd_out, int act, const floating *res, floating *xs,
                           int n_threads, int stream) noexcept nogil:
    cdef Py_ssize_t U = (N // nb) * (C // cb), u, g
    cdef Py_ssize_t pf = apply_pf(N, C, S, cb, ew, sizeof(floating))
    if small_planes(N, nb, cb, S, ew, rms, res):
        small_planes_run(x, y, N, C, S, w, b, eps, mean_out, rstd_out, act, n_threads, stream)
        return
    if mid_planes(N, nb, cb, S, ew, rms, res, act, False):
        mid_planes_run(x, y, N, C, S, w, b, eps, mean_out, rstd_out, act, n_threads, stream)
        return
    cdef bint vec
    cdef bint grouped = (_grouped and nb == 1 and res == NULL
                         and cb * S * <Py_ssize_t>sizeof(floating) <= GROUP_UNIT_BYTES)
    if ((not grouped or _pipe_any or _pipeline == 2) and nb == 1 and res == NULL
            and cb * S * <Py_ssize_t>sizeof(floating) <= PIPE_MAX_BYTES
            and act <= 1 and pipelined(U * cb * S * <Py_ssize_t>sizeof(floating),
                                       sizeof(floating))):
        if n_threads == 1 or U == 1:
            # no parallel region: its end would order the streaming stores for other threads
            planes_team_pipelined(x, y, U, C, S, cb, w, b, ew, rms, eps, mean_out, rstd_out,
                                  act, stream)
            if stream:
                fn_sfence()
        else:
            with parallel(num_threads=n_threads):
                planes_team_pipelined(x, y, U, C, S, cb, w, b, ew, rms, eps, mean_out,
                                      rstd_out, act, stream)
        return
    if grouped:
        # the apply prefetches the same row of the next group
        if pf:
            pf = UNIT_GROUP * cb * S
        vec = ((floating is float or U * cb * S * <Py_ssize_t>sizeof(floating) < GROUP_VEC_BYTES)
               if _group_vec < 0 else _group_vec == 1)
        if ew and cb == 1 and not vec:  # layer-norm rows past the caches: unit by unit
            if n_threads == 1:  # no parallel region (SERIAL_NOTE)
                for g in range((U + UNIT_GROUP - 1) // UNIT_GROUP):
                    rows_group_fwd(x + g * UNIT_GROUP * S, y + g * UNIT_GROUP * S,
                                   min(U - g * UNIT_GROUP, UNIT_GROUP), S, w, b, eps, rms,
                                   mean_out + g * UNIT_GROUP, rstd_out + g * UNIT_GROUP, act,
                                   stream, pf)
                if stream:
                    fn_sfence()
                return
            for g in prange((U + UNIT_GROUP - 1) // UNIT_GROUP, schedule="static",
                            num_threads=n_threads):
                rows_group_fwd(x + g * UNIT_GROUP * S, y + g * UNIT_GROUP * S,
                               min(U - g * UNIT_GROUP, UNIT_GROUP), S, w, b, eps, rms,
                               mean_out + g * UNIT_GROUP, rstd_out + g * UNIT_GROUP, act,
                               stream, pf)
            return
        if n_threads == 1:  # no parallel region (SERIAL_NOTE)
            for g in range((U + UNIT_GROUP - 1) // UNIT_GROUP):
                units_group_fwd(x, y, g * UNIT_GROUP, min(U - g * UNIT_GROUP, UNIT_GROUP), C,
                                S, cb, w, b, ew, rms, eps, mean_out, rstd_out, act, stream, pf,
                                vec)
            if stream:
                fn_sfence()
            return
        for g in prange((U + UNIT_GROUP - 1) // UNIT_GROUP, schedule="static",
                        num_threads=n_threads):
            units_group_fwd(x, y, g * UNIT_GROUP, min(U - g * UNIT_GROUP, UNIT_GROUP), C, S,
                            cb, w, b, ew, rms, eps, mean_out, rstd_out, act, stream, pf, vec)
        return
    if (ew and nb == 1 and cb == 1 and res == NULL and act <= 1 and S >= FN_CHUNK
            and (not stream or (S * <Py_ssize_t>sizeof(floating)) % 64 == 0)
            and use_fused((U + 1) // 2, n_threads)):
        # layer-norm units of FN_CHUNK values and more: two at a time (planes_pair_fused),
        # when the pairs share out over the threads as evenly as the units (two samples at
        # two threads were one pair: one thread idle, 5.4 copies)
        if n_threads == 1:
            for u in range(0, U, 2):
                planes_pair_fused(x, y, u, min(U, u + 2), S, w, b, rms, eps, mean_out,
                                  rstd_out, act, stream)
            if stream:
                fn_sfence()
            return
        for g in prange((U + 1) // 2, schedule="static", num_threads=n_threads):
            planes_pair_fused(x, y, 2 * g, min(U, 2 * g + 2), S, w, b, rms, eps, mean_out,
                              rstd_out, act, stream)
        return
    if n_threads == 1:
        for u in range(U):
            planes_unit_fused(x, y, u, C, S, nb, cb, w, b, ew, rms, eps, mean_out, rstd_out,
                              act, res, xs, stream, pf)
        if stream:
            fn_sfence()
        return
    for u in prange(U, schedule="static", num_threads=n_threads):
        planes_unit_fused(x, y, u, C, S, nb, cb, w, b, ew, rms, eps, mean_out, rstd_out, act,
                          res, xs, stream, pf)


cdef void planes_pair_fused(const floating *x, floating *y, Py_ssize_t u0, Py_ssize_t u1,
                            Py_ssize_t S, const floating *w, const floating *b, bint rms,
                            double eps, double *mean_out, double *rstd_out, int act,
                            int stream) noexcept nogil:
    """Layer-norm units (planes of S values, element-wise affine) u0 .. u1 - 1, one or two:
    the statistics of each as planes_unit_fused forms them, then the applies of both together,
    chunk by chunk, last chunk first (fn_seg2_apply_ew: w and b read once for the two), with
    planes_unit_fused's bits. Layer norm over (64, 56, 56), 32 samples, forward / copy, same
    process, the one-unit build and this one alternating call by call, median of the paired
    ratios new / old (identical builds read 0.99-1.00): float32 one thread 0.93 / 0.94, two
    0.98 / 0.98; float64 0.98 / 0.96 and 1.01 / 0.98; (256, 56, 56), 8 samples, float32 two
    threads 0.96. (Round 8 had tried two rows per apply vector by vector and lost: 1.68 ->
    1.80; that sweep aliased, see fn_rowsn_bwd_apply_ew.)"""
    cdef Py_ssize_t K = nchunks(S, FN_CHUNK), u, k, off, ln, q
    cdef double mom[6]
    cdef floating mh[2]
    cdef floating ml[2]
    # the two units' moments side by side, two read streams (planes_pair_moments: the bits of
    # one unit at a time)
    planes_pair_moments(x, S, u0, u0 + 1 if u1 - u0 == 2 else -1, K, mom, mom + 3)
    for u in range(u0, u1):
        unit_finalize(mom[3 * (u - u0)], mom[3 * (u - u0) + 1], mom[3 * (u - u0) + 2], eps,
                      rms, &mean_out[u], &rstd_out[u])
        split_mean(mean_out[u], &mh[u - u0], &ml[u - u0])
    for k in range(K - 1, -1, -1):
        off = k * FN_CHUNK
        ln = min(<Py_ssize_t>FN_CHUNK, S - off)
        q = u0 * S + off  # chunk k of unit u0; of unit u0 + 1 at q + S
        if u1 - u0 == 1:
            seg_apply_ew(x + q, y + q, ln, mh[0], ml[0], <floating>rstd_out[u0], w + off,
                         b + off, act, stream, 0)
        elif floating is float:
            fn_seg2_apply_ew_f32(x + q, x + q + S, y + q, y + q + S, ln, mh[0], ml[0],
                                 <float>rstd_out[u0], mh[1], ml[1], <float>rstd_out[u0 + 1],
                                 w + off, b + off, act, stream)
        else:
            fn_seg2_apply_ew_f64(x + q, x + q + S, y + q, y + q + S, ln, mh[0], ml[0],
                                 rstd_out[u0], mh[1], ml[1], rstd_out[u0 + 1], w + off,
                                 b + off, act, stream)


cdef inline void rows_group_fwd(const floating *x, floating *y, Py_ssize_t nr, Py_ssize_t n,
                                const floating *w, const floating *b, double eps, bint rms,
                                double *mean_out, double *rstd_out, int act, int stream,
                                Py_ssize_t pf) noexcept nogil:
    if floating is float:
        fn_rows_group_fwd_f32(x, y, nr, n, w, b, eps, rms, mean_out, rstd_out, act, stream, pf)
    else:
        fn_rows_group_fwd_f64(x, y, nr, n, w, b, eps, rms, mean_out, rstd_out, act, stream, pf)


cdef inline void units_group_fwd(const floating *x, floating *y, Py_ssize_t u0, Py_ssize_t nr,
                                 Py_ssize_t C, Py_ssize_t S, Py_ssize_t cb, const floating *w,
                                 const floating *b, bint ew, bint rms, double eps,
                                 double *mean_out, double *rstd_out, int act, int stream,
                                 Py_ssize_t pf, bint vec) noexcept nogil:
    """Short one-sample units u0 .. u0 + nr - 1 (nr <= UNIT_GROUP, units of cb planes of S
    values): the moments of all, then their statistics side by side, then their applies, in
    one C loop (fn_units_group_fwd: each unit's arithmetic is planes_unit_fused's, the same
    bits). pf > 0: the apply prefetches x pf values on (the same place in the next group)."""
    cdef Py_ssize_t n = cb * S
    if floating is float:
        fn_units_group_fwd_f32(x + u0 * n, y + u0 * n, u0, nr, C // cb, cb, S, w, b, ew, eps,
                               rms, mean_out + u0, rstd_out + u0, act, stream, pf, vec)
    else:
        fn_units_group_fwd_f64(x + u0 * n, y + u0 * n, u0, nr, C // cb, cb, S, w, b, ew, eps,
                               rms, mean_out + u0, rstd_out + u0, act, stream, pf, vec)


def planes_forward(const floating[::1] x, floating[::1] y, Py_ssize_t N, Py_ssize_t C,
                   Py_ssize_t S, Py_ssize_t nb, Py_ssize_t cb, const floating[::1] w,
                   const floating[::1] b, bint ew, double eps, double[::1] mean_out,
                   double[::1] rstd_out, int act, int n_threads, bint fuse, bint rms=False,
                   const floating[::1] res=None, floating[::1] xs=None, int stream=0):
    """Training forward over x (N, C, S) in planes (nt: non-temporal stores of y).

    x, y : (N*C*S,)            IN x, OUT y (y may be x)
    w, b : (C,) or (S,) if ew  IN affine, per channel or element-wise
    mean_out, rstd_out : (U,)  OUT per unit, U = (N/nb) * (C/cb)
    rms                        RMS norm: rstd = 1/sqrt(mean(x^2) + eps), nothing subtracted
    res, xs : (N*C*S,)         optional residual: xs = x + res is written and normalized
    """
    cdef Py_ssize_t ncb = C // cb
    cdef Py_ssize_t U = (N // nb) * ncb, K = nchunks(S, FN_CHUNK)
    cdef Py_ssize_t P = N * C, items = P * K
    cdef Py_ssize_t i, u, p, k, n, c, n0, c0
    # the split schedule's (plane, chunk) items: only layer-norm rows prefetch (the per-channel
    # window was measured unit by unit)
    cdef Py_ssize_t pf = apply_pf(N, C, S, cb, ew, sizeof(floating)) if ew else 0
    cdef double[:, ::1] part
    cdef floating[::1] cmh, cml, cr
    cdef const floating *rp = NULL
    cdef floating *xp = NULL
    if U == 0 or S == 0:
        return
    if res is not None:
        rp = &res[0]
        xp = &xs[0]
    if fuse or small_planes(N, nb, cb, S, ew, rms, rp) or mid_planes(N, nb, cb, S, ew, rms, rp,
                                                                      act, False):
        with nogil:
            planes_fused_run(&x[0], &y[0], N, C, S, nb, cb, &w[0], &b[0], ew, rms, eps,
                             &mean_out[0], &rstd_out[0], act, rp, xp, n_threads, stream)
        return
    # the moments' geometry: as planes_unit_fused, a one-sample unit is one run of cb*S values
    cdef Py_ssize_t Cm = C // cb if nb == 1 else C, Sm = cb * S if nb == 1 else S
    cdef Py_ssize_t cbm = 1 if nb == 1 else cb, Km = nchunks(Sm, FN_CHUNK)
    cdef Py_ssize_t items_m = N * Cm * Km
    part = np.empty((items_m, 3), dtype=np.float64)
    dt = np.float32 if floating is float else np.float64
    cmh = np.empty(U, dtype=dt)
    cml = np.empty(U, dtype=dt)
    cr = np.empty(U, dtype=dt)
    with nogil:
        for i in prange(items_m, schedule="static", num_threads=n_threads):
            plane_chunk_moments(&x[0], Sm, i // Km, i % Km, rp, &part[i, 0])
        for u in prange(U, schedule="static", num_threads=n_threads):
            planes_unit_merge(&part[0, 0], u, Cm, Km, nb, cbm, eps, rms, &mean_out[0],
                              &rstd_out[0], &cmh[0], &cml[0], &cr[0])
        for i in prange(items, schedule="static", num_threads=n_threads):
            p = i // K
            c = p % C
            u = ((p // C) // nb) * ncb + c // cb
            plane_chunk_apply(&x[0], &y[0], S, p, i % K, c, ew, cmh[u], cml[u], cr[u], &w[0],
                              &b[0], act, stream, rp, xp, pf)


cdef void planes_unit_moments(const double *part, Py_ssize_t u, Py_ssize_t C, Py_ssize_t K,
                              Py_ssize_t nb, Py_ssize_t cb, double *out) noexcept nogil:
    """(count, mean, M2) of unit u from its (plane, chunk) partials: chunks merged per plane,
    planes merged per unit, all in index order (the fused path's order)."""
    cdef Py_ssize_t ncb = C // cb
    cdef Py_ssize_t n0 = (u // ncb) * nb, c0 = (u % ncb) * cb
    cdef Py_ssize_t n, c, k, i
    cdef double pn, pm, pm2
    out[0] = 0
    out[1] = 0
    out[2] = 0
    for n in range(n0, n0 + nb):
        for c in range(c0, c0 + cb):
            pn = 0
            pm = 0
            pm2 = 0
            for k in range(K):
                i = (n * C + c) * K + k
                fn_chan_merge(&pn, &pm, &pm2, part[3 * i], part[3 * i + 1], part[3 * i + 2])
            fn_chan_merge(&out[0], &out[1], &out[2], pn, pm, pm2)


cdef void planes_unit_merge(const double *part, Py_ssize_t u, Py_ssize_t C, Py_ssize_t K,
                            Py_ssize_t nb, Py_ssize_t cb, double eps, bint rms, double *mean_out,
                            double *rstd_out, floating *cmh, floating *cml,
                            floating *cr) noexcept nogil:
    cdef double um[3]
    planes_unit_moments(part, u, C, K, nb, cb, um)
    unit_finalize(um[0], um[1], um[2], eps, rms, &mean_out[u], &rstd_out[u])
    split_mean(mean_out[u], &cmh[u], &cml[u])
    cr[u] = <floating>rstd_out[u]


def planes_apply(const floating[::1] x, floating[::1] y, Py_ssize_t N, Py_ssize_t C,
                 Py_ssize_t S, const floating[::1] mh, const floating[::1] ml,
                 const floating[::1] a, const floating[::1] b, bint per_sample, int act,
                 int n_threads, int stream=0):
    """y = ((x - mh) - ml) * a + b per plane (n, c); coefficients (C,) or (N*C,) if per_sample."""
    cdef Py_ssize_t K = nchunks(S, FN_CHUNK), items = N * C * K
    cdef Py_ssize_t i, p, q, off, ln
    if items == 0:
        return
    with nogil:
        for i in prange(items, schedule="static", num_threads=n_threads):
            p = i // K
            off = (i % K) * FN_CHUNK
            ln = min(<Py_ssize_t>FN_CHUNK, S - off)
            q = p if per_sample else p % C
            seg_apply_cold(&x[p * S + off], &y[p * S + off], ln, mh[q], ml[q], a[q], b[q], act,
                           stream)


cdef inline void plane_chunk_bwd_sums(const floating *dy, const floating *x, Py_ssize_t S,
                                      Py_ssize_t p, Py_ssize_t k, floating mh, floating ml,
                                      double *out) noexcept nogil:
    cdef Py_ssize_t off = k * FN_CHUNK
    cdef Py_ssize_t ln = min(FN_CHUNK, S - off)
    out[0] = 0
    out[1] = 0
    seg_bwd_sums(dy + p * S + off, x + p * S + off, ln, mh, ml, &out[0], &out[1])


cdef void planes_unit_bwd_coef(const double *psum, Py_ssize_t u, Py_ssize_t C, Py_ssize_t S,
                               Py_ssize_t nb, Py_ssize_t cb, const floating *w,
                               const double *rstd, floating *cQ, floating *cB,
                               bint frozen) noexcept nogil:
    """From per-plane (sum dy, sum dy*(x-m)), the unit's dx coefficients Q and B.

    dx = r * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, is applied as
    dx = (dy * P - Q) * R + (x - m) * B with B = -r^3 mean(g * (x - m)) and, for a unit of
    one channel, P = 1, Q = mean(dy), R = r * w; else P = w, Q = mean(g), R = r.
    """
    cdef Py_ssize_t ncb = C // cb
    cdef Py_ssize_t n0 = (u // ncb) * nb, c0 = (u % ncb) * cb
    cdef Py_ssize_t n, c, p
    cdef double sg = 0, sgx = 0, sdy = 0, r = rstd[u], cnt = <double>(nb * cb * S)
    for n in range(n0, n0 + nb):
        for c in range(c0, c0 + cb):
            p = n * C + c
            sdy = sdy + psum[2 * p]
            sg = sg + <double>w[c] * psum[2 * p]
            sgx = sgx + <double>w[c] * psum[2 * p + 1]
    cB[u] = <floating>(-r * r * r * sgx / cnt)
    cQ[u] = <floating>((sdy if cb == 1 else sg) / cnt)
    if frozen:  # statistics are constants (eval mode): dx = dy * w * r
        cB[u] = 0
        cQ[u] = 0


cdef inline void plane_chunk_bwd_apply(const floating *dy, const floating *x, floating *dx,
                                       Py_ssize_t S, Py_ssize_t p, Py_ssize_t k, Py_ssize_t u,
                                       Py_ssize_t c, Py_ssize_t cb, const floating *w,
                                       const double *rstd, const floating *mh,
                                       const floating *ml, const floating *cQ,
                                       const floating *cB, int stream,
                                       Py_ssize_t pf=0) noexcept nogil:
    cdef Py_ssize_t off = k * FN_CHUNK
    cdef Py_ssize_t ln = min(FN_CHUNK, S - off)
    cdef floating r = <floating>rstd[u]
    if cb == 1:
        seg_bwd_apply(dy + p * S + off, x + p * S + off, dx + p * S + off, ln, 1, cQ[u],
                      r * w[c], mh[u], ml[u], cB[u], stream, pf)
    else:
        seg_bwd_apply(dy + p * S + off, x + p * S + off, dx + p * S + off, ln, w[c], cQ[u],
                      r, mh[u], ml[u], cB[u], stream, pf)


cdef inline void plane_bwd_sums(const floating *dy, const floating *x, Py_ssize_t S,
                                Py_ssize_t p, Py_ssize_t K, floating mh, floating ml,
                                double *psum) noexcept nogil:
    """psum[2p:2p+2] of plane p alone, chunk by chunk (the pair's odd one out, cb > 1)."""
    cdef Py_ssize_t k
    cdef double part[2]
    psum[2 * p] = 0
    psum[2 * p + 1] = 0
    for k in range(K):
        plane_chunk_bwd_sums(dy, x, S, p, k, mh, ml, part)
        psum[2 * p] += part[0]
        psum[2 * p + 1] += part[1]


cdef void planes_pair_bwd_sums(const floating *dy, const floating *x, Py_ssize_t S,
                               Py_ssize_t p, Py_ssize_t q, Py_ssize_t K, floating mh,
                               floating ml, double *psum, Py_ssize_t p2=-1, Py_ssize_t q2=-1,
                               Py_ssize_t pd=0) noexcept nogil:
    """psum[2p:2p+2] and psum[2q:2q+2] of planes p and q of one unit, chunk by chunk as
    plane_chunk_bwd_sums adds them, the two planes read side by side; pd > 0 (one chunk a
    plane): prefetch pd values ahead in both, then into planes p2 and q2 (p2 >= 0)."""
    cdef Py_ssize_t k, off, ln
    cdef double s[4]
    cdef const floating *nx[4]
    cdef const floating **nxp = NULL
    if K != 1:
        pd = 0
    if p2 >= 0 and pd:
        nx[0] = dy + p2 * S
        nx[1] = x + p2 * S
        nx[2] = dy + q2 * S
        nx[3] = x + q2 * S
        nxp = nx
    psum[2 * p] = 0
    psum[2 * p + 1] = 0
    psum[2 * q] = 0
    psum[2 * q + 1] = 0
    for k in range(K):
        off = k * FN_CHUNK
        ln = min(FN_CHUNK, S - off)
        s[0] = 0
        s[1] = 0
        s[2] = 0
        s[3] = 0
        if floating is float:
            fn_seg_bwd_sums2_f32(dy + p * S + off, x + p * S + off, dy + q * S + off,
                                 x + q * S + off, ln, mh, ml, &s[0], &s[1], &s[2], &s[3],
                                 nxp, pd)
        else:
            fn_seg_bwd_sums2_f64(dy + p * S + off, x + p * S + off, dy + q * S + off,
                                 x + q * S + off, ln, mh, ml, &s[0], &s[1], &s[2], &s[3],
                                 nxp, pd)
        psum[2 * p] += s[0]
        psum[2 * p + 1] += s[1]
        psum[2 * q] += s[2]
        psum[2 * q + 1] += s[3]


cdef void planes_unit_bwd_fused(const floating *dy, const floating *x, floating *dx,
                                Py_ssize_t u, Py_ssize_t C, Py_ssize_t S, Py_ssize_t nb,
                                Py_ssize_t cb, const floating *w, const floating *mh,
                                const floating *ml, const double *rstd, double *psum,
                                floating *cQ, floating *cB, int stream,
                                bint frozen, Py_ssize_t pf) noexcept nogil:
    """Unit u: its sums, then its dx while it is in cache; pf > 0: dx prefetches dy and x
    pf values on (see PF_RUN_BYTES)."""
    cdef Py_ssize_t ncb = C // cb, K = nchunks(S, FN_CHUNK)
    cdef Py_ssize_t n0 = (u // ncb) * nb, c0 = (u % ncb) * cb
    cdef Py_ssize_t n, c, k, p
    cdef Py_ssize_t n1 = n0, pb, room, q
    cdef Py_ssize_t sd = pair_pf(pf, sizeof(floating))
    cdef bint rev
    cdef bint pfn
    if nb == 1 and cb > 1 and S <= FN_BLK:
        # a group-norm unit of several planes: its planes' sums eight side by side, its dx
        # in one run across its planes (fn_planes_bwd_sums / _apply), the same bits. Backward
        # / copy against the build before it and the vector tails, same process: (32, 2048,
        # 7, 7) float32 one thread 0.87, two 0.88, float64 0.94; (32, 1024, 14, 14) two
        # threads 0.95; the run against plane by plane (with the faster dweight sum, ca3b44a):
        # (32, 1024, 14, 14) float32 one thread 0.69, two 0.70
        p = n0 * C + c0
        if floating is float:
            fn_planes_bwd_sums_f32(dy + p * S, x + p * S, cb, S, mh[u], ml[u], psum + 2 * p)
        else:
            fn_planes_bwd_sums_f64(dy + p * S, x + p * S, cb, S, mh[u], ml[u], psum + 2 * p)
        planes_unit_bwd_coef(psum, u, C, S, nb, cb, w, rstd, cQ, cB, frozen)
        if floating is float:
            fn_planes_bwd_apply_f32(dy + p * S, x + p * S, dx + p * S, cb, S, w + c0, cQ[u],
                                    <float>rstd[u], mh[u], ml[u], cB[u], stream, pf)
        else:
            fn_planes_bwd_apply_f64(dy + p * S, x + p * S, dx + p * S, cb, S, w + c0, cQ[u],
                                    rstd[u], mh[u], ml[u], cB[u], stream, pf)
        return
    if cb == 1:
        # a batch-norm channel: its planes two at a time, side by side (fn_seg_bwd_sums2)
        pfn = (_pfnext and c0 + 1 < C
               and S * <Py_ssize_t>sizeof(floating) < PF_NEXT_BWD_BYTES)
        while n1 + 1 < n0 + nb:
            if pfn:
                pf_plane2(dy, x, n1 * C + c0 + 1, S)
                pf_plane2(dy, x, (n1 + 1) * C + c0 + 1, S)
            planes_pair_bwd_sums(dy, x, S, n1 * C + c0, (n1 + 1) * C + c0, K, mh[u], ml[u],
                                 psum, (n1 + 2) * C + c0 if n1 + 3 < n0 + nb else -1,
                                 (n1 + 3) * C + c0, sd)
            n1 += 2
    for n in range(n1, n0 + nb):
        for c in range(c0, c0 + cb):
            plane_bwd_sums(dy, x, S, n * C + c, K, mh[u], ml[u], psum)
    planes_unit_bwd_coef(psum, u, C, S, nb, cb, w, rstd, cQ, cB, frozen)
    # a batch-norm channel's dx (CHAN_ORDER_NOTE): last plane first, prefetching the next
    # channel's planes only as far as L2 has room beside this channel's
    rev = cb == 1 and sd > 0
    pb = 2 * S * <Py_ssize_t>sizeof(floating)
    room = max(<Py_ssize_t>0, (_l2_bytes - nb * pb) // pb) if rev else nb
    for q in range(nb):
        n = n0 + nb - 1 - q if rev else n0 + q
        for c in range(c0, c0 + cb):
            for k in range(K):
                plane_chunk_bwd_apply(dy, x, dx, S, n * C + c, k, u, c, cb, w, rstd, mh, ml,
                                      cQ, cB, stream, pf if n - n0 < room else 0)


# One-sample units (instance norm's planes, group norm's runs of planes) of at most
# GROUP_BWD_UNIT_BYTES go UNIT_GROUP at a time through one C loop (fn_units_group_bwd: the
# operations of planes_unit_bwd_fused, so its bits), which saves the Cython calls of every
# plane. Backward / copy, same process, builds alternating (median of new / old): instance
# norm float32 (32, 2048, 7, 7) one thread 7.41 -> 5.30 (0.72), two 0.74; (32, 512, 14, 14)
# 3.11 -> 2.43 (0.78), float64 0.93; group norm (256, 64, 7, 7) two threads 13.73 -> 10.56
# (0.78). Units of 3136 bytes lost (instance norm float32 28 x 28: 1.05).
DEF GROUP_BWD_UNIT_BYTES = 2048


cdef inline void units_group_bwd(const floating *dy, const floating *x, floating *dx,
                                 Py_ssize_t g, Py_ssize_t U, Py_ssize_t ncb, Py_ssize_t S,
                                 Py_ssize_t cb, const floating *w, const floating *mh,
                                 const floating *ml, const double *rstd, double *psum,
                                 floating *cQ, floating *cB, bint frozen,
                                 Py_ssize_t pf) noexcept nogil:
    cdef Py_ssize_t u0 = g * UNIT_GROUP, u1 = min(U, u0 + UNIT_GROUP)
    if floating is float:
        fn_units_group_bwd_f32(dy, x, dx, u0, u1, ncb, S, cb, w, mh, ml, rstd, psum, cQ, cB,
                               frozen, pf)
    else:
        fn_units_group_bwd_f64(dy, x, dx, u0, u1, ncb, S, cb, w, mh, ml, rstd, psum, cQ, cB,
                               frozen, pf)


# dweight / dbias from the per-(row, channel) sums the backward leaves behind: the planes'
# psum (row = sample, 2 per plane) or the columns' (row = g0, sum(dy) then sum(dy * xc)).
# Each channel sums its rows in row order from zero, as a loop per channel did, so the same
# bits; rows outer and channels inner reads the sums in memory order and steps the statistic
# index without a division per term. Past DW_PAR_TERMS terms the channels are split among
# the threads. The per-channel loop it replaces, with its stride of C and two divisions a
# term, was 275 us of 1490 (instance norm (32, 2048, 7, 7) float32 backward, two threads).
DEF DW_PAR_TERMS = 32768


cdef void dw_db_span(const double *sb, const double *sw, Py_ssize_t ld, Py_ssize_t st,
                     const double *rstd, Py_ssize_t R, Py_ssize_t rdiv, Py_ssize_t ncb,
                     Py_ssize_t cb, Py_ssize_t c0, Py_ssize_t c1, double *dweight,
                     double *dbias) noexcept nogil:
    """Channels c0 .. c1 - 1: dbias[c] = sum_r sb[r * ld + c * st], dweight[c] =
    sum_r sw[r * ld + c * st] * rstd[(r // rdiv) * ncb + c // cb], r = 0 .. R - 1 in order."""
    cdef Py_ssize_t r, c, j, u
    cdef const double *qb
    cdef const double *qw
    for c in range(c0, c1):
        dweight[c] = 0
        dbias[c] = 0
    for r in range(R):
        qb = sb + r * ld
        qw = sw + r * ld
        u = (r // rdiv) * ncb + c0 // cb
        if cb == 1 and st == 1:  # (channels-last) unit strides: the loop vectorizes
            for c in range(c0, c1):
                dbias[c] += qb[c]
                dweight[c] += qw[c] * rstd[u - c0 + c]
            continue
        j = c0 % cb
        for c in range(c0, c1):
            dbias[c] += qb[c * st]
            dweight[c] += qw[c * st] * rstd[u]
            j += 1
            if j == cb:
                j = 0
                u += 1


cdef void dw_db_rows(const double *sb, const double *sw, Py_ssize_t ld, Py_ssize_t st,
                     const double *rstd, Py_ssize_t R, Py_ssize_t rdiv, Py_ssize_t ncb,
                     Py_ssize_t cb, Py_ssize_t C, double *dweight, double *dbias,
                     int n_threads) noexcept nogil:
    """dw_db_span over all C channels, split among n_threads past DW_PAR_TERMS terms."""
    cdef Py_ssize_t t, nt = n_threads if R * C >= DW_PAR_TERMS and C >= 64 else 1
    if nt <= 1:  # no parallel region (SERIAL_NOTE)
        dw_db_span(sb, sw, ld, st, rstd, R, rdiv, ncb, cb, 0, C, dweight, dbias)
        return
    for t in prange(nt, schedule="static", num_threads=nt):
        dw_db_span(sb, sw, ld, st, rstd, R, rdiv, ncb, cb, C * t // nt, C * (t + 1) // nt,
                   dweight, dbias)


cdef void mid_planes_bwd_unit(const floating *dy, const floating *x, floating *dx,
                              Py_ssize_t g, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                              Py_ssize_t nc, const floating *w, const floating *cmh,
                              const floating *cml, const double *rstd, double *psum,
                              floating *cQ, floating *cB, int stream, bint frozen) noexcept nogil:
    """The batch-norm backward of channels [g * nc, g * nc + nc) of (N, C, S): each plane's sums
    as planes_unit_bwd_fused forms them (two samples side by side), the samples' runs read in
    turn while the next unit's planes are prefetched; the coefficients per channel; then dx run
    by run (fn_runs_bwd_apply), last sample first."""
    cdef Py_ssize_t c0 = g * nc, m = min(nc, C - c0), K = nchunks(S, FN_CHUNK), n, k, c
    cdef Py_ssize_t mn = min(nc, C - c0 - m), off
    cdef floating Q[MID_MAX_PLANES]
    cdef floating R[MID_MAX_PLANES]
    cdef floating MH[MID_MAX_PLANES]
    cdef floating ML[MID_MAX_PLANES]
    cdef floating B[MID_MAX_PLANES]
    n = 0
    while n + 1 < N:
        for k in range(m):
            c = c0 + k
            if _pfnext and k < mn:
                pf_plane2(dy, x, n * C + c + m, S)
                pf_plane2(dy, x, (n + 1) * C + c + m, S)
            planes_pair_bwd_sums(dy, x, S, n * C + c, (n + 1) * C + c, K, cmh[c], cml[c], psum)
        n += 2
    if n < N:
        for k in range(m):
            c = c0 + k
            plane_bwd_sums(dy, x, S, n * C + c, K, cmh[c], cml[c], psum)
    for k in range(m):
        c = c0 + k
        planes_unit_bwd_coef(psum, c, C, S, N, 1, w, rstd, cQ, cB, frozen)
        Q[k] = cQ[c]
        R[k] = <floating>rstd[c] * w[c]
        MH[k] = cmh[c]
        ML[k] = cml[c]
        B[k] = cB[c]
    for n in range(N - 1, -1, -1):
        off = (n * C + c0) * S
        if floating is float:
            fn_runs_bwd_apply_f32(dy + off, x + off, dx + off, m, S, Q, R, MH, ML, B, stream)
        else:
            fn_runs_bwd_apply_f64(dy + off, x + off, dx + off, m, S, Q, R, MH, ML, B, stream)


cdef void mid_planes_bwd_run(const floating *dy, const floating *x, floating *dx,
                             Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, const floating *w,
                             const floating *cmh, const floating *cml, const double *rstd,
                             double *psum, floating *cQ, floating *cB, int n_threads,
                             int stream, bint frozen) noexcept nogil:
    """The batch-norm backward over the planes mid_planes takes, units of mid_planes_nc
    channels in parallel (psum, cQ, cB filled; dweight and dbias are the caller's, from
    psum)."""
    cdef Py_ssize_t nc = mid_planes_nc(N, C, S, sizeof(floating), n_threads)
    cdef Py_ssize_t G = (C + nc - 1) // nc, g
    if n_threads == 1 or G == 1:  # no parallel region (SERIAL_NOTE)
        for g in range(G):
            mid_planes_bwd_unit(dy, x, dx, g, N, C, S, nc, w, cmh, cml, rstd, psum, cQ, cB,
                                stream, frozen)
        if stream:
            fn_sfence()
        return
    for g in prange(G, schedule="static", num_threads=n_threads):
        mid_planes_bwd_unit(dy, x, dx, g, N, C, S, nc, w, cmh, cml, rstd, psum, cQ, cB, stream,
                            frozen)


def planes_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                    Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t nb, Py_ssize_t cb,
                    const floating[::1] w, const double[::1] mean, const double[::1] rstd,
                    double[::1] dweight, double[::1] dbias, int n_threads, bint fuse, int stream=0,
                    bint frozen=False):
    """Backward over planes (batch / instance / group norm, channels-first).

    dy, x, dx : (N*C*S,)      IN dy, x; OUT dx (dx may alias dy or x)
    w : (C,)                  IN weight (ones when the op has none)
    mean, rstd : (U,)         IN saved statistics per unit
    dweight, dbias : (C,)     OUT, float64
    """
    cdef Py_ssize_t ncb = C // cb
    cdef Py_ssize_t U = (N // nb) * ncb, K = nchunks(S, FN_CHUNK)
    cdef Py_ssize_t P = N * C, items = P * K
    cdef Py_ssize_t i, u, p, k, n, c, g
    cdef double[::1] psum = np.zeros(2 * P, dtype=np.float64)
    cdef double[:, ::1] part
    cdef double sdy, sdyx
    dt = np.float32 if floating is float else np.float64
    cdef floating[::1] cmh = np.empty(U, dtype=dt)
    cdef floating[::1] cml = np.empty(U, dtype=dt)
    cdef floating[::1] cQ = np.empty(U, dtype=dt)
    cdef floating[::1] cB = np.empty(U, dtype=dt)
    if U == 0 or S == 0:
        dweight[:] = 0
        dbias[:] = 0
        return
    cdef bint mid = mid_planes(N, nb, cb, S, False, False, <const floating *>NULL, 0, True)
    if small_planes(N, nb, cb, S, False, False, <const floating *>NULL) and not mid:
        with nogil:
            small_planes_bwd_run(&dy[0], &x[0], &dx[0], N, C, S, &w[0], &mean[0], &rstd[0],
                                 &dweight[0], &dbias[0], n_threads, stream, frozen)
        return
    for u in range(U):
        split_mean(mean[u], &cmh[u], &cml[u])
    if mid:
        with nogil:
            mid_planes_bwd_run(&dy[0], &x[0], &dx[0], N, C, S, &w[0], &cmh[0], &cml[0],
                               &rstd[0], &psum[0], &cQ[0], &cB[0], n_threads, stream, frozen)
            dw_db_rows(&psum[0], &psum[1], 2 * C, 2, &rstd[0], N, nb, ncb, cb, C, &dweight[0],
                       &dbias[0], n_threads)
        return
    # dx prefetches dy and x of the next unit's run: both together within PF_RUN_BYTES.
    # Measured as the forward's (see PF_RUN_BYTES), bwd / copy without vs with, 1T, 2T: batch
    # float32 2.72 -> 2.42, 2.30 -> 2.21; instance float32 2.75 -> 2.21, 2.11 -> 1.66; runs of
    # 24.5 KiB of each array lost (instance float64 1.82 -> 2.15, 1.75 -> 1.89).
    cdef Py_ssize_t pf = run_pf(N, C, S, cb, 2, sizeof(floating))
    cdef Py_ssize_t NG = (U + UNIT_GROUP - 1) // UNIT_GROUP
    if (fuse and nb == 1 and K == 1
            and cb * S * <Py_ssize_t>sizeof(floating) <= GROUP_BWD_UNIT_BYTES):
        # small one-sample units, UNIT_GROUP at a time in one C loop (units_group_bwd), with
        # ordinary stores at any size (fn_units_group_bwd)
        with nogil:
            if n_threads == 1:  # no parallel region (SERIAL_NOTE)
                for g in range(NG):
                    units_group_bwd(&dy[0], &x[0], &dx[0], g, U, ncb, S, cb, &w[0], &cmh[0],
                                    &cml[0], &rstd[0], &psum[0], &cQ[0], &cB[0], frozen, pf)
            else:
                for g in prange(NG, schedule="static", num_threads=n_threads):
                    units_group_bwd(&dy[0], &x[0], &dx[0], g, U, ncb, S, cb, &w[0], &cmh[0],
                                    &cml[0], &rstd[0], &psum[0], &cQ[0], &cB[0], frozen, pf)
    elif fuse and n_threads == 1:  # no parallel region (SERIAL_NOTE)
        with nogil:
            for u in range(U):
                planes_unit_bwd_fused(&dy[0], &x[0], &dx[0], u, C, S, nb, cb, &w[0], &cmh[0],
                                      &cml[0], &rstd[0], &psum[0], &cQ[0], &cB[0], stream,
                                      frozen, pf)
            if stream:
                fn_sfence()
    elif fuse:
        with nogil:
            for u in prange(U, schedule="static", num_threads=n_threads):
                planes_unit_bwd_fused(&dy[0], &x[0], &dx[0], u, C, S, nb, cb, &w[0], &cmh[0],
                                      &cml[0], &rstd[0], &psum[0], &cQ[0], &cB[0], stream,
                                      frozen, pf)
    else:
        part = np.empty((items, 2), dtype=np.float64)
        with nogil:
            for i in prange(items, schedule="static", num_threads=n_threads):
                p = i // K
                u = ((p // C) // nb) * ncb + (p % C) // cb
                plane_chunk_bwd_sums(&dy[0], &x[0], S, p, i % K, cmh[u], cml[u], &part[i, 0])
            for p in prange(P, schedule="static", num_threads=n_threads):
                sdy = 0
                sdyx = 0
                for k in range(K):
                    sdy = sdy + part[p * K + k, 0]
                    sdyx = sdyx + part[p * K + k, 1]
                psum[2 * p] = sdy
                psum[2 * p + 1] = sdyx
            for u in prange(U, schedule="static", num_threads=n_threads):
                planes_unit_bwd_coef(&psum[0], u, C, S, nb, cb, &w[0], &rstd[0], &cQ[0],
                                     &cB[0], frozen)
            for i in prange(items, schedule="static", num_threads=n_threads):
                p = i // K
                c = p % C
                u = ((p // C) // nb) * ncb + c // cb
                plane_chunk_bwd_apply(&dy[0], &x[0], &dx[0], S, p, i % K, u, c, cb, &w[0],
                                      &rstd[0], &cmh[0], &cml[0], &cQ[0], &cB[0], stream)
    # dweight[c] = sum_n r * sum(dy * (x - m)), dbias[c] = sum_n sum(dy), n in order
    with nogil:
        dw_db_rows(&psum[0], &psum[1], 2 * C, 2, &rstd[0], N, nb, ncb, cb, C, &dweight[0],
                   &dbias[0], n_threads)


# ---- layer norm backward (rows with element-wise affine) -------------------------------------
#
# dx needs two row sums (sum g, sum g * xhat); dweight/dbias need column sums over all rows.
# Rows go by ROWS_AT_ONCE at a time where they are wide enough (below): one sweep forms the
# row sums of all of them and adds their terms to the dweight/dbias accumulators, which are
# then loaded and stored once per ROWS_AT_ONCE rows instead of once per row (the same bits:
# fn_rowsn_bwd_sums).
# Short rows (D * itemsize <= ROW_DW_BYTES): the sums, then dx while the rows are in L1 (or
# L2), with dweight/dbias accumulated in T over at most 64 rows, then flushed into a float64
# partial per block of RB rows (RB fixed by the shape); partials are summed in block order.
# Long rows: those accumulators would not stay in cache. The rows go by in blocks of about
# LONG_BLOCK_BYTES of x and dy, and of at least two rows. Per block, pass A: each thread over
# its own run of column chunks of dw_cols, the rows of the block in groups, each group over all
# the thread's chunks (dweight/dbias of each chunk, and per-(row, chunk) partial row sums), so
# every row is read in long runs; the block's row sums are merged in chunk order; pass B writes
# dx over the thread's columns, the rows in groups of up to ROWS_AT_ONCE (one sweep per group,
# w read once for it: fn_rowsn_bwd_apply_ew), last group first, so x and dy come back from the
# thread's L2 (or, past its 1 MiB, from L3) instead of memory. A sample of (64, 56, 56) is
# 1.6 MiB of x and dy in float32 (3.2 MiB in float64), over the 2 MiB: blocks of one such row
# left both passes one row at a time. Two rows per block with the grouped dx sweep, same
# process, the old and new builds alternating, median of the paired ratios new / old (identical
# builds read 0.99-1.00; the sweep in runs of 8 vectors, then of 16 in the last figure):
# float32 one thread 0.97 / 0.96 / 0.95, two 0.98 / 0.98 / 0.90; float64 one thread 0.93 /
# 0.94 / 0.95, two 0.99 / 0.94 / 0.98. Where blocks already held several rows only the grouped
# sweep changed (fn_rowsn_bwd_apply_ew has the figures).
# Earlier, measured on an AMD EPYC (1 MiB L2 per core, 32 MiB L3),
# layer norm over (64, 56, 56), 32 rows, float32 bwd / copy at one thread: blocks of 2 MiB
# 4.1, 8 MiB 5.1, all rows 5.4 (the last-level cache, shared with other tenants, did not keep
# a larger block for the second pass); again with the row groups: 2, 4, 8 MiB 2.80 / 2.60 /
# 2.87, float64 3.04 / 2.88 / 2.78 (within the noise of each other).
# The sums (over rows in order, flushed every FLUSH_ROWS rows) do not depend on the block size,
# the row groups or the thread count.

DEF ROW_DW_BYTES = 32768
DEF FLUSH_ROWS = 64
DEF DW_BYTES = 32768
DEF LONG_BLOCK_BYTES = 2097152
DEF ROWS_AT_ONCE = 4
# Rows narrower than this go one at a time: their accumulators stay in L1 anyway, and the group
# sweep lost there (float32 rows of 256 in cache, bwd / copy 4.7 -> 6.7; of 1024 about even).
DEF ROWS_AT_ONCE_BYTES = 8192


cdef inline Py_ssize_t dw_cols(Py_ssize_t itemsize) noexcept nogil:
    """Columns per chunk of the long rows' passes: DW_BYTES of each of w, dweight and dbias
    (their T accumulators), so the three stay in L2 while every row of a block goes by."""
    return DW_BYTES // itemsize


cdef inline Py_ssize_t rowblock_rows(Py_ssize_t M, Py_ssize_t D) noexcept nogil:
    """Rows per dweight partial: fixed by the shape alone (so the sums do not depend on the
    thread count). At most ROWBLOCK_ELEMS values, and small enough that even a few hundred
    rows make 16 blocks to share between threads (512 rows of 256 used to be one block: one
    thread), but not under 8 rows.
    Every block adds a float64 partial of dweight and of dbias (2 * D * 8 bytes, summed at the
    end): with 256 Ki values per block, 128 MiB of float32 rows of 4096 carried 8 MiB of them,
    fresh from the OS on many calls (480 page faults a call; now they come from the reusable
    blocks, _buffers.scratch) and read again for the sum. With 1 Mi values (16 to 32 partials
    for most large shapes), measured on
    an AMD EPYC (Zen 4), bwd / copy, same process, one thread, two threads: float32 (8192,
    4096) 4.00 -> 3.27, 3.53 -> 2.73; float32 (16384, 2048) 3.45 -> 2.89; float64 (4096,
    4096) 3.99 -> 3.51, 2.94 -> 2.53; (8192, 1024) unchanged within the noise (float32 2.53
    vs 2.47, float64 2.86 vs 2.85 at one thread, 3.06 vs 3.14 at two)."""
    cdef Py_ssize_t rb = max(<Py_ssize_t>1, (ROWBLOCK_ELEMS + D - 1) // D) if D > 0 else 1
    rb = min(rb, max(<Py_ssize_t>8, (M + 15) // 16))
    return max(rb, (M + MAX_ROWBLOCKS - 1) // MAX_ROWBLOCKS)


# The dx of a short row runs from L1 with no read of memory in flight; rows of up to 16 KiB
# prefetch into L2 meanwhile the dy and x of the row that begins PF_BWD_AHEAD_BYTES or more
# further on (the next row for rows of 8 KiB and more, two rows on for rows of 4 KiB, ...).
# Measured on an AMD EPYC (Zen 4), layer norm backward with weight, 32-64 MiB, one thread,
# bwd / copy without vs with (same process, min of 4-6 interleaved rounds): float32 rows of 1024
# 2.84 -> 2.03 and 3.57 -> 2.82 (two runs), of 512 2.33 -> 2.00, of 256 2.41 -> 2.15; float64
# rows of 512 3.02 -> 2.57, 2.84 -> 2.48; float64 rows of 1024 (the next row) 3.48 -> 3.31,
# 4.25 -> 3.70 at two threads; float32 rows of 2048 3.81 -> 3.45. Prefetching only the next row
# lost on rows of 4 KiB (2.78 -> 3.08): it came too late.
# Rows past 16 KiB: no gain measured; rows of 512 B: 2.38 -> 2.46 (per-row work bound), so
# rows of 1 KiB and more.
DEF PF_BWD_AHEAD_BYTES = 8192
DEF PF_BWD_MIN_BYTES = 1024
DEF PF_BWD_MAX_BYTES = 16384


cdef inline Py_ssize_t row_bwd_pf(Py_ssize_t D, Py_ssize_t itemsize) noexcept nogil:
    """Prefetch distance (values) of a short row's dx pass: whole rows, >= PF_BWD_AHEAD_BYTES."""
    cdef Py_ssize_t rowb = D * itemsize
    if rowb < PF_BWD_MIN_BYTES or rowb > PF_BWD_MAX_BYTES:
        return 0
    return D * ((PF_BWD_AHEAD_BYTES + rowb - 1) // rowb)


cdef inline void rows_sums(const floating *dy, const floating *x, Py_ssize_t i, Py_ssize_t nr,
                           Py_ssize_t D, Py_ssize_t j0, Py_ssize_t ln, const floating *w,
                           const double *mean, const double *rstd, floating *dwa,
                           floating *dba, double *sg, double *sgx, floating *mh,
                           floating *ml, bint fresh) noexcept nogil:
    """Columns [j0, j0 + ln) of rows [i, i + nr): sg, sgx (nr each) and mh, ml (the split
    means, nr each) set; their dweight/dbias terms added to dwa, dba (offset to j0), or with
    fresh, to zero (dwa, dba not read)."""
    cdef floating rr[ROWS_AT_ONCE]
    cdef const floating *dyp[ROWS_AT_ONCE]
    cdef const floating *xp[ROWS_AT_ONCE]
    cdef Py_ssize_t e
    for e in range(nr):
        sg[e] = 0
        sgx[e] = 0
        split_mean(mean[i + e], &mh[e], &ml[e])
        rr[e] = <floating>rstd[i + e]
        dyp[e] = dy + (i + e) * D + j0
        xp[e] = x + (i + e) * D + j0
    if floating is float:
        fn_rowsn_bwd_sums_f32(nr, dyp, xp, ln, mh, ml, rr, w + j0, sg, sgx, dwa, dba, fresh)
    else:
        fn_rowsn_bwd_sums_f64(nr, dyp, xp, ln, mh, ml, rr, w + j0, sg, sgx, dwa, dba, fresh)


cdef void rows_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t i,
                   Py_ssize_t nr, Py_ssize_t D, const floating *w, const double *mean,
                   const double *rstd, floating *dwa, floating *dba, bint rms,
                   const floating *ds, int stream, Py_ssize_t pf) noexcept nogil:
    """Rows [i, i + nr) (nr <= ROWS_AT_ONCE): their sums in one sweep, then each row's dx
    while the rows are in L1 (or L2). RMS norm: nothing is subtracted, so the mean(g) term is
    absent (mean 0, Q = 0)."""
    cdef double sg[ROWS_AT_ONCE]
    cdef double sgx[ROWS_AT_ONCE]
    cdef floating mh[ROWS_AT_ONCE]
    cdef floating ml[ROWS_AT_ONCE]
    cdef Py_ssize_t e
    cdef double r
    if pf:
        pf += (nr - 1) * D  # the rows after this group's
    rows_sums(dy, x, i, nr, D, 0, D, w, mean, rstd, dwa, dba, sg, sgx, mh, ml, False)
    for e in range(nr):
        r = rstd[i + e]
        row_range_bwd_apply(dy, x, dx, i + e, D, 0, D, w, mean[i + e], r,
                            0 if rms else sg[e] / D, -r * r * r * sgx[e] / D, ds, stream, pf)


cdef inline void rows_group_bwd(const floating *dy, const floating *x, floating *dx,
                                Py_ssize_t i, Py_ssize_t nr, Py_ssize_t D, const floating *w,
                                const double *mean, const double *rstd, floating *dwa,
                                floating *dba, bint rms, const floating *ds, int stream,
                                Py_ssize_t pf) noexcept nogil:
    """Rows [i, i + nr) (nr <= UNIT_GROUP) through fn_rows_group_bwd."""
    cdef Py_ssize_t off = i * D
    cdef const floating *dsi = ds + off if ds != NULL else NULL
    if floating is float:
        fn_rows_group_bwd_f32(dy + off, x + off, dx + off, nr, D, w, mean + i, rstd + i, rms,
                              dwa, dba, dsi, stream, pf)
    else:
        fn_rows_group_bwd_f64(dy + off, x + off, dx + off, nr, D, w, mean + i, rstd + i, rms,
                              dwa, dba, dsi, stream, pf)


# Rows of up to GROUP_BWD_ROW_BYTES go UNIT_GROUP at a time through one C call
# (fn_rows_group_bwd: rows_bwd's operations for one row, so its bits), which saves the Cython
# calls and pointer set-up of every row. Layer norm backward / copy, same process, builds
# alternating (median of new / old): float32 rows of 64 one thread 7.85 -> 6.16 (0.78), (65536,
# 64) two threads 0.84, rows of 128 0.96 / 0.91 (one / two threads); float64 rows of 64 0.84.
# Longer rows lost a little: float32 rows of 256 1.09 / 1.07, of 1024 1.03.
DEF GROUP_BWD_ROW_BYTES = 512


cdef void rows_block_bwd(const floating *dy, const floating *x, floating *dx, Py_ssize_t q,
                         Py_ssize_t M, Py_ssize_t D, Py_ssize_t RB, const floating *w,
                         const double *mean, const double *rstd, double *dwb, double *dbb,
                         floating *scr, bint rms, const floating *ds, int stream,
                         Py_ssize_t pf) noexcept nogil:
    cdef Py_ssize_t i, j, e, k, i1 = min(M, (q + 1) * RB), s0
    cdef Py_ssize_t nr = 1
    cdef bint grouped = D * <Py_ssize_t>sizeof(floating) <= GROUP_BWD_ROW_BYTES
    if D * <Py_ssize_t>sizeof(floating) >= ROWS_AT_ONCE_BYTES:
        nr = ROWS_AT_ONCE
    cdef floating *dwa = scr
    cdef floating *dba = scr + D
    for j in range(D):
        dwb[j] = 0
        dbb[j] = 0
    s0 = q * RB
    while s0 < i1:
        for j in range(D):
            dwa[j] = 0
            dba[j] = 0
        i = s0
        e = min(i1, s0 + FLUSH_ROWS)
        while i < e:
            if grouped:
                k = min(<Py_ssize_t>UNIT_GROUP, e - i)
                rows_group_bwd(dy, x, dx, i, k, D, w, mean, rstd, dwa, dba, rms, ds, stream, pf)
            else:
                k = min(nr, e - i)
                rows_bwd(dy, x, dx, i, k, D, w, mean, rstd, dwa, dba, rms, ds, stream, pf)
            i += k
        for j in range(D):
            dwb[j] += dwa[j]
            dbb[j] += dba[j]
        s0 += FLUSH_ROWS


DEF DW_TILE = 256


cdef void dw_columns(const double *dwb, const double *dbb, Py_ssize_t Q, Py_ssize_t D,
                     Py_ssize_t t, floating *dweight, floating *dbias) noexcept nogil:
    """dweight, dbias over column tile t (DW_TILE columns): the Q float64 partials (Q, D)
    summed in order, partial by partial across the tile (contiguous, so the adds vectorize;
    each column's sum is the same chain as one column at a time)."""
    cdef double s1[DW_TILE]
    cdef double s2[DW_TILE]
    cdef Py_ssize_t j0 = t * DW_TILE, n = min(<Py_ssize_t>DW_TILE, D - j0), q, j
    cdef const double *p1
    cdef const double *p2
    for j in range(n):
        s1[j] = 0
        s2[j] = 0
    for q in range(Q):
        p1 = dwb + q * D + j0
        p2 = dbb + q * D + j0
        for j in range(n):
            s1[j] += p1[j]
            s2[j] += p2[j]
    for j in range(n):
        dweight[j0 + j] = <floating>s1[j]
        dbias[j0 + j] = <floating>s2[j]


def rows_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                  Py_ssize_t M, Py_ssize_t D, const floating[::1] w, const double[::1] mean,
                  const double[::1] rstd, floating[::1] dweight, floating[::1] dbias,
                  int n_threads, bint rms=False, const floating[::1] ds=None, int stream=0):
    """Layer norm (or RMS norm) backward over rows (M, D).

    dy, x, dx : (M*D,)      IN dy, x; OUT dx
    w : (D,)                IN weight (ones when None)
    mean, rstd : (M,)       IN saved statistics
    dweight, dbias : (D,)   OUT, in the data's dtype (summed in float64, rounded once)
    ds : (M*D,)             IN optional gradient of the residual stream, added to dx
    """
    cdef Py_ssize_t RB = rowblock_rows(M, D)
    cdef const floating *dsp = &ds[0] if ds is not None else NULL
    cdef Py_ssize_t Q = (M + RB - 1) // RB, ncol = nchunks(D, dw_cols(sizeof(floating)))
    cdef Py_ssize_t nt = max(1, n_threads)
    cdef Py_ssize_t q, j, i, k, j0, pf
    cdef double[:, ::1] dwb
    cdef double[:, ::1] dbb
    cdef floating[:, ::1] tsc
    cdef floating[:, ::1] acc
    cdef double[:, ::1] accd
    cdef double[:, :, ::1] part
    cdef double[:, ::1] rq
    cdef floating *sc
    cdef bint direct
    dt = np.float32 if floating is float else np.float64
    if M == 0 or D == 0:
        dweight[:] = 0
        dbias[:] = 0
        return
    if D * <Py_ssize_t>sizeof(floating) <= ROW_DW_BYTES:
        pf = row_bwd_pf(D, sizeof(floating))
        # both partials in one reusable block: one slot of the cache, one rounding to 2 MiB
        parts = _buf_scratch((2, Q, D), np.float64)
        dwb = parts[0]
        dbb = parts[1]
        tsc = thread_rows(nt, 2 * D, dt)
        with nogil:
            if n_threads == 1:  # no parallel region (SERIAL_NOTE)
                for q in range(Q):
                    rows_block_bwd(&dy[0], &x[0], &dx[0], q, M, D, RB, &w[0], &mean[0],
                                   &rstd[0], &dwb[q, 0], &dbb[q, 0], &tsc[0, 0], rms, dsp,
                                   stream, pf)
                if stream:
                    fn_sfence()
                for j in range(nchunks(D, DW_TILE)):
                    dw_columns(&dwb[0, 0], &dbb[0, 0], Q, D, j, &dweight[0], &dbias[0])
            else:
                with parallel(num_threads=n_threads):
                    sc = &tsc[threadid(), 0]
                    for q in prange(Q, schedule="static"):
                        rows_block_bwd(&dy[0], &x[0], &dx[0], q, M, D, RB, &w[0], &mean[0],
                                       &rstd[0], &dwb[q, 0], &dbb[q, 0], sc, rms, dsp, stream,
                                       pf)
                for j in prange(nchunks(D, DW_TILE), schedule="static",
                                num_threads=n_threads):
                    dw_columns(&dwb[0, 0], &dbb[0, 0], Q, D, j, &dweight[0], &dbias[0])
        return
    # long rows: blocks of rows; pass A by row groups over each thread's column chunks, pass B
    # by rows over the same columns
    part = np.empty((M, ncol, 2), dtype=np.float64)
    rq = np.empty((M, 2), dtype=np.float64)
    direct = M <= FLUSH_ROWS
    acc = _buf_scratch((2, 1 if direct else D), dt)
    accd = _buf_scratch((2, 1 if direct else D), np.float64)
    if n_threads == 1:  # no parallel region (SERIAL_NOTE): a team of one, its barriers no-ops
        with nogil:
            long_rows_bwd_team(&dy[0], &x[0], &dx[0], M, D, &w[0], &mean[0], &rstd[0],
                               &part[0, 0, 0], &rq[0, 0], ncol, &dweight[0], &dbias[0],
                               &acc[0, 0], &accd[0, 0], rms, dsp, stream)
            if stream:
                fn_sfence()
        return
    with nogil, parallel(num_threads=n_threads):
        long_rows_bwd_team(&dy[0], &x[0], &dx[0], M, D, &w[0], &mean[0], &rstd[0],
                           &part[0, 0, 0], &rq[0, 0], ncol, &dweight[0], &dbias[0],
                           &acc[0, 0], &accd[0, 0], rms, dsp, stream)


cdef void long_rows_bwd_team(const floating *dy, const floating *x, floating *dx, Py_ssize_t M,
                             Py_ssize_t D, const floating *w, const double *mean,
                             const double *rstd, double *part, double *rq, Py_ssize_t ncol,
                             floating *dweight, floating *dbias, floating *acc, double *accd,
                             bint rms, const floating *ds, int stream) noexcept nogil:
    """The long-row backward, run by every thread of one parallel region: thread t owns the
    column chunks [team_lo(ncol), team_lo_next(ncol)) in both passes of every row block (with
    fewer chunks than threads, pass B is shared out by (row, chunk) items instead).
    acc (2, D) of T and accd (2, D) of float64: the dweight/dbias accumulators (unused when
    M <= FLUSH_ROWS: dweight/dbias themselves)."""
    cdef Py_ssize_t k0 = team_lo(ncol), k1 = team_lo_next(ncol)
    cdef Py_ssize_t RB = max(<Py_ssize_t>2,
                             LONG_BLOCK_BYTES // (2 * D * <Py_ssize_t>sizeof(floating)))
    cdef Py_ssize_t b0 = 0, b1, i, k, j, nitems, nr, cw = dw_cols(sizeof(floating))
    cdef double s1, s2
    while b0 < M:
        b1 = min(M, b0 + RB)
        i = b0
        while i < b1:
            nr = min(<Py_ssize_t>ROWS_AT_ONCE, b1 - i, FLUSH_ROWS - i % FLUSH_ROWS)
            for k in range(k0, k1):
                chunk_rows_bwd_sums(dy, x, M, D, k, i, nr, w, mean, rstd, part, ncol, dweight,
                                    dbias, acc, accd)
            i += nr
        fn_team_barrier()
        for i in range(b0 + team_lo(b1 - b0), b0 + team_lo_next(b1 - b0)):
            s1 = 0
            s2 = 0
            for k in range(ncol):
                s1 = s1 + part[(i * ncol + k) * 2]
                s2 = s2 + part[(i * ncol + k) * 2 + 1]
            rq[2 * i] = 0 if rms else s1 / D
            rq[2 * i + 1] = -rstd[i] * rstd[i] * rstd[i] * s2 / D
        fn_team_barrier()
        if ncol >= fn_team_size():
            i = b1
            while i > b0:
                nr = min(<Py_ssize_t>ROWS_AT_ONCE, i - b0)
                rows_range_bwd_apply(dy, x, dx, i - nr, nr, D, k0 * cw, min(D, k1 * cw), w,
                                     mean, rstd, rq, ds, stream)
                i -= nr
        else:
            # fewer chunks than threads: dx (no sums, so any split gives the same bits) over
            # the block's (row, chunk) items, so every thread has a share
            nitems = (b1 - b0) * ncol
            for j in range(team_lo_next(nitems) - 1, team_lo(nitems) - 1, -1):
                i = b0 + j // ncol
                k = j % ncol
                row_range_bwd_apply(dy, x, dx, i, D, k * cw, min(D, (k + 1) * cw), w, mean[i],
                                    rstd[i], rq[2 * i], rq[2 * i + 1], ds, stream, 0)
        b0 = b1


cdef int _fresh = 1


def _set_fresh(int mode):
    """Tests and A/B only: whether the long-row backward's first rows of a flush start dweight /
    dbias from zero inside the sums pass (else a zeroing loop first); returns the previous
    setting. The bits do not depend on it."""
    global _fresh
    prev = _fresh
    _fresh = mode
    return prev


cdef void chunk_rows_bwd_sums(const floating *dy, const floating *x, Py_ssize_t M,
                              Py_ssize_t D, Py_ssize_t k, Py_ssize_t i, Py_ssize_t nr,
                              const floating *w, const double *mean, const double *rstd,
                              double *part, Py_ssize_t ncol, floating *dweight,
                              floating *dbias, floating *acc, double *accd) noexcept nogil:
    """Pass A of the long-row layer-norm backward for column chunk k and rows [i, i + nr)
    (within one flush): per row the partial sums of g and g * xc over the chunk into
    part[row, k], and dweight/dbias of the chunk, accumulated in T over FLUSH_ROWS rows,
    flushed into float64 (accd) and rounded to T once after row M - 1. With one flush
    (M <= FLUSH_ROWS) that float64 round trip returns the T sums unchanged, so they accumulate
    in dweight/dbias."""
    cdef Py_ssize_t cw = dw_cols(sizeof(floating))
    cdef Py_ssize_t j0 = k * cw, ln = min(cw, D - j0), j, e, last = i + nr - 1
    cdef bint direct = M <= FLUSH_ROWS
    cdef floating *dwa = (dweight if direct else acc) + j0
    cdef floating *dba = (dbias if direct else acc + D) + j0
    cdef double *dwd = accd + j0
    cdef double *dbd = accd + D + j0
    cdef double sg[ROWS_AT_ONCE]
    cdef double sgx[ROWS_AT_ONCE]
    cdef floating mh[ROWS_AT_ONCE]
    cdef floating ml[ROWS_AT_ONCE]
    # the first rows of a flush start dwa/dba from zero, without zeroing them first (one
    # sample of (64, 224, 224): dweight and dbias of 12 MiB each went by a memset too)
    cdef bint fresh = i % FLUSH_ROWS == 0
    if fresh and not _fresh:
        fresh = False
        for j in range(ln):
            dwa[j] = 0
            dba[j] = 0
    rows_sums(dy, x, i, nr, D, j0, ln, w, mean, rstd, dwa, dba, sg, sgx, mh, ml, fresh)
    for e in range(nr):
        part[((i + e) * ncol + k) * 2] = sg[e]
        part[((i + e) * ncol + k) * 2 + 1] = sgx[e]
    if direct or ((last + 1) % FLUSH_ROWS != 0 and last != M - 1):
        return
    if last < FLUSH_ROWS:
        for j in range(ln):
            dwd[j] = 0
            dbd[j] = 0
    for j in range(ln):
        dwd[j] += dwa[j]
        dbd[j] += dba[j]
    if last == M - 1:
        for j in range(ln):
            dweight[j0 + j] = <floating>dwd[j]
            dbias[j0 + j] = <floating>dbd[j]


cdef void rows_range_bwd_apply(const floating *dy, const floating *x, floating *dx,
                               Py_ssize_t i0, Py_ssize_t nr, Py_ssize_t D, Py_ssize_t j0,
                               Py_ssize_t j1, const floating *w, const double *mean,
                               const double *rstd, const double *rq, const floating *ds,
                               int stream) noexcept nogil:
    """dx of rows [i0, i0 + nr) (nr <= ROWS_AT_ONCE), columns [j0, j1), in one sweep
    (fn_rowsn_bwd_apply_ew: w read once for the nr rows; the bits of row_range_bwd_apply; rq
    holds each row's (Q, B)). Streaming stores need the rows' dx to reach a 64-byte boundary
    together, which holds when a row is a whole number of 64-byte lines; otherwise row by
    row."""
    cdef const floating *dyp[ROWS_AT_ONCE]
    cdef const floating *xp[ROWS_AT_ONCE]
    cdef floating *dxp[ROWS_AT_ONCE]
    cdef const floating *dsp[ROWS_AT_ONCE]
    cdef floating Q[ROWS_AT_ONCE]
    cdef floating r[ROWS_AT_ONCE]
    cdef floating mh[ROWS_AT_ONCE]
    cdef floating ml[ROWS_AT_ONCE]
    cdef floating B[ROWS_AT_ONCE]
    cdef Py_ssize_t e, i, off
    if nr == 1 or (stream and (D * <Py_ssize_t>sizeof(floating)) % 64 != 0):
        for i in range(i0 + nr - 1, i0 - 1, -1):
            row_range_bwd_apply(dy, x, dx, i, D, j0, j1, w, mean[i], rstd[i], rq[2 * i],
                                rq[2 * i + 1], ds, stream, 0)
        return
    for e in range(nr):
        i = i0 + e
        off = i * D + j0
        dyp[e] = dy + off
        xp[e] = x + off
        dxp[e] = dx + off
        dsp[e] = ds + off if ds != NULL else NULL
        split_mean(mean[i], &mh[e], &ml[e])
        Q[e] = <floating>rq[2 * i]
        r[e] = <floating>rstd[i]
        B[e] = <floating>rq[2 * i + 1]
    if floating is float:
        fn_rowsn_bwd_apply_ew_f32(<int>nr, dyp, xp, dxp, j1 - j0, w + j0, Q, r, mh, ml, B,
                                  dsp if ds != NULL else NULL, stream)
    else:
        fn_rowsn_bwd_apply_ew_f64(<int>nr, dyp, xp, dxp, j1 - j0, w + j0, Q, r, mh, ml, B,
                                  dsp if ds != NULL else NULL, stream)


cdef inline void row_range_bwd_apply(const floating *dy, const floating *x, floating *dx,
                                     Py_ssize_t i, Py_ssize_t D, Py_ssize_t j0, Py_ssize_t j1,
                                     const floating *w, double m, double r, double Q, double B,
                                     const floating *ds, int stream,
                                     Py_ssize_t pf) noexcept nogil:
    """dx of row i, columns [j0, j1), in one run (pf: fn_row_bwd_apply_ew's prefetch)."""
    cdef Py_ssize_t off = i * D + j0
    cdef floating mh, ml
    cdef const floating *dsi = ds + off if ds != NULL else NULL
    split_mean(m, &mh, &ml)
    if floating is float:
        fn_row_bwd_apply_ew_f32(dy + off, x + off, dx + off, j1 - j0, w + j0, <float>Q,
                                <float>r, mh, ml, <float>B, dsi, stream, pf)
    else:
        fn_row_bwd_apply_ew_f64(dy + off, x + off, dx + off, j1 - j0, w + j0, Q, r, mh, ml, B,
                                dsi, stream, pf)


# ---- cols (channels-last) ----------------------------------------------------------------------

cdef inline void cols_chunk_moments(const floating *x, Py_ssize_t R, Py_ssize_t C, Py_ssize_t rb,
                                    Py_ssize_t chr_, Py_ssize_t g, Py_ssize_t k, floating *scr,
                                    double *bm, double *bm2, double *mean,
                                    double *m2) noexcept nogil:
    """Per-column moments of chunk k (rows [k*chr_, ...)) of unit g, from zero."""
    cdef Py_ssize_t r0 = k * chr_
    cdef Py_ssize_t ln = min(chr_, R - r0), c
    cdef double cnt = 0
    for c in range(C):
        mean[c] = 0
        m2[c] = 0
    seg_col_moments(x + (g * R + r0) * C, ln, C, rb, scr, bm, bm2, &cnt, mean, m2)


cdef void cols_unit_columns(const double *part, Py_ssize_t g, Py_ssize_t R, Py_ssize_t C,
                            Py_ssize_t chr_, Py_ssize_t K, double *m, double *m2) noexcept nogil:
    """Per-column mean/M2 of unit g from its chunk partials, merged in chunk order."""
    cdef Py_ssize_t k, c, i
    cdef double cnt = 0
    for c in range(C):
        m[c] = 0
        m2[c] = 0
    for k in range(K):
        i = g * K + k
        fn_chan_merge_vec(&cnt, m, m2, C, <double>min(chr_, R - k * chr_), part + i * 2 * C,
                          part + i * 2 * C + C)


cdef inline Py_ssize_t team_lo(Py_ssize_t n) noexcept nogil:
    """First of the items [0, n) this thread of the team takes, split in contiguous runs: the
    same runs in every region with the same team size, so a later pass can revisit what this
    thread read in an earlier one."""
    return n * fn_team_rank() // fn_team_size()


cdef inline Py_ssize_t team_lo_next(Py_ssize_t n) noexcept nogil:
    return n * (fn_team_rank() + 1) // fn_team_size()


cdef void cols_partials(const floating *x, Py_ssize_t R, Py_ssize_t C, Py_ssize_t rb,
                        Py_ssize_t chr_, Py_ssize_t K, Py_ssize_t items, double *part,
                        floating *tsc, double *tsd, int n_threads) noexcept nogil:
    """Phase 1 of the split schedule: chunk partials (mean[C], M2[C]) of every (unit, chunk),
    thread t over the items [team_lo, team_lo_next). tsc / tsd: per-thread scratch rows of 9C
    (T) and 6C (double), thread_rows strides."""
    cdef Py_ssize_t t
    with parallel(num_threads=n_threads):
        t = threadid()
        cols_team_partials(x, R, C, rb, chr_, K, items, part,
                           tsc + t * thread_stride(9 * C, sizeof(floating)),
                           tsd + t * thread_stride(6 * C, sizeof(double)))


cdef inline void cols_team_partials(const floating *x, Py_ssize_t R, Py_ssize_t C,
                                    Py_ssize_t rb, Py_ssize_t chr_, Py_ssize_t K,
                                    Py_ssize_t items, double *part, floating *sc,
                                    double *sd) noexcept nogil:
    """This team thread's share of phase 1: the chunk partials of its run of (unit, chunk)
    items [team_lo, team_lo_next), called inside a parallel region."""
    cdef Py_ssize_t i
    for i in range(team_lo(items), team_lo_next(items)):
        cols_chunk_moments(x, R, C, rb, chr_, i // K, i % K, sc, sd, sd + C,
                           part + i * 2 * C, part + i * 2 * C + C)


cdef void cols_unit_coef(Py_ssize_t g, Py_ssize_t R, Py_ssize_t C, Py_ssize_t cg,
                         const double *mean, const double *m2, const floating *w,
                         const floating *b, double eps, double *mean_out, double *rstd_out,
                         floating *mh, floating *ml, floating *a, floating *bb) noexcept nogil:
    """Per-column (R rows each) moments of unit g -> group stats and per-column coefficients
    (fn_cols_unit_coef)."""
    cdef Py_ssize_t G = C // cg
    if floating is float:
        fn_cols_unit_coef_f32(R, C, cg, mean, m2, w, b, eps, mean_out + g * G, rstd_out + g * G,
                              mh, ml, a, bb)
    else:
        fn_cols_unit_coef_f64(R, C, cg, mean, m2, w, b, eps, mean_out + g * G, rstd_out + g * G,
                              mh, ml, a, bb)


def cols_forward(const floating[::1] x, floating[::1] y, Py_ssize_t G0, Py_ssize_t R,
                 Py_ssize_t C, Py_ssize_t cg, const floating[::1] w, const floating[::1] b,
                 double eps, double[::1] mean_out, double[::1] rstd_out, int act,
                 int n_threads, bint fuse, int stream=0):
    """Training forward over channels-last x (G0, R, C), statistics per (g0, group of cg columns).

    mean_out, rstd_out : (G0 * C/cg,)   OUT
    """
    if G0 == 0 or R == 0 or C == 0:
        return
    cols_forward_run(&x[0], &y[0], G0, R, C, cg, &w[0], &b[0], eps, &mean_out[0],
                     &rstd_out[0], act, max(1, n_threads), fuse, stream)


cdef int cols_forward_run(const floating *x, floating *y, Py_ssize_t G0, Py_ssize_t R,
                          Py_ssize_t C, Py_ssize_t cg, const floating *w, const floating *b,
                          double eps, double *mean_out, double *rstd_out, int act, int nt,
                          bint fuse, int stream) except -1:
    """cols_forward on pointers (also the fast path's): the fused schedule (a unit per thread)
    or the split one (partials, coefficients, apply in one region). Scratch per thread: 9C of
    T (block and coefficients) and 6C doubles; the split schedule adds the chunk partials
    (2C doubles per item) and the coefficients of every unit (4C of T)."""
    cdef Py_ssize_t rb, chr_
    cdef Py_ssize_t K = cols_cut(G0, R, C, sizeof(floating), &rb, &chr_), items = G0 * K, g, t
    cdef Py_ssize_t s6 = thread_stride(6 * C, sizeof(double))
    cdef Py_ssize_t s9 = thread_stride(9 * C, sizeof(floating))
    cdef void *rd = malloc((s6 * nt + (0 if fuse else 2 * C * items)) * sizeof(double) + 64)
    cdef void *rc = malloc((s9 * nt + (0 if fuse else 4 * C * G0)) * sizeof(floating) + 64)
    cdef double *sd = <double *>align64(rd)
    cdef floating *sc = <floating *>align64(rc)
    try:
        if rd == NULL or rc == NULL:
            raise MemoryError()
        with nogil:
            if fuse and nt == 1:  # no parallel region (see planes_fused_run)
                for g in range(G0):
                    cols_unit_fused(x, y, g, R, C, cg, rb, chr_, K, sc, sd, w, b, eps,
                                    mean_out, rstd_out, act, stream)
                if stream:
                    fn_sfence()
            elif fuse:
                with parallel(num_threads=nt):
                    t = threadid()
                    for g in prange(G0, schedule="static"):
                        cols_unit_fused(x, y, g, R, C, cg, rb, chr_, K, sc + t * s9,
                                        sd + t * s6, w, b, eps, mean_out, rstd_out, act,
                                        stream)
            else:
                with parallel(num_threads=nt):
                    t = threadid()
                    cols_split_forward(x, y, G0, R, C, cg, rb, chr_, K, sd + s6 * nt,
                                       sc + t * s9, sd + t * s6, sc + s9 * nt, w, b,
                                       eps, mean_out, rstd_out, act, stream)
        return 0
    finally:
        free(rd)
        free(rc)


cdef void cols_split_forward(const floating *x, floating *y, Py_ssize_t G0, Py_ssize_t R,
                             Py_ssize_t C, Py_ssize_t cg, Py_ssize_t rb, Py_ssize_t chr_,
                             Py_ssize_t K, double *part, floating *sc, double *sd, floating *coef,
                             const floating *w, const floating *b, double eps,
                             double *mean_out, double *rstd_out, int act,
                             int stream) noexcept nogil:
    """The split schedule of cols_forward, run by every thread of one parallel region (one
    region and two barriers instead of three regions: at a few hundred KiB the regions cost
    as much as the work). Thread t: the chunk partials of its run of (unit, chunk) items; the
    coefficients of its run of units; then its items' apply, last first (those were read last
    and may still be in its L2)."""
    cdef Py_ssize_t items = G0 * K, i, g, r0
    cdef Py_ssize_t lo = team_lo(items), hi = team_lo_next(items)
    cols_team_partials(x, R, C, rb, chr_, K, items, part, sc, sd)
    fn_team_barrier()
    for g in range(team_lo(G0), team_lo_next(G0)):
        cols_unit_merge(part, g, R, C, cg, chr_, K, sd, w, b, eps, mean_out, rstd_out,
                        coef + g * 4 * C)
    fn_team_barrier()
    for i in range(hi - 1, lo - 1, -1):
        g = i // K
        r0 = (i % K) * chr_
        rows_apply(x + (g * R + r0) * C, y + (g * R + r0) * C, min(chr_, R - r0), C,
                   coef + g * 4 * C, coef + g * 4 * C + C, coef + g * 4 * C + 2 * C,
                   coef + g * 4 * C + 3 * C, act, stream)


cdef void cols_unit_merge(const double *part, Py_ssize_t g, Py_ssize_t R, Py_ssize_t C,
                          Py_ssize_t cg, Py_ssize_t chr_, Py_ssize_t K, double *sd,
                          const floating *w, const floating *b, double eps, double *mean_out,
                          double *rstd_out, floating *coef) noexcept nogil:
    cols_unit_columns(part, g, R, C, chr_, K, sd, sd + C)
    cols_unit_coef(g, R, C, cg, sd, sd + C, w, b, eps, mean_out, rstd_out, coef, coef + C,
                   coef + 2 * C, coef + 3 * C)


cdef void cols_unit_fused(const floating *x, floating *y, Py_ssize_t g, Py_ssize_t R,
                          Py_ssize_t C, Py_ssize_t cg, Py_ssize_t rb, Py_ssize_t chr_,
                          Py_ssize_t K, floating *sc, double *sd, const floating *w,
                          const floating *b,
                          double eps, double *mean_out, double *rstd_out, int act,
                          int stream) noexcept nogil:
    cdef Py_ssize_t k, c
    cdef double cnt = 0
    cdef double *m = sd
    cdef double *m2 = sd + C
    cdef double *pm = sd + 2 * C
    cdef double *pm2 = sd + 3 * C
    cdef floating *coef = sc + 5 * C
    for c in range(C):
        m[c] = 0
        m2[c] = 0
    for k in range(K):
        cols_chunk_moments(x, R, C, rb, chr_, g, k, sc, sd + 4 * C, sd + 5 * C, pm, pm2)
        fn_chan_merge_vec(&cnt, m, m2, C, <double>min(chr_, R - k * chr_), pm, pm2)
    cols_unit_coef(g, R, C, cg, m, m2, w, b, eps, mean_out, rstd_out, coef, coef + C,
                   coef + 2 * C, coef + 3 * C)
    # last chunk first: it was read last and may still be in L2
    for k in range(K - 1, -1, -1):
        c = (g * R + k * chr_) * C
        rows_apply(x + c, y + c, min(chr_, R - k * chr_), C, coef, coef + C, coef + 2 * C,
                   coef + 3 * C, act, stream)


def cols_apply(const floating[::1] x, floating[::1] y, Py_ssize_t G0, Py_ssize_t R,
               Py_ssize_t C, const floating[::1] mh, const floating[::1] ml,
               const floating[::1] a, const floating[::1] b, bint per_unit, int act,
               int n_threads, int stream=0):
    """y[g, r, c] = ((x - mh) - ml) * a + b; coefficients (C,) or (G0*C,) if per_unit."""
    cdef Py_ssize_t rb, chr_
    cdef Py_ssize_t K = cols_cut(G0, R, C, sizeof(floating), &rb, &chr_), items = G0 * K
    cdef Py_ssize_t i, g, q, r0, ln
    if items == 0 or C == 0:
        return
    with nogil:
        for i in prange(items, schedule="static", num_threads=n_threads):
            g = i // K
            q = g * C if per_unit else 0
            r0 = (i % K) * chr_
            ln = min(chr_, R - r0)
            rows_apply(&x[(g * R + r0) * C], &y[(g * R + r0) * C], ln, C, &mh[q], &ml[q],
                       &a[q], &b[q], act, stream)


cdef void cols_chunk_bwd_sums(const floating *dy, const floating *x, Py_ssize_t R, Py_ssize_t C,
                              Py_ssize_t rb, Py_ssize_t chr_, Py_ssize_t g, Py_ssize_t k,
                              const floating *mh, const floating *ml, double *sdy,
                              double *sdyx) noexcept nogil:
    cdef Py_ssize_t r0 = k * chr_, c
    for c in range(C):
        sdy[c] = 0
        sdyx[c] = 0
    rows_bwd_sums(dy + (g * R + r0) * C, x + (g * R + r0) * C, min(chr_, R - r0), C, rb, mh,
                  ml, sdy, sdyx)


cdef void cols_unit_bwd_coef(Py_ssize_t g, Py_ssize_t R, Py_ssize_t C, Py_ssize_t cg,
                             const double *psum, const floating *w, const double *rstd,
                             floating *coef, bint frozen) noexcept nogil:
    """coef rows (each C): mh, ml, P, Q, R, B. Fills Q and B from the unit's column sums
    (the form is planes_unit_bwd_coef's)."""
    cdef Py_ssize_t G = C // cg, j, c
    cdef double sg, sgx, r, cnt = <double>(R * cg)
    for j in range(G):
        sg = 0
        sgx = 0
        for c in range(j * cg, (j + 1) * cg):
            sg = sg + <double>w[c] * psum[c]
            sgx = sgx + <double>w[c] * psum[C + c]
        r = rstd[g * G + j]
        for c in range(j * cg, (j + 1) * cg):
            coef[3 * C + c] = <floating>((psum[c] if cg == 1 else sg) / cnt)
            coef[5 * C + c] = <floating>(-r * r * r * sgx / cnt)
            if frozen:  # statistics are constants (eval mode): dx = dy * w * r
                coef[3 * C + c] = 0
                coef[5 * C + c] = 0


cdef void cols_bwd_coef(const double *mean, const double *rstd, const floating *w,
                        Py_ssize_t g0, Py_ssize_t g1, Py_ssize_t C, Py_ssize_t cg,
                        floating *coef) noexcept nogil:
    """Rows g0 .. g1 - 1 of the channels-last backward's coefficients (6 C a row): the split
    mean, then P and R of the dx form (see planes_unit_bwd_coef) per column; the statistic
    index steps along the columns (no division a column)."""
    cdef Py_ssize_t g, c, j, u
    cdef floating *q
    for g in range(g0, g1):
        q = coef + g * 6 * C
        u = g * (C // cg)
        j = 0
        for c in range(C):
            split_mean(mean[u], &q[c], &q[C + c])
            if cg == 1:
                q[2 * C + c] = 1
                q[4 * C + c] = <floating>(rstd[u] * <double>w[c])
            else:
                q[2 * C + c] = w[c]
                q[4 * C + c] = <floating>rstd[u]
            j += 1
            if j == cg:
                j = 0
                u += 1


def cols_backward(const floating[::1] dy, const floating[::1] x, floating[::1] dx,
                  Py_ssize_t G0, Py_ssize_t R, Py_ssize_t C, Py_ssize_t cg,
                  const floating[::1] w, const double[::1] mean, const double[::1] rstd,
                  double[::1] dweight, double[::1] dbias, int n_threads, bint fuse,
                  int stream=0, bint frozen=False):
    """Backward over channels-last (G0, R, C), statistics per (g0, group of cg columns).

    mean, rstd : (G0 * C/cg,)   IN saved statistics
    dweight, dbias : (C,)       OUT, float64
    """
    cdef Py_ssize_t rb, chr_, G = C // cg
    cdef Py_ssize_t K = cols_cut(G0, R, C, sizeof(floating), &rb, &chr_), items = G0 * K
    cdef Py_ssize_t nt = max(1, n_threads)
    cdef Py_ssize_t g
    dt = np.float32 if floating is float else np.float64
    cdef double[:, ::1] tsd = thread_rows(nt, 2 * max(C, 1), np.float64)
    cdef floating[:, ::1] coef = np.empty((max(G0, 1), 6 * max(C, 1)), dtype=dt)
    cdef double[:, ::1] psum = np.zeros((max(G0, 1), 2 * max(C, 1)), dtype=np.float64)
    cdef double[:, ::1] part
    cdef double *sd
    if items == 0 or C == 0:
        dweight[:] = 0
        dbias[:] = 0
        return
    with nogil:
        if n_threads == 1 or G0 == 1 or G0 * C < DW_PAR_TERMS:  # (SERIAL_NOTE)
            cols_bwd_coef(&mean[0], &rstd[0], &w[0], 0, G0, C, cg, &coef[0, 0])
        else:
            for g in prange(G0, schedule="static", num_threads=n_threads):
                cols_bwd_coef(&mean[0], &rstd[0], &w[0], g, g + 1, C, cg, &coef[0, 0])
    if fuse and n_threads == 1:  # no parallel region (SERIAL_NOTE)
        with nogil:
            for g in range(G0):
                cols_unit_bwd_fused(&dy[0], &x[0], &dx[0], g, R, C, cg, rb, chr_, K,
                                    &tsd[0, 0], &w[0], &rstd[0], &psum[g, 0], &coef[g, 0],
                                    stream, frozen)
            if stream:
                fn_sfence()
    elif fuse:
        with nogil, parallel(num_threads=n_threads):
            sd = &tsd[threadid(), 0]
            for g in prange(G0, schedule="static"):
                cols_unit_bwd_fused(&dy[0], &x[0], &dx[0], g, R, C, cg, rb, chr_, K, sd,
                                    &w[0], &rstd[0], &psum[g, 0], &coef[g, 0], stream,
                                    frozen)
    else:
        part = np.empty((items, 2 * C), dtype=np.float64)
        with nogil, parallel(num_threads=n_threads):
            cols_split_backward(&dy[0], &x[0], &dx[0], G0, R, C, cg, rb, chr_, K,
                                &part[0, 0], &psum[0, 0], &coef[0, 0], &w[0], &rstd[0],
                                stream, frozen)
    with nogil:
        dw_db_rows(&psum[0, 0], &psum[0, C], 2 * C, 1, &rstd[0], G0, 1, G, cg, C, &dweight[0],
                   &dbias[0], n_threads)


cdef void cols_split_backward(const floating *dy, const floating *x, floating *dx,
                              Py_ssize_t G0, Py_ssize_t R, Py_ssize_t C, Py_ssize_t cg,
                              Py_ssize_t rb, Py_ssize_t chr_, Py_ssize_t K, double *part,
                              double *psum, floating *coef, const floating *w,
                              const double *rstd, int stream, bint frozen) noexcept nogil:
    """The split schedule of cols_backward in one parallel region (see cols_split_forward):
    the sums of this thread's items, barrier, its units' coefficients, barrier, its items' dx
    last first."""
    cdef Py_ssize_t items = G0 * K, i, g, r0, o
    cdef Py_ssize_t lo = team_lo(items), hi = team_lo_next(items)
    for i in range(lo, hi):
        g = i // K
        cols_chunk_bwd_sums(dy, x, R, C, rb, chr_, g, i % K, coef + g * 6 * C,
                            coef + g * 6 * C + C, part + i * 2 * C, part + i * 2 * C + C)
    fn_team_barrier()
    for g in range(team_lo(G0), team_lo_next(G0)):
        cols_unit_bwd_merge(part, g, K, C, psum + g * 2 * C)
        cols_unit_bwd_coef(g, R, C, cg, psum + g * 2 * C, w, rstd, coef + g * 6 * C, frozen)
    fn_team_barrier()
    for i in range(hi - 1, lo - 1, -1):
        g = i // K
        r0 = (i % K) * chr_
        o = (g * R + r0) * C
        rows_bwd_apply(dy + o, x + o, dx + o, min(chr_, R - r0), C,
                       coef + g * 6 * C + 2 * C if cg > 1 else NULL,
                       coef + g * 6 * C + 3 * C, coef + g * 6 * C + 4 * C, coef + g * 6 * C,
                       coef + g * 6 * C + C, coef + g * 6 * C + 5 * C, stream)


cdef void cols_unit_bwd_merge(const double *part, Py_ssize_t g, Py_ssize_t K, Py_ssize_t C,
                              double *psum) noexcept nogil:
    cdef Py_ssize_t k, c
    cdef const double *q
    for c in range(2 * C):
        psum[c] = 0
    for k in range(K):
        q = part + (g * K + k) * 2 * C
        for c in range(2 * C):
            psum[c] += q[c]


cdef void cols_unit_bwd_fused(const floating *dy, const floating *x, floating *dx,
                              Py_ssize_t g, Py_ssize_t R, Py_ssize_t C, Py_ssize_t cg,
                              Py_ssize_t rb, Py_ssize_t chr_, Py_ssize_t K, double *sd,
                              const floating *w, const double *rstd, double *psum,
                              floating *coef, int stream, bint frozen) noexcept nogil:
    cdef Py_ssize_t k, c
    for c in range(2 * C):
        psum[c] = 0
    for k in range(K):
        cols_chunk_bwd_sums(dy, x, R, C, rb, chr_, g, k, coef, coef + C, sd, sd + C)
        for c in range(2 * C):
            psum[c] += sd[c]
    cols_unit_bwd_coef(g, R, C, cg, psum, w, rstd, coef, frozen)
    # last chunk first: it was read last and may still be in L2
    cdef Py_ssize_t off
    for k in range(K - 1, -1, -1):
        off = (g * R + k * chr_) * C
        rows_bwd_apply(dy + off, x + off, dx + off, min(chr_, R - k * chr_), C,
                       coef + 2 * C if cg > 1 else NULL,
                       coef + 3 * C, coef + 4 * C, coef, coef + C, coef + 5 * C, stream)


# ---- the benchmark floor -----------------------------------------------------------------------

from libc.string cimport memcpy


def parallel_copy(const floating[::1] src, floating[::1] dst, int n_threads, bint stream=False):
    """dst[:] = src[:] over equal contiguous ranges, one per thread: the bytes every op must
    move at least, as fast as this machine moves them. Each range is a memcpy, or with stream
    (the benchmarks pass the ops' own rule, _dispatch.stream) a four-page streaming copy
    (fn_copy_stream): at those sizes glibc's memcpy still uses ordinary stores, which first
    read each line of dst, and is as fast only while both arrays stay in the last-level
    cache."""
    cdef Py_ssize_t n = src.shape[0], nt = max(1, n_threads), i, lo, hi
    cdef Py_ssize_t words = sizeof(floating) // sizeof(float)
    if n == 0:
        return
    if dst.shape[0] != n:
        raise ValueError(f"dst must have {n} elements, got {dst.shape[0]}")
    with nogil:
        for i in prange(nt, schedule="static", num_threads=n_threads):
            lo = n * i // nt
            hi = n * (i + 1) // nt
            if hi > lo and stream:
                fn_copy_stream(<const float *>&src[lo], <float *>&dst[lo], (hi - lo) * words)
            elif hi > lo:
                memcpy(&dst[lo], &src[lo], (hi - lo) * sizeof(floating))


# ---- statistics only (mergeable moments) -------------------------------------------------------

cdef void planes_unit_store(const double *part, Py_ssize_t u, Py_ssize_t C, Py_ssize_t K,
                            Py_ssize_t nb, Py_ssize_t cb, double *mean_out,
                            double *m2_out) noexcept nogil:
    cdef double um[3]  # per call, so private to the thread
    planes_unit_moments(part, u, C, K, nb, cb, um)
    mean_out[u] = um[1]
    m2_out[u] = um[2]


def planes_moments(const floating[::1] x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t nb,
                   Py_ssize_t cb, double[::1] mean_out, double[::1] m2_out, int n_threads):
    """Mean and M2 (sum of squared deviations) per unit of x (N, C, S); units as in
    planes_forward, with the same chunks and merge order (count per unit: nb * cb * S).

    mean_out, m2_out : (U,)   OUT, float64
    """
    cdef Py_ssize_t ncb = C // cb
    cdef Py_ssize_t U = (N // nb) * ncb, K = nchunks(S, FN_CHUNK)
    cdef Py_ssize_t items = N * C * K
    cdef Py_ssize_t i, u
    cdef double[:, ::1] part
    if U == 0:
        return
    if S == 0:
        mean_out[:] = np.nan
        m2_out[:] = np.nan
        return
    part = np.empty((items, 3), dtype=np.float64)
    with nogil:
        for i in prange(items, schedule="static", num_threads=n_threads):
            plane_chunk_moments(&x[0], S, i // K, i % K, <const floating *>NULL, &part[i, 0])
        for u in prange(U, schedule="static", num_threads=n_threads):
            planes_unit_store(&part[0, 0], u, C, K, nb, cb, &mean_out[0], &m2_out[0])


cdef void cols_unit_store(Py_ssize_t g, Py_ssize_t R, Py_ssize_t C, Py_ssize_t cg,
                          const double *m, const double *m2, double *mean_out,
                          double *m2_out) noexcept nogil:
    cdef Py_ssize_t G = C // cg, j
    for j in range(G):
        fn_col_group_moments(<double>R, cg, m + j * cg, m2 + j * cg, &mean_out[g * G + j],
                             &m2_out[g * G + j])


def cols_moments(const floating[::1] x, Py_ssize_t G0, Py_ssize_t R, Py_ssize_t C,
                 Py_ssize_t cg, double[::1] mean_out, double[::1] m2_out, int n_threads):
    """Mean and M2 per (g0, group of cg columns) of channels-last x (G0, R, C), with
    cols_forward's chunks and merge order (count per unit: R * cg).

    mean_out, m2_out : (G0 * C/cg,)   OUT, float64
    """
    cdef Py_ssize_t rb, chr_, G = C // cg if cg > 0 else 0
    cdef Py_ssize_t K = cols_cut(G0, R, C, sizeof(floating), &rb, &chr_), items = G0 * K
    cdef Py_ssize_t nt = max(1, n_threads)
    cdef Py_ssize_t g
    dt = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] tsc = thread_rows(nt, 9 * max(C, 1), dt)
    cdef double[:, ::1] tsd = thread_rows(nt, 6 * max(C, 1), np.float64)
    cdef double[:, ::1] cm = np.empty((max(G0, 1), 2 * max(C, 1)), dtype=np.float64)
    cdef double[:, ::1] part
    if G0 == 0 or C == 0:
        return
    if R == 0:
        mean_out[:] = np.nan
        m2_out[:] = np.nan
        return
    part = np.empty((items, 2 * C), dtype=np.float64)
    with nogil:
        cols_partials(&x[0], R, C, rb, chr_, K, items, &part[0, 0], &tsc[0, 0], &tsd[0, 0],
                      n_threads)
        for g in prange(G0, schedule="static", num_threads=n_threads):
            cols_unit_columns(&part[0, 0], g, R, C, chr_, K, &cm[g, 0], &cm[g, C])
            cols_unit_store(g, R, C, cg, &cm[g, 0], &cm[g, C], &mean_out[0], &m2_out[0])


def inference_coefficients(const double[::1] mean, const double[::1] var, const double[::1] w,
                           double eps, const floating[::1] b):
    """(mh, ml, a) in b's dtype for y = ((x - mh) - ml) * a + b from given statistics:
    a = w / sqrt(var + eps), mh + ml = mean (split for float32 exactness)."""
    cdef Py_ssize_t C = mean.shape[0], c
    dt = np.float32 if floating is float else np.float64
    mh_arr = np.empty(C, dtype=dt)
    ml_arr = np.empty(C, dtype=dt)
    a_arr = np.empty(C, dtype=dt)
    cdef floating[::1] mh = mh_arr, ml = ml_arr, a = a_arr
    for c in range(C):
        split_mean(mean[c], &mh[c], &ml[c])
        a[c] = <floating>(w[c] / sqrt(var[c] + eps))
    return mh_arr, ml_arr, a_arr


# The fast paths call the fused backward kernels' float32 or float64 version directly: a call of
# the fused function matches its arguments against every signature first (about 1 us of the
# 4-5 us a small rows_backward call costs here).
cdef object _ROWS_BWD = {cnp.NPY_FLOAT32: rows_backward.__signatures__["float"],
                         cnp.NPY_FLOAT64: rows_backward.__signatures__["double"]}
cdef object _COLS_BWD = {cnp.NPY_FLOAT32: cols_backward.__signatures__["float"],
                         cnp.NPY_FLOAT64: cols_backward.__signatures__["double"]}
cdef object _PLANES_BWD = {cnp.NPY_FLOAT32: planes_backward.__signatures__["float"],
                           cnp.NPY_FLOAT64: planes_backward.__signatures__["double"]}


# ---- the small-tensor fast path ----------------------------------------------------------------
#
# For edge inference the Python layer's validation costs more than the kernel. fast_forward
# recognizes the plain case with a handful of C-level checks (an ndarray of float32/float64 in
# C order, parameters None or 1-D arrays of its dtype, a finite eps > 0) and runs the same
# fused kernels as the full path; for anything else it returns None and the full path
# validates, reports errors and handles the general case. Results are identical either way.

from libc.stdlib cimport malloc, free
from libc.math cimport isfinite

cdef dict _CONSTS = {}


cdef object _const(Py_ssize_t n, int typenum, double fill):
    """A cached read-only array of n copies of fill (weight/bias defaults)."""
    key = (n, typenum, fill)
    a = _CONSTS.get(key)
    if a is None:
        if len(_CONSTS) > 64:
            _CONSTS.clear()
        a = np.full(n, fill, dtype=np.float32 if typenum == cnp.NPY_FLOAT32 else np.float64)
        a.setflags(write=False)
        _CONSTS[key] = a
    return a


cdef inline bint _vec(object a, Py_ssize_t n, int typenum):
    return (type(a) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_NDIM(<cnp.ndarray>a) == 1 and cnp.PyArray_DIM(<cnp.ndarray>a, 0) == n
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a))


cdef inline double _at(object a, Py_ssize_t i):
    if cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32:
        return (<float *>cnp.PyArray_DATA(<cnp.ndarray>a))[i]
    return (<double *>cnp.PyArray_DATA(<cnp.ndarray>a))[i]


cdef inline void plane_item_apply(const floating *x, floating *y, Py_ssize_t i, Py_ssize_t K,
                                  Py_ssize_t C, Py_ssize_t S, const floating *sc,
                                  const floating *b, int act, int stream) noexcept nogil:
    """Item i of the inference apply over planes: chunk i % K of plane i // K, with the
    coefficients sc (mh, ml, a: C each) of its channel."""
    cdef Py_ssize_t p = i // K, c = (i // K) % C, off = (i % K) * FN_CHUNK
    seg_apply_cold(x + p * S + off, y + p * S + off, min(<Py_ssize_t>FN_CHUNK, S - off), sc[c],
                   sc[C + c], sc[2 * C + c], b[c], act, stream)


cdef int _fast_run(const floating *x, floating *y, int op, Py_ssize_t N, Py_ssize_t C,
                   Py_ssize_t S, Py_ssize_t cb, bint cols, bint ew, const floating *w,
                   const floating *b, double eps, int act, int nt, object rmean,
                   object rvar, object weight, int stream, double *mean_out=NULL,
                   double *rstd_out=NULL) except -1:
    """The kernels for fast_forward; mean_out/rstd_out receive the statistics when given."""
    cdef Py_ssize_t U, i, c, K_, items
    cdef double *st = NULL
    cdef floating *sc = NULL
    try:
        if op == 0:  # inference with running statistics: coefficients, then one apply pass
            sc = <floating *>malloc(3 * C * sizeof(floating))
            if sc == NULL:
                raise MemoryError()
            for c in range(C):
                split_mean(_at(rmean, c), &sc[c], &sc[C + c])
                sc[2 * C + c] = <floating>((1.0 if weight is None else _at(weight, c))
                                           / sqrt(_at(rvar, c) + eps))
            with nogil:
                if cols:
                    rows_apply(x, y, N * S, C, sc, sc + C, sc + 2 * C, b, act, stream)
                else:
                    K_ = nchunks(S, FN_CHUNK)
                    items = N * C * K_
                    if nt == 1:  # no parallel region (SERIAL_NOTE)
                        for i in range(items):
                            plane_item_apply(x, y, i, K_, C, S, sc, b, act, stream)
                        if stream:
                            fn_sfence()
                    else:
                        for i in prange(items, schedule="static", num_threads=nt):
                            plane_item_apply(x, y, i, K_, C, S, sc, b, act, stream)
            return 0
        if cols:  # instance / group (and batch: N = 1) norm channels-last: cols_forward
            if mean_out == NULL:
                U = N * (C // cb)
                st = <double *>malloc(2 * U * sizeof(double))
                if st == NULL:
                    raise MemoryError()
                mean_out = st
                rstd_out = st + U
            return cols_forward_run(x, y, N, S, C, cb, w, b, eps, mean_out, rstd_out, act, nt,
                                    use_fused(N, nt), stream)
        U = C if op == 5 else N * (C // cb)
        if mean_out == NULL:
            st = <double *>malloc(2 * U * sizeof(double))
            if st == NULL:
                raise MemoryError()
            mean_out = st
            rstd_out = st + U
        with nogil:
            planes_fused_run(x, y, N, C, S, N if op == 5 else 1, cb, w, b, ew, op == 4, eps,
                             mean_out, rstd_out, act, NULL, NULL, nt, stream)
        return 0
    finally:
        free(st)
        free(sc)


cdef inline bint _disjoint(object a, cnp.ndarray o):
    """a (None or a C-contiguous ndarray) and o share no byte."""
    cdef char *p
    cdef char *q
    if a is None:
        return True
    p = <char *>cnp.PyArray_DATA(<cnp.ndarray>a)
    q = <char *>cnp.PyArray_DATA(o)
    return (p + cnp.PyArray_NBYTES(<cnp.ndarray>a) <= q) or (q + cnp.PyArray_NBYTES(o) <= p)


cdef inline bint _plain(object a, int typenum):
    """a is an aligned C-contiguous ndarray of this dtype."""
    return (type(a) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == typenum
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>a)
            and cnp.PyArray_ISALIGNED(<cnp.ndarray>a))


cdef int _plain_pair(object dy, object x):
    """The dtype number of x when x and dy are plain float32/float64 arrays of one dtype and
    one non-empty shape (the backward fast paths' inputs), else -1."""
    cdef int typenum
    if type(x) is not np.ndarray:
        return -1
    typenum = cnp.PyArray_TYPE(<cnp.ndarray>x)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        return -1
    if not (_plain(x, typenum) and _plain(dy, typenum)):
        return -1
    if (cnp.PyArray_SIZE(<cnp.ndarray>x) == 0
            or not cnp.PyArray_SAMESHAPE(<cnp.ndarray>x, <cnp.ndarray>dy)):
        return -1
    return typenum


cdef object _fast_out(object out, cnp.ndarray xa, int typenum, tuple inputs, bint may_be_x):
    """The output array of a fast path: a new one like x, or out when it is a plain writeable
    array of x's dtype and shape sharing no byte with any input (or, may_be_x, x itself);
    None when out needs the full path."""
    cdef cnp.ndarray o
    if out is None:
        if cnp.PyArray_NBYTES(xa) >= CACHED_BYTES:
            return _buf_empty((<object>xa).shape, (<object>xa).dtype)
        return np.empty_like(xa)
    if not _plain(out, typenum):
        return None
    o = <cnp.ndarray>out
    if not cnp.PyArray_ISWRITEABLE(o) or not cnp.PyArray_SAMESHAPE(o, xa):
        return None
    for a in inputs:
        if a is xa and may_be_x and cnp.PyArray_DATA(o) == cnp.PyArray_DATA(xa):
            continue
        if not _disjoint(a, o):
            return None
    return o


cdef bint _stats_ok(tuple stats, tuple shape):
    """The saved statistics are plain float64 arrays of exactly this shape (the full path's
    contract; anything else goes there to be validated)."""
    for a in stats:
        if not _plain(a, cnp.NPY_FLOAT64) or (<object>a).shape != shape:
            return False
    return True


cdef object _fast_weight(object weight, Py_ssize_t n, int typenum):
    """weight as the kernels take it (ones for None), or None when it needs the full path."""
    if weight is None:
        return _const(n, typenum, 1.0)
    return weight if _vec(weight, n, typenum) else None


# A forward moves two streams (x, y), a backward three (dy, x, dx): the backward's working set
# overflows the last-level cache at two thirds of the output size at which the forward's does,
# and from there on a dx written with ordinary stores is read from memory first (its lines
# are no longer in the cache) and does not stay there for the next reader either, so dx
# streams from two thirds of the forward's threshold (10.7 MiB of the default 16). Measured on
# an AMD EPYC (Zen 4, 32 MiB L3), backward / copy at 12.5 MiB, threshold 16 MiB vs 8 MiB, two
# processes each (cell script, 6 rounds), one thread: group norm NCHW (32, 2048, 7, 7)
# float32 4.94 / 5.04 -> 3.74 / 3.81 (PyTorch / fastnorm 0.79-0.87 -> 1.23), (16, 64, 56, 56)
# 3.61 / 3.68 -> 2.78 / 2.87, batch norm 4.16 / 4.49 -> 2.63 / 2.74, instance norm 4.27 /
# 4.95 -> 2.27 / 2.21, layer rows (3072, 1024) 5.30 / 5.25 -> 2.88 / 2.71, batch NHWC 3.32 /
# 3.34 -> 3.05 / 3.08, float64 batch (8, 64, 56, 56) 3.89 / 3.94 -> 3.12 / 2.88; two threads:
# group (32, 2048, 7, 7) 0.73 of the time, batch 0.69, instance 0.62, rows 0.59, batch NHWC
# 0.95-1.04; in one process, the two thresholds alternating (new / old time, 1T, 2T): group
# (32, 2048, 7, 7) 0.71, 0.81, batch 0.49, 0.63, instance 0.48, 0.74, rows 0.34, 0.57, batch
# float64 0.63, 0.94, batch NHWC 0.95, 0.99, group NHWC 0.72, 0.94; layer norm over (C, H, W)
# (long rows, whose dx pass reads x and dy back from L2 / L3), (14 / 16, 64, 56, 56) float32
# and (8, 64, 56, 56) float64: 0.78-0.94, 0.76-0.93. The forwards at the same size keep the
# threshold: streaming y at two threads took batch norm channels-last 1.31x as long, and
# x and y (25 MiB) fit the L3 for the next layer, which reads y.
cpdef Py_ssize_t bwd_stream_bytes(Py_ssize_t stream_bytes) noexcept:
    """The streaming threshold of a backward's dx, from the forward's (stream_bytes, 0: never):
    two thirds of it, rounded up."""
    if stream_bytes <= 0:
        return stream_bytes
    return (2 * stream_bytes + 2) // 3


cpdef int stream_flag(Py_ssize_t nbytes, object out, object o, Py_ssize_t stream_bytes,
                      Py_ssize_t fresh_bytes):
    """Whether a kernel writing the output o (nbytes) uses non-temporal stores: from
    stream_bytes on (0: never), except into an output allocated here (out None) of fresh_bytes
    or more whose pages are still new from the OS. The one rule: _dispatch.stream calls it."""
    return (stream_bytes > 0 and nbytes >= stream_bytes
            and (out is not None or fresh_bytes <= 0 or nbytes < fresh_bytes
                 or not _buf_is_fresh(o)))


def fast_rows_backward(object dy, object x, object mean, object rstd, object weight, bint rms,
                       int max_threads, Py_ssize_t grain, object out=None,
                       Py_ssize_t stream_bytes=0, Py_ssize_t fresh_bytes=0):
    """(dx, dweight, dbias) of layer norm (or RMS norm, mean None) over the last axis for the
    plain case, or None (then the full path validates and runs). Same kernel, same bits."""
    cdef cnp.ndarray xa, da, dwa, dba, ma
    cdef int typenum = _plain_pair(dy, x), nd, nt
    cdef Py_ssize_t M, D, nbytes
    if typenum < 0:
        return None
    xa = <cnp.ndarray>x
    da = <cnp.ndarray>dy
    nd = cnp.PyArray_NDIM(xa)
    if nd < 1:
        return None
    D = cnp.PyArray_DIM(xa, nd - 1)
    M = cnp.PyArray_SIZE(xa) // D
    if not _stats_ok((rstd,) if rms else (mean, rstd), (<object>x).shape[:-1]):
        return None
    weight = _fast_weight(weight, D, typenum)
    if weight is None:
        return None
    dxa = _fast_out(out, xa, typenum, (x, dy, mean, rstd, weight), False)
    if dxa is None:
        return None
    nbytes = cnp.PyArray_NBYTES(xa)
    nt = <int>max(1, min(max_threads, nbytes // grain))
    dt = np.float32 if typenum == cnp.NPY_FLOAT32 else np.float64
    dwa = <cnp.ndarray>np.empty(D, dtype=dt)
    dba = <cnp.ndarray>np.empty(D, dtype=dt)
    ma = <cnp.ndarray>(np.zeros(M) if rms else mean)
    _ROWS_BWD[typenum](da.reshape(-1), xa.reshape(-1), dxa.reshape(-1), M, D, weight,
                       ma.reshape(-1), (<cnp.ndarray>rstd).reshape(-1), dwa, dba, nt, rms, None,
                       stream_flag(nbytes, out, dxa, bwd_stream_bytes(stream_bytes),
                                   fresh_bytes))
    return dxa, dwa, dba


def fast_channel_backward(int op, object dy, object x, object mean, object rstd,
                          Py_ssize_t groups, object weight, object layout, bint frozen,
                          int max_threads, Py_ssize_t grain, object out=None,
                          Py_ssize_t stream_bytes=0, Py_ssize_t fresh_bytes=0):
    """(dx, dweight, dbias) of batch (op 0), instance (1) or group (2, groups) norm for the plain
    case, or None (then the full path validates and runs). The full path's units, schedule
    and kernels, so the same bits."""
    cdef cnp.ndarray xa, da, dwa, dba, ma, ra
    cdef int typenum = _plain_pair(dy, x), nd, nt, stream
    cdef Py_ssize_t N, C, S, nbytes, nb = 1, cb = 1, G0, R, cg = 1, U
    cdef bint cols
    if typenum < 0:
        return None
    xa = <cnp.ndarray>x
    da = <cnp.ndarray>dy
    nd = cnp.PyArray_NDIM(xa)
    if nd < 2:
        return None
    N = cnp.PyArray_DIM(xa, 0)
    if layout == "NCHW":
        C = cnp.PyArray_DIM(xa, 1)
        cols = False
    elif layout == "NHWC":
        C = cnp.PyArray_DIM(xa, nd - 1)
        cols = True
    else:
        return None
    S = cnp.PyArray_SIZE(xa) // (N * C)
    if S == 1:
        return None  # the full path's (N, C) handling
    if op == 2:
        if groups < 1 or C % groups != 0:
            return None
        cb = C // groups
        cg = cb
        sshape = (N, groups)
    elif op == 1:
        sshape = (N, C)
    else:
        nb = N
        sshape = (C,)
    if not _stats_ok((mean, rstd), sshape):
        return None
    weight = _fast_weight(weight, C, typenum)
    if weight is None:
        return None
    dxa = _fast_out(out, xa, typenum, (x, dy, mean, rstd, weight), False)
    if dxa is None:
        return None
    nbytes = cnp.PyArray_NBYTES(xa)
    nt = <int>max(1, min(max_threads, nbytes // grain))
    stream = stream_flag(nbytes, out, dxa, bwd_stream_bytes(stream_bytes), fresh_bytes)
    dwa = <cnp.ndarray>np.zeros(C, dtype=np.float64)
    dba = <cnp.ndarray>np.zeros(C, dtype=np.float64)
    ma = (<cnp.ndarray>mean).reshape(-1)
    ra = (<cnp.ndarray>rstd).reshape(-1)
    if cols:
        if op == 0:
            G0 = 1
            R = N * S
        else:
            G0 = N
            R = S
        _COLS_BWD[typenum](da.reshape(-1), xa.reshape(-1), dxa.reshape(-1), G0, R, C, cg,
                           weight, ma, ra, dwa, dba, nt, use_fused(G0, nt), stream, frozen)
    else:
        U = (N // nb) * (C // cb)
        _PLANES_BWD[typenum](da.reshape(-1), xa.reshape(-1), dxa.reshape(-1), N, C, S, nb,
                             cb, weight, ma, ra, dwa, dba, nt, use_fused(U, nt), stream,
                             frozen)
    dt = np.float32 if typenum == cnp.NPY_FLOAT32 else np.float64
    return dxa, dwa.astype(dt), dba.astype(dt)


def fast_forward(int op, object x, Py_ssize_t groups, object weight, object bias,
                 object rmean, object rvar, object eps, object layout, int act,
                 int max_threads, Py_ssize_t grain, object out=None,
                 Py_ssize_t stream_bytes=0, Py_ssize_t fresh_bytes=0, bint stats=False):
    """y for the plain case, or None. Streams y from stream_bytes, except into an output it
    allocates itself of fresh_bytes or more (see _dispatch.FRESH_BYTES).

    op: 0 batch norm with running statistics, 1 instance norm, 2 group norm (groups), 3 layer
    norm over the last axis, 4 RMS norm over the last axis, 5 batch norm training (channels
    first only). stats=True (ops 1-5, the training forwards): returns (y, mean, rstd) with
    float64 statistics (U,) per unit, the full path's values.
    """
    cdef cnp.ndarray xa, ya
    cdef int typenum, nd, nt
    cdef Py_ssize_t N, C, S, cb = 1, U, i, nbytes
    cdef bint cols = False, ew = False
    cdef int stream
    cdef double e
    cdef bint rows = op == 3 or op == 4
    cdef cnp.ndarray mean_a = None, rstd_a = None
    if type(x) is not np.ndarray or type(eps) is not float or (stats and op == 0):
        return None
    xa = <cnp.ndarray>x
    typenum = cnp.PyArray_TYPE(xa)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        return None
    if not (cnp.PyArray_IS_C_CONTIGUOUS(xa) and cnp.PyArray_ISALIGNED(xa)):
        return None
    e = <double>eps
    if not (e > 0 and isfinite(e)):
        return None
    nd = cnp.PyArray_NDIM(xa)
    if nd < (1 if rows else 2) or cnp.PyArray_SIZE(xa) == 0:
        return None
    nbytes = cnp.PyArray_NBYTES(xa)
    nt = <int>max(1, min(max_threads, nbytes // grain))
    if rows:
        C = 1
        S = cnp.PyArray_DIM(xa, nd - 1)
        N = cnp.PyArray_SIZE(xa) // S
        ew = weight is not None or bias is not None
        if ew:
            if weight is None:
                weight = _const(S, typenum, 1.0)
            if bias is None:
                bias = _const(S, typenum, 0.0)
            if not (_vec(weight, S, typenum) and _vec(bias, S, typenum)):
                return None
        else:
            weight = _const(1, typenum, 1.0)
            bias = _const(1, typenum, 0.0)
    else:
        N = cnp.PyArray_DIM(xa, 0)
        if layout == "NCHW":
            C = cnp.PyArray_DIM(xa, 1)
            S = cnp.PyArray_SIZE(xa) // (N * C)
        elif layout == "NHWC":
            C = cnp.PyArray_DIM(xa, nd - 1)
            S = cnp.PyArray_SIZE(xa) // (N * C)
            cols = True
        else:
            return None
        if S == 1:
            cols = True
        if op == 2:
            if groups < 1 or C % groups != 0:
                return None
            cb = C // groups
        if op == 0:
            if not (_vec(rmean, C, cnp.NPY_FLOAT64) or _vec(rmean, C, cnp.NPY_FLOAT32)):
                return None
            if not (_vec(rvar, C, cnp.NPY_FLOAT64) or _vec(rvar, C, cnp.NPY_FLOAT32)):
                return None
            if cols and nt > 1:
                return None  # the full path's parallel apply
        if weight is None:
            weight = _const(C, typenum, 1.0)
        if bias is None:
            bias = _const(C, typenum, 0.0)
        if not (_vec(weight, C, typenum) and _vec(bias, C, typenum)):
            return None
        if op == 5:
            U = C
            if cols:
                nt = split_threads(nbytes, nt)
                if N * S == 1:
                    return None  # the full path's error
                S = N * S  # one unit of N*S rows: the full path's fused channels-last run
                N = 1
            elif not use_fused(U, nt):
                return None
        elif op != 0:
            U = N * (C // cb)
            if cols and not use_fused(N, nt):
                nt = split_threads(nbytes, nt)
            if cols and S == 1:
                return None  # (N, C): the full path's columns plan
            if not cols and not use_fused(U, nt):
                return None
    if rows:
        U = N
        if not use_fused(N, nt):
            return None
    # out: x's dtype and shape, C order, writeable; x itself or disjoint from every input
    ya_o = _fast_out(out, xa, typenum, (xa, weight, bias, rmean, rvar), True)
    if ya_o is None:
        return None
    ya = <cnp.ndarray>ya_o
    stream = stream_flag(nbytes, out, ya, stream_bytes, fresh_bytes)
    cdef double *mp = NULL
    cdef double *rp = NULL
    if stats:
        mean_a = <cnp.ndarray>np.empty(U, dtype=np.float64)
        rstd_a = <cnp.ndarray>np.empty(U, dtype=np.float64)
        mp = <double *>cnp.PyArray_DATA(mean_a)
        rp = <double *>cnp.PyArray_DATA(rstd_a)
    if typenum == cnp.NPY_FLOAT32:
        _fast_run(<const float *>cnp.PyArray_DATA(xa), <float *>cnp.PyArray_DATA(ya), op, N, C,
                  S, cb, cols, ew, <const float *>cnp.PyArray_DATA(<cnp.ndarray>weight),
                  <const float *>cnp.PyArray_DATA(<cnp.ndarray>bias), e, act, nt, rmean, rvar,
                  weight, stream, mp, rp)
    else:
        _fast_run(<const double *>cnp.PyArray_DATA(xa), <double *>cnp.PyArray_DATA(ya), op, N,
                  C, S, cb, cols, ew, <const double *>cnp.PyArray_DATA(<cnp.ndarray>weight),
                  <const double *>cnp.PyArray_DATA(<cnp.ndarray>bias), e, act, nt, rmean, rvar,
                  weight, stream, mp, rp)
    if stats:
        return ya, mean_a, rstd_a
    return ya


# ---- column min / max ------------------------------------------------------------------------

def cols_minmax(const floating[::1] x, Py_ssize_t R, Py_ssize_t C, double[::1] min_out,
                double[::1] max_out, int n_threads):
    """Per-column min and max of x (R, C) in one pass; returns False if x holds a NaN or Inf.

    Row chunks (fixed by the shape) are reduced in parallel, then merged in order; min and max
    are exact, so the result is the same for any thread count.
    """
    cdef Py_ssize_t rb, chr_
    cdef Py_ssize_t K = cols_cut(1, R, C, sizeof(floating), &rb, &chr_), k, c, r0
    dt = np.float32 if floating is float else np.float64
    cdef floating[:, ::1] part = np.empty((max(K, 1), 3 * max(C, 1)), dtype=dt)
    cdef bint finite = True
    cdef double z = 0
    if R == 0 or C == 0:
        return True
    with nogil:
        for k in prange(K, schedule="static", num_threads=n_threads):
            r0 = k * chr_
            cols_minmax_chunk(&x[r0 * C], min(chr_, R - r0), C, &part[k, 0])
    for c in range(C):
        min_out[c] = part[0, c]
        max_out[c] = part[0, C + c]
        for k in range(K):
            if part[k, c] < min_out[c]:
                min_out[c] = part[k, c]
            if part[k, C + c] > max_out[c]:
                max_out[c] = part[k, C + c]
            z += part[k, 2 * C + c]
    return z == 0


cdef void cols_minmax_chunk(const floating *x, Py_ssize_t rows, Py_ssize_t C,
                            floating *out) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        out[c] = x[c]
        out[C + c] = x[c]
        out[2 * C + c] = 0
    if floating is float:
        fn_rows_minmax_f32(x, rows, C, out, out + C, out + 2 * C)
    else:
        fn_rows_minmax_f64(x, rows, C, out, out + C, out + 2 * C)
