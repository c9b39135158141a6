/* The floors under fastnorm's ratios to a copy: the least any kernel with a given data
   dependency can cost on this machine, measured with the least arithmetic that dependency
   allows (float32, streaming stores, static split between OpenMP threads).

     gcc -O3 -march=native -fopenmp bench/floor_probe.c -o floor_probe
     ./floor_probe MiB threads unit_bytes        e.g. ./floor_probe 24 1 819200

   Units are rounded down to a multiple of 256 bytes. Printed as time / copy of the same array
   at the same thread count (the copy: fastnorm's, reading four 4 KiB pages at a time and
   streaming the stores; one read stream per thread copies about 1.2x slower here), best of 15
   rounds:
     fwd unit   per unit of unit_bytes: sum of x, then y = x * a + b (layer, instance, group norm,
                batch norm channels-first: the unit is re-read from cache)
     fwd whole  sum of all of x, then y = x * a + b (batch norm channels-last: x is read twice)
     bwd unit   per unit: sums of dy and dy * x, then dx = dy * a + x * b
     bwd whole  sums over all of dy and x, then dx (batch norm channels-last backward)
     fwd ew     per unit as fwd unit, with an element-wise weight and bias of the unit's size:
                y = x * w * a + b[i] (layer norm over (C, H, W) with its (C, H, W) affine)
     bwd ew     per unit as bwd unit, with the element-wise weight in the sums (w * dy) and in
                dx, and dweight += dy * x, dbias += dy over every unit (per thread)
   Nothing here is fastnorm's code; it is the shape of its passes with nothing else in them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

/* the probe's vector, in GCC's vector extension (unaligned loads): as wide as the machine's
   registers, 64 bytes with AVX-512 and 32 bytes otherwise. A vector wider than the registers
   is not split into registers by GCC but kept on the stack, which would make the probe's
   floors those of its own spills (3.0-4.1 copies instead of 1.8-2.1 for a backward on AVX2). */
#if defined(__AVX512F__)
#define VB 64
#else
#define VB 32
#endif
#define VL (VB / 4)
typedef float vf __attribute__((vector_size(VB)));
typedef float vfu __attribute__((vector_size(VB), aligned(4)));
#define LD(p) (*(const vfu *)(p))

/* a streaming store of one vector at a VB-byte aligned y */
static inline void stv(float *y, const vf *p)
{
    vf v = *p;
#if defined(__AVX512F__)
    _mm512_stream_ps(y, (__m512)v);
#elif defined(__AVX__)
    _mm256_stream_ps(y, (__m256)v);
#elif defined(__SSE2__)
    union { vf v; __m128 q[VB / 16]; } u = {v};
    for (int k = 0; k < VB / 16; k++) _mm_stream_ps(y + 4 * k, u.q[k]);
#else
    memcpy(y, &v, sizeof v);
#endif
}

