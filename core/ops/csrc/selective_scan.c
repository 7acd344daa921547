/* Fused CPU selective scan: forward and backward, one pass over the sequence per (batch, channel) row.
 *
 * Compiled on first use by core/ops/cpu.py with -DNSTATE=<d_state> -DREAL=<float|double>, so the
 * loop over the state dimension has a compile-time trip count and vectorises (16 float lanes on
 * AVX-512, 8 on AVX2). Rows are split into contiguous blocks that threads take in turn (OpenMP
 * from torch's own runtime when available, else POSIX threads); each row is a sequential recurrence.
 *
 * Everything element-wise is fused: softplus(delta + bias), the silu(z) gate and their
 * derivatives are computed per chunk of CHUNK steps in a pre-pass that vectorises over time,
 * so neither pass makes extra trips through memory.
 *
 * Layouts (all contiguous, REAL):
 *   u, delta, z, out, du, ddelta, dz, dout : (batch, dim, L)
 *   A : (dim, N)     D, delta_bias : (dim)     h0, last, dh0 : (batch, dim, N)
 *   B, C variable : (batch, groups, L, N)  -- time-major so a step reads N contiguous values
 *   B, C constant : (dim, N)
 *   ckpt : (batch, dim, nchunk, N)  state *before* the first step of each chunk
 *   seq_idx : (batch, L) int32 or NULL; where it changes the state restarts from zero (packed sequences)
 * Memory is linear in L: the backward recomputes states inside one chunk at a time from ckpt,
 * so no (batch, dim, L, N) buffer ever exists.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef NSTATE
#error "compile with -DNSTATE=<d_state>"
#endif
#ifndef REAL
#define REAL float
#endif
#define N NSTATE
#define CHUNK 64 /* must equal core/ops/cpu.py's CHUNK */
#define ABI_VERSION 4 /* bump with any change to the argument lists; cpu.py checks it after loading */

int scan_abi_version(void) { return ABI_VERSION * 1000 + CHUNK; }

#if REAL_IS_DOUBLE
/* float64 exists for gradcheck: plain libm, no approximations */
static inline double exp_r(double x) { return exp(x); }
static inline double log1p_r(double x) { return log1p(x); }
#else
/* libm's expf/log1pf do not vectorise; these do, and are accurate to float32's last bits.
 * exp: 2^k * p(r) with round-to-nearest range reduction, |r| <= ln2/2, degree-7 Taylor
 * polynomial (relative error < 1e-8 before rounding). Arguments are clamped to [-87, 88]:
 * below, expf would be denormal or 0 (a decay of 0 is what Mamba needs); above, inf. */
static inline float exp_r(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float k = x * 1.44269504088896341f;
    /* round to nearest without rintf: adding 1.5 * 2^23 pushes the fraction out (needs no -ffast-math) */
    const float kr = (k + 12582912.0f) - 12582912.0f;
    float r = x - kr * 0.693145751953125f;
    r = r - kr * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)kr + 127) << 23;
    return p * scale.f;
}

/* log1p(e) for e in [0, 1]: log(m) + k ln2 with m = (1 + e) / 2^k in [0.75, 1.5), via
 * log(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.2. m - 1 is formed from e directly
 * (never as (1 + e) - 1), so tiny e keep full relative precision. */
static inline float log1p_unit(float e) {
    const int big = e > 0.5f;
    const float s = big ? (e - 1.0f) / (e + 3.0f) : e / (e + 2.0f);
    const float s2 = s * s;
    float p = 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p + (big ? 0.693147180559945309f : 0.0f);
}
static inline float log1p_r(float x) { return log1p_unit(x); }
#endif

/* softplus as torch computes it (threshold 20), written as max(x, 0) + log1p(exp(-|x|)) so the
 * log1p argument stays in [0, 1] */
