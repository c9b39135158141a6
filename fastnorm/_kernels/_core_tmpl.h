/* Included twice by _core.h with FN_T = float / double and FN_SFX = f32 / f64. */
#define FN_CAT2(a, b) a##_##b
#define FN_CAT(a, b) FN_CAT2(a, b)
#define FN(name) FN_CAT(name, FN_SFX)
#define T FN_T

/* d - ml, d = x - mh: the deviation from a mean carried as mh + ml (fn_split_mean). In
   float64 ml is m - (double)m, always 0 (a non-finite mean gives NaN statistics, and so NaN
   outputs, either way), and d - 0 is d, bit for bit: the float64 loops drop that load and
   subtraction. Backward / copy against the build before, same process, float64 (32, 64, 56,
   56), one thread: channels-last batch / instance / group 2.23 / 1.95 / 2.02 -> 2.00 / 1.70 /
   1.84, channels-first 0.94-1.05; (8, 64, 28, 28) in cache 0.87-0.99 of before.
   The forward's per-plane applies (FN_NORM_CH, FN_NORM_EW) keep the subtraction: without it
   instance norm NCHW float64 forward took 1.24-1.37x as long at one thread (its apply streams
   y while prefetching the next plane; a shorter loop lost that race), against 0.85-0.99
   for the forwards in cache. */
#if FN_IS_F32
#define FN_LO(d, ml) ((d) - (ml))
#else
#define FN_LO(d, ml) ((void)(ml), (d))  /* ml named, then dropped as dead code */
#endif

/* FN_VB-byte GCC vectors (_core.h): accumulators (two per reduction, so the add chains
   overlap) and unaligned loads straight from the data. */
typedef T FN(vec) __attribute__((vector_size(FN_VB)));
typedef T FN(uvec) __attribute__((vector_size(FN_VB), aligned(sizeof(T)), may_alias));
#define FN_VL ((fn_idx)(FN_VB / sizeof(T)))
/* an unaligned vector load */
#define FN_LDV(p) (*(const FN(uvec) *)(p))
/* Rows swept side by side go FN_ROWS_RUN vectors of one, then of the next (see
   fn_rowsn_bwd_apply_ew). */
#ifndef FN_ROWS_RUN
#define FN_ROWS_RUN 16
#endif
/* The forward's pair of rows (fn_seg2_apply_ew) goes FN_PAIR_RUN vectors (1 KiB with 32-byte
   vectors) at a time: with rows a whole number of pages apart and y at x's offset in its page
   (out=np.empty_like(x)), the second row's loads fall on the low 12 address bits of the first
   row's stores one run earlier, and a load that matches a store still in flight there waits
   for it (4 KiB aliasing). Layer norm over (64, 56, 56), forward, new / old, same arrays,
   median of 30 pairs: runs of 32 vectors vs 16, float32 0.88 / 0.82 at one / two threads,
   float64 0.87 / 0.95; 64 vs 32: 1.03 / 1.06 float32, 1.01 / 0.93 float64. */
#ifndef FN_PAIR_RUN
#define FN_PAIR_RUN 32
#endif

/* Sum of the lanes of two accumulators (or one, b == NULL), in float64, as a fixed pairwise
   tree: t[j] = a[j] (+ b[j]), then t[j] += t[j + h] for h = VL/2, ..., 1. Short segments (a
   plane of 14x14, a row of 256) pay for this once per block, so it runs as vector shuffles
   and adds in the tree's own order (the same bits as the scalar tree), not through memory. */
typedef double FN(hd4) __attribute__((vector_size(32)));
typedef double FN(hd2) __attribute__((vector_size(16)));
typedef int64_t FN(hl4) __attribute__((vector_size(32)));
/* The tree's first level as 4 float64 lanes: t[j] = a[j] (+ b[j]), and for float32 also the
   h = 4 step (lanes j and j + 4 of a float32 vector, converted). */
static inline __attribute__((always_inline)) FN(hd4) FN(fn_hsum_t)(const FN(vec) *a,
                                                                const FN(vec) *b)
{
    FN(hd4) t;
#if FN_IS_F32
    typedef float hf4 __attribute__((vector_size(16)));
    FN(vec) va = *a, vb;
    FN(hd4) lo = __builtin_convertvector(
        (hf4)__builtin_shufflevector(va, va, 0, 1, 2, 3), FN(hd4));
    FN(hd4) hi = __builtin_convertvector(
        (hf4)__builtin_shufflevector(va, va, 4, 5, 6, 7), FN(hd4));
    if (b) {
        vb = *b;
        lo += __builtin_convertvector(
            (hf4)__builtin_shufflevector(vb, vb, 0, 1, 2, 3), FN(hd4));
        hi += __builtin_convertvector(
            (hf4)__builtin_shufflevector(vb, vb, 4, 5, 6, 7), FN(hd4));
    }
    t = lo + hi;  /* h = 4 */
#else
    t = *a;
    if (b) t += *b;
#endif
    return t;
}

static inline __attribute__((always_inline)) double FN(fn_hsum)(const FN(vec) *a,
                                                             const FN(vec) *b)
{
    FN(hd4) t = FN(fn_hsum_t)(a, b);
    FN(hd2) s2 = __builtin_shufflevector(t, t, 0, 1) + __builtin_shufflevector(t, t, 2, 3);
    return s2[0] + s2[1];
}

/* fn_hsum's tree for four first levels at once (t[k] from fn_hsum_t): lane k of the result is
   the sum fn_hsum forms from t[k], by the same pairs in the same order (so the same bits),
   in 2 shuffle-and-add steps instead of 4 x 2. */
static inline __attribute__((always_inline)) FN(hd4) FN(fn_hsum4)(const FN(hd4) *t)
{
    FN(hd4) x01 = __builtin_shufflevector(t[0], t[1], 0, 1, 4, 5)
                  + __builtin_shufflevector(t[0], t[1], 2, 3, 6, 7);
    FN(hd4) x23 = __builtin_shufflevector(t[2], t[3], 0, 1, 4, 5)
                  + __builtin_shufflevector(t[2], t[3], 2, 3, 6, 7);
    return __builtin_shufflevector(x01, x23, 0, 2, 4, 6)
           + __builtin_shufflevector(x01, x23, 1, 3, 5, 7);
}

/* e[k] + fn_hsum4(t)[k], k < 4: the lane sums of four units (t from fn_hsum_t) with the
   values past their pairs of vectors (e, from fn_bm_tail / fn_bwd_tail) added as fn_bm_end_in
   adds them. */
static inline __attribute__((always_inline)) FN(hd4) FN(fn_hsum4_plus)(const double *e,
                                                                    const FN(hd4) *t)
{
    return (FN(hd4)){e[0], e[1], e[2], e[3]} + FN(fn_hsum4)(t);
}

static inline double FN(fn_hsum1)(const FN(vec) *a)
{
    return FN(fn_hsum)(a, NULL);
}

/* A pivot near the mean of x[0:n]: the mean of its first (up to) two vectors of values, summed
   in float64 as fn_hsum sums two accumulators: in registers (every
   short unit pays for it once per block; through memory, store-to-load forwarding made it a
   tenth of a 256-value row's time). */
static inline T FN(fn_pivot)(const T *x, fn_idx n)
{
    FN(vec) a, b;
    fn_idx j;
    if (n < 2 * FN_VL) {
        double s = 0;
        for (j = 0; j < n; j++) s += (double)x[j];
        return (T)(s / (double)n);
    }
    a = FN_LDV(x);
    b = FN_LDV(x + FN_VL);
    return (T)(FN(fn_hsum)(&a, &b) * (1.0 / (double)(2 * FN_VL)));
}

/* ---- activation epilogue (inference forwards) ------------------------------------------- */
/* act: 0 none, 1 relu, 2 silu, 3 gelu (erf form, as torch's default). Scalar form: float64
   libm for float64 data. relu keeps NaN (v < 0 ? 0 : v). */
static inline T FN(fn_act)(T v, int act)
{
    switch (act) {
    case 1: return v < (T)0 ? (T)0 : v;
    case 2: return v / ((T)1 + (T)exp(-(double)v));
    case 3: return (T)(0.5 * (double)v * (1.0 + erf((double)v * 0.70710678118654752440)));
    default: return v;
    }
}

#if FN_IS_F32
/* Vector float32 activations, so the epilogue costs about what the memory pass already
   costs. Always inlined: these take and return FN_VB-byte vectors, whose calling convention
   differs between the AVX-512, AVX2 and baseline clones of their callers. exp: Cody-Waite reduction x = n ln2 + r and a degree-6 polynomial (about 1 ulp);
   erf: Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7, below float32's resolution of
   the GELU output). */
typedef int32_t fn_ivec_f32 __attribute__((vector_size(FN_VB)));

/* m ? a : b lane by lane (m from a vector comparison: all ones or all zeros). */
static inline __attribute__((always_inline)) FN(vec) fn_vsel_f32(fn_ivec_f32 m, FN(vec) a, FN(vec) b)
{
    return (FN(vec))(((fn_ivec_f32)a & m) | ((fn_ivec_f32)b & ~m));
}

static inline __attribute__((always_inline)) FN(vec) fn_vexp_f32(FN(vec) x)
{
    FN(vec) t, nf, r, p;
    fn_ivec_f32 ni;
    FN(vec) zero = {0};
    x = fn_vsel_f32(x < -87.3f, zero - 87.3f, x);  /* below: exp underflows to ~0 */
    x = fn_vsel_f32(x > 88.3f, zero + 88.3f, x);
    t = x * 1.44269504088896341f + 0.5f;
    ni = __builtin_convertvector(t, fn_ivec_f32);
    nf = __builtin_convertvector(ni, FN(vec));
    nf -= __builtin_convertvector(nf > t, FN(vec)) * -1.0f;  /* floor: trunc - (trunc > t) */
    ni = __builtin_convertvector(nf, fn_ivec_f32);
    r = x - nf * 0.693359375f;
    r = r - nf * -2.12194440e-4f;
    p = zero + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    ni = (ni + 127) << 23;  /* 2^n */
    return p * (FN(vec))ni;
}

static inline __attribute__((always_inline)) FN(vec) fn_vact_f32(FN(vec) v, int act)
{
    FN(vec) z, az, t, e, y;
    switch (act) {
    case 1:
        return fn_vsel_f32(v < 0.0f, (FN(vec)){0}, v);
    case 2:  /* v * sigmoid(v) from e = exp(-|v|), which never overflows; e is 0 past 87,
                where it would be subnormal (|silu| < 1e-36 there) */
        az = fn_vsel_f32(v < 0.0f, -v, v);
        e = fn_vsel_f32(az > 87.0f, (FN(vec)){0}, fn_vexp_f32(-az));
        return v * (fn_vsel_f32(v < 0.0f, e, (FN(vec)){0} + 1.0f) / (1.0f + e));
    case 3:
        z = v * 0.70710678118654752440f;
        az = fn_vsel_f32(z < 0.0f, -z, z);
        t = 1.0f / (1.0f + 0.3275911f * az);
        e = fn_vexp_f32(-(az * az));
        y = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t
             + 0.254829592f) * t;
        y = 1.0f - y * e;            /* erf(|z|) */
        y = fn_vsel_f32(z < 0.0f, -y, y);
        return 0.5f * v * (1.0f + y);
    default:
        return v;
    }
}
#endif

/* One value through the same arithmetic as the vector path, so an element's activation does not
   depend on whether alignment put it in a vector or in a head or tail (float32); float64 uses
   libm throughout. */
static inline T FN(fn_act1)(T v, int act)
{
#if FN_IS_F32
    FN(vec) t = {0};
    if (act == 0) return v;
    t[0] = v;
    return fn_vact_f32(t, act)[0];
#else
    return FN(fn_act)(v, act);
#endif
}

/* Exact two-pass moments of x[0:n] with the first pass's mean m0 given: the corrected sum of
   squared deviations from m0 (its residual sum refines the mean). */
FN_HOT static void FN(fn_block_moments_2p)(const T *x, fn_idx n, double m0, double *mean,
                                           double *m2)
{
    FN(vec) a0 = {0}, a1 = {0}, q0 = {0}, q1 = {0}, d0, d1;
    T mh = (T)m0, ml = (T)(m0 - (double)(T)m0), t1 = 0, t2 = 0, e;
    double s1, s2;
    fn_idx i, nv = n - n % (2 * FN_VL);
    for (i = 0; i < nv; i += 2 * FN_VL) {
        d0 = FN_LO((*(const FN(uvec) *)(x + i) - mh), ml);
        d1 = FN_LO((*(const FN(uvec) *)(x + i + FN_VL) - mh), ml);
        a0 += d0;
        a1 += d1;
        q0 += d0 * d0;
        q1 += d1 * d1;
    }
    for (; i < n; i++) {
        e = FN_LO((x[i] - mh), ml);
        t1 += e;
        t2 += e * e;
    }
    s1 = (double)t1 + FN(fn_hsum)(&a0, &a1);
    s2 = (double)t2 + FN(fn_hsum)(&q0, &q1);
    *mean = m0 + s1 / (double)n;
    s2 -= s1 * s1 / (double)n;
    *m2 = s2 > 0 ? s2 : 0;
}

typedef struct {
    FN(vec) a0, a1, q0, q1;
    T K;
} FN(fn_bm);

/* fn_block_moments in resumable parts, so a caller can interleave it with other work (the
   pipelined unit apply overlaps the next unit's reads with this unit's writes): begin takes
   the pivot, step accumulates the pairs of vectors [i0, i1) in order (multiples of 2 * FN_VL,
   up to fn_bm_nv(n)), end adds the tail and finishes. Run begin, steps over [0, nv), end:
   the same operations in the same order as one call, so the same bits. */
static inline fn_idx FN(fn_bm_nv)(fn_idx n) { return n - n % (2 * FN_VL); }

/* The tail of a segment x[0:n] (n >= FN_VL) from i0 (n - i0 < FN_VL) as one vector: the
   segment's last FN_VL values minus K, with the lanes before x[i0] (already counted) zeroed.
   A tail of up to 2 * FN_VL - 1 values was a scalar loop, two add chains as long as the tail
   (a 7 x 7 float32 plane: 17 of its 49 values). */
#if FN_IS_F32
typedef int32_t FN(iv) __attribute__((vector_size(FN_VB)));
#define FN_IOTA {0, 1, 2, 3, 4, 5, 6, 7}
#else
typedef int64_t FN(iv) __attribute__((vector_size(FN_VB)));
#define FN_IOTA {0, 1, 2, 3}
#endif
static inline __attribute__((always_inline)) FN(iv) FN(fn_tail_mask)(fn_idx i0, fn_idx n)
{
    const FN(iv) io = FN_IOTA;
    return io >= (FN(iv)){0} + (__typeof__(io[0]))(i0 - (n - FN_VL));
}

static inline __attribute__((always_inline)) FN(vec) FN(fn_tail_dev)(const T *x, fn_idx i0,
                                                                  fn_idx n, T K)
{
    FN(vec) d = FN_LDV(x + n - FN_VL) - K;
    return (FN(vec))((FN(iv))d & FN(fn_tail_mask)(i0, n));
}

static inline void FN(fn_bm_begin)(FN(fn_bm) *s, const T *x, fn_idx n)
{
    s->a0 = s->a1 = s->q0 = s->q1 = (FN(vec)){0};
    s->K = FN(fn_pivot)(x, n);
}

/* One pair of vectors at p into the accumulators a0, a1, q0, q1 (pivot K, scratch d0, d1). */
#define FN_BM_PAIR(p)                                                                         \
    do {                                                                                      \
        d0 = *(const FN(uvec) *)(p) - K;                                                      \
        d1 = *(const FN(uvec) *)((p) + FN_VL) - K;                                            \
        a0 += d0;                                                                             \
        a1 += d1;                                                                             \
        q0 += d0 * d0;                                                                        \
        q1 += d1 * d1;                                                                        \
    } while (0)

/* The bodies of step and end, always inlined: fn_block_moments runs them with the state in
   registers (a short row's block used to pass it through memory between three calls); the
   FN_HOT entry points below are for the pipelined loops that interleave them with other work. */
static inline __attribute__((always_inline)) void FN(fn_bm_step_in)(FN(fn_bm) *s, const T *x,
                                                                  fn_idx i0, fn_idx i1)
{
    FN(vec) a0 = s->a0, a1 = s->a1, q0 = s->q0, q1 = s->q1, d0, d1;
    T K = s->K;
    fn_idx i;
    for (i = i0; i < i1; i += 2 * FN_VL) FN_BM_PAIR(x + i);
    s->a0 = a0;
    s->a1 = a1;
    s->q0 = q0;
    s->q1 = q1;
}

/* The values past the pairs of vectors, x[fn_bm_nv(n):n], into s: in vectors when n >= FN_VL
   (one whole, then the last vector's new lanes), else one by one into *t1, *t2 (0 otherwise). */
static inline __attribute__((always_inline)) void FN(fn_bm_tail)(FN(fn_bm) *s, const T *x,
                                                               fn_idx n, T *t1, T *t2)
{
    T e, K = s->K, u1 = 0, u2 = 0;
    fn_idx i = FN(fn_bm_nv)(n);
    FN(vec) d;
    if (n >= FN_VL && i < n) {
        if (n - i >= FN_VL) {
            d = FN_LDV(x + i) - K;
            s->a0 += d;
            s->q0 += d * d;
            i += FN_VL;
        }
        if (i < n) {
            d = FN(fn_tail_dev)(x, i, n, K);
            s->a1 += d;
            s->q1 += d * d;
        }
        i = n;
    }
    for (; i < n; i++) {
        e = x[i] - K;
        u1 += e;
        u2 += e * e;
    }
    *t1 = u1;
    *t2 = u2;
}

static inline __attribute__((always_inline)) void FN(fn_bm_end_in)(FN(fn_bm) *s, const T *x,
                                                                 fn_idx n, double *mean,
                                                                 double *m2)
{
    T t1, t2, K = s->K;
    double s1, s2;
    FN(fn_bm_tail)(s, x, n, &t1, &t2);
    s1 = (double)t1 + FN(fn_hsum)(&s->a0, &s->a1);
    s2 = (double)t2 + FN(fn_hsum)(&s->q0, &s->q1);
    if (s1 * s1 / (double)n > 0.5 * s2) {
        FN(fn_block_moments_2p)(x, n, (double)K + s1 / (double)n, mean, m2);
        return;
    }
    *mean = (double)K + s1 / (double)n;
    s2 -= s1 * s1 / (double)n;
    *m2 = s2 > 0 ? s2 : 0;
}

FN_HOT static void FN(fn_bm_step)(FN(fn_bm) *s, const T *x, fn_idx i0, fn_idx i1)
{
    FN(fn_bm_step_in)(s, x, i0, i1);
}

FN_HOT static void FN(fn_bm_end)(FN(fn_bm) *s, const T *x, fn_idx n, double *mean, double *m2)
{
    FN(fn_bm_end_in)(s, x, n, mean, m2);
}

/* Mean and M2 (sum of squared deviations) of x[0:n], 1 <= n <= FN_BLK, in one pass over the
   block: sums of d = x - K and d^2 with the pivot K = the mean of the block's first 16 elements,
   so d is of the order of the spread and x - K is exact when |mean| >> spread. The shifted
   sum of squares s2 - s1^2 / n cancels only if K is far from the block mean; when
   s1^2 / n > s2 / 2 (K more than a standard deviation away: M2 would lose more than a factor
   2 of its precision) the block is redone as an exact two-pass. Accumulators are GCC vectors:
   the lane arithmetic is fixed by the code, not by the ISA the clone targets, so every clone
   gives the same bits. */
FN_HOT static void FN(fn_block_moments)(const T *x, fn_idx n, double *mean, double *m2)
{
    FN(fn_bm) s;
    FN(fn_bm_begin)(&s, x, n);
    FN(fn_bm_step_in)(&s, x, 0, FN(fn_bm_nv)(n));
    FN(fn_bm_end_in)(&s, x, n, mean, m2);
}

/* Moments of a contiguous segment, block by block in order, merged into (n, mean, m2). */
static void FN(fn_seg_moments)(const T *x, fn_idx len, double *n, double *mean, double *m2)
{
    fn_idx i, b;
    double bm, bm2;
    for (i = 0; i < len; i += FN_BLK) {
        b = len - i < FN_BLK ? len - i : FN_BLK;
        FN(fn_block_moments)(x + i, b, &bm, &bm2);
        fn_chan_merge(n, mean, m2, (double)b, bm, bm2);
    }
}

/* fn_seg_moments of two segments of equal length at once (a and b): block by block, both
   blocks' pairs of vectors in one loop, each into its own accumulators, so each gets the bits
   of its own fn_seg_moments. Two read streams instead of one: a batch-norm channel is N planes
   of a few KiB at a stride of C planes, and one such plane after the other restarts the
   hardware prefetch at every plane (measured on a Zen 4: a channel's planes one at a time
   read at 0.66-0.75 of a copy's time, two at a time 0.56, in order 0.45). pd > 0: each step
   prefetches the line pd values ahead in both, and past their end the same offset into nxa
   and nxb (the next pair of planes, or NULL; CHAN_ORDER_NOTE in _norm.pyx). */
