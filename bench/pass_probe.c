/* fastnorm's own passes against the least arithmetic the same passes need, in one process:
   where a backward stays above its target ratio, this tells the passes' cost from the
   machine's. floor_probe.c measures the floors of the pass shapes with code of its own; this
   probe runs fastnorm's C kernels (_core.h) on the shapes of the report and, in the same
   rounds, minimal passes of the same shape, so that a noisy machine moves both alike.

     gcc -O3 -ffp-contract=off -Wno-psabi -Ifastnorm/_kernels bench/pass_probe.c -o pass_probe
     ./pass_probe [rounds] [scale]        e.g. ./pass_probe 15 1

   The minimal passes are compiled as fastnorm's helpers are (FN_HOT: the loader picks the
   AVX-512, AVX2 or baseline clone) and keep fastnorm's 32-byte vectors. One thread. Every
   figure is a time / a streaming copy of the same array (fn_copy_stream, the report's floor),
   the copy taken right before it in the same round; the median over the rounds (odd, default
   15). scale divides the number of units (1: the report's (32, 64, 56, 56); CI runs a small
   one). Cases, each as "sums + dx = backward" (sums: the
   first pass, dx: the second):
     cl unit   group norm channels-last: 32 units (samples) of 3136 rows of 64 channels, as
               cols_unit_bwd_fused runs them: per unit fn_rows_bwd_sums over its two chunks of
               1568 rows (cols_chunks(32, 3136, 64, itemsize)), then fn_rows_bwd_apply, last
               chunk first, streamed (P = w per column: statistics over groups of two
               channels);
     cl whole  batch norm channels-last: one unit of 100352 rows in chunks of 2048 rows
               (cols_chunks(1, 100352, 64, itemsize)): all the sums, then all of dx, last chunk
               first (P NULL: statistics per channel);
     least     the same two passes with the least arithmetic: sums of dy and dy * x, four
               quarter-chunk streams as fastnorm's (FN_COL_STREAMS), one accumulator per
               column vector; dx = dy * a + x * b streamed.
   And the per-plane cost of small units in L2 (no memory traffic: the arithmetic alone):
     small     instance norm backward over 1024 float32 planes of 7 x 7, fastnorm's
               fn_units_group_bwd eight planes a call as planes_backward runs it, against
               the least for a plane (its two sums, one horizontal sum each, and dx) in ns per
               plane. */
#include "_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define C_CH 64
#define UNIT_ROWS 3136
#define UNIT_CHUNK 1568
#define WHOLE_CHUNK 2048
#define REPS 200  /* sweeps of the small planes a round */

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return v[n / 2];
}

static void *alloc_or_die(size_t bytes)
{
    void *p = aligned_alloc(4096, (bytes + 4095) / 4096 * 4096);
    if (!p) {
        fprintf(stderr, "pass_probe: out of memory\n");
        exit(1);
    }
    return p;
}

