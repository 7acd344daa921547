/* Fused CPU selective scan: forward and backward, one pass over the sequence per (batch, channel) row.
 *
 * Compiled on first use by core/ops/cpu.py with -DNSTATE=<d_state> -DREAL=<float|double>, so the
 * loop over the state dimension has a compile-time trip count and vectorises (8 float lanes on AVX2).
 * Rows are split into contiguous ranges over POSIX threads; each row is a sequential recurrence.
 *
 * The kernel sees dt = softplus(delta + delta_bias) already computed, and returns y before the
 * z gate: those element-wise transcendental steps run in torch's vectorised ops (cpu.py), which
 * is several times faster than a scalar libm call per step here.
 *
 * Layouts (all contiguous, REAL):
 *   u, dt, y, du, ddt, g : (batch, dim, L)
 *   A : (dim, N)     D : (dim)     h0, last, dh0 : (batch, dim, N)
 *   B, C variable : (batch, groups, L, N)  -- time-major so a step reads N contiguous values
 *   B, C constant : (dim, N)
 *   ckpt : (batch, dim, nchunk, N)  state *before* the first step of each chunk of CHUNK steps
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

#if REAL_IS_DOUBLE
#define EXP_STATE(x) exp(x)
#else
/* exp for the state decay: the hot operation (N per step). libm's expf does not vectorise, so
 * this is 2^k * p(r) with round-to-nearest range reduction, |r| <= ln2/2 and a degree-7 Taylor
 * polynomial: relative error < 1e-8 before rounding, i.e. within float32's last bit. Arguments
 * below -87 flush to 0, as expf's do (the decay is always <= 0 in Mamba). */
static inline float EXP_STATE(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = x * 1.44269504088896341f;
    /* round to nearest without calling rintf: adding 1.5 * 2^23 pushes the fraction out */
    float kr = (k + 12582912.0f) - 12582912.0f;
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
    int32_t ki = (int32_t)kr;
    union { int32_t i; float f; } scale;
    scale.i = (ki + 127) << 23;
    return p * scale.f;
}
#endif

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
    int64_t batch, dim, length, groups, chunk, nchunk, nthreads;
    int b_const, c_const;
    const REAL *u, *dt, *A, *B, *C, *D, *h0;
    const int32_t *seq_idx;
    REAL *y, *last, *ckpt;
    /* backward: g = dL/dy (y before the gate) */
    const REAL *g, *dlast;
    REAL *du, *ddt, *dA, *dB, *dC, *dD, *dh0;
    /* per-thread accumulators for variable B/C, see bwd_thread */
    REAL **dB_part, **dC_part;
    int64_t *bg_lo;
} scan_args;

/* 0 where step t starts a new packed sequence (the previous state is dropped), else 1 */
static inline REAL keep_state(const int32_t *seq, int64_t t) {
    return (seq && t > 0 && seq[t] != seq[t - 1]) ? (REAL)0 : (REAL)1;
}

typedef struct {
    const scan_args *a;
    int64_t row_lo, row_hi, tid;
} thread_args;

/* B or C of row (b, d) at t = 0; the row's step t reads base + t * stride (stride 0: constant). */
static inline const REAL *bc_base(const REAL *M, int is_const, const scan_args *a, int64_t b, int64_t d) {
    if (is_const) return M + d * N;
    return M + (b * a->groups + d / (a->dim / a->groups)) * a->length * N;
}