static inline REAL softplus_r(REAL x) {
    if (x > (REAL)20) return x;
    const REAL ax = x < 0 ? -x : x;
    return (x > 0 ? x : (REAL)0) + log1p_r(exp_r(-ax));
}
static inline REAL sigmoid_r(REAL x) { return (REAL)1 / ((REAL)1 + exp_r(-x)); }

/* Sum of N values. Without -ffast-math the compiler must keep a plain loop's left-to-right order:
 * a chain of N dependent scalar adds per step. The pairwise tree below is a fixed order the
 * compiler can vectorise (N is a power of two in every Mamba configuration; others use the loop). */
static inline REAL sum_state(REAL *v) {
#if (N & (N - 1)) == 0
    for (int w = N / 2; w >= 1; w /= 2)
        for (int n = 0; n < w; ++n) v[n] += v[n + w];
    return v[0];
#else
    REAL s = 0;
    for (int n = 0; n < N; ++n) s += v[n];
    return s;
#endif
}

typedef struct {
    int64_t batch, dim, length, groups, nchunk, nthreads;
    int b_const, c_const, softplus;
    const REAL *u, *delta, *delta_bias, *z, *A, *B, *C, *D, *h0;
    const int32_t *seq_idx;
    REAL *out, *last, *ckpt;
    /* backward */
    const REAL *dout, *dlast;
    REAL *du, *ddelta, *dz, *dA, *dB, *dC, *dD, *dbias, *dh0;
    REAL **dB_part, **dC_part; /* per-thread accumulators for variable B/C, see scan_bwd */
    int64_t *bg_lo;
} scan_args;

/* A block of consecutive rows: the unit of work a thread takes. There are several blocks per
 * thread, taken dynamically, so a thread that the OS preempts (a busy machine) delays the others
 * by one block, not by its whole share. */
typedef struct {
    const scan_args *a;
    int64_t row_lo, row_hi, id;
} row_block;

/* 0 where step t starts a new packed sequence (the previous state is dropped), else 1 */
static inline REAL keep_state(const int32_t *seq, int64_t t) {
    return (seq && t > 0 && seq[t] != seq[t - 1]) ? (REAL)0 : (REAL)1;
}

/* B or C of row (b, d) at t = 0; the row's step t reads base + t * stride (stride 0: constant). */
static inline const REAL *bc_base(const REAL *M, int is_const, const scan_args *a, int64_t b, int64_t d) {
    if (is_const) return M + d * N;
    return M + (b * a->groups + d / (a->dim / a->groups)) * a->length * N;
}

/* dt[k] = softplus(delta[t0 + k] + bias) for one chunk; with `dsp`, also softplus' = sigmoid */
static inline void chunk_dt(const scan_args *a, const REAL *delta, REAL bias, int64_t n, REAL *dt, REAL *dsp) {
    for (int64_t k = 0; k < n; ++k) {
        const REAL x = delta[k] + bias;
        dt[k] = a->softplus ? softplus_r(x) : x;
    }
    if (dsp)
        for (int64_t k = 0; k < n; ++k) dsp[k] = a->softplus ? sigmoid_r(delta[k] + bias) : (REAL)1;
}