FN_HOT static void FN(fn_seg_moments2)(const T *xa, const T *xb, fn_idx len, double *na,
                                       double *meana, double *m2a, double *nb, double *meanb,
                                       double *m2b, const T *nxa, const T *nxb, fn_idx pd)
{
    FN(fn_bm) sa, sb;
    FN(vec) a0, a1, q0, q1, d0, d1;
    T K;
    fn_idx i, b, j, nv, o;
    double bm, bm2;
    for (i = 0; i < len; i += FN_BLK) {
        b = len - i < FN_BLK ? len - i : FN_BLK;
        nv = FN(fn_bm_nv)(b);
        FN(fn_bm_begin)(&sa, xa + i, b);
        FN(fn_bm_begin)(&sb, xb + i, b);
        for (j = 0; j < nv; j += 2 * FN_VL) {
            if (pd) {
                o = i + j + pd;
                if (o < len) {
                    __builtin_prefetch(xa + o, 0, 2);
                    __builtin_prefetch(xb + o, 0, 2);
                } else if (nxa != NULL && o - len < len) {
                    __builtin_prefetch(nxa + (o - len), 0, 2);
                    __builtin_prefetch(nxb + (o - len), 0, 2);
                }
            }
            a0 = sa.a0; a1 = sa.a1; q0 = sa.q0; q1 = sa.q1; K = sa.K;
            FN_BM_PAIR(xa + i + j);
            sa.a0 = a0; sa.a1 = a1; sa.q0 = q0; sa.q1 = q1;
            a0 = sb.a0; a1 = sb.a1; q0 = sb.q0; q1 = sb.q1; K = sb.K;
            FN_BM_PAIR(xb + i + j);
            sb.a0 = a0; sb.a1 = a1; sb.q0 = q0; sb.q1 = q1;
        }
        FN(fn_bm_end)(&sa, xa + i, b, &bm, &bm2);
        fn_chan_merge(na, meana, m2a, (double)b, bm, bm2);
        FN(fn_bm_end)(&sb, xb + i, b, &bm, &bm2);
        fn_chan_merge(nb, meanb, m2b, (double)b, bm, bm2);
    }
}

/* Column vectors a channels-last reduction keeps in registers at once. The block is swept row
   by row, so each row's group of vectors is read as one contiguous run: sweeping one column
   vector at a time down all rows read each 64-byte line with a stride of a whole row (C values),
   which for C = 64 float64 was eight strided passes over the block. */
#define FN_CG 8

/* The float64 moments' sweep keeps up to 16 column vectors (32 accumulators) at once: more
   than AVX2 has registers, and GCC keeps some of them in L1, but a row of 16 vectors (64
   channels) is then swept once instead of as two groups of FN_CG. Measured on an
   AMD EPYC (Zen 3), one thread, column moments of 25 MiB float64 / copy: 64 channels
   1.07-1.16 in two sweeps of 8 vectors, 0.72-0.73 in one of 16. Wider rows go in one sweep
   with the sums in L1 (fn_col_sums). */
#define FN_CGM 16

/* A row wider than one group is swept group by group, each sweep reading part of every row:
   no run of memory long enough for the hardware prefetch, so each sweep fetches its own part of
   the same row of the next block (a block's rows further on) into L2. Measured on an AMD EPYC
   (Zen 4), batch norm channels-last, one thread, same process, blocks of 32 rows without vs with
   the whole row fetched by the first sweep: float32 (32, 28, 28, 256) forward 2.89 -> 2.41
   copies, backward 4.36 -> 3.43; float64 (32, 28, 28, 128) 2.55 -> 2.07, 5.00 -> 4.11 (into L1
   instead: 2.47, 3.62, 2.34, 4.28). Whole rows from the first sweep came in bursts (two
   tensors' full rows per row of that sweep, none during the others), and the L2 did not keep
   up: spread over the sweeps, the column sums alone of (25088, 256) float32 (time / memcpy of
   the same array, one thread) went 0.63-0.65 -> 0.49-0.52 forward and 1.17-1.25 -> 0.86-1.02
   backward (0.77-0.86 for 64 columns, one sweep); the whole ops, alternating builds, float32
   (32, 28, 28, 256) batch norm forward 2.34 / 2.04 -> 1.81 / 1.71, backward 3.49 / 3.58 ->
   3.05 / 3.18, group norm backward 3.51 / 3.78 / 3.35 -> 3.02 / 3.06 / 3.11; float64
   (32, 28, 28, 128) batch norm backward 3.47 / 3.26 -> 2.87 / 2.99. */
static inline __attribute__((always_inline)) void FN(fn_pf_cols)(const T *p, fn_idx C, fn_idx c0,
                                                               const int NV)
{
    /* into L2: the part of row p that the group of NV column vectors from c0 reads (to the
       row's end for the last group, single columns included) */
    fn_idx c1 = c0 + NV * FN_VL, o;
    if (c1 >= C - C % FN_VL) c1 = C;
    for (o = c0 * (fn_idx)sizeof(T); o < c1 * (fn_idx)sizeof(T); o += 64)
        __builtin_prefetch((const char *)p + o, 0, 2);
}

#define FN_GRP_SFX
#define FN_GRP_N FN_CG
#include "_core_grp.h"
#define FN_GRP_SFX 16
#define FN_GRP_N FN_CGM
#include "_core_grp.h"

/* The register sweeps over the column vectors [0, cv) of a block, in c (the caller's): G(nv)
   sweeps nv vectors from c with arrays of FN_CG, G16(nv) with arrays of FN_CGM. float32:
   groups of FN_CG (the 16-vector sweep made 64 channels 13% slower); float64: sweeps of up to
   FN_CGM vectors, a 9-15 vector rest in one sweep. Then the 1-7 vectors left. Shared by the
   moments (fn_col_sums) and the backward's sums (fn_rows_bwd_sums_blk). */
#if FN_IS_F32
#define FN_COL_SWEEPS_WIDE(G, G16)                                                            \
    for (c = 0; c + FN_CG * FN_VL <= cv; c += FN_CG * FN_VL) G(FN_CG)
#else
#define FN_COL_SWEEPS_WIDE(G, G16)                                                            \
    do {                                                                                      \
        for (c = 0; c + FN_CGM * FN_VL <= cv; c += FN_CGM * FN_VL) G16(FN_CGM);               \
        switch ((cv - c) / FN_VL) {                                                           \
        case 15: G16(15); c = cv; break;                                                      \
        case 14: G16(14); c = cv; break;                                                      \
        case 13: G16(13); c = cv; break;                                                      \
        case 12: G16(12); c = cv; break;                                                      \
        case 11: G16(11); c = cv; break;                                                      \
        case 10: G16(10); c = cv; break;                                                      \
        case 9: G16(9); c = cv; break;                                                        \
        case 8: G(8); c = cv; break;                                                          \
        default: break;                                                                       \
        }                                                                                     \
    } while (0)
#endif
#define FN_COL_SWEEPS(G, G16)                                                                 \
    do {                                                                                      \
        FN_COL_SWEEPS_WIDE(G, G16);                                                           \
        switch ((cv - c) / FN_VL) {                                                           \
        case 7: G(7); break;                                                                  \
        case 6: G(6); break;                                                                  \
        case 5: G(5); break;                                                                  \
        case 4: G(4); break;                                                                  \
        case 3: G(3); break;                                                                  \
        case 2: G(2); break;                                                                  \
        case 1: G(1); break;                                                                  \
        default: break;                                                                       \
        }                                                                                     \
    } while (0)

/* s[c] = sum(d), q[c] = sum(d^2) per column over the rows of a block of ns streams of `rows`
   rows (row stride ld; stream k qs rows after stream k - 1; ns <= FN_COL_STREAMS), as
   fn_col_sums_grp. */
static inline __attribute__((always_inline)) void FN(fn_col_sums)(
    const T *x, fn_idx rows, fn_idx ns, fn_idx qs, fn_idx C, fn_idx ld, const T *sh,
    const T *sl, T *s, T *q)
{
    fn_idx r, k, m, c, cv = C - C % FN_VL, idx[FN_COL_STREAMS];
    const T *row, *rk[FN_COL_STREAMS];
    T d;
    FN(vec) v, as, aq;
    if (cv > (FN_IS_F32 ? 2 * FN_CG : FN_CGM) * FN_VL) {
        /* rows wider than the sweep's registers: one sweep, row by row, the sums in L1 (the
           same additions in the same order per column as a sweep in registers, so the same
           bits). Measured on an AMD EPYC (Zen 3), one thread, column moments of 25 MiB / copy,
           sweeps of 8 vectors -> one sweep in L1: float32 256 columns 1.26 -> 0.99, float64
           128 and 256 columns 1.52 / 1.58 -> 1.34 / 1.34.
           The streams' rows go by together, each column vector of s and q loaded and stored
           once for the ns rows (in the same order: row r of stream 0, 1, ..., so the same
           bits). One row at a time stored s and q after every vector, and the next row's
           loads of x then met those stores in flight whenever x sat just past s or q in the
           low 12 address bits (4 KiB aliasing; with rows of whole pages at every column). On
           an AMD EPYC (Zen 4), one thread, column moments alone, old / new build on the same
           arrays, median of 15 pairs: float32 2048 / 1024 / 256 columns (12-24 MiB) 0.43 /
           0.57 / 0.70, float64 1024 / 256 0.49 / 0.79; cols_forward, batch (32, 2048, 7, 7)
           float32 channels-last 3.99 -> 2.69 copies, group (32, 256, 56, 56) 2.43 -> 1.63.
           One stream (ns = 1): its rows four at a time, in order. */
        for (c = 0; c < C; c++) s[c] = q[c] = 0;
        for (r = 0; r < rows; r += fn_col_step(ns)) {
            m = fn_col_rows_at(r, rows, ns, qs, idx);
            for (k = 0; k < m; k++) rk[k] = x + idx[k] * ld;
            for (c = 0; c < cv; c += FN_VL) {
                as = FN_LDV(s + c);
                aq = FN_LDV(q + c);
                for (k = 0; k < m; k++) {
                    v = FN_LDV(rk[k] + c) - FN_LDV(sh + c);
                    if (sl) v = v - FN_LDV(sl + c);
                    as += v;
                    aq += v * v;
                }
                *(FN(uvec) *)(s + c) = as;
                *(FN(uvec) *)(q + c) = aq;
            }
            for (; c < C; c++)
                for (k = 0; k < m; k++) {
                    d = (rk[k][c] - sh[c]) - (sl ? sl[c] : (T)0);
                    s[c] += d;
                    q[c] += d * d;
                }
        }
        return;
    }
#define FN_CSG(nv) FN(fn_col_sums_grp)(x, rows, ns, qs, C, ld, sh, sl, s, q, c, nv)
#define FN_CSG16(nv) FN(fn_col_sums_grp16)(x, rows, ns, qs, C, ld, sh, sl, s, q, c, nv)
    FN_COL_SWEEPS(FN_CSG, FN_CSG16);
#undef FN_CSG16
#undef FN_CSG
    for (c = cv; c < C; c++) {
        s[c] = 0;
        q[c] = 0;
        for (r = 0; r < rows; r++)
            for (k = 0; k < ns; k++) {
                row = x + (r + k * qs) * ld;
                d = (row[c] - sh[c]) - (sl ? sl[c] : (T)0);
                s[c] += d;
                q[c] += d * d;
            }
    }
}

/* d1[c] = sum(d), d2[c] = sum(d^2) in float64 over a block of ns streams of `rows` rows (as
   fn_col_sums), swept in sub-blocks of `sub` rows of every stream: each sub-block's sums in T
   (fn_col_sums, in registers), then added into float64. */
static inline __attribute__((always_inline)) void FN(fn_col_sums_sub)(
    const T *x, fn_idx rows, fn_idx sub, fn_idx ns, fn_idx qs, fn_idx C, const T *sh,
    const T *sl, T *s, T *q, double *d1, double *d2)
{
    fn_idx r, c, b;
    for (c = 0; c < C; c++) d1[c] = d2[c] = 0;
    for (r = 0; r < rows; r += sub) {
        b = rows - r < sub ? rows - r : sub;
        FN(fn_col_sums)(x + r * C, b, ns, qs, C, C, sh, sl, s, q);
        for (c = 0; c < C; c++) {
            d1[c] += (double)s[c];
            d2[c] += (double)q[c];
        }
    }
}

/* Per-column mean and M2 of a block of x (row stride C): ns streams of `rows` rows each,
   1 <= rows, stream k qs rows after stream k - 1 (ns = 1: rows contiguous rows), in one pass
   with a per-column pivot: piv (the running mean of the chunk so far) or, for a chunk's first
   block, the mean of its first rows. As in fn_block_moments, a pivot that lands more than a
   standard deviation from a column's mean sends the block through an exact two-pass. The
   sums go in sub-blocks of `sub` rows per stream (T sums of at most FN_COL_SUM_ROWS rows),
   added in float64: the block's per-column work (pivots, conversions, the redo test, the
   caller's merge) is then shared by its sub-blocks.
   scr: 5*C elements of T. Lanes run across C, so every lane shares one count. */
FN_HOT static void FN(fn_block_col_moments)(const T *x, fn_idx rows, fn_idx sub, fn_idx ns,
                                             fn_idx qs, fn_idx C, const double *piv, T *scr,
                                             double *mean, double *m2)
{
    T *K = scr, *s = scr + C, *q = scr + 2 * C, *mh = scr + 3 * C, *ml = scr + 4 * C, t1;
    const T *rk[FN_COL_STREAMS];
    double m, inv = 1.0 / (double)(rows * ns), t, s1, s2;
    fn_idx i, c, k, nk, np = rows * ns < 32 ? rows * ns : 32, cv = C - C % FN_VL;
    FN(vec) v;
    int redo = 0;

    if (piv) {
        for (c = 0; c < C; c++) K[c] = (T)piv[c];
    } else {  /* the block's first np rows in its order */
        for (c = 0; c < C; c++) s[c] = 0;
        /* s loaded and stored once per four rows (same adds, same order): one row at a time
           met the 4 KiB aliasing of fn_col_sums */
        for (i = 0; i < np; i += FN_COL_STREAMS) {
            nk = np - i < FN_COL_STREAMS ? np - i : FN_COL_STREAMS;
            for (k = 0; k < nk; k++) rk[k] = x + ((i + k) / ns + ((i + k) % ns) * qs) * C;
            for (c = 0; c < cv; c += FN_VL) {
                v = FN_LDV(s + c);
                for (k = 0; k < nk; k++) v += FN_LDV(rk[k] + c);
                *(FN(uvec) *)(s + c) = v;
            }
            for (; c < C; c++) {
                t1 = s[c];
                for (k = 0; k < nk; k++) t1 += rk[k][c];
                s[c] = t1;
            }
        }
        for (c = 0; c < C; c++) K[c] = s[c] / (T)np;
    }
    FN(fn_col_sums_sub)(x, rows, sub, ns, qs, C, K, NULL, s, q, mean, m2);
    for (c = 0; c < C; c++) {  /* mean, m2 hold the sums */
        s1 = mean[c];
        s2 = m2[c];
        if (s1 * s1 * inv > 0.5 * s2) redo = 1;
        mean[c] = (double)K[c] + s1 * inv;
        t = s2 - s1 * s1 * inv;
        m2[c] = t > 0 ? t : 0;
    }
    if (!redo) return;
    for (c = 0; c < C; c++) {
        m = mean[c];
        mh[c] = (T)m;
        ml[c] = (T)(m - (double)mh[c]);
    }
    FN(fn_col_sums_sub)(x, rows, sub, ns, qs, C, mh, ml, s, q, mean, m2);
    for (c = 0; c < C; c++) {  /* deviations from mh + ml, the shift the sums used */
        s1 = mean[c];
        mean[c] = ((double)mh[c] + (double)ml[c]) + s1 * inv;
        t = m2[c] - s1 * s1 * inv;
        m2[c] = t > 0 ? t : 0;
    }
}

/* Per-column moments of x[rows, C] in blocks, merged in order into (n, mean, m2). Every
   block after the first pivots on the running mean. The rows are swept as FN_COL_STREAMS
   streams: block b is rows [b*bs, (b+1)*bs) of each of FN_COL_STREAMS equal runs of the rows
   (bs = rb / FN_COL_STREAMS * FN_COL_SUBS, the last block of a run maybe shorter), row by row
   across the runs; rows past the last whole set of runs form blocks of their own
   (rb * FN_COL_SUBS contiguous rows). Each block's sums go in T over sub-blocks of at most
   FN_COL_SUM_ROWS rows (fn_block_col_moments). The blocks, and so the bits, depend only on
   (rows, C, rb). bm, bm2: C doubles of scratch; scr: 5*C of T. */
static void FN(fn_seg_col_moments_c)(const T *x, fn_idx rows, fn_idx C, fn_idx rb, T *scr,
                                     double *bm, double *bm2, double *n, double *mean,
                                     double *m2)
{
    /* A chunk of at most bt rows is one block of contiguous rows: split into four runs and a
       rest (49 rows of a 7x7 plane: 4 x 8 rows, then 17) it paid its per-column work twice
       and the first block's pivot read most of the rows once more. On an AMD EPYC (Zen 4),
       one thread, column moments alone / copy, old / new build on the same arrays, with the
       pivot's four-row loads (fn_block_col_moments) and fn_col_group_moments: float32 (32
       units, 49 rows, 2048 columns) 3.19 -> 1.66, (32, 49, 512) 4.32 -> 2.31; (32, 196, 512)
       1.04 -> 0.91. */
    const fn_idx ns = FN_COL_STREAMS, sb = rb / FN_COL_STREAMS, bt = rb * FN_COL_SUBS;
    const fn_idx qs = rows <= bt ? 0 : fn_col_run_rows(rows, rb), bs = sb * FN_COL_SUBS;
    const fn_idx ss = sb < FN_COL_SUM_ROWS / ns ? sb : FN_COL_SUM_ROWS / ns;
    const fn_idx st = rb < FN_COL_SUM_ROWS ? rb : FN_COL_SUM_ROWS;
    fn_idx r, b;
    for (r = 0; r < qs; r += bs) {
        b = qs - r < bs ? qs - r : bs;
        FN(fn_block_col_moments)(x + r * C, b, ss, ns, qs, C, *n > 0 ? mean : NULL, scr, bm,
                                 bm2);
        fn_chan_merge_vec(n, mean, m2, C, (double)(b * ns), bm, bm2);
    }
    for (r = ns * qs; r < rows; r += bt) {
        b = rows - r < bt ? rows - r : bt;
        FN(fn_block_col_moments)(x + r * C, b, st, 1, 0, C, *n > 0 ? mean : NULL, scr, bm,
                                 bm2);
        fn_chan_merge_vec(n, mean, m2, C, (double)b, bm, bm2);
    }
}

/* Lanes of a channels-last row of C values read as whole vectors: L = lcm(C, 64 / sizeof(T))
   values (rows of whole 64-byte lines), when C is not a whole number of vectors and L is at
   most FN_LANES; else 0. Such rows (3, 5, 6, 7, 12 or 20 float32 channels, ...) are read as
   rows2 = rows * C / L rows of L lanes, lane j holding column j % C: with C = 3 the columns
   were otherwise summed and applied one value at a time (batch norm (64, 224, 224, 3)
   float32 channels-last: forward 15 copies, backward 11). */
#define FN_LANES 128
static inline fn_idx FN(fn_lanes)(fn_idx C)
{
    fn_idx a = C, b = 64 / (fn_idx)sizeof(T), t, L;
    if (C <= 0 || C % FN_VL == 0) return 0;
    while (b) {
        t = a % b;
        a = b;
        b = t;
    }
    L = C / a * (64 / (fn_idx)sizeof(T));
    return L <= FN_LANES ? L : 0;
}

/* dst[k * L + j] = src[k][j % C] for the n arrays src (a NULL one tiles as zeros): per-column
   coefficients tiled to the L lanes of fn_lanes. */
static inline void FN(fn_tile)(const T *const *src, int n, fn_idx C, fn_idx L, T *dst)
{
    fn_idx j;
    int k;
    for (k = 0; k < n; k++)
        for (j = 0; j < L; j++) dst[k * L + j] = src[k] ? src[k][j % C] : (T)0;
}

/* Per-column moments of x[rows, C] merged in order into (n, mean, m2): fn_seg_col_moments_c
   on the rows, or, when fn_lanes(C) = L > 0, on rows * C / L rows of L lanes (blocks of
   fn_col_block_rows(L) rows), then each column's L / C lanes merged in
   lane order, then the rows left over (fewer than L / C) on their own. rb: the caller's
   block rows for C. */
static void FN(fn_seg_col_moments)(const T *x, fn_idx rows, fn_idx C, fn_idx rb, T *scr,
                                   double *bm, double *bm2, double *n, double *mean, double *m2)
{
    const fn_idx L = FN(fn_lanes)(C);
    fn_idx r2, rbl, c, j;
    double ln, lm[FN_LANES], lm2[FN_LANES], lb[FN_LANES], lb2[FN_LANES], cn, cm, cm2;
    T lscr[5 * FN_LANES];
    if (L == 0 || rows < L / C) {
        FN(fn_seg_col_moments_c)(x, rows, C, rb, scr, bm, bm2, n, mean, m2);
        return;
    }
    r2 = rows / (L / C);
    rbl = fn_col_block_rows(L);
    ln = 0;
    for (j = 0; j < L; j++) lm[j] = lm2[j] = 0;
    FN(fn_seg_col_moments_c)(x, r2, L, rbl, lscr, lb, lb2, &ln, lm, lm2);
    for (c = 0; c < C; c++) {  /* column c: lanes c, c + C, ... in order, then into (n, ...) */
        cn = 0;
        cm = cm2 = 0;
        for (j = c; j < L; j += C) fn_chan_merge(&cn, &cm, &cm2, ln, lm[j], lm2[j]);
        bm[c] = cm;
        bm2[c] = cm2;
    }
    fn_chan_merge_vec(n, mean, m2, C, (double)(r2 * (L / C)), bm, bm2);
    if (r2 * (L / C) < rows)
        FN(fn_seg_col_moments_c)(x + r2 * L, rows - r2 * (L / C), C, rb, scr, bm, bm2, n, mean,
                                 m2);
}

