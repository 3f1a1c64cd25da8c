/* Selective scan (Mamba-1) on CPU: fused forward and backward, plain C.
 *
 * Called from Python through ctypes (cpu_c.py) with raw pointers to contiguous
 * tensors; no torch headers, so it builds in about a second and does not
 * depend on the torch ABI. The kernel body lives in scan_cpu_kernel.h and is
 * instantiated twice: float (suffix f32) and double (suffix f64).
 *
 * Symbols (see reference.py): u = x, delta = Δ (before bias / softplus),
 * dA = Ā = exp(Δ A), h = state, y_t = C_t · h_t + D u_t, y *= silu(z).
 *
 * Work split: one task = (batch b, a block of up to SS_W contiguous channels
 * inside one group of B/C). The state of a block, h[n][w], stays in L1 and the
 * loop over w is vectorised: float exp is inlined (ss_expf below; 1.6x faster
 * forward than calling glibc's vector expf), double calls libmvec's vector exp
 * (which -ffast-math lets gcc do). Tasks are shared by a few pthreads through
 * an atomic counter. Results that reduce over channels or batch (grad of A, B,
 * C, D, delta_bias) go to per-thread partial buffers that the caller sums, so
 * there are no races.
 *
 * Memory: the forward keeps the state every `ckpt_every` (K) steps,
 * (B, S, N, D) with S = ceil(L / K); the backward recomputes one segment of K
 * states (and their Ā) into a small buffer, then walks it in reverse.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

typedef struct {
    const void *u, *delta;   /* (B, L, D) */
    const void *A_t;         /* (N, D): A transposed, channels contiguous */
    const void *Bm, *Cm;     /* (B, L, G, N) */
    const void *Dv, *bias;   /* (D,) or NULL */
    const void *z;           /* (B, L, D) or NULL */
    const void *h0;          /* (B, D, N) or NULL (zeros) */
    void *y;                 /* (B, L, D) out */
    void *h_last;            /* (B, D, N) out */
    void *ckpt;              /* (B, S, N, D) out, or NULL when no backward follows */
    const void *gy;          /* (B, L, D) gradient of the output y */
    const void *gh_last;     /* (B, D, N) gradient of the final state, or NULL */
    void *gu, *gdelta, *gz;  /* (B, L, D) out; gz NULL when no z */
    void *gh0;               /* (B, D, N) out */
    void *gA;                /* (T, N, D) per-thread partials, zeroed by the caller */
    void *gD, *gbias;        /* (T, D) per-thread partials, zeroed */
    void *gB, *gC;           /* (T, B, L, G, N) per-thread partials, zeroed */
    int64_t batch, seqlen, dim, dstate, ngroups, ckpt_every;
    int64_t softplus, nthreads;
} ss_params;

/* A task returns 0, or nonzero when it could not run (out of memory). */
typedef int (*ss_task_fn)(const ss_params *, int64_t task, int64_t tid);

typedef struct {
    const ss_params *p;
    ss_task_fn fn;
    int64_t ntasks, tid;
    int64_t *next;
    int *failed;
} ss_worker;

static void *ss_work(void *arg) {
    ss_worker *w = (ss_worker *)arg;
#if defined(__SSE__)
    /* Flush denormals to zero in this thread only (restored below): decayed
     * states must not fall onto the slow denormal path. */
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
#endif
    for (;;) {
        const int64_t task = __atomic_fetch_add(w->next, 1, __ATOMIC_RELAXED);
        if (task >= w->ntasks) break;
        if (w->fn(w->p, task, w->tid) != 0) __atomic_store_n(w->failed, 1, __ATOMIC_RELAXED);
    }
#if defined(__SSE__)
    _mm_setcsr(csr);
#endif
    return NULL;
}

#define SS_MAX_THREADS 256

/* Run tasks 0..ntasks-1 on up to p->nthreads threads (the caller is one); 0 on success. */
static int ss_run(const ss_params *p, ss_task_fn fn, int64_t ntasks) {
    int64_t nth = p->nthreads < ntasks ? p->nthreads : ntasks;
    if (nth < 1) nth = 1;
    if (nth > SS_MAX_THREADS) nth = SS_MAX_THREADS;
    int64_t next = 0, started = 1;
    int failed = 0;
    ss_worker ws[SS_MAX_THREADS];
    pthread_t th[SS_MAX_THREADS];
    for (int64_t i = 0; i < nth; i++) {
        ws[i].p = p; ws[i].fn = fn; ws[i].ntasks = ntasks; ws[i].tid = i; ws[i].next = &next; ws[i].failed = &failed;
    }
    for (int64_t i = 1; i < nth; i++, started++)
        if (pthread_create(&th[i], NULL, ss_work, &ws[i]) != 0) break; /* fewer threads is still correct */
    ss_work(&ws[0]);
    for (int64_t i = 1; i < started; i++) pthread_join(th[i], NULL);
    return failed;
}

int64_t ss_params_size(void) { return (int64_t)sizeof(ss_params); }

#define SS_CAT_(a, b) a##_##b
#define SS_CAT(a, b) SS_CAT_(a, b)

/* exp(x) for float, inlined so that the loops vectorise without a call: 2^k e^f
 * with k = rint(x log2 e) and f = x - k ln 2 (Cody-Waite: ln 2 in two parts,
 * explicit fma), |f| <= ln(2)/2, e^f by its Taylor series to degree 7.
 * Max relative error 7.5e-8 (measured over [-87, 88]; expf: ~6e-8). x is
 * clamped to [-87, 88], where 2^k stays a normal float. */
static inline float ss_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float k = __builtin_rintf(x * 1.44269504088896341f);
    const float f = __builtin_fmaf(-k, 1.42860676533018e-6f, __builtin_fmaf(-k, 0.693145751953125f, x));
    float p = 1.98412698e-4f; /* 1/7! */
    p = p * f + 1.38888889e-3f;
    p = p * f + 8.33333333e-3f;
    p = p * f + 4.16666667e-2f;
    p = p * f + 1.66666667e-1f;
    p = p * f + 0.5f;
    p = p * f + 1.0f;
    p = p * f + 1.0f;
    union { float f; int32_t i; } s;
    s.i = ((int32_t)k + 127) << 23;
    return p * s.f;
}

/* float32 instantiation */
#define REAL float
#define SFX f32
#define EXP ss_expf
#define LOG1P log1pf
#define EXP_MIN (-87.0f) /* exp below this is a float denormal: treated as 0 */
#define SS_W 16
#include "scan_cpu_kernel.h"
#include "scan_cpu_backward.h"
#undef REAL
#undef SFX
#undef EXP
#undef LOG1P
#undef EXP_MIN
#undef SS_W

/* float64 instantiation */
#define REAL double
#define SFX f64
#define EXP exp
#define LOG1P log1p
#define EXP_MIN (-708.0)
#define SS_W 8
#include "scan_cpu_kernel.h"
#include "scan_cpu_backward.h"