static void *fwd_thread(void *arg) {
    const row_block *ta = (const row_block *)arg;
    const scan_args *a = ta->a;
    const int64_t L = a->length;
    REAL dt[CHUNK], gate[CHUNK];
    for (int64_t row = ta->row_lo; row < ta->row_hi; ++row) {
        const int64_t b = row / a->dim, d = row % a->dim;
        REAL h[N], Ad[N];
        for (int n = 0; n < N; ++n) {
            h[n] = a->h0 ? a->h0[row * N + n] : (REAL)0;
            Ad[n] = a->A[d * N + n];
        }
        const REAL Dd = a->D ? a->D[d] : (REAL)0, bias = a->delta_bias ? a->delta_bias[d] : (REAL)0;
        const REAL *u = a->u + row * L, *delta = a->delta + row * L, *z = a->z ? a->z + row * L : NULL;
        REAL *out = a->out + row * L;
        const REAL *B0 = bc_base(a->B, a->b_const, a, b, d), *C0 = bc_base(a->C, a->c_const, a, b, d);
        const int64_t Bs = a->b_const ? 0 : N, Cs = a->c_const ? 0 : N;
        const int32_t *seq = a->seq_idx ? a->seq_idx + b * L : NULL;
        for (int64_t t0 = 0; t0 < L; t0 += CHUNK) {
            const int64_t n_t = t0 + CHUNK < L ? CHUNK : L - t0;
            if (a->ckpt) memcpy(a->ckpt + (row * a->nchunk + t0 / CHUNK) * N, h, sizeof(h));
            chunk_dt(a, delta + t0, bias, n_t, dt, NULL);
            if (z)
                for (int64_t k = 0; k < n_t; ++k) gate[k] = z[t0 + k] * sigmoid_r(z[t0 + k]);
            for (int64_t k = 0; k < n_t; ++k) {
                const int64_t t = t0 + k;
                const REAL x = u[t], dtx = dt[k] * x, keep = keep_state(seq, t);
                const REAL *Bt = B0 + t * Bs, *Ct = C0 + t * Cs;
                REAL acc[N];
                for (int n = 0; n < N; ++n) {
                    h[n] = exp_r(dt[k] * Ad[n]) * keep * h[n] + dtx * Bt[n];
                    acc[n] = Ct[n] * h[n];
                }
                const REAL y = Dd * x + sum_state(acc);
                out[t] = z ? y * gate[k] : y;
            }
        }
        if (a->last) memcpy(a->last + row * N, h, sizeof(h));
    }
    return NULL;
}