/* fn_col_sums in row order, the sums in memory (L1): each row of the block is read as one
   run, the next one prefetched meanwhile (rows far apart: a column-group sweep would keep one
   short read stream per row in flight). The same sums, in the same order, per column. */
static inline __attribute__((always_inline)) void FN(fn_col_sums_rows)(
    const T *x, fn_idx rows, fn_idx C, fn_idx ld, const T *sh, const T *sl, T *s, T *q)
{
    fn_idx r, c, cv = C - C % FN_VL, o, e, np;
    const T *row;
    FN(vec) d, k0, a, b;
    T u;
    for (c = 0; c < C; c++) s[c] = q[c] = 0;
    for (r = 0; fn_col_rows == 4 && r + 4 <= rows; r += 4) {  /* four rows a sweep */
        row = x + r * ld;
        np = rows - r - 4 < 4 ? rows - r - 4 : 4;
        for (c = 0; c < cv; c += FN_VL) {
            if ((c * (fn_idx)sizeof(T)) % 64 == 0)
                for (e = 4; e < 4 + np; e++) __builtin_prefetch(row + e * ld + c, 0, 3);
            k0 = FN_LDV(sh + c);
            a = FN_LDV(s + c);
            b = FN_LDV(q + c);
            for (e = 0; e < 4; e++) {
                d = FN_LDV(row + e * ld + c) - k0;
                if (sl) d = d - FN_LDV(sl + c);
                a += d;
                b += d * d;
            }
            *(FN(uvec) *)(s + c) = a;
            *(FN(uvec) *)(q + c) = b;
        }
        for (e = 4; e < 4 + np; e++)
            for (o = cv * (fn_idx)sizeof(T); o < C * (fn_idx)sizeof(T); o += 64)
                __builtin_prefetch((const char *)(row + e * ld) + o, 0, 3);
        for (c = cv; c < C; c++)
            for (e = 0; e < 4; e++) {
                u = (row[e * ld + c] - sh[c]) - (sl ? sl[c] : (T)0);
                s[c] += u;
                q[c] += u * u;
            }
    }
    for (; r < rows; r++) {
        row = x + r * ld;
        for (c = 0; c < cv; c += FN_VL) {
            if (r + 1 < rows) __builtin_prefetch(row + ld + c, 0, 3);
            d = FN_LDV(row + c) - FN_LDV(sh + c);
            if (sl) d = d - FN_LDV(sl + c);
            *(FN(uvec) *)(s + c) += d;
            *(FN(uvec) *)(q + c) += d * d;
        }
        if (r + 1 < rows)
            for (o = cv * (fn_idx)sizeof(T); o < C * (fn_idx)sizeof(T); o += 64)
                __builtin_prefetch((const char *)(row + ld) + o, 0, 3);
        for (c = cv; c < C; c++) {
            u = (row[c] - sh[c]) - (sl ? sl[c] : (T)0);
            s[c] += u;
            q[c] += u * u;
        }
    }
}

/* s1[k] = sum of s[k * S + j], s2[k] = of q[k * S + j], j < S, k < nc, in float64: four
   partial sums in a fixed order (the chain of one would wait on every add). */
static inline void FN(fn_chan_sums)(const T *s, const T *q, fn_idx nc, fn_idx S, double *s1,
                                    double *s2)
{
    fn_idx k, j, e;
    double a0, a1, a2, a3, b0, b1, b2, b3;
    for (k = 0; k < nc; k++) {
        const T *ps = s + k * S, *pq = q + k * S;
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0;
        e = S - S % 4;
        for (j = 0; j < e; j += 4) {
            a0 += (double)ps[j];
            a1 += (double)ps[j + 1];
            a2 += (double)ps[j + 2];
            a3 += (double)ps[j + 3];
            b0 += (double)pq[j];
            b1 += (double)pq[j + 1];
            b2 += (double)pq[j + 2];
            b3 += (double)pq[j + 3];
        }
        for (; j < S; j++) {
            a0 += (double)ps[j];
            b0 += (double)pq[j];
        }
        s1[k] = (a0 + a1) + (a2 + a3);
        s2[k] = (b0 + b1) + (b2 + b3);
    }
}

/* Batch-norm moments of nc channels of small planes: x holds rows of nc * S values (the
   channels' planes of one sample, side by side) at a stride of ld values, rows of them (the
   samples). The sums run down the columns, vectorized along the row, so a plane of 49 values
   costs no call, pivot, horizontal sum or merge of its own: per block of up to rb rows, the
   column sums of d = x - K (K: the channel's pivot, the mean of its first plane's first values,
   then the channel's running mean) and of d^2 in T, added per channel in float64, and the
   block's moments merged into the channel's (n, mean, m2) with Chan's formula. As in
   fn_block_moments, a pivot more than a standard deviation from a channel's block mean sends
   the block through an exact two-pass (second sums about the block mean). scr: 4 * nc * S
   values of T; n, mean, m2: nc doubles each, followed by 2 * nc of scratch. The block
   boundaries depend on rows and rb alone. */
FN_HOT static void FN(fn_planes_col_moments)(const T *x, fn_idx rows, fn_idx ld, fn_idx nc,
                                             fn_idx S, fn_idx rb, T *scr, double *n,
                                             double *mean, double *m2)
{
    fn_idx L = nc * S, r0, b, k, j;
    T *K = scr, *s = scr + L, *q = scr + 2 * L, *sl = scr + 3 * L, kh, kl;
    double *s1 = n + nc * 3, *s2 = n + nc * 4;  /* the caller's st holds 5 * nc */
    double nb, bm, bm2, t;
    int redo;
    for (k = 0; k < nc; k++) n[k] = mean[k] = m2[k] = 0;
    for (r0 = 0; r0 < rows; r0 += rb) {
        b = rows - r0 < rb ? rows - r0 : rb;
        nb = (double)(b * S);
        for (k = 0; k < nc; k++) {
            kh = r0 == 0 ? FN(fn_pivot)(x + k * S, S) : (T)mean[k];
            for (j = 0; j < S; j++) K[k * S + j] = kh;
        }
        FN(fn_col_sums_rows)(x + r0 * ld, b, L, ld, K, NULL, s, q);
        FN(fn_chan_sums)(s, q, nc, S, s1, s2);
        redo = 0;
        for (k = 0; k < nc; k++)
            if (s1[k] * s1[k] / nb > 0.5 * s2[k]) redo = 1;
        if (redo) {
            for (k = 0; k < nc; k++) {
                bm = (double)K[k * S] + s1[k] / nb;
                kh = (T)bm;
                kl = (T)(bm - (double)kh);
                for (j = k * S; j < (k + 1) * S; j++) {
                    K[j] = kh;
                    sl[j] = kl;
                }
            }
            FN(fn_col_sums_rows)(x + r0 * ld, b, L, ld, K, sl, s, q);
            FN(fn_chan_sums)(s, q, nc, S, s1, s2);
        }
        for (k = 0; k < nc; k++) {
            bm = (double)K[k * S] + (redo ? (double)sl[k * S] : 0.0) + s1[k] / nb;
            t = s2[k] - s1[k] * s1[k] / nb;
            bm2 = t > 0 ? t : 0;
            fn_chan_merge(&n[k], &mean[k], &m2[k], nb, bm, bm2);
        }
    }
}

/* Four rows (at a stride of ld) of fn_planes_col_bwd_sums's column sums: each column's
   accumulators loaded once, the four rows' terms added in row order (the row loop's
   operations, so its bits), stored once; the pf (up to 4) rows after them prefetched a line
   at a time. */
static inline __attribute__((always_inline)) void FN(fn_col_bwd_sums4)(
    const T *dy, const T *x, fn_idx ld, fn_idx L, fn_idx pf, const T *mh, const T *ml, T *s,
    T *q)
{
    fn_idx c, e, cv = L - L % FN_VL, o;
    FN(vec) m, lo, a, b, d;
    T u, v;
    for (c = 0; c < cv; c += FN_VL) {
        if ((c * (fn_idx)sizeof(T)) % 64 == 0)
            for (e = 4; e < 4 + pf; e++) {
                __builtin_prefetch(dy + e * ld + c, 0, 3);
                __builtin_prefetch(x + e * ld + c, 0, 3);
            }
        m = FN_LDV(mh + c);
        lo = FN_LDV(ml + c);
        a = FN_LDV(s + c);
        b = FN_LDV(q + c);
        for (e = 0; e < 4; e++) {
            d = FN_LDV(dy + e * ld + c);
            a += d;
            b += d * FN_LO((FN_LDV(x + e * ld + c) - m), lo);
        }
        *(FN(uvec) *)(s + c) = a;
        *(FN(uvec) *)(q + c) = b;
    }
    for (e = 4; e < 4 + pf; e++)
        for (o = cv * (fn_idx)sizeof(T); o < L * (fn_idx)sizeof(T); o += 64) {
            __builtin_prefetch((const char *)(dy + e * ld) + o, 0, 3);
            __builtin_prefetch((const char *)(x + e * ld) + o, 0, 3);
        }
    for (c = cv; c < L; c++) {
        u = s[c];
        v = q[c];
        for (e = 0; e < 4; e++) {
            u += dy[e * ld + c];
            v += dy[e * ld + c] * FN_LO((x[e * ld + c] - mh[c]), ml[c]);
        }
        s[c] = u;
        q[c] = v;
    }
}

/* The batch-norm backward's sums over nc channels of small planes (rows of nc * S values at a
   stride of ld, as fn_planes_col_moments): sdy[k] = sum(dy), sdyx[k] = sum(dy * ((x - mh) -
   ml)) in float64, mh and ml the split means per column. Per block of up to rb rows the
   column sums in T (rows in order, each row of dy and x read as one run, the next prefetched),
   then added per channel in float64 (fn_chan_sums), block after block. scr: 2 * nc * S of T;
   sdy, sdyx: nc each, followed by 2 * nc doubles of scratch. */
FN_HOT static void FN(fn_planes_col_bwd_sums)(const T *dy, const T *x, fn_idx rows, fn_idx ld,
                                              fn_idx nc, fn_idx S, fn_idx rb, const T *mh,
                                              const T *ml, T *scr, double *sdy, double *sdyx)
{
    fn_idx L = nc * S, cv = L - L % FN_VL, r0, r, b, c, k;
    T *s = scr, *q = scr + L, e;
    double *t1 = sdyx + nc, *t2 = sdyx + 2 * nc;
    const T *rd, *rx;
    FN(vec) d;
    for (k = 0; k < nc; k++) sdy[k] = sdyx[k] = 0;
    for (r0 = 0; r0 < rows; r0 += rb) {
        b = rows - r0 < rb ? rows - r0 : rb;
        for (c = 0; c < L; c++) s[c] = q[c] = 0;
        for (r = r0; fn_col_rows == 4 && r + 4 <= r0 + b; r += 4)
            FN(fn_col_bwd_sums4)(dy + r * ld, x + r * ld, ld, L,
                                 rows - r - 4 < 4 ? rows - r - 4 : 4, mh, ml, s, q);
        for (; r < r0 + b; r++) {
            rd = dy + r * ld;
            rx = x + r * ld;
            for (c = 0; c < cv; c += FN_VL) {
                if (r + 1 < rows) {
                    __builtin_prefetch(rd + ld + c, 0, 3);
                    __builtin_prefetch(rx + ld + c, 0, 3);
                }
                d = FN_LDV(rd + c);
                *(FN(uvec) *)(s + c) += d;
                *(FN(uvec) *)(q + c) += d * FN_LO((FN_LDV(rx + c) - FN_LDV(mh + c)),
                                                  FN_LDV(ml + c));
            }
            for (c = cv; c < L; c++) {
                if (r + 1 < rows && c == cv) {
                    __builtin_prefetch(rd + ld + c, 0, 3);
                    __builtin_prefetch(rx + ld + c, 0, 3);
                }
                e = rd[c];
                s[c] += e;
                q[c] += e * FN_LO((rx[c] - mh[c]), ml[c]);
            }
        }
        FN(fn_chan_sums)(s, q, nc, S, t1, t2);
        for (k = 0; k < nc; k++) {
            sdy[k] += t1[k];
            sdyx[k] += t2[k];
        }
    }
}

/* ---- stores ---------------------------------------------------------------------------- */
/* A vector store at p, or with nt a non-temporal one (p 16-byte aligned; where streaming
   starts: fn_nt_head): for outputs larger than the last-level cache, a normal store first
   reads the line it overwrites (RFO), a third stream of traffic that memcpy avoids. SSE2 streaming stores exist on every x86-64, so all
   three clones share this code. */
static inline __attribute__((always_inline)) void FN(fn_vst)(T *p, FN(vec) v, int nt)
{
#if FN_NT
    if (nt) {
        char *q = (char *)p;
        const char *s = (const char *)&v;
        int j;
        for (j = 0; j < FN_VB; j += 16) {
#if FN_IS_F32
            __m128 t;
            memcpy(&t, s + j, 16);
            _mm_stream_ps((float *)(q + j), t);
#else
            __m128d t;
            memcpy(&t, s + j, 16);
            _mm_stream_pd((double *)(q + j), t);
#endif
        }
        return;
    }
#endif
    *(FN(uvec) *)p = v;
}

/* Elements to store one by one before the streaming stores of a segment y[0:n] start at p + h;
   -1 if they never can (p not on an element boundary: the caller stores normally). A segment
   of whole vectors from a 16-byte boundary streams all of it (h = 0): the segments of a row
   loop or of consecutive planes then fill every line with streaming stores alone, as one
   sequential stream does. Any other segment streams only the whole 64-byte lines inside it and
   stores its head and tail (the lines it shares with its neighbours) with ordinary stores: a
   line that takes streaming stores from one segment and ordinary ones from the next is
   flushed from the write-combining buffer half written, and memory then merges it. Measured on
   a Zen 4, group norm (32, 1024, 14, 14) float32 forward at one thread (planes of 196 values:
   a 4-value tail in every plane) took 6.8 copies with streaming from 16-byte boundaries and
   ordinary stores for the tails, 1.7 without streaming; whole lines only for every segment cost
   layer-norm rows of 1024 float32 values (a NumPy array from 16 bytes past a page) 5-7% in the
   backward, one ordinary line per row. */
static inline fn_idx FN(fn_nt_head)(const T *p, fn_idx n)
{
    size_t mis = (size_t)((uintptr_t)p & 63);
    fn_idx h;
    if (mis % sizeof(T)) return -1;
    if (mis % 16 == 0 && n % FN_VL == 0) return 0;
    if (mis == 0) return 0;
    h = (fn_idx)((64 - mis) / sizeof(T));
    return h < n ? h : n;
}

#if FN_IS_F32
/* d[0:n] = s[0:n] with non-temporal stores, four pages at a time (float32 words: the bits are
   only moved, so any 4-byte data). One read stream from each of four pages keeps more lines in
   flight than one stream, and streaming stores do not read dst first. Measured here, one
   thread, GB/s moved (read + write), memcpy / one stream / four pages: 24.5 MiB 15-28 / 27 / 29,
   49 MiB 15-23 / 25 / 28, 128 MiB 14 / 22 / 27, 512 MiB 23 / 19 / 25 (memcpy is fast only while
   both arrays stay in the last-level cache between calls). */
FN_HOT static void fn_copy_stream(const float *s, float *d, fn_idx n)
{
    const fn_idx P = 1024;  /* 4 KiB */
    fn_idx i = 0, j;
    if ((uintptr_t)d % sizeof(float)) {
        memcpy(d, s, (size_t)n * sizeof(float));
        return;
    }
    for (; i < n && ((uintptr_t)(d + i) & 63); i++) d[i] = s[i];  /* up to a whole line */
    for (; i + 4 * P <= n; i += 4 * P)
        for (j = i; j < i + P; j += FN_VL) {
            FN(vec) a = *(const FN(uvec) *)(s + j), b = *(const FN(uvec) *)(s + j + P),
                    c = *(const FN(uvec) *)(s + j + 2 * P), e = *(const FN(uvec) *)(s + j + 3 * P);
            FN(fn_vst)(d + j, a, 1);
            FN(fn_vst)(d + j + P, b, 1);
            FN(fn_vst)(d + j + 2 * P, c, 1);
            FN(fn_vst)(d + j + 3 * P, e, 1);
        }
    for (; i + FN_VL <= n; i += FN_VL) FN(fn_vst)(d + i, *(const FN(uvec) *)(s + i), 1);
    for (; i < n; i++) d[i] = s[i];
    fn_sfence();
}

/* ---- float32 activation over a buffer ----------------------------------------------------
   d[0:n] = act(s[0:n]) (s may be d); nt: non-temporal stores where d allows. The apply helpers
   compute a chunk of y into an L1 buffer, then call this, so the activation is a separate
   function and can be compiled for what the CPU has:
   - AVX-512: explicit intrinsics with FMA, exp as 2^n * p(r) with scalef (no clamping of n),
     reciprocals as rcp14 plus one Newton step, masked loads and stores for the tail. About 20
     instructions per 16 values for silu and 30 for gelu, so at two threads it hides under the
     memory traffic of the normalization.
   - elsewhere: the portable vector code above (no FMA, true division).
   Every element of one call takes the same path, so the result does not depend on where a
   chunk starts. The two paths agree to a few float32 ulps, not bit for bit. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FN_ACT_AVX512 1
#define FN_A512 __attribute__((target("avx512f")))

/* e^x for x <= 0 (or NaN): n = round(x / ln 2), r = x - n ln 2 in two FMA steps (ln 2 split in
   a float and its remainder), e^r = 1 + r + r^2 q(r) with q fitted on |r| <= ln2/2 (relative
   error 4e-9 before rounding), then scalef(e^r, n), which underflows gracefully. */
static inline __attribute__((always_inline)) FN_A512 __m512 fn_exp_neg512(__m512 x)
{
    __m512 n, r, q;
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  /* e^-104 is below the least subnormal */
    /* round(x / ln 2) by adding and removing 1.5 * 2^23: one FMA and one subtraction, cheaper
       than vrndscaleps (two uops) */
    n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f),
                                      _mm512_set1_ps(12582912.0f)),
                      _mm512_set1_ps(12582912.0f));
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182464599609375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-1.9046542999577e-09f), r);
    q = _mm512_set1_ps(0.001375138177536428f);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.00836892332881689f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.04166953265666962f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.166665181517601f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(0.49999988079071045f));
    q = _mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r);
    return _mm512_scalef_ps(_mm512_add_ps(q, _mm512_set1_ps(1.0f)), n);
}

/* 1 / d for d in [1, 4]: rcp14 (14 bits) and one Newton step. */
static inline __attribute__((always_inline)) FN_A512 __m512 fn_recip512(__m512 d)
{
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0f)), r);
}

static inline __attribute__((always_inline)) FN_A512 __m512 fn_act512(__m512 v, int act)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 a, e, t, p;
    if (act == 1)  /* relu keeps NaN: only lanes below zero become zero */
        return _mm512_mask_blend_ps(neg, v, _mm512_setzero_ps());
    if (act == 2) {
        /* silu = v * sigmoid(v), sigmoid(v) = (v < 0 ? e : 1) / (1 + e) with e = exp(-|v|):
           the exponent never overflows and the denominator stays in [1, 2]. */
        a = _mm512_abs_ps(v);
        e = fn_exp_neg512(_mm512_sub_ps(_mm512_setzero_ps(), a));
        t = fn_recip512(_mm512_add_ps(one, e));
        return _mm512_mul_ps(v, _mm512_mul_ps(_mm512_mask_blend_ps(neg, one, e), t));
    }
    /* gelu = v * Phi(v). With z = |v| / sqrt(2), erfc(z) = t P(t) exp(-z^2), t = 1/(1 + p z)
       (Abramowitz & Stegun 7.1.26, absolute error <= 1.5e-7); Phi(v) = erfc(z) / 2 for
       v < 0 and 1 - erfc(z) / 2 otherwise, so the negative side never forms 1 - (1 - small).
       z is capped at 10, where erfc is far below float32's least subnormal, and Phi is then
       taken as exactly 0 or 1 (gelu(-1e30) is -0, not -1e30 * 1e-45). */
    a = _mm512_min_ps(_mm512_abs_ps(_mm512_mul_ps(v, _mm512_set1_ps(0.70710678118654752440f))),
                      _mm512_set1_ps(10.0f));
    t = fn_recip512(_mm512_fmadd_ps(a, _mm512_set1_ps(0.3275911f), one));
    p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(_mm512_mul_ps(p, t), _mm512_set1_ps(0.5f));
    e = _mm512_mul_ps(p, fn_exp_neg512(_mm512_fnmadd_ps(a, a, _mm512_setzero_ps())));
    e = _mm512_mask_mov_ps(e, _mm512_cmp_ps_mask(a, _mm512_set1_ps(10.0f), _CMP_GE_OQ),
                           _mm512_setzero_ps());  /* |z| >= 10: Phi is exactly 0 or 1 */
    return _mm512_mul_ps(v, _mm512_mask_blend_ps(neg, _mm512_sub_ps(one, e), e));
}

