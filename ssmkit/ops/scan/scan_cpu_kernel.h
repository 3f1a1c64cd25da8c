/* Selective scan kernel body, included by scan_cpu.c once per precision.
 *
 * Expects: REAL (float or double), SFX (name suffix), EXP, LOG1P, EXP_MIN and
 * SS_W (channels per block). Layouts are in scan_cpu.c's ss_params.
 *
 * Forward, per step t and state index n (vectorised over the block's w):
 *     dt = softplus?(delta + bias);  dA = exp(dt * A[n]);  h[n] = dA h[n] + dt u B[n]
 *     y = sum_n C[n] h[n] + D u;  y *= silu(z)
 * Backward, with a[n] = dL/dh_t[n] carried from t+1 (a <- a * dA after each step):
 *     a[n] += gy C[n];  g(dt) += a[n] (h_{t-1}[n] dA A[n] + u B[n]);  gA[n] += a[n] h_{t-1}[n] dA dt
 *     gB[n] += sum_w a[n] dt u;  gC[n] += sum_w gy h_t[n];  gu = gy D + sum_n a[n] dt B[n]
 *     gD += gy u;  with z: gz = g y_ssm silu'(z) and gy = g silu(z), y_ssm = C . h + D u
 */
#define FN(name) SS_CAT(name, SFX)
#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* dt[w] for channels d0..d0+nw of row `off`: delta + bias, softplus'ed if asked. */
ALWAYS_INLINE void FN(load_dt)(const ss_params *p, int64_t off, int64_t d0, const int64_t nw, REAL *dt) {
    const REAL *delta = (const REAL *)p->delta, *bias = (const REAL *)p->bias;
#pragma omp simd
    for (int64_t w = 0; w < nw; w++) dt[w] = delta[off + w] + (bias ? bias[d0 + w] : (REAL)0);
    if (p->softplus) {
#pragma omp simd
        for (int64_t w = 0; w < nw; w++) { /* softplus(x) = max(x, 0) + log1p(exp(-|x|)) */
            const REAL x = dt[w];
            dt[w] = (x > 0 ? x : (REAL)0) + LOG1P(EXP(x > 0 ? -x : x));
        }
    }
}

/* Which (batch, group, first channel, width) a task covers. */
ALWAYS_INLINE void FN(task_block)(const ss_params *p, int64_t task, int64_t *b, int64_t *g, int64_t *d0,
                                  int64_t *nw) {
    const int64_t Dg = p->dim / p->ngroups, nbg = (Dg + SS_W - 1) / SS_W;
    const int64_t k = task % nbg;
    *g = (task / nbg) % p->ngroups;
    *b = task / (nbg * p->ngroups);
    *d0 = *g * Dg + k * SS_W;
    *nw = Dg - k * SS_W < SS_W ? Dg - k * SS_W : SS_W;
}

int64_t FN(num_tasks)(const ss_params *p) {
    const int64_t Dg = p->dim / p->ngroups;
    return p->batch * p->ngroups * ((Dg + SS_W - 1) / SS_W);
}