static void *bwd_thread(void *arg) {
    const row_block *ta = (const row_block *)arg;
    const scan_args *a = ta->a;
    const int64_t L = a->length;
    const int64_t dpg = a->dim / a->groups;
    /* one chunk's worth of recomputed values: hs[k] = h at step t0 + k - 1 (hs[0] the checkpoint),
     * es[k] = exp(dt * A) at step t0 + k (0 at a packed-sequence start), kept for the reverse pass */
    REAL hs[(CHUNK + 1) * N], es[CHUNK * N];
    REAL dt[CHUNK], dsp[CHUNK], g[CHUNK], dgate[CHUNK];
    for (int64_t row = ta->row_lo; row < ta->row_hi; ++row) {
        const int64_t b = row / a->dim, d = row % a->dim;
        /* variable B/C gradients go to this block's buffer, indexed from its first (batch, group) */
        const int64_t bg_off = (b * a->groups + d / dpg - a->bg_lo[ta->id]) * L * N;
        REAL *dBrow = a->b_const ? a->dB + row * N : a->dB_part[ta->id] + bg_off;
        REAL *dCrow = a->c_const ? a->dC + row * N : a->dC_part[ta->id] + bg_off;
        REAL Ad[N], dh[N], dA_acc[N] = {0};
        for (int n = 0; n < N; ++n) {
            Ad[n] = a->A[d * N + n];
            dh[n] = a->dlast ? a->dlast[row * N + n] : (REAL)0;
        }
        const REAL Dd = a->D ? a->D[d] : (REAL)0, bias = a->delta_bias ? a->delta_bias[d] : (REAL)0;
        const REAL *u = a->u + row * L, *delta = a->delta + row * L, *dout = a->dout + row * L;
        const REAL *z = a->z ? a->z + row * L : NULL;
        REAL *du = a->du + row * L, *ddelta = a->ddelta + row * L, *dz = a->dz ? a->dz + row * L : NULL;
        const REAL *B0 = bc_base(a->B, a->b_const, a, b, d), *C0 = bc_base(a->C, a->c_const, a, b, d);
        const int64_t Bs = a->b_const ? 0 : N, Cs = a->c_const ? 0 : N;
        const int32_t *seq = a->seq_idx ? a->seq_idx + b * L : NULL;
        REAL dD_acc = 0, dbias_acc = 0;
        for (int64_t c = a->nchunk - 1; c >= 0; --c) {
            const int64_t t0 = c * CHUNK, n_t = t0 + CHUNK < L ? CHUNK : L - t0;
            chunk_dt(a, delta + t0, bias, n_t, dt, dsp);
            for (int64_t k = 0; k < n_t; ++k) {
                if (z) { /* g = dL/dy before the gate; dgate = d silu(z) / dz */
                    const REAL s = sigmoid_r(z[t0 + k]);
                    g[k] = dout[t0 + k] * z[t0 + k] * s;
                    dgate[k] = s * ((REAL)1 + z[t0 + k] * ((REAL)1 - s));
                } else {
                    g[k] = dout[t0 + k];
                }
            }
            memcpy(hs, a->ckpt + (row * a->nchunk + c) * N, sizeof(REAL) * N);
            for (int64_t k = 0; k < n_t; ++k) { /* recompute the chunk's states */
                const int64_t t = t0 + k;
                const REAL dtx = dt[k] * u[t], keep = keep_state(seq, t);
                const REAL *Bt = B0 + t * Bs, *hp = hs + k * N;
                REAL *hn = hs + (k + 1) * N, *et = es + k * N;
                for (int n = 0; n < N; ++n) {
                    et[n] = exp_r(dt[k] * Ad[n]) * keep; /* a reset is a zero decay */
                    hn[n] = et[n] * hp[n] + dtx * Bt[n];
                }
            }
            REAL dA_chunk[N] = {0}, dD_chunk = 0, dbias_chunk = 0;
            for (int64_t k = n_t - 1; k >= 0; --k) {
                const int64_t t = t0 + k;
                const REAL x = u[t], dtk = dt[k], gk = g[k];
                const REAL *hp = hs + k * N, *ht = hs + (k + 1) * N, *et = es + k * N;
                const REAL *Bt = B0 + t * Bs, *Ct = C0 + t * Cs;
                if (z) { /* y before the gate, for dz: recomputed rather than stored by the forward */
                    REAL acc[N];
                    for (int n = 0; n < N; ++n) acc[n] = Ct[n] * ht[n];
                    dz[t] = dout[t] * (Dd * x + sum_state(acc)) * dgate[k];
                }
                dD_chunk += gk * x;
                REAL *restrict dBt = a->b_const ? dBrow : dBrow + t * N;
                REAL *restrict dCt = a->c_const ? dCrow : dCrow + t * N;
                REAL dx[N], ddt[N];
                for (int n = 0; n < N; ++n) {
                    const REAL e = et[n];
                    const REAL dhn = dh[n] + Ct[n] * gk; /* dL/dh_t */
                    dCt[n] += gk * ht[n];
                    dBt[n] += dhn * dtk * x;
                    dx[n] = dhn * Bt[n];
                    const REAL ehp = e * hp[n];
                    ddt[n] = dhn * (Ad[n] * ehp + Bt[n] * x);
                    dA_chunk[n] += dhn * dtk * ehp;
                    dh[n] = dhn * e; /* dL/dh_{t-1} through the recurrence */
                }
                du[t] = Dd * gk + dtk * sum_state(dx);
                const REAL dd = sum_state(ddt) * dsp[k];
                ddelta[t] = dd;
                dbias_chunk += dd;
            }
            /* per-chunk partial sums, then the total: long rows lose less to rounding */
            for (int n = 0; n < N; ++n) dA_acc[n] += dA_chunk[n];
            dD_acc += dD_chunk;
            dbias_acc += dbias_chunk;
        }
        memcpy(a->dA + row * N, dA_acc, sizeof(dA_acc));
        if (a->dD) a->dD[row] = dD_acc;
        if (a->dbias) a->dbias[row] = dbias_acc;
        if (a->dh0) memcpy(a->dh0 + row * N, dh, sizeof(dh));
    }
    return NULL;
}