static FN_A512 void fn_act_buf_avx512(const float *s, float *d, fn_idx n, int act, int nt)
{
    fn_idx i = 0, h = 0;
    __mmask16 k;
    if (nt && ((uintptr_t)d & 3) == 0) {
        h = (fn_idx)(((64 - ((uintptr_t)d & 63)) & 63) / 4);
        if (h > n) h = n;
    } else {
        nt = 0;
    }
    if (h > 0) {
        k = (__mmask16)((1u << h) - 1);
        _mm512_mask_storeu_ps(d, k, fn_act512(_mm512_maskz_loadu_ps(k, s), act));
        i = h;
    }
    if (nt)
        for (; i + 16 <= n; i += 16)
            _mm512_stream_ps(d + i, fn_act512(_mm512_loadu_ps(s + i), act));
    else
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(d + i, fn_act512(_mm512_loadu_ps(s + i), act));
    if (i < n) {
        k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(d + i, k, fn_act512(_mm512_maskz_loadu_ps(k, s + i), act));
    }
}
#endif

FN_HOT static void fn_act_buf_generic(const float *s, float *d, fn_idx n, int act, int nt)
{
    fn_idx i = 0, h = nt ? fn_nt_head_f32(d, n) : 0;
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) d[i] = fn_act1_f32(s[i], act);
    for (; i + FN_VL <= n; i += FN_VL)
        fn_vst_f32(d + i, fn_vact_f32(*(const FN(uvec) *)(s + i), act), nt);
    for (; i < n; i++) d[i] = fn_act1_f32(s[i], act);
}

/* Which activation code runs: 0 the best the CPU has, 1 the portable path (tests compare). */
static int fn_act_portable = 0;

static inline int fn_act_avx512(void)
{
#ifdef FN_ACT_AVX512
    return !fn_act_portable && __builtin_cpu_supports("avx512f");
#else
    return 0;
#endif
}

static void fn_act_buf_f32(const float *s, float *d, fn_idx n, int act, int nt)
{
#ifdef FN_ACT_AVX512
    if (fn_act_avx512()) {
        fn_act_buf_avx512(s, d, n, act, nt);
        return;
    }
#endif
    fn_act_buf_generic(s, d, n, act, nt);
}

/* Elements of y a chunk of the apply helpers holds in L1 before its activation. */
#define FN_ACT_CHUNK 2048
#endif

/* No fence after streaming stores: they sit in write-combining buffers until a serializing
   event, and the barrier that ends every parallel region is a LOCK-prefixed atomic, which
   drains them (Intel SDM vol. 3, 11.3.1), as does taking the GIL back in the single-threaded
   fast path. A fence per segment would cost more than a row of a few KB. */

/* ---- min / max (MinMaxScaler) ------------------------------------------------------------ */
/* Per column c of x[rows, C]: mn[c] = min(mn[c], x), mx[c] = max(mx[c], x), and z[c] += x * 0,
   which stays 0 for finite data and turns NaN on any NaN or Inf (the caller's finiteness
   check, in the same pass). `v < m ? v : m` is exactly the x86 min instruction, so the loop
   vectorizes without -ffast-math. */
FN_HOT static void FN(fn_rows_minmax)(const T *x, fn_idx rows, fn_idx C, T *mn, T *mx, T *z)
{
    fn_idx r, c;
    const T *row;
    T v;
    for (r = 0; r < rows; r++) {
        row = x + r * C;
        for (c = 0; c < C; c++) {
            v = row[c];
            mn[c] = v < mn[c] ? v : mn[c];
            mx[c] = v > mx[c] ? v : mx[c];
            z[c] += v * (T)0;
        }
    }
}

/* ---- forward apply ---------------------------------------------------------------------- */

/* The activation inside the apply loops: relu is one select, done in registers on every path
   (relu keeps NaN: v < 0 ? 0 : v). silu and gelu are compute-bound, so a chunk of y goes into
   an L1 buffer and fn_act_buf_f32 runs over it (float32), or libm element by element
   (float64). Measured at (32, 64, 56, 56) float32: computing them in the apply loop itself, in
   AVX-512 registers, was 10-15% slower than the buffered pass. */
#define FN_RELU(v) ((v) < (T)0 ? (T)0 : (v))
static inline __attribute__((always_inline)) FN(vec) FN(fn_vrelu)(FN(vec) v)
{
    typedef int64_t iv __attribute__((vector_size(FN_VB)));
    return (FN(vec))((iv)v & ~(iv)(v < (T)0));
}

/* The normalize of one value or one vector v (the same operators serve both): per channel
   ((v - mh) - ml) * a + b, element-wise (((v - mh) - ml) * r) * g + b. Every apply loop
   (fn_seg_apply, fn_seg_apply_ew, fn_apply_bm) uses these two, so a value gets the same bits
   whichever loop normalizes it. */
#define FN_NORM_CH(v, mh, ml, a, b) ((((v) - (mh)) - (ml)) * (a) + (b))
#define FN_NORM_EW(v, mh, ml, r, g, b) (((((v) - (mh)) - (ml)) * (r)) * (g) + (b))

/* y = ((x - mh) - ml) * a + b over a contiguous segment (one channel of one sample), then the
   activation (0 none, 1 relu, 2 silu, 3 gelu); nt: non-temporal stores; cold: x comes from
   memory, so never down the addresses (fn_seg_apply_cold). */
static inline __attribute__((always_inline)) void FN(fn_seg_apply_in)(
    const T *x, T *y, fn_idx n, T mh, T ml, T a, T b, int act, int nt, fn_idx pf, int cold)
{
    fn_idx i = 0, nv, h = nt ? FN(fn_nt_head)(y, n) : 0;
    const int desc = !cold && FN_DESC(fn_alias(y, x), n * sizeof(T));
    FN(vec) v;
    T u;
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) {
        u = FN_NORM_CH(x[i], mh, ml, a, b);
        y[i] = act ? FN_RELU(u) : u;
    }
    nv = h + (n - h) / FN_VL * FN_VL;
    FN_VFOR(i, h, nv, FN_VL, desc,
        if (pf) __builtin_prefetch(x + i + pf, 0, 2);
        v = FN_NORM_CH(FN_LDV(x + i), mh, ml, a, b);
        if (act) v = FN(fn_vrelu)(v);
        FN(fn_vst)(y + i, v, nt);
    );
    for (i = nv; i < n; i++) {
        u = FN_NORM_CH(x[i], mh, ml, a, b);
        y[i] = act ? FN_RELU(u) : u;
    }
}

FN_HOT static void FN(fn_seg_apply)(const T *x, T *y, fn_idx n, T mh, T ml, T a, T b, int act,
                                    int nt, fn_idx pf)
{
    if (act > 1) {
#if FN_IS_F32
        float buf[FN_ACT_CHUNK] __attribute__((aligned(64)));
        fn_idx i, m;
        if (nt && FN(fn_nt_head)(y, n) < 0) nt = 0;
        for (i = 0; i < n; i += m) {
            m = n - i < FN_ACT_CHUNK ? n - i : FN_ACT_CHUNK;
            FN(fn_seg_apply)(x + i, buf, m, mh, ml, a, b, 0, 0, pf);
            fn_act_buf_f32(buf, y + i, m, act, nt);
        }
#else
        fn_idx i;
        for (i = 0; i < n; i++) y[i] = FN(fn_act)(FN_NORM_CH(x[i], mh, ml, a, b), act);
#endif
        return;
    }
    FN(fn_seg_apply_in)(x, y, n, mh, ml, a, b, act, nt, pf, 0);
}

/* fn_seg_apply for an input coming from memory (the one-pass inference apply): ascending at
   every placement. Going down the addresses (FN_VFOR) spares a loop the 4 KiB aliasing of an
   output just past its input while the input is in cache (an apply after the moments read
   it), but a run of planes each read downwards from memory defeats the hardware prefetch:
   batch norm inference (32, 64, 56, 56) float32, one thread, on an AMD EPYC (Zen 4), out= 16
   to 1024 bytes past x in the page took 2.3-2.5x as long as at other offsets; ascending there,
   0.94-1.13 at every offset with ordinary stores (the aliasing costs nothing measurable when
   the loads wait for memory anyway). Streaming stores there still met it: 1.5-2.7x as long with
   out= 16 to 128 bytes past x (0.92 at 256), so an output up to FN_NT_ALIAS_BYTES past its
   input takes ordinary stores (fn_nt_alias; 10-25% slower than streaming at other offsets,
   past the cache). Same operations, so the same bits. */
FN_HOT static void FN(fn_seg_apply_cold)(const T *x, T *y, fn_idx n, T mh, T ml, T a, T b,
                                         int act, int nt)
{
    if (fn_nt_alias(y, x)) nt = 0;
    if (act > 1) {
        FN(fn_seg_apply)(x, y, n, mh, ml, a, b, act, nt, 0);
        return;
    }
    FN(fn_seg_apply_in)(x, y, n, mh, ml, a, b, act, nt, 0, 1);
}

/* Element-wise affine (layer norm): y = ((x - mh) - ml) * r * g[i] + b[i], then the
   activation. pf > 0: along the way, x[i + pf] is prefetched into L2 (the next unit, pf values
   on, while this one's apply keeps the core from reading ahead). Down the addresses when y sits
   just past x, g or b in the page (fn_desc_hot: x is in cache from the statistics). */
static inline __attribute__((always_inline)) void FN(fn_seg_apply_ew_in)(
    const T *x, T *y, fn_idx n, T mh, T ml, T r, const T *g, const T *b, int act, int nt,
    fn_idx pf)
{
    fn_idx i = 0, nv, h = nt ? FN(fn_nt_head)(y, n) : 0;
    const int desc = fn_desc_hot(y, x, g, b, NULL);
    FN(vec) v;
    T u;
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) {
        u = FN_NORM_EW(x[i], mh, ml, r, g[i], b[i]);
        y[i] = act ? FN_RELU(u) : u;
    }
    nv = h + (n - h) / FN_VL * FN_VL;
    FN_VFOR(i, h, nv, FN_VL, desc,
        if (pf) __builtin_prefetch(x + i + pf, 0, 2);
        v = FN_NORM_EW(FN_LDV(x + i), mh, ml, r, FN_LDV(g + i), FN_LDV(b + i));
        if (act) v = FN(fn_vrelu)(v);
        FN(fn_vst)(y + i, v, nt);
    );
    for (i = nv; i < n; i++) {
        u = FN_NORM_EW(x[i], mh, ml, r, g[i], b[i]);
        y[i] = act ? FN_RELU(u) : u;
    }
}

FN_HOT static void FN(fn_seg_apply_ew)(const T *x, T *y, fn_idx n, T mh, T ml, T r,
                                       const T *g, const T *b, int act, int nt, fn_idx pf)
{
    if (act > 1) {
#if FN_IS_F32
        float buf[FN_ACT_CHUNK] __attribute__((aligned(64)));
        fn_idx i, m;
        if (nt && FN(fn_nt_head)(y, n) < 0) nt = 0;
        for (i = 0; i < n; i += m) {
            m = n - i < FN_ACT_CHUNK ? n - i : FN_ACT_CHUNK;
            FN(fn_seg_apply_ew)(x + i, buf, m, mh, ml, r, g + i, b + i, 0, 0, pf);
            fn_act_buf_f32(buf, y + i, m, act, nt);
        }
#else
        fn_idx i;
        for (i = 0; i < n; i++) y[i] = FN(fn_act)(FN_NORM_EW(x[i], mh, ml, r, g[i], b[i]), act);
#endif
        return;
    }
    FN(fn_seg_apply_ew_in)(x, y, n, mh, ml, r, g, b, act, nt, pf);
}

/* fn_seg_apply_ew on the same n columns of two rows (x0 -> y0 with mh0, ml0, r0; x1 -> y1 with
   mh1, ml1, r1), act 0 or 1: g and b come from beyond L1 once for both rows (the second row
   finds them in L1). The rows go by FN_PAIR_RUN vectors at a time, one row's run then the
   other's (see fn_rowsn_bwd_apply_ew: rows a whole number of pages apart would alias vector
   by vector). Every element has fn_seg_apply_ew's bits. With nt, y0 and y1 must reach a
   64-byte boundary after the same number of elements (the caller checks). */
FN_HOT static void FN(fn_seg2_apply_ew)(const T *x0, const T *x1, T *y0, T *y1, fn_idx n,
                                        T mh0, T ml0, T r0, T mh1, T ml1, T r1, const T *g,
                                        const T *b, int act, int nt)
{
    fn_idx i, j, e, k, nr, nv, h = nt ? FN(fn_nt_head)(y0, n) : 0;
    const fn_idx run = FN_PAIR_RUN * FN_VL;
    const int al = fn_alias(y0, x0) | fn_alias(y0, x1) | fn_alias(y1, x0) | fn_alias(y1, x1)
                   | fn_alias(y0, g) | fn_alias(y0, b) | fn_alias(y1, g) | fn_alias(y1, b);
    const int desc = FN_DESC(al, n * sizeof(T));
    FN(vec) v;
    T u;
    if (h < 0) { nt = 0; h = 0; }
    for (i = 0; i < h; i++) {
        u = FN_NORM_EW(x0[i], mh0, ml0, r0, g[i], b[i]);
        y0[i] = act ? FN_RELU(u) : u;
        u = FN_NORM_EW(x1[i], mh1, ml1, r1, g[i], b[i]);
        y1[i] = act ? FN_RELU(u) : u;
    }
    nv = h + (n - h) / FN_VL * FN_VL;
    nr = (nv - h + run - 1) / run;
    for (k = 0; k < nr; k++) {  /* the runs, last first when desc */
        i = h + (desc ? nr - 1 - k : k) * run;
        e = nv - i < run ? nv : i + run;
        FN_VFOR(j, i, e, FN_VL, desc,
            v = FN_NORM_EW(FN_LDV(x0 + j), mh0, ml0, r0, FN_LDV(g + j), FN_LDV(b + j));
            if (act) v = FN(fn_vrelu)(v);
            FN(fn_vst)(y0 + j, v, nt);
        );
        FN_VFOR(j, i, e, FN_VL, desc,
            v = FN_NORM_EW(FN_LDV(x1 + j), mh1, ml1, r1, FN_LDV(g + j), FN_LDV(b + j));
            if (act) v = FN(fn_vrelu)(v);
            FN(fn_vst)(y1 + j, v, nt);
        );
    }
    for (i = nv; i < n; i++) {
        u = FN_NORM_EW(x0[i], mh0, ml0, r0, g[i], b[i]);
        y0[i] = act ? FN_RELU(u) : u;
        u = FN_NORM_EW(x1[i], mh1, ml1, r1, g[i], b[i]);
        y1[i] = act ? FN_RELU(u) : u;
    }
}

/* ---- runs of planes --------------------------------------------------------------------- */
/* Consecutive planes, each with its own coefficients, are one contiguous run: a group-norm
   unit's cb planes, or the planes of a group of small units (fn_units_group_fwd). Plane by
   plane, the apply pays a head and a scalar tail a plane (and a call, from Cython), and past
   the streaming threshold it writes every line two planes share with ordinary stores: float32
   (32, 1024, 14, 14) forward took 2.4 copies (group norm) and 3.3 (instance norm). These loops
   run over the whole run in vectors: a vector inside plane j uses plane j's coefficients, one
   across a plane boundary takes each lane's from its own plane (fn_run_coef), so every value
   gets the same operations as in the plane loop (the same bits), and the run streams every
   line but its own head and tail. The forward takes the planes' coefficients in arrays,
   FN_RUN_PLANES planes a call; the backward (group norm) only varies the weight. */
#define FN_RUN_PLANES 64

/* Lane k of the result: c[j'] for the plane j' holding run value i + k, where plane j holds
   [e - S, e) and i < e < i + FN_VL (the vector crosses the end of plane j). */
static inline __attribute__((always_inline)) FN(vec) FN(fn_run_coef)(const T *c, fn_idx i,
                                                                   fn_idx j, fn_idx e,
                                                                   fn_idx S)
{
    FN(vec) v;
    fn_idx k;
    if (S >= FN_VL) {  /* two planes at most */
        const FN(iv) io = FN_IOTA;
        FN(iv) m = io < (FN(iv)){0} + (__typeof__(io[0]))(e - i);
        return (FN(vec))(((FN(iv))((FN(vec)){0} + c[j]) & m)
                         | ((FN(iv))((FN(vec)){0} + c[j + 1]) & ~m));
    }
    for (k = 0; k < FN_VL; k++) v[k] = c[i + k < e ? j : j + 1 + (i + k - e) / S];
    return v;
}

/* Plane state of the run loops below: at value i past the end e of plane j, move to the plane
   holding i and load its coefficients (SET). */
#define FN_RUN_AT(i, SET)                                                                     \
    if ((i) >= e) {                                                                           \
        do {                                                                                  \
            j++;                                                                              \
            e += S;                                                                           \
        } while ((i) >= e);                                                                   \
        SET;                                                                                  \
    }

/* y = ((x - MH[j]) - ML[j]) * A[j] + B[j] over values [0, n) of a run of planes of S values,
   value 0 in plane j, which ends at value e (a piece of a run may start and end inside
   planes), then relu if act (act 0 or 1 only): fn_seg_apply's operations per value.
   fn_run_apply_in: the np whole planes of one run (plane j: values [j * S, (j + 1) * S)). */
static inline __attribute__((always_inline)) void FN(fn_run_apply_at)(
    const T *x, T *y, fn_idx n, fn_idx S, fn_idx j, fn_idx e, const T *MH, const T *ML,
    const T *A, const T *B, int act, int nt, fn_idx pf)
{
    fn_idx i = 0, h = nt ? FN(fn_nt_head)(y, n) : 0;
    T mh = MH[j], ml = ML[j], a = A[j], b = B[j], u;
    FN(vec) v;
#define FN_RUN_SET (mh = MH[j], ml = ML[j], a = A[j], b = B[j])
#define FN_RUN_ONE                                                                            \
    do {                                                                                      \
        FN_RUN_AT(i, FN_RUN_SET);                                                             \
        u = FN_NORM_CH(x[i], mh, ml, a, b);                                                   \
        y[i] = act ? FN_RELU(u) : u;                                                          \
    } while (0)
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) FN_RUN_ONE;
    while (i + FN_VL <= n) {
        FN_RUN_AT(i, FN_RUN_SET);
        for (; i + FN_VL <= (e < n ? e : n); i += FN_VL) {  /* the vectors inside plane j */
            if (pf) __builtin_prefetch(x + i + pf, 0, 2);
            v = FN_NORM_CH(FN_LDV(x + i), mh, ml, a, b);
            if (act) v = FN(fn_vrelu)(v);
            FN(fn_vst)(y + i, v, nt);
        }
        if (i < e && i + FN_VL <= n) {  /* the vector across its end */
            v = FN_NORM_CH(FN_LDV(x + i), FN(fn_run_coef)(MH, i, j, e, S),
                           FN(fn_run_coef)(ML, i, j, e, S), FN(fn_run_coef)(A, i, j, e, S),
                           FN(fn_run_coef)(B, i, j, e, S));
            if (act) v = FN(fn_vrelu)(v);
            FN(fn_vst)(y + i, v, nt);
            i += FN_VL;
        }
    }
    for (; i < n; i++) FN_RUN_ONE;
#undef FN_RUN_ONE
#undef FN_RUN_SET
}

static inline __attribute__((always_inline)) void FN(fn_run_apply_in)(
    const T *x, T *y, fn_idx np, fn_idx S, const T *MH, const T *ML, const T *A, const T *B,
    int act, int nt, fn_idx pf)
{
    FN(fn_run_apply_at)(x, y, np * S, S, 0, S, MH, ML, A, B, act, nt, pf);
}

/* y[0:n] = s[0:n], streaming the whole vectors when nt (the lines at either end, shared with
   the neighbours, with ordinary stores, as every streaming loop here). */
static inline __attribute__((always_inline)) void FN(fn_put)(const T *s, T *y, fn_idx n, int nt)
{
    fn_idx i = 0, h = nt ? FN(fn_nt_head)(y, n) : 0;
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) y[i] = s[i];
    for (; i + FN_VL <= n; i += FN_VL) FN(fn_vst)(y + i, FN_LDV(s + i), nt);
    for (; i < n; i++) y[i] = s[i];
}

/* fn_run_apply_in for a streaming output 1 to FN_NT_ALIAS_BYTES past its input in the page
   (fn_nt_alias): each FN_BOUNCE_BYTES of the run is normalized into one of two L1 buffers
   placed about half a page from x, and the piece before is streamed to y after this one's
   loads, so no load of x follows a store of y at its page offset by less than a piece. Same
   operations per value: the same bits. Group norm float32 forward, one thread, out= 32 / 64 /
   128 / 192 bytes past x, time against out= at the page's start (bench/placement_probe.py):
   (32, 64, 56, 56) 1.66 / 2.41 / 1.47 / 1.17 -> 1.18 / 1.19 / 1.21 / 1.22, (32, 1024, 14, 14)
   1.50 / 2.37 / 1.53 / 1.27 -> 1.40 / 1.21 / 1.24 / 1.26 (one buffer, streamed right after
   its piece: 1.30 / 1.29 / 1.18 / 1.14 and 1.17 / 1.18 / 1.30 / 1.27); ordinary stores instead
   cost this shape 2.3x at every placement, and the run down the addresses 2.2-2.5x. */