ALWAYS_INLINE void FN(fwd_block)(const ss_params *p, int64_t b, int64_t g, int64_t d0, const int64_t nw,
                                 REAL *restrict h) {
    const REAL *u = (const REAL *)p->u, *At = (const REAL *)p->A_t, *Bm = (const REAL *)p->Bm;
    const REAL *Cm = (const REAL *)p->Cm, *Dv = (const REAL *)p->Dv, *z = (const REAL *)p->z;
    const REAL *h0 = (const REAL *)p->h0;
    REAL *y = (REAL *)p->y, *hl = (REAL *)p->h_last, *ck = (REAL *)p->ckpt;
    const int64_t L = p->seqlen, Dm = p->dim, N = p->dstate, G = p->ngroups, K = p->ckpt_every;
    const int64_t S = (L + K - 1) / K;
    for (int64_t n = 0; n < N; n++)
        for (int64_t w = 0; w < nw; w++) h[n * SS_W + w] = h0 ? h0[(b * Dm + d0 + w) * N + n] : (REAL)0;
    REAL dt[SS_W], du[SS_W], acc[SS_W], dv[SS_W];
    for (int64_t w = 0; w < nw; w++) dv[w] = Dv ? Dv[d0 + w] : (REAL)0;
    for (int64_t t = 0; t < L; t++) {
        if (ck && t % K == 0) {
            REAL *c = ck + (b * S + t / K) * N * Dm + d0;
            for (int64_t n = 0; n < N; n++) memcpy(c + n * Dm, h + n * SS_W, nw * sizeof(REAL));
        }
        const int64_t off = (b * L + t) * Dm + d0;
        const REAL *bt = Bm + ((b * L + t) * G + g) * N, *ct = Cm + ((b * L + t) * G + g) * N;
        FN(load_dt)(p, off, d0, nw, dt);
#pragma omp simd
        for (int64_t w = 0; w < nw; w++) {
            du[w] = dt[w] * u[off + w];
            acc[w] = dv[w] * u[off + w];
        }
        for (int64_t n = 0; n < N; n++) {
            const REAL bn = bt[n], cn = ct[n];
            const REAL *restrict an = At + n * Dm + d0;
            REAL *restrict hn = h + n * SS_W;
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                REAL x = dt[w] * an[w];
                x = x > EXP_MIN ? x : EXP_MIN;
                const REAL hv = EXP(x) * hn[w] + du[w] * bn;
                hn[w] = hv;
                acc[w] += cn * hv;
            }
        }
        if (z) {
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                const REAL zv = z[off + w], e = EXP(zv > 0 ? -zv : zv); /* silu(z) = z sigmoid(z), stably */
                acc[w] *= zv * (zv > 0 ? (REAL)1 / (1 + e) : e / (1 + e));
            }
        }
        memcpy(y + off, acc, nw * sizeof(REAL));
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t w = 0; w < nw; w++) hl[(b * Dm + d0 + w) * N + n] = h[n * SS_W + w];
}

static int FN(fwd_task)(const ss_params *p, int64_t task, int64_t tid) {
    (void)tid;
    int64_t b, g, d0, nw;
    FN(task_block)(p, task, &b, &g, &d0, &nw);
    REAL *h = (REAL *)malloc(sizeof(REAL) * p->dstate * SS_W);
    if (!h) return 1;
    if (nw == SS_W)
        FN(fwd_block)(p, b, g, d0, SS_W, h); /* constant width: fully vectorised */
    else
        FN(fwd_block)(p, b, g, d0, nw, h);
    free(h);
    return 0;
}

int FN(ss_forward)(const ss_params *p) { return ss_run(p, FN(fwd_task), FN(num_tasks)(p)); }

/* Recompute steps t0..t1-1 from hs (state before t0): states into hbuf, Ā into dabuf, dt into dtbuf. */
ALWAYS_INLINE void FN(recompute)(const ss_params *p, int64_t b, int64_t g, int64_t d0, const int64_t nw,
                                 int64_t t0, int64_t t1, const REAL *hs, REAL *restrict hbuf,
                                 REAL *restrict dabuf, REAL *restrict dtbuf) {
    const REAL *u = (const REAL *)p->u, *At = (const REAL *)p->A_t, *Bm = (const REAL *)p->Bm;
    const int64_t L = p->seqlen, Dm = p->dim, N = p->dstate, G = p->ngroups, NW = N * SS_W;
    const REAL *hp = hs;
    for (int64_t t = t0; t < t1; t++) {
        const int64_t i = t - t0, off = (b * L + t) * Dm + d0;
        const REAL *bt = Bm + ((b * L + t) * G + g) * N;
        REAL *dt = dtbuf + i * SS_W, du[SS_W];
        FN(load_dt)(p, off, d0, nw, dt);
#pragma omp simd
        for (int64_t w = 0; w < nw; w++) du[w] = dt[w] * u[off + w];
        for (int64_t n = 0; n < N; n++) {
            const REAL bn = bt[n];
            const REAL *restrict an = At + n * Dm + d0;
            REAL *restrict hn = hbuf + i * NW + n * SS_W, *restrict dan = dabuf + i * NW + n * SS_W;
            const REAL *hpn = hp + n * SS_W;
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                REAL x = dt[w] * an[w];
                x = x > EXP_MIN ? x : EXP_MIN;
                const REAL da = EXP(x);
                dan[w] = da;
                hn[w] = da * hpn[w] + du[w] * bn;
            }
        }
        hp = hbuf + i * NW;
    }
}