static void *fwd_thread(void *arg) {
    const thread_args *ta = (const thread_args *)arg;
    const scan_args *a = ta->a;
    const int64_t L = a->length;
    for (int64_t row = ta->row_lo; row < ta->row_hi; ++row) {
        const int64_t b = row / a->dim, d = row % a->dim;
        REAL h[N], Ad[N];
        for (int n = 0; n < N; ++n) {
            h[n] = a->h0 ? a->h0[row * N + n] : (REAL)0;
            Ad[n] = a->A[d * N + n];
        }
        const REAL Dd = a->D ? a->D[d] : (REAL)0;
        const REAL *u = a->u + row * L, *dtr = a->dt + row * L;
        REAL *y = a->y + row * L;
        const REAL *B0 = bc_base(a->B, a->b_const, a, b, d), *C0 = bc_base(a->C, a->c_const, a, b, d);
        const int64_t Bs = a->b_const ? 0 : N, Cs = a->c_const ? 0 : N;
        const int32_t *seq = a->seq_idx ? a->seq_idx + b * L : NULL;
        for (int64_t t0 = 0; t0 < L; t0 += a->chunk) {
            const int64_t t1 = t0 + a->chunk < L ? t0 + a->chunk : L;
            if (a->ckpt) memcpy(a->ckpt + (row * a->nchunk + t0 / a->chunk) * N, h, sizeof(h));
            for (int64_t t = t0; t < t1; ++t) {
                const REAL dt = dtr[t], x = u[t], dtx = dt * x, keep = keep_state(seq, t);
                const REAL *Bt = B0 + t * Bs;
                const REAL *Ct = C0 + t * Cs;
                REAL acc[N];
                for (int n = 0; n < N; ++n) {
                    h[n] = EXP_STATE(dt * Ad[n]) * keep * h[n] + dtx * Bt[n];
                    acc[n] = Ct[n] * h[n];
                }
                y[t] = Dd * x + sum_state(acc);
            }
        }
        if (a->last) memcpy(a->last + row * N, h, sizeof(h));
    }
    return NULL;
}

static void *bwd_thread(void *arg) {
    const thread_args *ta = (const thread_args *)arg;
    const scan_args *a = ta->a;
    const int64_t L = a->length, CH = a->chunk;
    const int64_t dpg = a->dim / (a->groups > 0 ? a->groups : 1);
    /* states of the current chunk: hs[k] = h at step t0 + k - 1, hs[0] = chunk checkpoint;
     * es[k] = exp(dt * A) at step t0 + k, kept so the reverse pass does not evaluate exp again */
    REAL *hs = (REAL *)malloc(sizeof(REAL) * (size_t)(CH + 1) * N);
    REAL *es = (REAL *)malloc(sizeof(REAL) * (size_t)CH * N);
    for (int64_t row = ta->row_lo; row < ta->row_hi; ++row) {
        const int64_t b = row / a->dim, d = row % a->dim;
        /* variable B/C gradients go to this thread's buffer, indexed from its first (batch, group) */
        const int64_t bg_off = (b * a->groups + d / dpg - a->bg_lo[ta->tid]) * L * N;
        REAL *dBrow = a->b_const ? a->dB + row * N : a->dB_part[ta->tid] + bg_off;
        REAL *dCrow = a->c_const ? a->dC + row * N : a->dC_part[ta->tid] + bg_off;
        REAL Ad[N], dh[N], dA_acc[N] = {0};
        for (int n = 0; n < N; ++n) {
            Ad[n] = a->A[d * N + n];
            dh[n] = a->dlast ? a->dlast[row * N + n] : (REAL)0;
        }
        const REAL Dd = a->D ? a->D[d] : (REAL)0;
        const REAL *u = a->u + row * L, *dtr = a->dt + row * L, *gr = a->g + row * L;
        REAL *du = a->du + row * L, *ddtr = a->ddt + row * L;
        REAL *yr = a->y ? a->y + row * L : NULL;
        REAL dD_acc = 0;
        const int32_t *seq = a->seq_idx ? a->seq_idx + b * L : NULL;
        const REAL *B0 = bc_base(a->B, a->b_const, a, b, d), *C0 = bc_base(a->C, a->c_const, a, b, d);
        const int64_t Bs = a->b_const ? 0 : N, Cs = a->c_const ? 0 : N;
        for (int64_t c = a->nchunk - 1; c >= 0; --c) {
            const int64_t t0 = c * CH, t1 = t0 + CH < L ? t0 + CH : L;
            memcpy(hs, a->ckpt + (row * a->nchunk + c) * N, sizeof(REAL) * N);
            for (int64_t t = t0; t < t1; ++t) { /* recompute the chunk's states */
                const REAL dt = dtr[t];
                const REAL dtx = dt * u[t];
                const REAL *Bt = B0 + t * Bs;
                const REAL *hp = hs + (t - t0) * N;
                REAL *hn = hs + (t - t0 + 1) * N, *et = es + (t - t0) * N;
                const REAL keep = keep_state(seq, t);
                for (int n = 0; n < N; ++n) {
                    et[n] = EXP_STATE(dt * Ad[n]) * keep; /* a reset is a zero decay */
                    hn[n] = et[n] * hp[n] + dtx * Bt[n];
                }
            }
            REAL dA_chunk[N] = {0}, dD_chunk = 0;
            for (int64_t t = t1 - 1; t >= t0; --t) {
                const REAL dt = dtr[t], x = u[t];
                const REAL *hp = hs + (t - t0) * N, *ht = hs + (t - t0 + 1) * N, *et = es + (t - t0) * N;
                const REAL *Bt = B0 + t * Bs;
                const REAL *Ct = C0 + t * Cs;
                const REAL g = gr[t];
                if (yr) { /* y before the gate, for dz: recomputed rather than stored by the forward */
                    REAL acc[N];
                    for (int n = 0; n < N; ++n) acc[n] = Ct[n] * ht[n];
                    yr[t] = Dd * x + sum_state(acc);
                }
                dD_chunk += g * x;
                REAL *restrict dBt = a->b_const ? dBrow : dBrow + t * N;
                REAL *restrict dCt = a->c_const ? dCrow : dCrow + t * N;
                REAL dx[N], ddt[N];
                for (int n = 0; n < N; ++n) {
                    const REAL e = et[n];
                    const REAL dhn = dh[n] + Ct[n] * g; /* dL/dh_t */
                    dCt[n] += g * ht[n];
                    dBt[n] += dhn * dt * x;
                    dx[n] = dhn * Bt[n];
                    const REAL ehp = e * hp[n];
                    ddt[n] = dhn * (Ad[n] * ehp + Bt[n] * x);
                    dA_chunk[n] += dhn * dt * ehp;
                    dh[n] = dhn * e; /* dL/dh_{t-1} through the recurrence */
                }
                du[t] = Dd * g + dt * sum_state(dx);
                ddtr[t] = sum_state(ddt);
            }
            /* per-chunk partial sums, then the total: long rows lose less to rounding */
            for (int n = 0; n < N; ++n) dA_acc[n] += dA_chunk[n];
            dD_acc += dD_chunk;
        }
        memcpy(a->dA + row * N, dA_acc, sizeof(dA_acc));
        if (a->dD) a->dD[row] = dD_acc;
        if (a->dh0) memcpy(a->dh0 + row * N, dh, sizeof(dh));
    }
    free(hs);
    free(es);
    return NULL;
}