#define FN_BOUNCE_BYTES 4096
static inline __attribute__((always_inline)) void FN(fn_run_apply_bounce)(
    const T *x, T *y, fn_idx np, fn_idx S, const T *MH, const T *ML, const T *A, const T *B,
    int act, fn_idx pf)
{
    const fn_idx n = np * S, CH = FN_BOUNCE_BYTES / (fn_idx)sizeof(T);
    char raw[2 * FN_BOUNCE_BYTES + 4096] __attribute__((aligned(64)));  /* two pieces, and the
                                                                            room to place them */
    T *buf = (T *)(raw + ((((uintptr_t)x + 2048) - (uintptr_t)raw) & 4095 & ~(uintptr_t)63));
    fn_idx c0, len, j, k, p0 = 0, pn = 0;
    for (c0 = 0, k = 0; c0 < n; c0 += len, k ^= 1) {
        len = n - c0 < CH ? n - c0 : CH;
        j = c0 / S;
        FN(fn_run_apply_at)(x + c0, buf + k * CH, len, S, j, (j + 1) * S - c0, MH, ML, A, B,
                            act, 0, pf);
        if (pn)  /* the piece before, streamed after this one's loads */
            FN(fn_put)(buf + (k ^ 1) * CH, y + p0, pn, 1);
        p0 = c0;
        pn = len;
    }
    if (pn) FN(fn_put)(buf + (k ^ 1) * CH, y + p0, pn, 1);
}

/* The run loop over np planes with the caller's coefficient arrays: fn_run_apply_in, or its
   bounce for a streaming y just past x. */
static inline __attribute__((always_inline)) void FN(fn_run_apply)(
    const T *x, T *y, fn_idx np, fn_idx S, const T *MH, const T *ML, const T *A, const T *B,
    int act, int nt, fn_idx pf)
{
    if (nt && fn_nt_alias(y, x))
        FN(fn_run_apply_bounce)(x, y, np, S, MH, ML, A, B, act, pf);
    else
        FN(fn_run_apply_in)(x, y, np, S, MH, ML, A, B, act, nt, pf);
}

/* A group-norm unit's np planes as one run: plane j normalized with r * w[j] and b[j] (the
   plane loop's a = r * w[c]), mean mh + ml; FN_RUN_PLANES planes a call of fn_run_apply. */
FN_HOT static void FN(fn_planes_apply)(const T *x, T *y, fn_idx np, fn_idx S, T mh, T ml, T r,
                                       const T *w, const T *b, int act, int nt, fn_idx pf)
{
    T MH[FN_RUN_PLANES], ML[FN_RUN_PLANES], A[FN_RUN_PLANES];
    fn_idx j0, k, m;
    for (k = 0; k < FN_RUN_PLANES && k < np; k++) {
        MH[k] = mh;
        ML[k] = ml;
    }
    for (j0 = 0; j0 < np; j0 += m) {
        m = np - j0 < FN_RUN_PLANES ? np - j0 : FN_RUN_PLANES;
        for (k = 0; k < m; k++) A[k] = r * w[j0 + k];
        FN(fn_run_apply)(x + j0 * S, y + j0 * S, m, S, MH, ML, A, b + j0, act, nt, pf);
    }
}

/* A sample's planes of consecutive batch-norm channels as one run, plane j with its own
   coefficients (the caller's arrays, np of each): the forward's y (fn_run_apply) and the
   backward's dx = (dy - Q[j]) * R[j] +
   ((x - MH[j]) - ML[j]) * B[j] (fn_seg_bwd_apply's form for one channel, P = 1: dy * 1 is dy).
   The plane loop's operations per value: the same bits. */
FN_HOT static void FN(fn_runs_apply)(const T *x, T *y, fn_idx np, fn_idx S, const T *MH,
                                     const T *ML, const T *A, const T *B, int act, int nt)
{
    FN(fn_run_apply)(x, y, np, S, MH, ML, A, B, act, nt, 0);
}

FN_HOT static void FN(fn_runs_bwd_apply)(const T *dy, const T *x, T *dx, fn_idx np, fn_idx S,
                                         const T *Q, const T *R, const T *MH, const T *ML,
                                         const T *B, int nt)
{
    const fn_idx n = np * S;
    fn_idx i = 0, j = 0, e = S, h = nt ? FN(fn_nt_head)(dx, n) : 0;
    T q = Q[0], r = R[0], mh = MH[0], ml = ML[0], bb = B[0];
    FN(vec) v;
#define FN_RUNS_SET (q = Q[j], r = R[j], mh = MH[j], ml = ML[j], bb = B[j])
#define FN_RUNS_ONE                                                                           \
    do {                                                                                      \
        FN_RUN_AT(i, FN_RUNS_SET);                                                            \
        dx[i] = (dy[i] - q) * r + FN_LO((x[i] - mh), ml) * bb;                                \
    } while (0)
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) FN_RUNS_ONE;
    while (i + FN_VL <= n) {
        FN_RUN_AT(i, FN_RUNS_SET);
        for (; i + FN_VL <= e; i += FN_VL) {  /* the vectors inside plane j */
            v = (FN_LDV(dy + i) - q) * r + FN_LO((FN_LDV(x + i) - mh), ml) * bb;
            FN(fn_vst)(dx + i, v, nt);
        }
        if (i < e && i + FN_VL <= n) {  /* the vector across its end */
            v = (FN_LDV(dy + i) - FN(fn_run_coef)(Q, i, j, e, S)) * FN(fn_run_coef)(R, i, j, e, S)
                + FN_LO((FN_LDV(x + i) - FN(fn_run_coef)(MH, i, j, e, S)),
                        FN(fn_run_coef)(ML, i, j, e, S)) * FN(fn_run_coef)(B, i, j, e, S);
            FN(fn_vst)(dx + i, v, nt);
            i += FN_VL;
        }
    }
    for (; i < n; i++) FN_RUNS_ONE;
#undef FN_RUNS_ONE
#undef FN_RUNS_SET
}

/* dx = (dy * w[j] - Q) * R + ((x - mh) - ml) * B over the np planes of S values of one run of
   a group-norm unit (fn_seg_bwd_apply's form for cb > 1: P = w[c]): the same operations per
   value as plane by plane. */
FN_HOT static void FN(fn_planes_bwd_apply)(const T *dy, const T *x, T *dx, fn_idx np,
                                           fn_idx S, const T *w, T Q, T R, T mh, T ml, T B,
                                           int nt, fn_idx pf)
{
    const fn_idx n = np * S;
    fn_idx i = 0, j = 0, e = S, h = nt ? FN(fn_nt_head)(dx, n) : 0;
    T P = w[0];
    FN(vec) v;
#define FN_RUN_ONE                                                                            \
    do {                                                                                      \
        FN_RUN_AT(i, P = w[j]);                                                               \
        dx[i] = (dy[i] * P - Q) * R + FN_LO((x[i] - mh), ml) * B;                             \
    } while (0)
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) FN_RUN_ONE;
    while (i + FN_VL <= n) {
        FN_RUN_AT(i, P = w[j]);
        for (; i + FN_VL <= e; i += FN_VL) {  /* the vectors inside plane j */
            if (pf) {
                __builtin_prefetch(dy + i + pf, 0, 2);
                __builtin_prefetch(x + i + pf, 0, 2);
            }
            v = (FN_LDV(dy + i) * P - Q) * R + FN_LO((FN_LDV(x + i) - mh), ml) * B;
            FN(fn_vst)(dx + i, v, nt);
        }
        if (i < e && i + FN_VL <= n) {  /* the vector across its end */
            v = (FN_LDV(dy + i) * FN(fn_run_coef)(w, i, j, e, S) - Q) * R
                + FN_LO((FN_LDV(x + i) - mh), ml) * B;
            FN(fn_vst)(dx + i, v, nt);
            i += FN_VL;
        }
    }
    for (; i < n; i++) FN_RUN_ONE;
#undef FN_RUN_ONE
}
#undef FN_RUN_AT

/* The mean as a T pair, m == mh + ml to within T rounding of ml: x - mh is exact near the
   mean, and (x - mh) - ml keeps what a single T would lose. */
static inline void FN(fn_split_mean)(double m, T *mh, T *ml)
{
    *mh = (T)m;
    *ml = (T)(m - (double)*mh);
}

/* Channels-last statistics of a unit from its per-column moments (R rows each, column c:
   mean[c], m2[c]): per group of cg columns the group's mean and 1 / sqrt(var + eps) into
   mean_out[j], rstd_out[j], and per column the apply's coefficients mh, ml (the split mean),
   a = rstd * w and bb = b. A group's moments from its columns' (all of count R) in two sums
   (fn_col_group_moments), where a chain of pairwise merges paid two divisions per column:
   instance norm (32, 2048, 7, 7) channels-last had 2048 groups of one column per unit, 49 rows
   each, and the chain cost a fifth of the forward. */
FN_HOT static void FN(fn_cols_unit_coef)(fn_idx R, fn_idx C, fn_idx cg,
                                         const double *restrict mean,
                                         const double *restrict m2, const T *restrict w,
                                         const T *restrict b, double eps,
                                         double *restrict mean_out, double *restrict rstd_out,
                                         T *restrict mh, T *restrict ml, T *restrict a,
                                         T *restrict bb)
{
    fn_idx j, c, G = C / cg;
    double gm, gm2, r;
    T h, l;
    for (j = 0; j < G; j++) {
        fn_col_group_moments(R, cg, mean + j * cg, m2 + j * cg, &gm, &gm2);
        r = 1.0 / sqrt(gm2 / ((double)R * (double)cg) + eps);
        mean_out[j] = gm;
        rstd_out[j] = r;
        FN(fn_split_mean)(gm, &h, &l);
        for (c = j * cg; c < (j + 1) * cg; c++) {
            mh[c] = h;
            ml[c] = l;
            a[c] = (T)(r * (double)w[c]);
        }
    }
    for (c = 0; c < C; c++) bb[c] = b[c];
}

#define FN_GROUP 8
/* fn_units_stats8 and fn_planes_bwd_sums take the units four float64 lanes at a time */
_Static_assert(FN_GROUP % 4 == 0, "FN_GROUP must be a multiple of 4");
/* The statistics of nr <= FN_GROUP units of n values from x, unit by unit: fn_seg_moments,
   merged into an empty state, fn_unit_finalize (the unit-by-unit schedule's operations). */
static inline __attribute__((always_inline)) void FN(fn_units_stats)(
    const T *x, fn_idx nr, fn_idx n, double eps, int rms, double *mean_out, double *rstd_out)
{
    double mo[3 * FN_GROUP], c, m, m2;
    fn_idx u;
    for (u = 0; u < nr; u++) {
        c = m = m2 = 0;
        FN(fn_seg_moments)(x + u * n, n, &c, &m, &m2);
        mo[3 * u] = mo[3 * u + 1] = mo[3 * u + 2] = 0;
        fn_chan_merge(&mo[3 * u], &mo[3 * u + 1], &mo[3 * u + 2], c, m, m2);
    }
    for (u = 0; u < nr; u++)
        fn_unit_finalize(mo[3 * u], mo[3 * u + 1], mo[3 * u + 2], eps, rms, &mean_out[u],
                         &rstd_out[u]);
}

/* Layer-norm (or RMS-norm) rows of n <= FN_BLK values, nr <= FN_GROUP of them, element-wise
   weight g and bias b: the statistics of every row, then their applies, with no call out of
   the clone but the apply's (tensors past GROUP_VEC_BYTES; in cache fn_units_group_fwd). */
FN_HOT static void FN(fn_rows_group_fwd)(const T *x, T *y, fn_idx nr, fn_idx n, const T *g,
                                         const T *b, double eps, int rms, double *mean_out,
                                         double *rstd_out, int act, int nt, fn_idx pf)
{
    fn_idx u;
    T mh, ml;
    FN(fn_units_stats)(x, nr, n, eps, rms, mean_out, rstd_out);
    for (u = 0; u < nr; u++) {
        FN(fn_split_mean)(mean_out[u], &mh, &ml);
        FN(fn_seg_apply_ew)(x + u * n, y + u * n, n, mh, ml, (T)rstd_out[u], g, b, act, nt, pf);
    }
}

/* fn_units_stats for nr <= FN_GROUP units of n <= FN_BLK values, side by side: each unit's
   sums in its own vectors (its pivot taken while the unit before it is summed), then their
   lane sums, the two merges into an empty state and fn_unit_finalize in float64 lanes, one
   unit a lane (fn_hsum4: fn_hsum's pairs), operation for operation, so the same bits. */
static inline __attribute__((always_inline)) void FN(fn_units_stats8)(
    const T *x, fn_idx nr, fn_idx n, double eps, int rms, double *mean_out, double *rstd_out)
{
    const FN(hd4) Z = {0};
    FN(hd4) t1[FN_GROUP], t2[FN_GROUP], s1, s2, kd, N = Z + (double)n, sq, m, m2, nn, d, q;
    double e1d[FN_GROUP], e2d[FN_GROUP], kdd[FN_GROUP];
    FN(fn_bm) st;
    T e1, e2, kn;
    fn_idx u, j, h, k;
    const T *p;
    kn = FN(fn_pivot)(x, n);
    for (u = 0; u < nr; u++) {
        p = x + u * n;
        st.a0 = st.a1 = st.q0 = st.q1 = (FN(vec)){0};
        st.K = kn;
        if (u + 1 < nr)  /* the next unit's pivot: its tree runs beside this unit's sums */
            kn = FN(fn_pivot)(p + n, n);
        FN(fn_bm_step_in)(&st, p, 0, FN(fn_bm_nv)(n));
        FN(fn_bm_tail)(&st, p, n, &e1, &e2);
        t1[u] = FN(fn_hsum_t)(&st.a0, &st.a1);
        t2[u] = FN(fn_hsum_t)(&st.q0, &st.q1);
        e1d[u] = (double)e1;
        e2d[u] = (double)e2;
        kdd[u] = (double)st.K;
    }
    for (; u < FN_GROUP; u++) {
        t1[u] = t2[u] = Z;
        e1d[u] = e2d[u] = kdd[u] = 0;
    }
    /* four units a step, one a float64 lane (32-byte vectors: registers in every clone) */
    for (h = 0; h < nr; h += 4) {
        /* fn_bm_end_in */
        s1 = FN(fn_hsum4_plus)(e1d + h, t1 + h);
        s2 = FN(fn_hsum4_plus)(e2d + h, t2 + h);
        kd = (FN(hd4)){kdd[h], kdd[h + 1], kdd[h + 2], kdd[h + 3]};
        sq = s1 * s1 / N;
        m = kd + s1 / N;
        q = s2 - sq;
        m2 = (FN(hd4))((FN(hl4))q & (q > Z));
        for (k = 0; k < 4 && h + k < nr; k++)
            if (sq[k] > 0.5 * s2[k]) {  /* the pivot far from the mean: the exact two-pass */
                double bm, bm2;
                FN(fn_block_moments_2p)(x + (h + k) * n, n, m[k], &bm, &bm2);
                m[k] = bm;
                m2[k] = bm2;
            }
        /* fn_seg_moments' merge into an empty state, then the caller's */
        for (j = 0; j < 2; j++) {
            nn = Z + N;
            d = m - Z;
            m = Z + d * (N / nn);
            m2 = Z + (m2 + d * d * (Z * N / nn));
        }
        /* fn_unit_finalize */
        q = rms ? m2 / N + m * m + eps : m2 / N + eps;
        for (k = 0; k < 4; k++) q[k] = sqrt(q[k]);
        q = 1.0 / q;
        for (k = 0; k < 4 && h + k < nr; k++) {
            mean_out[h + k] = rms ? 0 : m[k];
            rstd_out[h + k] = q[k];
        }
    }
}

/* Short one-sample units u0 .. u0 + nr - 1 (nr <= FN_GROUP) of n = cb * S values each, from x
   (the group's first unit; y likewise): layer-norm or RMS-norm rows (ew: element-wise weight w
   and bias b of S values), instance-norm planes (cb = 1) or group-norm units of cb
   planes (per-channel w and b, channel (u % ncb) * cb + j for plane j); n <= FN_BLK. The moments
   of every unit, then the statistics of all of them side by side, one unit per float64 lane,
   then the applies. Each unit's arithmetic is the unit-by-unit schedule's, operation for
   operation (fn_block_moments, two fn_chan_merge into an empty state, fn_unit_finalize,
   fn_split_mean, fn_seg_apply / fn_seg_apply_ew), so the same bits: the horizontal sums'
   trees by fn_hsum4 (the same pairs), the rest lane by lane. What it saves is the scalar
   chain each unit had between its moments and its apply: two trees of horizontal sums, about
   eight divisions and a square root (in a C probe, 7 x 7 float32 planes in L2: 52 ns a unit,
   15 of them the apply alone; side by side 37). vec = 0: the statistics unit by unit
   (fn_units_stats), for tensors past the caches (GROUP_VEC_BYTES). */
FN_HOT static void FN(fn_units_group_fwd)(const T *x, T *y, fn_idx u0, fn_idx nr, fn_idx ncb,
                                          fn_idx cb, fn_idx S, const T *w, const T *b, int ew,
                                          double eps, int rms, double *mean_out,
                                          double *rstd_out, int act, int nt, fn_idx pf,
                                          int vec)
{
    const fn_idx n = cb * S;
    fn_idx u, j, c, cu;
    T mh, ml, rt;
    const T *p;
    if (vec)
        FN(fn_units_stats8)(x, nr, n, eps, rms, mean_out, rstd_out);
    else
        FN(fn_units_stats)(x, nr, n, eps, rms, mean_out, rstd_out);
    cu = u0 % ncb;
    if (nt && !ew && act <= 1) {
        /* streaming: the group's planes as runs (fn_run_apply_in), not plane by plane with
           ordinary stores into every line two planes share */
        T MH[FN_RUN_PLANES], ML[FN_RUN_PLANES], A[FN_RUN_PLANES], B[FN_RUN_PLANES];
        fn_idx k = 0, p0 = 0;
        for (u = 0; u < nr; u++, cu = cu + 1 == ncb ? 0 : cu + 1) {
            FN(fn_split_mean)(mean_out[u], &mh, &ml);
            rt = (T)rstd_out[u];
            for (j = 0; j < cb; j++) {
                c = cu * cb + j;
                MH[k] = mh;
                ML[k] = ml;
                A[k] = rt * w[c];
                B[k] = b[c];
                if (++k == FN_RUN_PLANES || (u == nr - 1 && j == cb - 1)) {
                    FN(fn_run_apply_in)(x + p0 * S, y + p0 * S, k, S, MH, ML, A, B, act, nt,
                                        pf);
                    p0 += k;
                    k = 0;
                }
            }
        }
        return;
    }
    for (u = 0; u < nr; u++, cu = cu + 1 == ncb ? 0 : cu + 1) {
        FN(fn_split_mean)(mean_out[u], &mh, &ml);
        rt = (T)rstd_out[u];
        p = x + u * n;
        for (j = 0; j < cb; j++) {
            c = cu * cb + j;
            if (ew && act > 1)
                FN(fn_seg_apply_ew)(p + j * S, y + u * n + j * S, S, mh, ml, rt, w, b, act, nt,
                                    pf);
            else if (ew)
                FN(fn_seg_apply_ew_in)(p + j * S, y + u * n + j * S, S, mh, ml, rt, w, b, act,
                                       nt, pf);
            else if (act > 1)
                FN(fn_seg_apply)(p + j * S, y + u * n + j * S, S, mh, ml, rt * w[c], b[c], act,
                                 nt, pf);
            else
                FN(fn_seg_apply_in)(p + j * S, y + u * n + j * S, S, mh, ml, rt * w[c], b[c],
                                    act, nt, pf, 0);
        }
    }
}

/* The apply of a segment fused with moment steps of the next unit: y = fn_seg_apply's
   ((x - mh) - ml) * a + b (g == NULL) or fn_seg_apply_ew's (((x - mh) - ml) * a) * g[i] + bb[i],
   act 0 or 1 only; and the pairs of vectors [j0, j1) of xn into s, as fn_bm_step. One loop, so
   the next unit's loads go out between this segment's stores: back to back, the stores of an
   apply stall with no read in flight. The same operations as the separate calls: same bits. */
FN_HOT static void FN(fn_apply_bm)(const T *x, T *y, fn_idx n, T mh, T ml, T a, T b,
                                   const T *g, const T *bb, int act, int nt, FN(fn_bm) *s,
                                   const T *xn, fn_idx j0, fn_idx j1)
{
    FN(vec) a0 = s->a0, a1 = s->a1, q0 = s->q0, q1 = s->q1, d0, d1, v, u;
    T K = s->K, e;
    fn_idx i = 0, j = j0, h = nt ? FN(fn_nt_head)(y, n) : 0;
    if (h < 0) { nt = 0; h = 0; }
#define FN_AP1(k) (g ? FN_NORM_EW(x[k], mh, ml, a, g[k], bb[k]) : FN_NORM_CH(x[k], mh, ml, a, b))
#define FN_APV(k) (g ? FN_NORM_EW(FN_LDV(x + (k)), mh, ml, a, FN_LDV(g + (k)), FN_LDV(bb + (k))) \
                     : FN_NORM_CH(FN_LDV(x + (k)), mh, ml, a, b))
    for (; i < h; i++) {
        e = FN_AP1(i);
        y[i] = act ? FN_RELU(e) : e;
    }
    for (; i + 2 * FN_VL <= n && j < j1; i += 2 * FN_VL, j += 2 * FN_VL) {
        FN_BM_PAIR(xn + j);
        v = FN_APV(i);
        u = FN_APV(i + FN_VL);
        if (act) {
            v = FN(fn_vrelu)(v);
            u = FN(fn_vrelu)(u);
        }
        FN(fn_vst)(y + i, v, nt);
        FN(fn_vst)(y + i + FN_VL, u, nt);
    }
    for (; i + FN_VL <= n; i += FN_VL) {
        v = FN_APV(i);
        if (act) v = FN(fn_vrelu)(v);
        FN(fn_vst)(y + i, v, nt);
    }
    for (; i < n; i++) {
        e = FN_AP1(i);
        y[i] = act ? FN_RELU(e) : e;
    }
#undef FN_AP1
#undef FN_APV
    s->a0 = a0;
    s->a1 = a1;
    s->q0 = q0;
    s->q1 = q1;
    FN(fn_bm_step)(s, xn, j, j1);
}