#define MAX_BLOCKS 1024
#define BLOCKS_PER_THREAD 4

/* Contiguous row blocks; scan_bwd's buffer spans assume this same split. */
static int64_t split_rows(const scan_args *a, row_block *blocks) {
    const int64_t rows = a->batch * a->dim;
    int64_t T = a->nthreads < 1 ? 1 : a->nthreads;
    int64_t W = T * BLOCKS_PER_THREAD;
    if (W > rows) W = rows;
    if (W > MAX_BLOCKS) W = MAX_BLOCKS;
    if (W < 1) W = 1;
    for (int64_t i = 0; i < W; ++i) {
        blocks[i].a = a;
        blocks[i].id = i;
        blocks[i].row_lo = rows * i / W;
        blocks[i].row_hi = rows * (i + 1) / W;
    }
    return W;
}

#ifndef _OPENMP
typedef struct {
    row_block *blocks;
    int64_t n_blocks, next;
    void *(*fn)(void *);
} work_queue;

static void *pthread_worker(void *arg) {
    work_queue *q = (work_queue *)arg;
    for (;;) {
        const int64_t i = __atomic_fetch_add(&q->next, 1, __ATOMIC_RELAXED);
        if (i >= q->n_blocks) return NULL;
        q->fn(&q->blocks[i]);
    }
}
#endif

static void run_blocks(row_block *blocks, int64_t W, int64_t nthreads, void *(*fn)(void *)) {
    int64_t T = nthreads < 1 ? 1 : (nthreads > W ? W : nthreads);
#ifdef _OPENMP
    /* torch's own OpenMP runtime (same libgomp.so.1): its already-spinning workers run this */
#pragma omp parallel for num_threads(T) schedule(dynamic, 1)
    for (int64_t i = 0; i < W; ++i) fn(&blocks[i]);
#else
    if (T > 64) T = 64;
    work_queue q = {blocks, W, 0, fn};
    pthread_t th[64];
    for (int64_t i = 1; i < T; ++i) pthread_create(&th[i], NULL, pthread_worker, &q);
    pthread_worker(&q);
    for (int64_t i = 1; i < T; ++i) pthread_join(th[i], NULL);
#endif
}

static void read_sizes(scan_args *a, const int64_t *i64) {
    memset(a, 0, sizeof(*a));
    a->batch = i64[0]; a->dim = i64[1]; a->length = i64[2]; a->groups = i64[3] > 0 ? i64[3] : 1;
    a->nthreads = i64[4];
    a->b_const = (int)i64[5]; a->c_const = (int)i64[6]; a->softplus = (int)i64[7];
    a->nchunk = (a->length + CHUNK - 1) / CHUNK;
}

/* i64: batch, dim, length, groups, nthreads, b_const, c_const, softplus
 * ptr: u, delta, delta_bias, z, A, B, C, D, h0, seq_idx, out, last, ckpt (NULL where absent) */
int scan_fwd(const int64_t *i64, void **ptr) {
    scan_args a;
    read_sizes(&a, i64);
    a.u = ptr[0]; a.delta = ptr[1]; a.delta_bias = ptr[2]; a.z = ptr[3]; a.A = ptr[4]; a.B = ptr[5];
    a.C = ptr[6]; a.D = ptr[7]; a.h0 = ptr[8]; a.seq_idx = ptr[9]; a.out = ptr[10]; a.last = ptr[11];
    a.ckpt = ptr[12];
    row_block blocks[MAX_BLOCKS];
    const int64_t W = split_rows(&a, blocks);
    run_blocks(blocks, W, a.nthreads, fwd_thread);
    return 0;
}