static void fence(void)
{
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

static float hsum(const vf *a)
{
    float s = 0;
    for (int k = 0; k < VL; k++) s += (*a)[k];
    return s;
}

/* The sums read four runs of x (its quarters) side by side, as fastnorm's channels-last
   statistics do: one read stream keeps too few lines in flight on some cores. n: a multiple
   of 4 vectors. */
static float sum1(const float *x, long n)
{
    vf a = {0}, b = {0}, c = {0}, e = {0};
    long q = n / 4;
    for (long i = 0; i < q; i += VL) {
        a += LD(x + i);
        b += LD(x + i + q);
        c += LD(x + i + 2 * q);
        e += LD(x + i + 3 * q);
    }
    a += b + c + e;
    return hsum(&a);
}

static float sum2(const float *d, const float *x, long n, float *sd)
{
    vf a = {0}, b = {0}, dv;
    long q = n / 4;
    for (long i = 0; i < q; i += VL)
        for (long k = 0; k < 4 * q; k += q) {
            dv = LD(d + i + k);
            a += dv;
            b += dv * LD(x + i + k);
        }
    *sd = hsum(&a);
    return hsum(&b);
}

/* y = x, four pages at a time, streamed (the copy the report divides by) */
static void copy4(const float *x, float *y, long n)
{
    const long P = 1024;
    long i = 0, j;
    for (; i + 4 * P <= n; i += 4 * P)
        for (j = i; j < i + P; j += VL) {
            vf a = LD(x + j), b = LD(x + j + P), c = LD(x + j + 2 * P), d = LD(x + j + 3 * P);
            stv(y + j, &a);
            stv(y + j + P, &b);
            stv(y + j + 2 * P, &c);
            stv(y + j + 3 * P, &d);
        }
    for (; i < n; i += VL) {
        vf a = LD(x + i);
        stv(y + i, &a);
    }
}

/* y = x * a + b, streamed */
static void apply1(const float *x, float *y, long n, float a, float b)
{
    for (long i = 0; i < n; i += VL) {
        vf v = LD(x + i) * a + b;
        stv(y + i, &v);
    }
}

/* y = x * w * a + b[i], streamed */
static void apply1w(const float *x, const float *w, const float *b, float *y, long n, float a)
{
    for (long i = 0; i < n; i += VL) {
        vf v = LD(x + i) * LD(w + i) * a + LD(b + i);
        stv(y + i, &v);
    }
}

/* sums of w * dy and w * dy * x; dw += dy * x, db += dy */
static float sum2w(const float *d, const float *x, const float *w, float *dw, float *db, long n,
                   float *sd)
{
    vf a = {0}, b = {0}, dv, xv, g;
    for (long i = 0; i < n; i += VL) {
        dv = LD(d + i);
        xv = LD(x + i);
        g = dv * LD(w + i);
        a += g;
        b += g * xv;
        *(vfu *)(dw + i) = LD(dw + i) + dv * xv;
        *(vfu *)(db + i) = LD(db + i) + dv;
    }
    *sd = hsum(&a);
    return hsum(&b);
}

/* y = d * w * a + x * b, streamed */
static void apply2w(const float *d, const float *x, const float *w, float *y, long n, float a,
                    float b)
{
    for (long i = 0; i < n; i += VL) {
        vf v = LD(d + i) * LD(w + i) * a + LD(x + i) * b;
        stv(y + i, &v);
    }
}

/* y = d * a + x * b, streamed */
static void apply2(const float *d, const float *x, float *y, long n, float a, float b)
{
    for (long i = 0; i < n; i += VL) {
        vf v = LD(d + i) * a + LD(x + i) * b;
        stv(y + i, &v);
    }
}

int main(int argc, char **argv)
{
    long mib = argc > 1 ? atol(argv[1]) : 24, nt = argc > 2 ? atol(argv[2]) : 1;
    long unit = (argc > 3 ? atol(argv[3]) : 4096) / (long)sizeof(float);
    long n = mib * 1024 * 1024 / (long)sizeof(float);
    double best[7] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
    volatile float sink = 0;
    unit -= unit % 64;
    n -= n % (unit * nt);
    if (unit <= 0 || n <= 0) {
        fprintf(stderr, "usage: floor_probe MiB threads unit_bytes (unit >= 256 bytes)\n");
        return 1;
    }
    float *x = aligned_alloc(64, n * sizeof(float)), *d = aligned_alloc(64, n * sizeof(float));
    float *y = aligned_alloc(64, n * sizeof(float));
    /* the element-wise weight and bias (shared), and dweight, dbias per thread */
    float *w = aligned_alloc(64, unit * sizeof(float)), *b = aligned_alloc(64, unit * sizeof(float));
    float *acc = aligned_alloc(64, 2 * nt * unit * sizeof(float));
    for (long i = 0; i < n; i++) {
        x[i] = (float)(i % 1000) * 1e-3f;
        d[i] = 1.0f;
        y[i] = 0;
    }
    for (long i = 0; i < unit; i++) {
        w[i] = 1.0f + (float)(i % 7) * 1e-3f;
        b[i] = (float)(i % 5) * 1e-3f;
    }
    memset(acc, 0, 2 * nt * unit * sizeof(float));
    omp_set_num_threads((int)nt);
    for (int r = 0; r < 15; r++) {
        for (int c = 0; c < 7; c++) {
            double t = omp_get_wtime();
#pragma omp parallel
            {
                long per = n / nt, lo = omp_get_thread_num() * per, j;
                float s = 0, q = 0;
                if (c == 0) {
                    copy4(x + lo, y + lo, per);
                } else if (c == 1) {
                    for (j = lo; j < lo + per; j += unit)
                        apply1(x + j, y + j, unit, sum1(x + j, unit), 1.0f);
                } else if (c == 2) {
                    s = sum1(x + lo, per);
#pragma omp barrier
                    apply1(x + lo, y + lo, per, s, 1.0f);
                } else if (c == 3) {
                    for (j = lo; j < lo + per; j += unit) {
                        q = sum2(d + j, x + j, unit, &s);
                        apply2(d + j, x + j, y + j, unit, s, q);
                    }
                } else if (c == 4) {
                    q = sum2(d + lo, x + lo, per, &s);
#pragma omp barrier
                    apply2(d + lo, x + lo, y + lo, per, s, q);
                } else if (c == 5) {
                    for (j = lo; j < lo + per; j += unit)
                        apply1w(x + j, w, b, y + j, unit, sum1(x + j, unit));
                } else {
                    float *dw = acc + 2 * omp_get_thread_num() * unit, *db = dw + unit;
                    for (j = lo; j < lo + per; j += unit) {
                        q = sum2w(d + j, x + j, w, dw, db, unit, &s);
                        apply2w(d + j, x + j, w, y + j, unit, s, q);
                    }
                }
                fence();
                sink = sink + s + q;
            }
            t = omp_get_wtime() - t;
            if (t < best[c]) best[c] = t;
        }
    }
    printf("%ld MiB, %ld thread(s), units of %ld bytes: time / copy\n", mib, nt,
           unit * (long)sizeof(float));
    printf("fwd unit %.2f  fwd whole %.2f  bwd unit %.2f  bwd whole %.2f  fwd ew %.2f  "
           "bwd ew %.2f\n", best[1] / best[0], best[2] / best[0], best[3] / best[0],
           best[4] / best[0], best[5] / best[0], best[6] / best[0]);
    sink = sink + acc[0];
    free(x);
    free(d);
    free(y);
    free(w);
    free(b);
    free(acc);
    return 0;
}