/* Channels-last apply: y[r, c] = ((x[r, c] - mh[c]) - ml[c]) * a[c] + b[c]. Written with
   explicit vectors across C: a row is short (often 32 to 512 values), and the compiler's own
   vectorization would redo its aliasing checks and remainder loop on every row. Non-temporal
   stores only on rows that fn_nt_head lets stream from their start. */
/* fn_rows_apply for rows of K whole vectors (C = K * FN_VL, K <= 8: channels-last with up to
   128 float32 or 64 float64 channels): the coefficients are loaded once, into registers (at
   K = 8 the compiler keeps most of them there), instead of four loads per vector of output on
   every row; with K a constant the loop over it unrolls. Same operations, same bits. Measured
   on an AMD EPYC (Zen 4), batch norm channels-last forward / copy, K = 8 in the row loop
   (coefficients loaded per vector) vs here, same process, one thread: (32, 56, 56, 64) float64
   1.77 -> 1.48, (32, 56, 28, 128) float32 2.41 -> 1.97; a loop unrolled by 8 that still loads
   them gained nothing (1.76), and the same K in strips of 4 vectors over blocks of 8 to 64
   rows (coefficients in registers, rows read in two halves) lost: 2.7. */
static inline __attribute__((always_inline)) void FN(fn_rows_apply_k)(
    const T *x, T *y, fn_idx rows, const int K, const T *mh, const T *ml, const T *a,
    const T *b, int act, int nt)
{
    FN(vec) MH[8], ML[8], A[8], B[8], v;
    fn_idx r, k, C = K * FN_VL;
    const int desc = FN_DESC(fn_alias(y, x), rows * C * sizeof(T));
    const T *xr;
    T *yr;
    int j, ntr;
    for (j = 0; j < K; j++) {
        MH[j] = *(const FN(uvec) *)(mh + j * FN_VL);
        ML[j] = *(const FN(uvec) *)(ml + j * FN_VL);
        A[j] = *(const FN(uvec) *)(a + j * FN_VL);
        B[j] = *(const FN(uvec) *)(b + j * FN_VL);
    }
    for (k = 0; k < rows; k++) {  /* rows and their vectors last first when desc */
        r = desc ? rows - 1 - k : k;
        xr = x + r * C;
        yr = y + r * C;
        ntr = nt && FN(fn_nt_head)(yr, C) == 0;
        FN_VFOR(j, 0, K, 1, desc,
            v = FN_LO((*(const FN(uvec) *)(xr + j * FN_VL) - MH[j]), ML[j]) * A[j] + B[j];
            if (act) v = FN(fn_vrelu)(v);
            FN(fn_vst)(yr + j * FN_VL, v, ntr);
        );
    }
}

/* How many column tiles a pass over rows of C values takes down all its rows
   (fn_row_tile_bytes in _core.h), and their width *tw (values, whole vectors): tile_bytes
   where the rows are wider than it and than FN_ROW_TILE_MIN, there is more than one row and
   the stores are not streamed (a line split between two tiles would leave the
   write-combining buffer half full); else one tile of the whole row's vectors. Rows of 4 KiB
   run whole: float32 (4, 14, 14, 1024) backward with dx tiles of 2 KiB took 1.09-1.10 (batch)
   and 1.05-1.06 (instance) of the untiled time, group 0.96. */
#define FN_ROW_TILE_MIN 4096
static inline fn_idx FN(fn_row_tiles)(fn_idx rows, fn_idx C, int nt, long tile_bytes,
                                      fn_idx *tw)
{
    fn_idx cv = C - C % FN_VL, w = (fn_idx)(tile_bytes / (long)sizeof(T)) / FN_VL * FN_VL;
    const fn_idx rb = C * (fn_idx)sizeof(T);
    if (nt || rows < 2 || rb <= FN_ROW_TILE_MIN || rb <= tile_bytes || w < FN_VL) {
        *tw = cv > 0 ? cv : 1;
        return 1;
    }
    *tw = w;
    return (cv + w - 1) / w;
}

/* Tile t of nT of width tw over the vectors [0, cv): [*c0, *c1), the tiles last first when
   desc (as the rows and vectors go then). */
static inline void FN(fn_tile_span)(fn_idx t, fn_idx nT, fn_idx tw, fn_idx cv, int desc,
                                    fn_idx *c0, fn_idx *c1)
{
    *c0 = (desc ? nT - 1 - t : t) * tw;
    *c1 = cv - *c0 > tw ? *c0 + tw : cv;
}

FN_HOT static void FN(fn_rows_apply)(const T *x, T *y, fn_idx rows, fn_idx C, const T *mh,
                                     const T *ml, const T *a, const T *b, int act, int nt)
{
    fn_idx r, k, c, cv = C - C % FN_VL, L, tw, c0, c1, t, nT;
    T tl[4 * FN_LANES];
    const T *xr;
    T *yr;
    FN(vec) v;
    T u;
    int ntr, desc;
    if (act > 1) {
#if FN_IS_F32  /* whole rows into the buffer, then the activation over them as one run */
        float buf[FN_ACT_CHUNK] __attribute__((aligned(64)));
        fn_idx k = C <= FN_ACT_CHUNK ? FN_ACT_CHUNK / C : 0;
        if (k == 0) {  /* rows longer than the buffer: the activation in place, row by row */
            for (r = 0; r < rows; r++) {
                FN(fn_rows_apply)(x + r * C, y + r * C, 1, C, mh, ml, a, b, 0, 0);
                fn_act_buf_f32(y + r * C, y + r * C, C, act, 0);
            }
            return;
        }
        for (r = 0; r < rows; r += k) {
            if (k > rows - r) k = rows - r;
            FN(fn_rows_apply)(x + r * C, buf, k, C, mh, ml, a, b, 0, 0);
            fn_act_buf_f32(buf, y + r * C, k * C, act, nt);
        }
#else
        FN(fn_rows_apply)(x, y, rows, C, mh, ml, a, b, 0, nt);
        for (r = 0; r < rows * C; r++) y[r] = FN(fn_act)(y[r], act);
#endif
        return;
    }
    L = FN(fn_lanes)(C);
    if (L > 0 && rows >= L / C) {  /* rows * C / L rows of L lanes, coefficients tiled */
        const T *src[4] = {mh, ml, a, b};
        FN(fn_tile)(src, 4, C, L, tl);
        k = rows / (L / C);
        FN(fn_rows_apply)(x, y, k, L, tl, tl + L, tl + 2 * L, tl + 3 * L, act, nt);
        x += k * L;
        y += k * L;
        rows -= k * (L / C);
    }
    if (cv == C) {
        switch (C / FN_VL) {
        case 1: FN(fn_rows_apply_k)(x, y, rows, 1, mh, ml, a, b, act, nt); return;
        case 2: FN(fn_rows_apply_k)(x, y, rows, 2, mh, ml, a, b, act, nt); return;
        case 3: FN(fn_rows_apply_k)(x, y, rows, 3, mh, ml, a, b, act, nt); return;
        case 4: FN(fn_rows_apply_k)(x, y, rows, 4, mh, ml, a, b, act, nt); return;
        case 5: FN(fn_rows_apply_k)(x, y, rows, 5, mh, ml, a, b, act, nt); return;
        case 6: FN(fn_rows_apply_k)(x, y, rows, 6, mh, ml, a, b, act, nt); return;
        case 7: FN(fn_rows_apply_k)(x, y, rows, 7, mh, ml, a, b, act, nt); return;
        case 8: FN(fn_rows_apply_k)(x, y, rows, 8, mh, ml, a, b, act, nt); return;
        default: break;
        }
    }
    desc = FN_DESC(fn_alias(y, x), rows * C * sizeof(T));
    nT = FN(fn_row_tiles)(rows, C, nt, fn_row_tile_bytes, &tw);
    for (t = 0; t < nT; t++) {  /* column tiles [c0, c1) down all the rows */
        FN(fn_tile_span)(t, nT, tw, cv, desc, &c0, &c1);
        for (k = 0; k < rows; k++) {  /* rows and their vectors last first when desc */
            r = desc ? rows - 1 - k : k;
            xr = x + r * C;
            yr = y + r * C;
            ntr = nt && FN(fn_nt_head)(yr, C) == 0;
            FN_VFOR(c, c0, c1, FN_VL, desc,
                v = FN_LO((*(const FN(uvec) *)(xr + c) - *(const FN(uvec) *)(mh + c)),
                     *(const FN(uvec) *)(ml + c)) * *(const FN(uvec) *)(a + c)
                    + *(const FN(uvec) *)(b + c);
                if (act) v = FN(fn_vrelu)(v);
                FN(fn_vst)(yr + c, v, ntr);
            );
            if (c1 == cv)
                for (c = cv; c < C; c++) {
                    u = FN_LO((xr[c] - mh[c]), ml[c]) * a[c] + b[c];
                    yr[c] = act ? FN_RELU(u) : u;
                }
        }
    }
}

/* ---- backward --------------------------------------------------------------------------- */

/* One pair of vectors of dy (at d) and x (at xx) into the sums of g (s0, s1) and of
   g * ((x - mh) - ml) (t0, t1); shared by fn_seg_bwd_sums and fn_seg_bwd_sums2 so both give
   a plane the same bits. */
#define FN_BWD_PAIR(d, xx, s0, s1, t0, t1)                                                    \
    do {                                                                                      \
        FN(vec) g0_ = FN_LDV(d), g1_ = FN_LDV((d) + FN_VL);                                   \
        s0 += g0_;                                                                            \
        s1 += g1_;                                                                            \
        t0 += g0_ * FN_LO((FN_LDV(xx) - mh), ml);                                             \
        t1 += g1_ * FN_LO((FN_LDV((xx) + FN_VL) - mh), ml);                                   \
    } while (0)

/* The values of a block past its pairs of vectors, dy/x[i:n], i = n - n % (2 * FN_VL), as
   fn_bm_tail does for the moments: in vectors when n >= FN_VL (one whole into s0/t0, then the
   last vector's new lanes into s1/t1, the other lanes' terms zeroed), else one by one into
   *e1, *e2 (0 otherwise). */
static inline __attribute__((always_inline)) void FN(fn_bwd_tail)(
    const T *d, const T *xx, fn_idx n, T mh, T ml, FN(vec) *s0, FN(vec) *s1, FN(vec) *t0,
    FN(vec) *t1, T *e1, T *e2)
{
    fn_idx i = n - n % (2 * FN_VL);
    FN(vec) g;
    FN(iv) m;
    T u1 = 0, u2 = 0;
    if (n >= FN_VL && i < n) {
        if (n - i >= FN_VL) {
            g = FN_LDV(d + i);
            *s0 += g;
            *t0 += g * FN_LO((FN_LDV(xx + i) - mh), ml);
            i += FN_VL;
        }
        if (i < n) {
            m = FN(fn_tail_mask)(i, n);
            g = FN_LDV(d + n - FN_VL);
            *s1 += (FN(vec))((FN(iv))g & m);
            *t1 += (FN(vec))((FN(iv))(g * FN_LO((FN_LDV(xx + n - FN_VL) - mh), ml)) & m);
        }
        i = n;
    }
    for (; i < n; i++) {
        u1 += d[i];
        u2 += d[i] * FN_LO((xx[i] - mh), ml);
    }
    *e1 = u1;
    *e2 = u2;
}

/* Adds sum(dy) and sum(dy * (x - m)) over a contiguous segment to *sdy, *sdyx (float64),
   block by block, each block summed in vector lanes of T. */
static inline __attribute__((always_inline)) void FN(fn_seg_bwd_sums_in)(
    const T *dy, const T *x, fn_idx len, T mh, T ml, double *sdy, double *sdyx)
{
    FN(vec) a0, a1, b0, b1;
    T t1, t2;
    fn_idx i, n, nv;
    const T *d, *xx;
    for (; len > 0; len -= n, dy += n, x += n) {
        n = len < FN_BLK ? len : FN_BLK;
        nv = n - n % (2 * FN_VL);
        d = dy;
        xx = x;
        a0 = a1 = b0 = b1 = (FN(vec)){0};
        for (i = 0; i < nv; i += 2 * FN_VL) FN_BWD_PAIR(d + i, xx + i, a0, a1, b0, b1);
        FN(fn_bwd_tail)(d, xx, n, mh, ml, &a0, &a1, &b0, &b1, &t1, &t2);
        *sdy += (double)t1 + FN(fn_hsum)(&a0, &a1);
        *sdyx += (double)t2 + FN(fn_hsum)(&b0, &b1);
    }
}

FN_HOT static void FN(fn_seg_bwd_sums)(const T *dy, const T *x, fn_idx len, T mh, T ml,
                                       double *sdy, double *sdyx)
{
    FN(fn_seg_bwd_sums_in)(dy, x, len, mh, ml, sdy, sdyx);
}

/* fn_seg_bwd_sums of two planes of one unit at once (dya/xa and dyb/xb, equal lengths, the
   same mean): both planes' vectors in one loop, each into its own accumulators (its own bits),
   four read streams instead of two (see fn_seg_moments2). pd > 0: each step prefetches the
   line pd values ahead in all four, and past the planes' end the same offset into nxt[0..3]
   (the next pair's dy and x, or NULL): planes of a few KiB far apart are short streams the
   hardware prefetcher starts afresh (CHAN_ORDER_NOTE in _norm.pyx). */
FN_HOT static void FN(fn_seg_bwd_sums2)(const T *dya, const T *xa, const T *dyb, const T *xb,
                                        fn_idx len, T mh, T ml, double *sdya, double *sdyxa,
                                        double *sdyb, double *sdyxb, const T *const *nxt,
                                        fn_idx pd)
{
    FN(vec) a0, a1, b0, b1, c0, c1, e0, e1;
    T t1, t2, u1, u2;
    const T *base[4] = {dya, xa, dyb, xb};
    fn_idx i, n, nv, tot = len, g = 0, o;
    int j;
    for (; len > 0; len -= n, g += n, dya += n, xa += n, dyb += n, xb += n) {
        n = len < FN_BLK ? len : FN_BLK;
        nv = n - n % (2 * FN_VL);
        a0 = a1 = b0 = b1 = c0 = c1 = e0 = e1 = (FN(vec)){0};
        for (i = 0; i < nv; i += 2 * FN_VL) {
            if (pd) {
                o = g + i + pd;
                if (o < tot)
                    for (j = 0; j < 4; j++) __builtin_prefetch(base[j] + o, 0, 2);
                else if (nxt != NULL && o - tot < tot)
                    for (j = 0; j < 4; j++) __builtin_prefetch(nxt[j] + (o - tot), 0, 2);
            }
            FN_BWD_PAIR(dya + i, xa + i, a0, a1, b0, b1);
            FN_BWD_PAIR(dyb + i, xb + i, c0, c1, e0, e1);
        }
        FN(fn_bwd_tail)(dya, xa, n, mh, ml, &a0, &a1, &b0, &b1, &t1, &t2);
        FN(fn_bwd_tail)(dyb, xb, n, mh, ml, &c0, &c1, &e0, &e1, &u1, &u2);
        *sdya += (double)t1 + FN(fn_hsum)(&a0, &a1);
        *sdyxa += (double)t2 + FN(fn_hsum)(&b0, &b1);
        *sdyb += (double)u1 + FN(fn_hsum)(&c0, &c1);
        *sdyxb += (double)u2 + FN(fn_hsum)(&e0, &e1);
    }
}

/* dx = (dy * P - Q) * R + ((x - mh) - ml) * B over a contiguous segment.
   dx = r * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w. When a unit of statistics
   holds one channel, mean(g) = w * mean(dy) and the caller passes P = 1, Q = mean(dy),
   R = r * w; otherwise P = w, Q = mean(g), R = r. Either way the subtraction that cancels
   (a unit of one element, a constant dy) happens before the scaling by r, so it cancels
   exactly instead of leaving r * ulp(dy) behind. */
static inline __attribute__((always_inline)) void FN(fn_seg_bwd_apply_in)(
    const T *dy, const T *x, T *dx, fn_idx n, T P, T Q, T R, T mh, T ml, T B, int nt,
    fn_idx pf)
{
    fn_idx i = 0, nv, h = nt ? FN(fn_nt_head)(dx, n) : 0;
    const int desc = FN_DESC(fn_alias(dx, dy) | fn_alias(dx, x), n * sizeof(T));
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++) dx[i] = (dy[i] * P - Q) * R + FN_LO((x[i] - mh), ml) * B;
    nv = h + (n - h) / FN_VL * FN_VL;
    FN_VFOR(i, h, nv, FN_VL, desc,
        if (pf) {
            __builtin_prefetch(dy + i + pf, 0, 2);
            __builtin_prefetch(x + i + pf, 0, 2);
        }
        FN(fn_vst)(dx + i, (*(const FN(uvec) *)(dy + i) * P - Q) * R
                               + FN_LO((*(const FN(uvec) *)(x + i) - mh), ml) * B, nt);
    );
    for (i = nv; i < n; i++) dx[i] = (dy[i] * P - Q) * R + FN_LO((x[i] - mh), ml) * B;
}

FN_HOT static void FN(fn_seg_bwd_apply)(const T *dy, const T *x, T *dx, fn_idx n, T P, T Q,
                                        T R, T mh, T ml, T B, int nt, fn_idx pf)
{
    FN(fn_seg_bwd_apply_in)(dy, x, dx, n, P, Q, R, mh, ml, B, nt, pf);
}

/* One plane's backward sums (dy, x: S <= FN_BLK values; mean mh + ml) as fn_hsum4 takes
   them: the first level of its lanes' tree (*ta, *tb: fn_hsum_t) and the values past its
   pairs of vectors (*e1, *e2: fn_bwd_tail), the operations of fn_seg_bwd_sums_in. */
static inline __attribute__((always_inline)) void FN(fn_plane_bwd_lanes)(
    const T *d, const T *xx, fn_idx S, T mh, T ml, FN(hd4) *ta, FN(hd4) *tb, double *e1,
    double *e2)
{
    FN(vec) a0, a1, b0, b1;
    fn_idx i, nv = S - S % (2 * FN_VL);
    T t1, t2;
    a0 = a1 = b0 = b1 = (FN(vec)){0};
    for (i = 0; i < nv; i += 2 * FN_VL) FN_BWD_PAIR(d + i, xx + i, a0, a1, b0, b1);
    FN(fn_bwd_tail)(d, xx, S, mh, ml, &a0, &a1, &b0, &b1, &t1, &t2);
    *ta = FN(fn_hsum_t)(&a0, &a1);
    *tb = FN(fn_hsum_t)(&b0, &b1);
    *e1 = (double)t1;
    *e2 = (double)t2;
}

/* The sums of nplanes consecutive planes of S <= FN_BLK values of one unit (mean mh + ml) into
   psum[2j], psum[2j + 1], j < nplanes: per plane fn_seg_bwd_sums_in's vector lanes, their
   lane sums four planes side by side (fn_hsum4: fn_hsum's pairs), then the Cython
   schedule's two additions to a zero (plane_chunk_bwd_sums, then psum), so the same bits as
   one plane at a time. A group-norm unit of 64 planes of 7 x 7 paid two horizontal sums and a
   call a plane. */
FN_HOT static void FN(fn_planes_bwd_sums)(const T *dy, const T *x, fn_idx nplanes, fn_idx S, T mh,
                                          T ml, double *psum)
{
    const FN(hd4) Z = {0};
    FN(hd4) ta[FN_GROUP], tb[FN_GROUP], P1, P2;
    double e1[FN_GROUP], e2[FN_GROUP];
    fn_idx j0, j, k, h;
    for (j0 = 0; j0 < nplanes; j0 += FN_GROUP) {
        k = nplanes - j0 < FN_GROUP ? nplanes - j0 : FN_GROUP;
        for (j = 0; j < k; j++)
            FN(fn_plane_bwd_lanes)(dy + (j0 + j) * S, x + (j0 + j) * S, S, mh, ml, &ta[j],
                                   &tb[j], &e1[j], &e2[j]);
        for (; j < FN_GROUP; j++) {
            ta[j] = tb[j] = Z;
            e1[j] = e2[j] = 0;
        }
        for (h = 0; h < k; h += 4) {  /* four planes a step, one a float64 lane */
            P1 = Z + (Z + FN(fn_hsum4_plus)(e1 + h, ta + h));
            P2 = Z + (Z + FN(fn_hsum4_plus)(e2 + h, tb + h));
            for (j = h; j < k && j < h + 4; j++) {
                psum[2 * (j0 + j)] = P1[j - h];
                psum[2 * (j0 + j) + 1] = P2[j - h];
            }
        }
    }
}

/* Instance-norm planes (one-plane units) of at most FN_UNIT1_BWD_BYTES: fn_units_group_bwd's
   operations four units at a time, side by side where they are per unit: the four planes'
   sums each in its own vectors, their lane sums by fn_hsum4 (fn_hsum's pairs), psum and the
   coefficients cQ, cB in float64 lanes, one unit a lane (the two divisions one vector division
   each), then the four planes' dx. Every value has the unit-by-unit loop's operations, so its
   bits. What it saves is the scalar chain each unit had between its sums and its dx (two
   trees of horizontal sums, three products and two divisions). No prefetch: units this short
   stream well without it, and dx prefetching the next four planes lost (instance norm 16 x 16
   float32 of 12 MB, one thread: 1.14 against the unit-by-unit loop, 0.94 without). */