/* i64: as scan_fwd
 * ptr: u, delta, delta_bias, z, A, B, C, D, seq_idx, ckpt, dout, dlast,
 *      du, ddelta, dz, dA (batch, dim, N), dB, dC, dD (batch, dim), dbias (batch, dim), dh0
 * dB/dC: (batch, groups, L, N) for variable matrices, (batch, dim, N) per-row partials for constant.
 * Per-row partials are summed over the batch by the caller, in a fixed order (deterministic). */
int scan_bwd(const int64_t *i64, void **ptr) {
    scan_args a;
    read_sizes(&a, i64);
    a.u = ptr[0]; a.delta = ptr[1]; a.delta_bias = ptr[2]; a.z = ptr[3]; a.A = ptr[4]; a.B = ptr[5];
    a.C = ptr[6]; a.D = ptr[7]; a.seq_idx = ptr[8]; a.ckpt = ptr[9]; a.dout = ptr[10]; a.dlast = ptr[11];
    a.du = ptr[12]; a.ddelta = ptr[13]; a.dz = ptr[14]; a.dA = ptr[15]; a.dB = ptr[16]; a.dC = ptr[17];
    a.dD = ptr[18]; a.dbias = ptr[19]; a.dh0 = ptr[20];

    row_block blocks[MAX_BLOCKS];
    const int64_t W = split_rows(&a, blocks);
    /* Variable B/C are shared by the dim/groups channels of a group, and those channels may sit
     * in different blocks. Each block accumulates into a private buffer covering only the
     * (batch, group) pairs its contiguous row range touches; the buffers are then added in block
     * order, so the result does not depend on which thread ran what (no atomics). */
    const int64_t dpg = a.dim / a.groups, LN = a.length * N;
    int64_t bg_lo[MAX_BLOCKS], bg_hi[MAX_BLOCKS];
    REAL *dB_part[MAX_BLOCKS], *dC_part[MAX_BLOCKS];
    int failed = 0;
    for (int64_t i = 0; i < W; ++i) {
        const int64_t r0 = blocks[i].row_lo, r1 = blocks[i].row_hi > r0 ? blocks[i].row_hi : r0 + 1;
        bg_lo[i] = (r0 / a.dim) * a.groups + (r0 % a.dim) / dpg;
        bg_hi[i] = ((r1 - 1) / a.dim) * a.groups + ((r1 - 1) % a.dim) / dpg + 1;
        const size_t n = (size_t)((bg_hi[i] - bg_lo[i]) * LN);
        dB_part[i] = a.b_const ? NULL : (REAL *)calloc(n ? n : 1, sizeof(REAL));
        dC_part[i] = a.c_const ? NULL : (REAL *)calloc(n ? n : 1, sizeof(REAL));
        if ((!a.b_const && !dB_part[i]) || (!a.c_const && !dC_part[i])) failed = 1;
    }
    if (!failed) {
        a.bg_lo = bg_lo;
        a.dB_part = dB_part;
        a.dC_part = dC_part;
        run_blocks(blocks, W, a.nthreads, bwd_thread);
        for (int which = 0; which < 2; ++which) {
            if (which == 0 ? a.b_const : a.c_const) continue;
            REAL *dst = which == 0 ? a.dB : a.dC;
            REAL **part = which == 0 ? dB_part : dC_part;
            memset(dst, 0, sizeof(REAL) * (size_t)(a.batch * a.groups * LN));
            for (int64_t i = 0; i < W; ++i)
                for (int64_t bg = bg_lo[i]; bg < bg_hi[i]; ++bg) {
                    REAL *o = dst + bg * LN;
                    const REAL *s = part[i] + (bg - bg_lo[i]) * LN;
                    for (int64_t k = 0; k < LN; ++k) o[k] += s[k];
                }
        }
    }
    for (int64_t i = 0; i < W; ++i) {
        free(dB_part[i]);
        free(dC_part[i]);
    }
    return failed ? 1 : 0;
}
