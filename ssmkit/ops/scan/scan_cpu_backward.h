/* Selective scan backward, included by scan_cpu.c once per precision, after
 * scan_cpu_kernel.h (same macros). The equations are at the top of that file.
 *
 * Per task (b, channel block): walk the checkpoint segments from the last one;
 * recompute the segment's states and Ā, then go through it in reverse,
 * carrying a[n][w] = dL/dh_t. Scratch per task: 2 K N W + (2 N + K) W reals.
 */

ALWAYS_INLINE void FN(bwd_block)(const ss_params *p, int64_t b, int64_t g, int64_t d0, const int64_t nw,
                                 int64_t tid, REAL *restrict scratch) {
    const REAL *u = (const REAL *)p->u, *delta = (const REAL *)p->delta, *At = (const REAL *)p->A_t;
    const REAL *Bm = (const REAL *)p->Bm, *Cm = (const REAL *)p->Cm, *Dv = (const REAL *)p->Dv;
    const REAL *bias = (const REAL *)p->bias, *z = (const REAL *)p->z, *gy = (const REAL *)p->gy;
    const REAL *ghl = (const REAL *)p->gh_last, *ck = (const REAL *)p->ckpt;
    REAL *gu = (REAL *)p->gu, *gdelta = (REAL *)p->gdelta, *gz = (REAL *)p->gz, *gh0 = (REAL *)p->gh0;
    const int64_t Bs = p->batch, L = p->seqlen, Dm = p->dim, N = p->dstate, G = p->ngroups, K = p->ckpt_every;
    const int64_t S = (L + K - 1) / K, NW = N * SS_W;
    REAL *gAp = (REAL *)p->gA + tid * N * Dm, *gDp = (REAL *)p->gD + tid * Dm;
    REAL *gbp = (REAL *)p->gbias + tid * Dm;
    REAL *gBp = (REAL *)p->gB + tid * Bs * L * G * N, *gCp = (REAL *)p->gC + tid * Bs * L * G * N;

    REAL *a = scratch, *hs = a + NW, *gAl = hs + NW, *hbuf = gAl + NW, *dabuf = hbuf + K * NW;
    REAL *dtbuf = dabuf + K * NW;
    REAL dv[SS_W], gDl[SS_W], gbl[SS_W];
    for (int64_t w = 0; w < nw; w++) {
        dv[w] = Dv ? Dv[d0 + w] : (REAL)0;
        gDl[w] = 0;
        gbl[w] = 0;
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t w = 0; w < nw; w++) {
            a[n * SS_W + w] = ghl ? ghl[(b * Dm + d0 + w) * N + n] : (REAL)0;
            gAl[n * SS_W + w] = 0;
        }

    for (int64_t s = S - 1; s >= 0; s--) {
        const int64_t t0 = s * K, t1 = t0 + K < L ? t0 + K : L;
        const REAL *c = ck + (b * S + s) * N * Dm + d0;
        for (int64_t n = 0; n < N; n++) memcpy(hs + n * SS_W, c + n * Dm, nw * sizeof(REAL));
        FN(recompute)(p, b, g, d0, nw, t0, t1, hs, hbuf, dabuf, dtbuf);

        for (int64_t t = t1 - 1; t >= t0; t--) {
            const int64_t i = t - t0, off = (b * L + t) * Dm + d0, row = ((b * L + t) * G + g) * N;
            const REAL *bt = Bm + row, *ct = Cm + row, *dt = dtbuf + i * SS_W;
            const REAL *hc = hbuf + i * NW, *hp = i ? hbuf + (i - 1) * NW : hs, *da = dabuf + i * NW;
            REAL uu[SS_W], du[SS_W], g_y[SS_W], gdt[SS_W], guv[SS_W];
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                uu[w] = u[off + w];
                du[w] = dt[w] * uu[w];
                g_y[w] = gy[off + w];
            }
            if (z) { /* y = y_ssm silu(z): recompute y_ssm = C . h + D u */
                REAL ys[SS_W];
                for (int64_t w = 0; w < nw; w++) ys[w] = dv[w] * uu[w];
                for (int64_t n = 0; n < N; n++) {
                    const REAL cn = ct[n];
#pragma omp simd
                    for (int64_t w = 0; w < nw; w++) ys[w] += cn * hc[n * SS_W + w];
                }
#pragma omp simd
                for (int64_t w = 0; w < nw; w++) {
                    const REAL zv = z[off + w], e = EXP(zv > 0 ? -zv : zv);
                    const REAL sig = zv > 0 ? (REAL)1 / (1 + e) : e / (1 + e);
                    gz[off + w] = g_y[w] * ys[w] * sig * (1 + zv * (1 - sig));
                    g_y[w] *= zv * sig;
                }
            }
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                gDl[w] += g_y[w] * uu[w];
                guv[w] = g_y[w] * dv[w];
                gdt[w] = 0;
            }
            for (int64_t n = 0; n < N; n++) {
                const REAL bn = bt[n], cn = ct[n];
                const REAL *restrict an = At + n * Dm + d0;
                const REAL *hcn = hc + n * SS_W, *hpn = hp + n * SS_W, *dan = da + n * SS_W;
                REAL *restrict av = a + n * SS_W, *restrict gAn = gAl + n * SS_W;
                REAL sb = 0, sc = 0;
#pragma omp simd reduction(+ : sb, sc)
                for (int64_t w = 0; w < nw; w++) {
                    const REAL at = av[w] + g_y[w] * cn; /* dL/dh_t, complete */
                    const REAL gx = at * hpn[w] * dan[w]; /* dL/d(dt A) */
                    sc += g_y[w] * hcn[w];
                    sb += at * du[w];
                    gdt[w] += gx * an[w] + at * bn * uu[w];
                    gAn[w] += gx * dt[w];
                    guv[w] += at * dt[w] * bn;
                    av[w] = at * dan[w]; /* carried to h_{t-1} */
                }
                gBp[row + n] += sb;
                gCp[row + n] += sc;
            }
#pragma omp simd
            for (int64_t w = 0; w < nw; w++) {
                REAL gd = gdt[w];
                if (p->softplus) { /* softplus'(x) = sigmoid(x) */
                    const REAL x = delta[off + w] + (bias ? bias[d0 + w] : (REAL)0);
                    const REAL e = EXP(x > 0 ? -x : x);
                    gd *= x > 0 ? (REAL)1 / (1 + e) : e / (1 + e);
                }
                gdelta[off + w] = gd;
                gbl[w] += gd;
                gu[off + w] = guv[w];
            }
        }
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t w = 0; w < nw; w++) {
            gh0[(b * Dm + d0 + w) * N + n] = a[n * SS_W + w];
            gAp[n * Dm + d0 + w] += gAl[n * SS_W + w];
        }
    for (int64_t w = 0; w < nw; w++) {
        gDp[d0 + w] += gDl[w];
        gbp[d0 + w] += gbl[w];
    }
}

static int FN(bwd_task)(const ss_params *p, int64_t task, int64_t tid) {
    int64_t b, g, d0, nw;
    FN(task_block)(p, task, &b, &g, &d0, &nw);
    const int64_t NW = p->dstate * SS_W, K = p->ckpt_every;
    REAL *scratch = (REAL *)malloc(sizeof(REAL) * (3 * NW + 2 * K * NW + K * SS_W));
    if (!scratch) return 1;
    if (nw == SS_W)
        FN(bwd_block)(p, b, g, d0, SS_W, tid, scratch); /* constant width: fully vectorised */
    else
        FN(bwd_block)(p, b, g, d0, nw, tid, scratch);
    free(scratch);
    return 0;
}

int FN(ss_backward)(const ss_params *p) { return ss_run(p, FN(bwd_task), FN(num_tasks)(p)); }

#undef FN
#undef ALWAYS_INLINE