#define FN_UNIT1_BWD_BYTES 800
static inline __attribute__((always_inline)) void FN(fn_units1_bwd)(
    const T *dy, const T *x, T *dx, fn_idx u0, fn_idx u1, fn_idx ncb, fn_idx S, const T *w,
    const T *mhp, const T *mlp, const double *rstd, double *psum, T *cQ, T *cB, int frozen)
{
    const FN(hd4) Z = {0};
    const fn_div cnt = fn_div_by(S);
    FN(hd4) ta[4], tb[4], P1, P2, W, R, QB, QQ;
    double e1[4], e2[4];
    fn_idx u, h, k, j, c, ch = u0 % ncb;
    for (h = u0; h < u1; h += 4) {
        k = u1 - h < 4 ? u1 - h : 4;
        W = R = Z;
        for (j = 0, c = ch; j < k; j++, c = c + 1 == ncb ? 0 : c + 1) {
            u = h + j;
            FN(fn_plane_bwd_lanes)(dy + u * S, x + u * S, S, mhp[u], mlp[u], &ta[j], &tb[j],
                                   &e1[j], &e2[j]);
            W[j] = (double)w[c];
            R[j] = rstd[u];
        }
        for (; j < 4; j++) {
            ta[j] = tb[j] = Z;
            e1[j] = e2[j] = 0;
        }
        /* psum from zero, as fn_seg_bwd_sums_in adds to it; then the unit loop's sdy and
           sgx (from zero), cB = -r * r * r * sgx / cnt and cQ = sdy / cnt */
        P1 = Z + FN(fn_hsum4_plus)(e1, ta);
        P2 = Z + FN(fn_hsum4_plus)(e2, tb);
        QB = FN_DIV(cnt, -R * R * R * (Z + W * P2));
        QQ = FN_DIV(cnt, Z + P1);
        if (frozen) QB = QQ = Z;
        for (j = 0; j < k; j++) {
            psum[2 * (h + j)] = P1[j];
            psum[2 * (h + j) + 1] = P2[j];
            cB[h + j] = (T)QB[j];
            cQ[h + j] = (T)QQ[j];
        }
        for (j = 0; j < k; j++, ch = ch + 1 == ncb ? 0 : ch + 1) {
            u = h + j;
            FN(fn_seg_bwd_apply_in)(dy + u * S, x + u * S, dx + u * S, S, 1, cQ[u],
                                    (T)rstd[u] * w[ch], mhp[u], mlp[u], cB[u], 0, 0);
        }
    }
}

/* The backward of one-sample channel units u0 .. u1 - 1 (instance norm: cb = 1, one plane
   each; group norm: cb planes), planes of S <= FN_CHUNK values, ncb units per sample: per unit
   the sums of its planes into psum (two per plane), its coefficients cQ[u], cB[u] (the form of
   planes_unit_bwd_coef), then the dx of its planes (plane_chunk_bwd_apply's), in one loop: the
   operations of the Cython schedule (planes_unit_bwd_fused), so the same bits, without its
   calls per plane. mh, ml, rstd: per unit. dx with ordinary stores at any size: streamed (as
   runs across the planes, so that no line took both kinds) it measured slower, instance norm
   (32, 1024, 14, 14) float32 backward / copy 2.40 vs 1.82 at one thread, 1.96 vs 1.94 at two;
   with the store kind a parameter that is always 0, 1.04-1.05 (its branches stay in). */
FN_HOT static void FN(fn_units_group_bwd)(const T *dy, const T *x, T *dx, fn_idx u0, fn_idx u1,
                                          fn_idx ncb, fn_idx S, fn_idx cb, const T *w,
                                          const T *mh, const T *ml, const double *rstd,
                                          double *psum, T *cQ, T *cB, int frozen, fn_idx pf)
{
    fn_idx u, j, p, c, cu;
    double sdy, sg, sgx, s1, s2, r;
    const fn_div cnt = fn_div_by(cb * S);
    T rt;
    if (cb == 1 && S * (fn_idx)sizeof(T) <= FN_UNIT1_BWD_BYTES) {
        FN(fn_units1_bwd)(dy, x, dx, u0, u1, ncb, S, w, mh, ml, rstd, psum, cQ, cB, frozen);
        return;
    }
    /* Taking the next unit's sums between a unit's coefficients and its dx (software
       pipelining) lost: 1.01-1.04 on 7 x 7 planes, 1.18 on 14 x 14 (backward / copy, paired). */
    /* the channel index steps with the unit (no division a plane), the sums go to psum once
       from registers: group norm (256, 64, 7, 7) float32 backward 0.97-0.98 of the time */
    for (u = u0, cu = u0 % ncb; u < u1; u++, cu = cu + 1 == ncb ? 0 : cu + 1) {
        sdy = sg = sgx = 0;
        for (j = 0; j < cb; j++) {
            p = u * cb + j;
            c = cu * cb + j;
            s1 = s2 = 0;
            FN(fn_seg_bwd_sums_in)(dy + p * S, x + p * S, S, mh[u], ml[u], &s1, &s2);
            psum[2 * p] = s1;
            psum[2 * p + 1] = s2;
            sdy = sdy + s1;
            sg = sg + (double)w[c] * s1;
            sgx = sgx + (double)w[c] * s2;
        }
        r = rstd[u];
        cB[u] = (T)FN_DIV(cnt, -r * r * r * sgx);
        cQ[u] = (T)FN_DIV(cnt, cb == 1 ? sdy : sg);
        if (frozen) {
            cB[u] = 0;
            cQ[u] = 0;
        }
        rt = (T)r;
        for (j = 0; j < cb; j++) {
            p = u * cb + j;
            c = cu * cb + j;
            if (cb == 1)
                FN(fn_seg_bwd_apply_in)(dy + p * S, x + p * S, dx + p * S, S, 1, cQ[u],
                                        rt * w[c], mh[u], ml[u], cB[u], 0, pf);
            else
                FN(fn_seg_bwd_apply_in)(dy + p * S, x + p * S, dx + p * S, S, w[c], cQ[u], rt,
                                        mh[u], ml[u], cB[u], 0, pf);
        }
    }
}

/* Layer-norm row reduce over the same columns of NR rows (dy[k], x[k], k < NR). With
   xc = (x - mh[k]) - ml[k] and g = dy * w: sg[k] += sum(g) and sgx[k] += sum(g * xc), in
   vector lanes of T per FN_BLK block (even and odd vectors in two accumulators, so the add
   chains overlap), added to float64 per block; and dwa[i] += dy * xc * r[k], dba[i] += dy
   (the caller's T accumulators for dweight and dbias, flushed to float64 every few rows),
   the rows' terms in row order. A row's sums and every dwa/dba element have the same bits
   for any NR (NR = 1 is one row at a time); a larger NR loads w, dwa and dba (and stores dwa
   and dba) once per vector for NR rows instead of once per row. FR: dwa and dba start from
   zero instead of their contents (the same operations as zeroing them first: 0 + the first
   term, so the same bits), with no read of them. */
static inline __attribute__((always_inline)) void FN(fn_rowsn_bwd_sums_n)(
    const int NR, const int FR, const T *const *dyr, const T *const *xr, fn_idx len,
    const T *mhr, const T *mlr, const T *rr, const T *w, double *sg, double *sgx, T *dwa,
    T *dba)
{
    FN(vec) a0[4], b0[4], a1[4], b1[4], gv, dv, xc, gu, du, xu, wv, wu, sw, su, sb, sc;
    T t1, t2, e, d, tw, tb, mh[4], ml[4], r[4];
    const T *dy[4], *x[4];   /* local copies: no reload after every store to dwa/dba */
    fn_idx i, n, nv, o = 0;
    int k;
    for (k = 0; k < NR; k++) {
        dy[k] = dyr[k];
        x[k] = xr[k];
        mh[k] = mhr[k];
        ml[k] = mlr[k];
        r[k] = rr[k];
    }
    for (; len > 0; len -= n, o += n) {
        n = len < FN_BLK ? len : FN_BLK;
        nv = n - n % FN_VL;
        for (k = 0; k < NR; k++) a0[k] = b0[k] = a1[k] = b1[k] = (FN(vec)){0};
        /* one vector at a time (even vectors into a0/b0, odd into a1/b1, as the one-row
           function pairs them), so NR rows' accumulators and one vector's temporaries fit
           in the registers */
        for (i = 0; i + 2 * FN_VL <= nv; i += 2 * FN_VL) {
            wv = *(const FN(uvec) *)(w + o + i);
            if (FR) sw = (FN(vec)){0}; else sw = *(const FN(uvec) *)(dwa + o + i);
            if (FR) sb = (FN(vec)){0}; else sb = *(const FN(uvec) *)(dba + o + i);
            for (k = 0; k < NR; k++) {
                dv = *(const FN(uvec) *)(dy[k] + o + i);
                xc = FN_LO((*(const FN(uvec) *)(x[k] + o + i) - mh[k]), ml[k]);
                gv = dv * wv;
                a0[k] += gv;
                b0[k] += gv * xc;
                sw += (dv * xc) * r[k];
                sb += dv;
            }
            *(FN(uvec) *)(dwa + o + i) = sw;
            *(FN(uvec) *)(dba + o + i) = sb;
            wu = *(const FN(uvec) *)(w + o + i + FN_VL);
            if (FR) su = (FN(vec)){0}; else su = *(const FN(uvec) *)(dwa + o + i + FN_VL);
            if (FR) sc = (FN(vec)){0}; else sc = *(const FN(uvec) *)(dba + o + i + FN_VL);
            for (k = 0; k < NR; k++) {
                du = *(const FN(uvec) *)(dy[k] + o + i + FN_VL);
                xu = FN_LO((*(const FN(uvec) *)(x[k] + o + i + FN_VL) - mh[k]), ml[k]);
                gu = du * wu;
                a1[k] += gu;
                b1[k] += gu * xu;
                su += (du * xu) * r[k];
                sc += du;
            }
            *(FN(uvec) *)(dwa + o + i + FN_VL) = su;
            *(FN(uvec) *)(dba + o + i + FN_VL) = sc;
        }
        for (; i < nv; i += FN_VL) {
            wv = *(const FN(uvec) *)(w + o + i);
            if (FR) sw = (FN(vec)){0}; else sw = *(const FN(uvec) *)(dwa + o + i);
            if (FR) sb = (FN(vec)){0}; else sb = *(const FN(uvec) *)(dba + o + i);
            for (k = 0; k < NR; k++) {
                dv = *(const FN(uvec) *)(dy[k] + o + i);
                xc = FN_LO((*(const FN(uvec) *)(x[k] + o + i) - mh[k]), ml[k]);
                gv = dv * wv;
                a0[k] += gv;
                b0[k] += gv * xc;
                sw += (dv * xc) * r[k];
                sb += dv;
            }
            *(FN(uvec) *)(dwa + o + i) = sw;
            *(FN(uvec) *)(dba + o + i) = sb;
        }
        for (k = 0; k < NR; k++) {
            a0[k] += a1[k];
            b0[k] += b1[k];
        }
        for (k = 0; k < NR; k++) {
            t1 = 0;
            t2 = 0;
            for (fn_idx j = i; j < n; j++) {
                d = dy[k][o + j];
                e = FN_LO((x[k][o + j] - mh[k]), ml[k]);
                t1 += d * w[o + j];
                t2 += (d * w[o + j]) * e;
            }
            sg[k] += (double)t1 + FN(fn_hsum1)(&a0[k]);
            sgx[k] += (double)t2 + FN(fn_hsum1)(&b0[k]);
        }
        for (fn_idx j = i; j < n; j++) {
            tw = FR ? (T)0 : dwa[o + j];
            tb = FR ? (T)0 : dba[o + j];
            for (k = 0; k < NR; k++) {
                d = dy[k][o + j];
                e = FN_LO((x[k][o + j] - mh[k]), ml[k]);
                tw += (d * e) * r[k];
                tb += d;
            }
            dwa[o + j] = tw;
            dba[o + j] = tb;
        }
    }
}

/* fn_rowsn_bwd_sums_n for nr = 1..4 rows (sg, sgx: nr values each, added to); fresh: dwa and
   dba start from zero (FR). */
FN_HOT static void FN(fn_rowsn_bwd_sums)(int nr, const T *const *dy, const T *const *x,
                                        fn_idx len, const T *mh, const T *ml, const T *r,
                                        const T *w, double *sg, double *sgx, T *dwa, T *dba,
                                        int fresh)
{
#define FN_SUMS_NR(NR)                                                                        \
    do {                                                                                      \
        if (fresh)                                                                            \
            FN(fn_rowsn_bwd_sums_n)(NR, 1, dy, x, len, mh, ml, r, w, sg, sgx, dwa, dba);      \
        else                                                                                  \
            FN(fn_rowsn_bwd_sums_n)(NR, 0, dy, x, len, mh, ml, r, w, sg, sgx, dwa, dba);      \
    } while (0)
    switch (nr) {
    case 4: FN_SUMS_NR(4); break;
    case 3: FN_SUMS_NR(3); break;
    case 2: FN_SUMS_NR(2); break;
    default: FN_SUMS_NR(1); break;
    }
#undef FN_SUMS_NR
}

/* Layer-norm row dx: dx = (dy * w[i] - Q) * r + ((x - mh) - ml) * B, Q = mean(dy * w)
   (RMS norm: Q = mh = ml = 0). ds, when given, is added: the gradient that reaches x + residual
   from the residual stream itself. pf > 0: dy[i + pf] and x[i + pf] are prefetched into L2
   along the way (the next row). Down the addresses when dx sits just past an input in the page
   (fn_desc_hot: the row is in cache from its sums). */
static inline __attribute__((always_inline)) void FN(fn_row_bwd_apply_ew_in)(
    const T *dy, const T *x, T *dx, fn_idx n, const T *w, T Q, T r, T mh, T ml, T B,
    const T *ds, int nt, fn_idx pf)
{
    fn_idx i = 0, nv, h = nt ? FN(fn_nt_head)(dx, n) : 0;
    const int desc = fn_desc_hot(dx, dy, x, w, ds);
    FN(vec) v;
    if (h < 0) { nt = 0; h = 0; }
    for (; i < h; i++)
        dx[i] = ((dy[i] * w[i] - Q) * r + FN_LO((x[i] - mh), ml) * B) + (ds ? ds[i] : (T)0);
    nv = h + (n - h) / FN_VL * FN_VL;
    FN_VFOR(i, h, nv, FN_VL, desc,
        if (pf) {
            __builtin_prefetch(dy + i + pf, 0, 2);
            __builtin_prefetch(x + i + pf, 0, 2);
        }
        v = (*(const FN(uvec) *)(dy + i) * *(const FN(uvec) *)(w + i) - Q) * r
            + FN_LO((*(const FN(uvec) *)(x + i) - mh), ml) * B;
        if (ds) v = v + *(const FN(uvec) *)(ds + i);
        FN(fn_vst)(dx + i, v, nt);
    );
    for (i = nv; i < n; i++)
        dx[i] = ((dy[i] * w[i] - Q) * r + FN_LO((x[i] - mh), ml) * B) + (ds ? ds[i] : (T)0);
}

FN_HOT static void FN(fn_row_bwd_apply_ew)(const T *dy, const T *x, T *dx, fn_idx n,
                                           const T *w, T Q, T r, T mh, T ml, T B, const T *ds,
                                           int nt, fn_idx pf)
{
    FN(fn_row_bwd_apply_ew_in)(dy, x, dx, n, w, Q, r, mh, ml, B, ds, nt, pf);
}

/* Layer-norm (or RMS-norm) backward of nr short rows of n values (x, dy, dx at row stride n;
   mean, rstd, ds from the first of them): per row the sums (fn_rowsn_bwd_sums_n for one row,
   which also adds the row's dweight/dbias terms to dwa, dba), then its dx
   (fn_row_bwd_apply_ew), in one loop with no call out of the clone: the Cython schedule's
   operations (rows_bwd for one row), so the same bits, without its calls and pointer set-up
   per row. */
FN_HOT static void FN(fn_rows_group_bwd)(const T *dy, const T *x, T *dx, fn_idx nr, fn_idx n,
                                         const T *w, const double *mean, const double *rstd,
                                         int rms, T *dwa, T *dba, const T *ds, int nt,
                                         fn_idx pf)
{
    fn_idx u;
    const T *dyu, *xu;
    T mh, ml, rr;
    const fn_div len = fn_div_by(n);
    double sg, sgx, r;
    for (u = 0; u < nr; u++) {
        dyu = dy + u * n;
        xu = x + u * n;
        r = rstd[u];
        rr = (T)r;
        sg = sgx = 0;
        FN(fn_split_mean)(mean[u], &mh, &ml);
        FN(fn_rowsn_bwd_sums_n)(1, 0, &dyu, &xu, n, &mh, &ml, &rr, w, &sg, &sgx, dwa, dba);
        FN(fn_row_bwd_apply_ew_in)(dyu, xu, dx + u * n, n, w, (T)(rms ? 0 : FN_DIV(len, sg)),
                                   rr, mh, ml, (T)FN_DIV(len, -r * r * r * sgx),
                                   ds ? ds + u * n : NULL, nt, pf);
    }
}

/* fn_row_bwd_apply_ew over the same columns of NR rows (k < NR: dy[k], x[k], dx[k], ds[k] when
   ds is not NULL, and the row's Q, r, mh, ml, B), every element with the bits of the one-row
   function. The rows go by FN_ROWS_RUN vectors at a time (one row's run, then the same
   columns of the next), so w comes from L1 for all but the first. One vector of every row in
   turn put the rows' loads and stores at the same offsets within their pages whenever a row
   is a whole number of pages (4 KiB aliasing): layer norm over (64, 56, 56), float32, bwd /
   copy at one thread 2.9 -> 3.8, while with 57 columns it gained (3.39 -> 2.97). Runs of 8,
   16 and 32 vectors, against the one-row sweep (same process, the two builds alternating,
   median of the paired ratios new / old; identical builds read 0.99-1.00): 8 gained most in
   cache (float32 (32, 28, 28) samples 0.91 / 0.93 at one / two threads) but lost on rows of
   64-128 KiB (float32 (1024, 16384) 1.01 / 1.03, float64 (512, 16384) 1.01 / 1.03); 32 lost
   in cache at two threads (1.05); 16: in cache 0.96 / 0.95, those rows 0.99 / 1.01-1.03 and
   0.99 / 1.02, the (64, 56, 56) samples 0.95 / 0.90 float32, 0.95 / 0.98 float64. With nt,
   the rows' dx must reach a 64-byte boundary after the same number of elements (the caller
   checks). */
static inline __attribute__((always_inline)) void FN(fn_rowsn_bwd_apply_ew_n)(
    const int NR, const T *const *dyr, const T *const *xr, T *const *dxr, fn_idx n,
    const T *w, const T *Qr, const T *rr, const T *mhr, const T *mlr, const T *Br,
    const T *const *dsr, int nt)
{
    const T *dy[4], *x[4], *ds[4];
    T *dx[4], Q[4], r[4], mh[4], ml[4], B[4];
    fn_idx i, j, e, q, nq, nv, h = nt ? FN(fn_nt_head)(dxr[0], n) : 0;
    const fn_idx run = FN_ROWS_RUN * FN_VL;
    FN(vec) v;
    int k, m, al = 0, desc;
    if (h < 0) { nt = 0; h = 0; }
    for (k = 0; k < NR; k++) {
        dy[k] = dyr[k];
        x[k] = xr[k];
        dx[k] = dxr[k];
        ds[k] = dsr ? dsr[k] : NULL;
        Q[k] = Qr[k];
        r[k] = rr[k];
        mh[k] = mhr[k];
        ml[k] = mlr[k];
        B[k] = Br[k];
    }
    for (k = 0; k < NR; k++) {
        al |= fn_alias(dx[k], w);
        for (m = 0; m < NR; m++)
            al |= fn_alias(dx[k], dy[m]) | fn_alias(dx[k], x[m]) | fn_alias(dx[k], ds[m]);
    }
    desc = FN_DESC(al, n * sizeof(T));
    for (k = 0; k < NR; k++)
        for (i = 0; i < h; i++)
            dx[k][i] = ((dy[k][i] * w[i] - Q[k]) * r[k] + FN_LO((x[k][i] - mh[k]), ml[k]) * B[k])
                       + (ds[k] ? ds[k][i] : (T)0);
    nv = h + (n - h) / FN_VL * FN_VL;
    nq = (nv - h + run - 1) / run;
    for (q = 0; q < nq; q++) {  /* the runs, last first when desc */
        i = h + (desc ? nq - 1 - q : q) * run;
        e = nv - i < run ? nv : i + run;
        for (k = 0; k < NR; k++)
            FN_VFOR(j, i, e, FN_VL, desc,
                v = (*(const FN(uvec) *)(dy[k] + j) * *(const FN(uvec) *)(w + j) - Q[k]) * r[k]
                    + FN_LO((*(const FN(uvec) *)(x[k] + j) - mh[k]), ml[k]) * B[k];
                if (ds[k]) v = v + *(const FN(uvec) *)(ds[k] + j);
                FN(fn_vst)(dx[k] + j, v, nt);
            );
    }
    for (k = 0; k < NR; k++)
        for (j = nv; j < n; j++)
            dx[k][j] = ((dy[k][j] * w[j] - Q[k]) * r[k] + FN_LO((x[k][j] - mh[k]), ml[k]) * B[k])
                       + (ds[k] ? ds[k][j] : (T)0);
}

