/* The column sweeps of the channels-last reductions, with their accumulators in arrays of
   FN_GRP_N vectors: included twice by _core_tmpl.h (after FN_CG, FN_CGM and fn_pf_cols), as
   fn_col_sums_grp / fn_rows_bwd_sums_grp with arrays of FN_CG and as fn_col_sums_grp16 /
   fn_rows_bwd_sums_grp16 with arrays of FN_CGM (float64 rows of up to 16 vectors in one sweep).
   Two copies rather than one with arrays of 16: GCC's code for the float32 rows of 8 vectors
   came out 13% slower with the larger arrays. FN_GRP_SFX: the name's suffix (empty or 16). */
#define FN_GRP_P2(a, b) a##b
#define FN_GRP_P(a, b) FN_GRP_P2(a, b)
#define FN_GRP(name) FN(FN_GRP_P(name, FN_GRP_SFX))

/* Per column c of x (row stride ld), for the NV column vectors from c0: s[c] = sum(d),
   q[c] = sum(d^2) with d = (x - sh[c]) - sl[c] (sl may be NULL: d = x - sh), over the rows of
   a block of ns streams of `rows` rows each, stream k starting qs rows after stream k - 1, in
   the order row r of every stream, then row r + 1 (see fn_seg_col_moments). NV is a constant
   after inlining, so the accumulators live in registers. */
static inline __attribute__((always_inline)) void FN_GRP(fn_col_sums_grp)(
    const T *x, fn_idx rows, fn_idx ns, fn_idx qs, fn_idx C, fn_idx ld, const T *sh,
    const T *sl, T *s, T *q, fn_idx c0, const int NV)
{
    FN(vec) as[FN_GRP_N], aq[FN_GRP_N], d;
    const T *row;
    fn_idx r, k;
    int j;
    for (j = 0; j < NV; j++)
        as[j] = aq[j] = (FN(vec)){0};
    for (r = 0; r < rows; r++)
        for (k = 0; k < ns; k++) {
            row = x + (r + k * qs) * ld + c0;
            if (C > NV * FN_VL) FN(fn_pf_cols)(x + (r + k * qs + rows) * ld, C, c0, NV);
            for (j = 0; j < NV; j++) {  /* the shifts come from L1: registers hold the sums */
                d = *(const FN(uvec) *)(row + j * FN_VL)
                    - *(const FN(uvec) *)(sh + c0 + j * FN_VL);
                if (sl) d = d - *(const FN(uvec) *)(sl + c0 + j * FN_VL);
                as[j] += d;
                aq[j] += d * d;
            }
        }
    for (j = 0; j < NV; j++) {
        *(FN(uvec) *)(s + c0 + j * FN_VL) = as[j];
        *(FN(uvec) *)(q + c0 + j * FN_VL) = aq[j];
    }
}

/* Channels-last reduce of one block, for the NV column vectors from c0: sdy[c] += sum(dy),
   sdyx[c] += sum(dy * (x - m)); the block is ns streams of `rows` rows, stream k qs rows after
   stream k - 1, swept row by row across the streams as fn_col_sums_grp. */
static inline __attribute__((always_inline)) void FN_GRP(fn_rows_bwd_sums_grp)(
    const T *dy, const T *x, fn_idx rows, fn_idx ns, fn_idx qs, fn_idx C, const T *mh,
    const T *ml, double *sdy, double *sdyx, fn_idx c0, const int NV)
{
    FN(vec) a[FN_GRP_N], b[FN_GRP_N], g;
    T ta[64 / sizeof(T)], tb[64 / sizeof(T)];
    fn_idx r, k, o, i;
    int j;
    for (j = 0; j < NV; j++)
        a[j] = b[j] = (FN(vec)){0};
    for (r = 0; r < rows; r++)
        for (k = 0; k < ns; k++) {
            o = (r + k * qs) * C + c0;
            if (C > NV * FN_VL) {  /* as fn_col_sums_grp */
                FN(fn_pf_cols)(dy + (r + k * qs + rows) * C, C, c0, NV);
                FN(fn_pf_cols)(x + (r + k * qs + rows) * C, C, c0, NV);
            }
            for (j = 0; j < NV; j++) {
                g = *(const FN(uvec) *)(dy + o + j * FN_VL);
                a[j] += g;
                b[j] += g * FN_LO((*(const FN(uvec) *)(x + o + j * FN_VL)
                              - *(const FN(uvec) *)(mh + c0 + j * FN_VL)),
                             *(const FN(uvec) *)(ml + c0 + j * FN_VL));
            }
        }
    for (j = 0; j < NV; j++) {
        memcpy(ta, &a[j], sizeof ta);
        memcpy(tb, &b[j], sizeof tb);
        for (i = 0; i < FN_VL; i++) {
            sdy[c0 + j * FN_VL + i] += ta[i];
            sdyx[c0 + j * FN_VL + i] += tb[i];
        }
    }
}

#undef FN_GRP
#undef FN_GRP_P
#undef FN_GRP_P2
#undef FN_GRP_N
#undef FN_GRP_SFX