/* The channels-last cases for one dtype (T, suffix SF of fastnorm's helpers). */
#define CL_CASES(T, SF)                                                                       \
    typedef T vec_##SF##_t __attribute__((vector_size(32)));                                  \
    typedef T uvec_##SF##_t __attribute__((vector_size(32), aligned(sizeof(T))));             \
    enum { VL_##SF = 32 / sizeof(T) };                                                        \
    /* the least first pass over rows [r0, r0 + m): sums of dy and dy * x per column */       \
    FN_HOT static void least_sums_##SF(const T *dy, const T *x, long m, double *sd,           \
                                       double *sx)                                            \
    {                                                                                         \
        vec_##SF##_t a[C_CH / VL_##SF] = {{0}}, b[C_CH / VL_##SF] = {{0}};                    \
        long q = m / 4, r, s, j;                                                              \
        for (r = 0; r < q; r++)                                                               \
            for (s = 0; s < 4; s++) {                                                         \
                const T *d = dy + (r + s * q) * C_CH, *xx = x + (r + s * q) * C_CH;           \
                for (j = 0; j < C_CH / VL_##SF; j++) {                                        \
                    vec_##SF##_t g = *(const uvec_##SF##_t *)(d + j * VL_##SF);               \
                    a[j] += g;                                                                \
                    b[j] += g * *(const uvec_##SF##_t *)(xx + j * VL_##SF);                   \
                }                                                                             \
            }                                                                                 \
        for (j = 0; j < C_CH; j++) {                                                          \
            sd[j] += a[j / VL_##SF][j % VL_##SF];                                             \
            sx[j] += b[j / VL_##SF][j % VL_##SF];                                             \
        }                                                                                     \
    }                                                                                         \
    /* the least second pass: dx = dy * a + x * b, streamed */                                \
    FN_HOT static void least_dx_##SF(const T *dy, const T *x, T *dx, long n, T a, T b)        \
    {                                                                                         \
        long i;                                                                               \
        for (i = 0; i < n; i += VL_##SF)                                                      \
            fn_vst_##SF(dx + i, *(const uvec_##SF##_t *)(dy + i) * a                          \
                                    + *(const uvec_##SF##_t *)(x + i) * b, 1);                \
    }                                                                                         \
    /* units of R rows in chunks of ch rows: sums of each unit, then its dx (last chunk       \
       first); fastnorm's passes or the least; *ts gets the time of the sums */               \
    static void cl_bwd_##SF(const T *dy, const T *x, T *dx, long units, long R, long ch,      \
                            int least, const T *co, double *ts)                               \
    {                                                                                         \
        double sd[C_CH], sx[C_CH], ps[2 * C_CH], t;                                           \
        long g, k, K = (R + ch - 1) / ch, c;                                                  \
        *ts = 0;                                                                              \
        for (g = 0; g < units; g++) {                                                         \
            t = now();                                                                        \
            for (c = 0; c < 2 * C_CH; c++) ps[c] = 0;                                         \
            for (k = 0; k < K; k++) {                                                         \
                long r0 = k * ch, m = R - r0 < ch ? R - r0 : ch, o = (g * R + r0) * C_CH;     \
                for (c = 0; c < C_CH; c++) sd[c] = sx[c] = 0;                                 \
                if (least)                                                                    \
                    least_sums_##SF(dy + o, x + o, m, sd, sx);                                \
                else                                                                          \
                    fn_rows_bwd_sums_##SF(dy + o, x + o, m, C_CH, fn_col_block_rows(C_CH),    \
                                          co, co + C_CH, sd, sx);                             \
                for (c = 0; c < C_CH; c++) {                                                  \
                    ps[c] += sd[c];                                                           \
                    ps[C_CH + c] += sx[c];                                                    \
                }                                                                             \
            }                                                                                 \
            *ts += now() - t;                                                                 \
            for (k = K - 1; k >= 0; k--) {                                                    \
                long r0 = k * ch, m = R - r0 < ch ? R - r0 : ch, o = (g * R + r0) * C_CH;     \
                if (least)                                                                    \
                    least_dx_##SF(dy + o, x + o, dx + o, m * C_CH, (T)ps[0], (T)ps[C_CH]);    \
                else                                                                          \
                    fn_rows_bwd_apply_##SF(dy + o, x + o, dx + o, m, C_CH,                    \
                                           units > 1 ? co + 2 * C_CH : NULL, co + 3 * C_CH,   \
                                           co + 4 * C_CH, co, co + C_CH, co + 5 * C_CH, 1);   \
            }                                                                                 \
        }                                                                                     \
        fn_sfence();                                                                          \
    }                                                                                         \
    static void cl_case_##SF(const char *name, long units, long R, long ch, int rounds)       \
    {                                                                                         \
        long n = units * R * C_CH, i;                                                         \
        T *x = alloc_or_die(n * sizeof(T) + 64), *dy = alloc_or_die(n * sizeof(T) + 64);      \
        T *dx = alloc_or_die(n * sizeof(T)), co[6 * C_CH];                                    \
        double *r[6], ts, tc, tb;                                                             \
        int k, least;                                                                         \
        /* x and dy 16 bytes into a page, as NumPy's own large arrays; dx at a page start */  \
        x = (T *)((char *)x + 16);                                                            \
        dy = (T *)((char *)dy + 16);                                                          \
        for (i = 0; i < n; i++) {                                                             \
            x[i] = (T)(3 + 0.001 * (i % 1000));                                               \
            dy[i] = (T)(0.5 - 0.0007 * (i % 777));                                            \
            dx[i] = 0;                                                                        \
        }                                                                                     \
        for (i = 0; i < 6 * C_CH; i++) co[i] = (T)(1 + 0.01 * i);                             \
        for (k = 0; k < 6; k++) r[k] = malloc(rounds * sizeof(double));                       \
        for (k = 0; k < rounds; k++)                                                          \
            for (least = 0; least < 2; least++) {                                             \
                tc = now();                                                                   \
                fn_copy_stream((const float *)x, (float *)dx, n * (long)sizeof(T) / 4);       \
                fn_sfence();                                                                  \
                tc = now() - tc;                                                              \
                tb = now();                                                                   \
                cl_bwd_##SF(dy, x, dx, units, R, ch, least, co, &ts);                         \
                tb = now() - tb;                                                              \
                r[3 * least][k] = ts / tc;                                                    \
                r[3 * least + 1][k] = (tb - ts) / tc;                                         \
                r[3 * least + 2][k] = tb / tc;                                                \
            }                                                                                 \
        printf("%-9s %s  fastnorm %.2f + %.2f = %.2f   least %.2f + %.2f = %.2f\n", name,     \
               #SF, median(r[0], rounds), median(r[1], rounds), median(r[2], rounds),         \
               median(r[3], rounds), median(r[4], rounds), median(r[5], rounds));             \
        for (k = 0; k < 6; k++) free(r[k]);                                                   \
        free((char *)x - 16);                                                                 \
        free((char *)dy - 16);                                                                \
        free(dx);                                                                             \
    }

CL_CASES(float, f32)
CL_CASES(double, f64)

/* the least backward of one plane of S float32 values (mean m): its two sums, one
   horizontal sum each, then dx */
FN_HOT static void least_plane(const float *dy, const float *x, float *dx, long S, float m)
{
    typedef float v8 __attribute__((vector_size(32)));
    typedef float u8 __attribute__((vector_size(32), aligned(4)));
    v8 a = {0}, b = {0};
    float sa = 0, sb = 0, ta = 0, tb = 0;
    long i, nv = S - S % 8;
    int j;
    for (i = 0; i < nv; i += 8) {
        v8 g = *(const u8 *)(dy + i);
        a += g;
        b += g * (*(const u8 *)(x + i) - m);
    }
    for (; i < S; i++) {
        ta += dy[i];
        tb += dy[i] * (x[i] - m);
    }
    for (j = 0; j < 8; j++) {
        sa += a[j];
        sb += b[j];
    }
    sa = (sa + ta) / (float)S;
    sb = (sb + tb) / (float)S;
    for (i = 0; i < nv; i += 8)
        *(u8 *)(dx + i) = (*(const u8 *)(dy + i) - sa) + (*(const u8 *)(x + i) - m) * sb;
    for (; i < S; i++) dx[i] = (dy[i] - sa) + (x[i] - m) * sb;
}

static void small_case(long planes, int rounds)
{
    const long S = 49;
    long n = planes * S, i, u;
    float *x = alloc_or_die(n * sizeof(float)), *dy = alloc_or_die(n * sizeof(float));
    float *dx = alloc_or_die(n * sizeof(float)), *w = alloc_or_die(planes * sizeof(float));
    float *mh = alloc_or_die(planes * sizeof(float)), *ml = alloc_or_die(planes * sizeof(float));
    float *cq = alloc_or_die(planes * sizeof(float)), *cb = alloc_or_die(planes * sizeof(float));
    double *rstd = alloc_or_die(planes * sizeof(double));
    double *psum = alloc_or_die(2 * planes * sizeof(double));
    double *r[2];
    double t;
    int k, j;
    for (i = 0; i < n; i++) {
        x[i] = (float)(3 + 0.001 * (i % 1000));
        dy[i] = (float)(0.5 - 0.0007 * (i % 777));
    }
    for (u = 0; u < planes; u++) {
        w[u] = 1;
        mh[u] = 3.5f;
        ml[u] = 0;
        rstd[u] = 3.4;
    }
    for (j = 0; j < 2; j++) r[j] = malloc(rounds * sizeof(double));
    for (k = 0; k < rounds; k++) {
        t = now();
        for (j = 0; j < REPS; j++)
            for (u = 0; u < planes; u += 8)
                fn_units_group_bwd_f32(dy, x, dx, u, u + 8 < planes ? u + 8 : planes, planes, S,
                                       1, w, mh, ml, rstd, psum, cq, cb, 0, 0);
        r[0][k] = (now() - t) / ((double)REPS * planes) * 1e9;
        t = now();
        for (j = 0; j < REPS; j++)
            for (u = 0; u < planes; u++)
                least_plane(dy + u * S, x + u * S, dx + u * S, S, mh[u]);
        r[1][k] = (now() - t) / ((double)REPS * planes) * 1e9;
    }
    printf("small     f32  7 x 7 planes in L2, ns per plane: fastnorm %.1f   least %.1f\n",
           median(r[0], rounds), median(r[1], rounds));
    for (j = 0; j < 2; j++) free(r[j]);
    free(x);
    free(dy);
    free(dx);
    free(w);
    free(mh);
    free(ml);
    free(cq);
    free(cb);
    free(rstd);
    free(psum);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 15;
    long scale = argc > 2 ? atol(argv[2]) : 1;
    if (rounds < 1 || scale < 1 || scale > 32) {
        fprintf(stderr, "usage: pass_probe [rounds >= 1] [scale 1..32]\n");
        return 1;
    }
    rounds |= 1;
    printf("one thread, time / streaming copy, median of %d rounds: sums + dx = backward\n",
           rounds);
    cl_case_f32("cl unit", 32 / scale, UNIT_ROWS, UNIT_CHUNK, rounds);
    cl_case_f64("cl unit", 32 / scale, UNIT_ROWS, UNIT_CHUNK, rounds);
    cl_case_f32("cl whole", 1, 32 / scale * UNIT_ROWS, WHOLE_CHUNK, rounds);
    cl_case_f64("cl whole", 1, 32 / scale * UNIT_ROWS, WHOLE_CHUNK, rounds);
    small_case(1024 / scale, rounds);
    return 0;
}