static void run_threads(const scan_args *a, void *(*fn)(void *)) {
    const int64_t rows = a->batch * a->dim;
    int64_t T = a->nthreads < rows ? a->nthreads : rows;
    if (T < 1) T = 1;
    if (T > 256) T = 256;
    thread_args ta[256];
    for (int64_t i = 0; i < T; ++i) {
        ta[i].a = a;
        ta[i].tid = i;
        ta[i].row_lo = rows * i / T;
        ta[i].row_hi = rows * (i + 1) / T;
    }
#ifdef _OPENMP
    /* torch's own OpenMP runtime (same libgomp.so.1 soname): its spinning workers run this too */
#pragma omp parallel for num_threads(T) schedule(static, 1)
    for (int64_t i = 0; i < T; ++i) fn(&ta[i]);
#else
    pthread_t th[256];
    for (int64_t i = 1; i < T; ++i) pthread_create(&th[i], NULL, fn, &ta[i]);
    fn(&ta[0]);
    for (int64_t i = 1; i < T; ++i) pthread_join(th[i], NULL);
#endif
}

/* i64: batch, dim, length, groups, chunk, nthreads, b_const, c_const
 * ptr: u, dt, A, B, C, D, h0, y, last, ckpt, seq_idx (NULL where absent) */
int scan_fwd(const int64_t *i64, void **ptr) {
    scan_args a;
    memset(&a, 0, sizeof(a));
    a.batch = i64[0]; a.dim = i64[1]; a.length = i64[2]; a.groups = i64[3];
    a.chunk = i64[4]; a.nthreads = i64[5];
    a.b_const = (int)i64[6]; a.c_const = (int)i64[7];
    a.nchunk = (a.length + a.chunk - 1) / a.chunk;
    a.u = ptr[0]; a.dt = ptr[1]; a.A = ptr[2]; a.B = ptr[3]; a.C = ptr[4]; a.D = ptr[5];
    a.h0 = ptr[6]; a.y = ptr[7]; a.last = ptr[8]; a.ckpt = ptr[9]; a.seq_idx = ptr[10];
    run_threads(&a, fwd_thread);
    return 0;
}