/* fn_rowsn_bwd_apply_ew_n for nr = 1..4 rows. */
FN_HOT static void FN(fn_rowsn_bwd_apply_ew)(int nr, const T *const *dy, const T *const *x,
                                            T *const *dx, fn_idx n, const T *w, const T *Q,
                                            const T *r, const T *mh, const T *ml, const T *B,
                                            const T *const *ds, int nt)
{
    switch (nr) {
    case 4: FN(fn_rowsn_bwd_apply_ew_n)(4, dy, x, dx, n, w, Q, r, mh, ml, B, ds, nt); break;
    case 3: FN(fn_rowsn_bwd_apply_ew_n)(3, dy, x, dx, n, w, Q, r, mh, ml, B, ds, nt); break;
    case 2: FN(fn_rowsn_bwd_apply_ew_n)(2, dy, x, dx, n, w, Q, r, mh, ml, B, ds, nt); break;
    default: FN(fn_rowsn_bwd_apply_ew_n)(1, dy, x, dx, n, w, Q, r, mh, ml, B, ds, nt); break;
    }
}

/* s = x + r (the residual stream of a fused add + norm). */
FN_HOT static void FN(fn_seg_add)(const T *x, const T *r, T *s, fn_idx n)
{
    fn_idx i;
    for (i = 0; i < n; i++) s[i] = x[i] + r[i];
}

/* ---- fused residual add (s = x + r, then normalize s) ------------------------------------
   The statistics pass forms s block by block in an L1 buffer and only reads x and r; the
   apply pass forms s again, stores it (streamed when nt) and normalizes it from the buffer.
   So s is written once, without a read for ownership, and never read back from memory: the
   op moves x, r, s and y once each when a unit fits in cache. The blocks are fn_seg_moments'
   blocks, so the statistics have the bits they would have over a stored s. */
static void FN(fn_seg_add_moments)(const T *x, const T *r, fn_idx len, double *n, double *mean,
                                   double *m2)
{
    T buf[FN_BLK] __attribute__((aligned(64)));
    fn_idx i, b;
    double bm, bm2;
    for (i = 0; i < len; i += FN_BLK) {
        b = len - i < FN_BLK ? len - i : FN_BLK;
        FN(fn_seg_add)(x + i, r + i, buf, b);
        FN(fn_block_moments)(buf, b, &bm, &bm2);
        fn_chan_merge(n, mean, m2, (double)b, bm, bm2);
    }
}

/* d[0:n] = s[0:n], streamed when nt and d allows it (fn_put). */
FN_HOT static void FN(fn_seg_store)(const T *s, T *d, fn_idx n, int nt)
{
    FN(fn_put)(s, d, n, nt);
}

/* s = x + r stored, and y = the apply of s: per channel (g == NULL: scale a, shift b) or
   element-wise (y = ((s - mh) - ml) * a * g[i] + bb[i]). */
static void FN(fn_seg_apply_res)(const T *x, const T *r, T *s, T *y, fn_idx len, T mh, T ml,
                                 T a, T b, const T *g, const T *bb, int act, int nt)
{
    T buf[FN_BLK] __attribute__((aligned(64)));
    fn_idx i, m;
    for (i = 0; i < len; i += m) {
        m = len - i < FN_BLK ? len - i : FN_BLK;
        FN(fn_seg_add)(x + i, r + i, buf, m);
        FN(fn_seg_store)(buf, s + i, m, nt);
        if (g)
            FN(fn_seg_apply_ew)(buf, y + i, m, mh, ml, a, g + i, bb + i, act, nt, 0);
        else
            FN(fn_seg_apply)(buf, y + i, m, mh, ml, a, b, act, nt, 0);
    }
}

#define FN_BWD_TILE ((fn_idx)(8192 / sizeof(T)))
/* fn_rows_bwd_sums_grp over every column of one block (in L1). */
static inline __attribute__((always_inline)) void FN(fn_rows_bwd_sums_blk)(
    const T *dy, const T *x, fn_idx rows, fn_idx ns, fn_idx qs, fn_idx C, const T *mh,
    const T *ml, double *sdy, double *sdyx)
{
    fn_idx r, k, c, o, cv = C - C % FN_VL, c0, c1, m, idx[FN_COL_STREAMS];
    T u1, u2;
    if (cv > (FN_IS_F32 ? 2 * FN_CG : FN_CGM) * FN_VL) {
        /* rows wider than the sweep's registers: row by row, FN_BWD_TILE columns at a time,
           the sums in L1 (as fn_col_sums; the same additions in the same order per column as
           fn_rows_bwd_sums_grp, so the same bits). The streams' rows (or four rows of one
           stream) go by together, each vector of the sums loaded and stored once for them.
           The sweeps read 4 lines of each row per group of 8 vectors, a stride of a row
           apart. On an AMD EPYC (Zen 4), one thread, group / instance norm channels-last
           backward / copy, old / new build on the same arrays: float32 (32, 2048, 7, 7)
           8.55 / 8.36 -> 6.08 / 5.82, (32, 512, 14, 14) 6.84 / 6.34 -> 4.75 / 5.19; float64
           (32, 1024, 7, 7) 8.35 / 7.93 -> 6.43 / 5.72; (8, 256, 28, 28) float32 unchanged
           (5.75 / 5.41 -> 5.53 / 5.82). */
        T ta[FN_BWD_TILE] __attribute__((aligned(64)));
        T tb[FN_BWD_TILE] __attribute__((aligned(64)));
        const T *dk[FN_COL_STREAMS], *xk[FN_COL_STREAMS];
        FN(vec) a, b, g;
        for (c0 = 0; c0 < cv; c0 += FN_BWD_TILE) {
            c1 = cv - c0 < FN_BWD_TILE ? cv : c0 + FN_BWD_TILE;
            for (c = 0; c < c1 - c0; c++) ta[c] = tb[c] = 0;
            for (r = 0; r < rows; r += fn_col_step(ns)) {
                m = fn_col_rows_at(r, rows, ns, qs, idx);
                for (k = 0; k < m; k++) {
                    dk[k] = dy + idx[k] * C;
                    xk[k] = x + idx[k] * C;
                }
                for (c = c0; c < c1; c += FN_VL) {
                    a = FN_LDV(ta + (c - c0));
                    b = FN_LDV(tb + (c - c0));
                    for (k = 0; k < m; k++) {
                        g = FN_LDV(dk[k] + c);
                        a += g;
                        b += g * FN_LO((FN_LDV(xk[k] + c) - FN_LDV(mh + c)), FN_LDV(ml + c));
                    }
                    *(FN(uvec) *)(ta + (c - c0)) = a;
                    *(FN(uvec) *)(tb + (c - c0)) = b;
                }
            }
            for (c = c0; c < c1; c++) {
                sdy[c] += ta[c - c0];
                sdyx[c] += tb[c - c0];
            }
        }
    } else {
#define FN_BSG(nv) FN(fn_rows_bwd_sums_grp)(dy, x, rows, ns, qs, C, mh, ml, sdy, sdyx, c, nv)
#define FN_BSG16(nv) FN(fn_rows_bwd_sums_grp16)(dy, x, rows, ns, qs, C, mh, ml, sdy, sdyx, c, nv)
        FN_COL_SWEEPS(FN_BSG, FN_BSG16);
#undef FN_BSG16
#undef FN_BSG
    }
    for (c = cv; c < C; c++) {
        u1 = 0;
        u2 = 0;
        for (r = 0; r < rows; r++)
            for (k = 0; k < ns; k++) {
                o = (r + k * qs) * C + c;
                u1 += dy[o];
                u2 += dy[o] * FN_LO((x[o] - mh[c]), ml[c]);
            }
        sdy[c] += u1;
        sdyx[c] += u2;
    }
}

/* Channels-last reduce of x[rows, C] and dy: sdy[c] += sum(dy), sdyx[c] += sum(dy * (x - m))
   per column, in blocks of about rb rows with float32 partials, the rows swept as
   FN_COL_STREAMS streams in the blocks of fn_seg_col_moments. */
FN_HOT static void FN(fn_rows_bwd_sums)(const T *dy, const T *x, fn_idx rows, fn_idx C,
                                        fn_idx rb, const T *mh, const T *ml, double *sdy,
                                        double *sdyx)
{
    const fn_idx ns = FN_COL_STREAMS, sb = rb / FN_COL_STREAMS, qs = fn_col_run_rows(rows, rb);
    const fn_idx L = FN(fn_lanes)(C);
    fn_idx r, b, c, j;
    if (L > 0 && rows >= L / C) {  /* rows * C / L rows of L lanes (see fn_lanes), folded */
        T tl[2 * FN_LANES];
        double ls[FN_LANES], lq[FN_LANES];
        const T *src[2] = {mh, ml};
        FN(fn_tile)(src, 2, C, L, tl);
        for (j = 0; j < L; j++) ls[j] = lq[j] = 0;
        b = rows / (L / C);
        FN(fn_rows_bwd_sums)(dy, x, b, L, fn_col_block_rows(L), tl, tl + L, ls, lq);
        for (c = 0; c < C; c++)
            for (j = c; j < L; j += C) {
                sdy[c] += ls[j];
                sdyx[c] += lq[j];
            }
        if (b * (L / C) < rows)
            FN(fn_rows_bwd_sums)(dy + b * L, x + b * L, rows - b * (L / C), C, rb, mh, ml, sdy,
                                 sdyx);
        return;
    }
    for (r = 0; r < qs; r += sb)
        FN(fn_rows_bwd_sums_blk)(dy + r * C, x + r * C, sb, ns, qs, C, mh, ml, sdy, sdyx);
    for (r = ns * qs; r < rows; r += rb) {
        b = rows - r < rb ? rows - r : rb;
        FN(fn_rows_bwd_sums_blk)(dy + r * C, x + r * C, b, 1, 0, C, mh, ml, sdy, sdyx);
    }
}

/* Channels-last dx: dx[r, c] = (dy * P[c] - Q[c]) * R[c] + ((x - mh[c]) - ml[c]) * B[c]
   (see fn_seg_bwd_apply). P NULL: every P[c] is 1 (statistics per channel: batch and instance
   norm), and dy is taken as it is (dy * 1 is dy: the same bits). */
static inline __attribute__((always_inline)) void FN(fn_rows_bwd_apply_k)(
    const T *dy, const T *x, T *dx, fn_idx rows, const int K, const T *P, const T *Q,
    const T *R, const T *mh, const T *ml, const T *B, int nt)
{
    /* coefficients in registers, as fn_rows_apply_k (K <= 8: float64 channels-last with 64
       channels, bwd / copy, one thread, two threads: 2.69 -> 2.53, 3.43 -> 3.10) */
    FN(vec) VP[8], VQ[8], VR[8], MH[8], ML[8], VB[8];
    fn_idx r, k, C = K * FN_VL;
    const int desc = FN_DESC(fn_alias(dx, dy) | fn_alias(dx, x), rows * C * sizeof(T));
    const T *xr, *dr;
    T *o;
    int j, ntr;
    for (j = 0; j < K; j++) {
        VP[j] = (FN(vec)){0} + (T)1;
        if (P) VP[j] = *(const FN(uvec) *)(P + j * FN_VL);
        VQ[j] = *(const FN(uvec) *)(Q + j * FN_VL);
        VR[j] = *(const FN(uvec) *)(R + j * FN_VL);
        MH[j] = *(const FN(uvec) *)(mh + j * FN_VL);
        ML[j] = *(const FN(uvec) *)(ml + j * FN_VL);
        VB[j] = *(const FN(uvec) *)(B + j * FN_VL);
    }
    for (k = 0; k < rows; k++) {  /* rows and their vectors last first when desc */
        r = desc ? rows - 1 - k : k;
        xr = x + r * C;
        dr = dy + r * C;
        o = dx + r * C;
        ntr = nt && FN(fn_nt_head)(o, C) == 0;
        FN_VFOR(j, 0, K, 1, desc,
            FN(fn_vst)(o + j * FN_VL,
                       (*(const FN(uvec) *)(dr + j * FN_VL) * VP[j] - VQ[j]) * VR[j]
                       + FN_LO((*(const FN(uvec) *)(xr + j * FN_VL) - MH[j]), ML[j]) * VB[j], ntr);
        );
    }
}

FN_HOT static void FN(fn_rows_bwd_apply)(const T *dy, const T *x, T *dx, fn_idx rows, fn_idx C,
                                         const T *P, const T *Q, const T *R, const T *mh,
                                         const T *ml, const T *B, int nt)
{
    fn_idx r, k, c, cv = C - C % FN_VL, L = FN(fn_lanes)(C), tw, c0, c1, t, nT;
    const T *xr, *dr;
    T *o, tl[6 * FN_LANES];
    int desc, ntr;
    if (L > 0 && rows >= L / C) {  /* rows * C / L rows of L lanes, coefficients tiled */
        const T *src[6] = {P, Q, R, mh, ml, B};
        FN(fn_tile)(src, 6, C, L, tl);
        k = rows / (L / C);
        FN(fn_rows_bwd_apply)(dy, x, dx, k, L, P ? tl : NULL, tl + L, tl + 2 * L, tl + 3 * L,
                              tl + 4 * L, tl + 5 * L, nt);
        dy += k * L;
        x += k * L;
        dx += k * L;
        rows -= k * (L / C);
    }
    desc = FN_DESC(fn_alias(dx, dy) | fn_alias(dx, x), rows * C * sizeof(T));
    if (cv == C) {
        switch (C / FN_VL) {
        case 1: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 1, P, Q, R, mh, ml, B, nt); return;
        case 2: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 2, P, Q, R, mh, ml, B, nt); return;
        case 3: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 3, P, Q, R, mh, ml, B, nt); return;
        case 4: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 4, P, Q, R, mh, ml, B, nt); return;
        case 5: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 5, P, Q, R, mh, ml, B, nt); return;
        case 6: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 6, P, Q, R, mh, ml, B, nt); return;
        case 7: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 7, P, Q, R, mh, ml, B, nt); return;
        case 8: FN(fn_rows_bwd_apply_k)(dy, x, dx, rows, 8, P, Q, R, mh, ml, B, nt); return;
        default: break;
        }
    }
    /* wider rows load their coefficients per vector: without P, one load and one product
       fewer. Batch norm channels-last bwd / copy, one thread: same process, float32
       (32, 28, 28, 256) 3.73 -> 3.58, float64 (32, 28, 28, 128) 3.59 -> 3.05, (32, 14, 14,
       512) float32 5.57 -> 5.21; alternating builds, two rounds each, float64 3.33 / 3.54 ->
       3.03 / 3.27, float32 within the noise (3.49 / 3.49 -> 3.40 / 3.62). */
    nT = FN(fn_row_tiles)(rows, C, nt, fn_dx_tile_values * (long)sizeof(T), &tw);
    for (t = 0; t < nT; t++) {  /* column tiles [c0, c1) down all the rows */
        FN(fn_tile_span)(t, nT, tw, cv, desc, &c0, &c1);
        for (k = 0; k < rows; k++) {  /* rows and their vectors last first when desc */
            r = desc ? rows - 1 - k : k;
            xr = x + r * C;
            dr = dy + r * C;
            o = dx + r * C;
            ntr = nt && FN(fn_nt_head)(o, C) == 0;
            if (!P) {
                FN_VFOR(c, c0, c1, FN_VL, desc,
                    FN(fn_vst)(o + c,
                               (*(const FN(uvec) *)(dr + c) - *(const FN(uvec) *)(Q + c))
                               * *(const FN(uvec) *)(R + c)
                               + FN_LO((*(const FN(uvec) *)(xr + c)
                                        - *(const FN(uvec) *)(mh + c)),
                                       *(const FN(uvec) *)(ml + c))
                                 * *(const FN(uvec) *)(B + c),
                               ntr);
                );
                if (c1 == cv)
                    for (c = cv; c < C; c++)
                        o[c] = (dr[c] - Q[c]) * R[c] + FN_LO((xr[c] - mh[c]), ml[c]) * B[c];
                continue;
            }
            FN_VFOR(c, c0, c1, FN_VL, desc,
                FN(fn_vst)(o + c,
                           (*(const FN(uvec) *)(dr + c) * *(const FN(uvec) *)(P + c)
                            - *(const FN(uvec) *)(Q + c)) * *(const FN(uvec) *)(R + c)
                           + FN_LO((*(const FN(uvec) *)(xr + c) - *(const FN(uvec) *)(mh + c)),
                              *(const FN(uvec) *)(ml + c)) * *(const FN(uvec) *)(B + c), ntr);
            );
            if (c1 == cv)
                for (c = cv; c < C; c++)
                    o[c] = (dr[c] * P[c] - Q[c]) * R[c]
                           + FN_LO((xr[c] - mh[c]), ml[c]) * B[c];
        }
    }
}

/* Whether each of four rows of L values at o + e * ld streams its stores, as fn_rows_apply and
   fn_rows_bwd_apply would decide for that row alone (a row streams from its start or not at
   all). */
static inline void FN(fn_nt_rows4)(const T *o, fn_idx ld, fn_idx L, int nt, int *ntr)
{
    int e;
    for (e = 0; e < 4; e++) ntr[e] = nt && FN(fn_nt_head)(o + e * ld, L) == 0;
}

/* fn_rows_apply over rows of L values at a stride of ld (the planes of small batch-norm
   channels, sample by sample): four rows per load of the column's coefficients when act is
   0 or 1, each value with the row loop's operations (the same bits), each row streamed or
   not as fn_rows_apply would stream it alone. */
FN_HOT static void FN(fn_planes_col_apply)(const T *x, T *y, fn_idx rows, fn_idx ld, fn_idx L,
                                           const T *mh, const T *ml, const T *a, const T *b,
                                           int act, int nt)
{
    fn_idx r = 0, c, e, cv = L - L % FN_VL;
    int ntr[4];
    FN(vec) m, lo, va, vb, v[4];
    const T *xr;
    T *o, u;
    if (act <= 1 && fn_col_rows4(ld * (fn_idx)sizeof(T), L * (fn_idx)sizeof(T)))
        for (; r + 4 <= rows; r += 4) {
            xr = x + r * ld;
            o = y + r * ld;
            FN(fn_nt_rows4)(o, ld, L, nt, ntr);
            for (c = 0; c < cv; c += FN_VL) {
                m = FN_LDV(mh + c);
                lo = FN_LDV(ml + c);
                va = FN_LDV(a + c);
                vb = FN_LDV(b + c);
                for (e = 0; e < 4; e++) {  /* the four rows' loads before any store */
                    v[e] = FN_LO((FN_LDV(xr + e * ld + c) - m), lo) * va + vb;
                    if (act) v[e] = FN(fn_vrelu)(v[e]);
                }
                for (e = 0; e < 4; e++) FN(fn_vst)(o + e * ld + c, v[e], ntr[e]);
            }
            for (e = 0; e < 4; e++)
                for (c = cv; c < L; c++) {
                    u = FN_LO((xr[e * ld + c] - mh[c]), ml[c]) * a[c] + b[c];
                    o[e * ld + c] = act ? FN_RELU(u) : u;
                }
        }
    for (; r < rows; r++)
        FN(fn_rows_apply)(x + r * ld, y + r * ld, 1, L, mh, ml, a, b, act, nt);
}

/* fn_rows_bwd_apply (P = NULL) over rows of L values at a stride of ld (the planes of small
   batch-norm channels, sample by sample): four rows per load of the column's coefficients,
   each row's values with the row loop's operations (the same bits), each row streamed or not
   as fn_rows_bwd_apply would stream it alone. Rows that fn_rows_bwd_apply would take down the
   addresses (FN_DESC) go through it one by one. */
FN_HOT static void FN(fn_planes_col_bwd_apply)(const T *dy, const T *x, T *dx, fn_idx rows,
                                               fn_idx ld, fn_idx L, const T *Q, const T *R,
                                               const T *mh, const T *ml, const T *B, int nt)
{
    fn_idx r = 0, c, e, cv = L - L % FN_VL;
    int ntr[4];
    FN(vec) vq, vr, m, lo, vb, v[4];
    const T *dr, *xr;
    T *o;
    if (fn_col_rows4(ld * (fn_idx)sizeof(T), L * (fn_idx)sizeof(T)))
        for (; r + 4 <= rows; r += 4) {
            dr = dy + r * ld;
            xr = x + r * ld;
            o = dx + r * ld;
            FN(fn_nt_rows4)(o, ld, L, nt, ntr);
            for (c = 0; c < cv; c += FN_VL) {
                vq = FN_LDV(Q + c);
                vr = FN_LDV(R + c);
                m = FN_LDV(mh + c);
                lo = FN_LDV(ml + c);
                vb = FN_LDV(B + c);
                for (e = 0; e < 4; e++)  /* the four rows' loads before any store */
                    v[e] = (FN_LDV(dr + e * ld + c) - vq) * vr
                           + FN_LO((FN_LDV(xr + e * ld + c) - m), lo) * vb;
                for (e = 0; e < 4; e++) FN(fn_vst)(o + e * ld + c, v[e], ntr[e]);
            }
            for (e = 0; e < 4; e++)
                for (c = cv; c < L; c++)
                    o[e * ld + c] = (dr[e * ld + c] - Q[c]) * R[c]
                                    + FN_LO((xr[e * ld + c] - mh[c]), ml[c]) * B[c];
        }
    for (; r < rows; r++)
        FN(fn_rows_bwd_apply)(dy + r * ld, x + r * ld, dx + r * ld, 1, L, NULL, Q, R, mh, ml, B,
                              nt);
}

#undef FN_RELU
#undef FN_BWD_TILE
#undef FN_BOUNCE_BYTES
#undef FN_CG
#undef FN_BM_PAIR
#undef FN_NORM_CH
#undef FN_NORM_EW
#undef FN_LDV
#undef FN_COL_SWEEPS
#undef FN_COL_SWEEPS_WIDE
#undef FN_BWD_PAIR
#undef FN_IOTA
#undef T
#undef FN
#undef FN_CAT
#undef FN_CAT2
#undef FN_LO