/* i64: as scan_fwd
 * ptr: u, dt, A, B, C, D, ckpt, g, dlast, du, ddt, dA (batch, dim, N), dB, dC, dD (batch, dim), dh0,
 *      y (recomputed y before the gate, or NULL), seq_idx
 * dB/dC: (batch, groups, L, N) for variable matrices, (batch, dim, N) per-row partials for constant.
 * Per-row partials are summed over the batch by the caller, in a fixed order (deterministic). */
int scan_bwd(const int64_t *i64, void **ptr) {
    scan_args a;
    memset(&a, 0, sizeof(a));
    a.batch = i64[0]; a.dim = i64[1]; a.length = i64[2]; a.groups = i64[3];
    a.chunk = i64[4]; a.nthreads = i64[5];
    a.b_const = (int)i64[6]; a.c_const = (int)i64[7];
    a.nchunk = (a.length + a.chunk - 1) / a.chunk;
    a.u = ptr[0]; a.dt = ptr[1]; a.A = ptr[2]; a.B = ptr[3]; a.C = ptr[4]; a.D = ptr[5];
    a.ckpt = ptr[6]; a.g = ptr[7]; a.dlast = ptr[8]; a.du = ptr[9]; a.ddt = ptr[10]; a.dA = ptr[11];
    a.dB = ptr[12]; a.dC = ptr[13]; a.dD = ptr[14]; a.dh0 = ptr[15]; a.y = ptr[16]; a.seq_idx = ptr[17];

    const int64_t rows = a.batch * a.dim;
    int64_t T = a.nthreads < rows ? a.nthreads : rows;
    if (T < 1) T = 1;
    if (T > 256) T = 256;
    a.nthreads = T;
    /* Variable B/C are shared by the dim/groups channels of a group, and those channels may sit
     * in different threads. Each thread accumulates into a private buffer covering only the
     * (batch, group) pairs its contiguous row range touches; the buffers are then added in thread
     * order, so the result does not depend on scheduling (no atomics). */
    const int64_t dpg = a.dim / (a.groups > 0 ? a.groups : 1);
    const int64_t LN = a.length * N;
    int64_t bg_lo[256], bg_hi[256];
    REAL *dB_part[256], *dC_part[256];
    int failed = 0;
    for (int64_t i = 0; i < T; ++i) {
        const int64_t r0 = rows * i / T, r1 = rows * (i + 1) / T;
        bg_lo[i] = (r0 / a.dim) * a.groups + (r0 % a.dim) / dpg;
        bg_hi[i] = ((r1 - 1) / a.dim) * a.groups + ((r1 - 1) % a.dim) / dpg + 1;
        const size_t n = (size_t)((bg_hi[i] - bg_lo[i]) * LN);
        dB_part[i] = a.b_const ? NULL : (REAL *)calloc(n, sizeof(REAL));
        dC_part[i] = a.c_const ? NULL : (REAL *)calloc(n, sizeof(REAL));
        if ((!a.b_const && !dB_part[i]) || (!a.c_const && !dC_part[i])) failed = 1;
    }
    if (!failed) {
        a.bg_lo = bg_lo;
        a.dB_part = dB_part;
        a.dC_part = dC_part;
        run_threads(&a, bwd_thread);
        for (int which = 0; which < 2; ++which) {
            const int is_const = which == 0 ? a.b_const : a.c_const;
            if (is_const) continue;
            REAL *dst = which == 0 ? a.dB : a.dC;
            REAL **part = which == 0 ? dB_part : dC_part;
            memset(dst, 0, sizeof(REAL) * (size_t)(a.batch * a.groups * LN));
            for (int64_t i = 0; i < T; ++i) {
                REAL *src = part[i];
                for (int64_t bg = bg_lo[i]; bg < bg_hi[i]; ++bg) {
                    REAL *o = dst + bg * LN;
                    const REAL *s = src + (bg - bg_lo[i]) * LN;
                    for (int64_t k = 0; k < LN; ++k) o[k] += s[k];
                }
            }
        }
    }
    for (int64_t i = 0; i < T; ++i) {
        free(dB_part[i]);
        free(dC_part[i]);
    }
    return failed ? 1 : 0;
}
