/* A Mamba-2 block's decode step for one token on the CPU, in one call: the residual add, RMSNorm, in_proj, the
 * causal conv step with silu over the (x, B, C) channels, the SSD step (heads split over the threads), the gated
 * RMSNorm (or the plain silu(z) gate), out_proj.
 *
 * The PyTorch step runs ~35 small tensor ops per block around its two matrix-vector products; at batch 1 on a
 * 2-core CPU their cost, not the weights or the (H, P, N) state, set its rate (BENCHMARKS.md). Here the
 * projections run the matrix-vector kernel (../linear/gemv_cpu.c) and each head the C SSD step's loop
 * (../ssd/ssd_step_cpu.c), with the rest in plain loops between them.
 *
 * Every intermediate is rounded to the activations' dtype where the PyTorch step rounds it: the normalised
 * input, in_proj's output, the conv output, y and the norm's output, and the block's output. Δ stays in float32
 * (softplus(dt + dt_bias), clamped to [dt_lo, dt_hi]). Types: 0 = float32, 1 = bfloat16; the residual has its own
 * type; the small parameters (norm weights, conv weights and bias, dt_bias, A, D) come as float32. New states go
 * to their own buffers.
 */
#include "../linear/gemv_cpu.c"
#include "../ssd/ssd_step_cpu.c"
#include "block_cpu.h"

typedef struct {
    const void *res_in, *pend;    /* (d_model): the residual (res_type), the previous block's output or NULL */
    void *res_out, *out;          /* (d_model): residual + pend (res_type), this block's output */
    const float *norm_w;          /* (d_model) */
    const void *w_in, *b_in;      /* (2 d_inner + 2 G N + H, d_model): rows z, x, B, C, dt; bias or NULL */
    const float *conv_w, *conv_b; /* (conv_dim, d_conv), (conv_dim) or NULL; conv_dim = d_inner + 2 G N */
    const void *conv_in;          /* (d_conv - 1, conv_dim): the previous (x, B, C), oldest first */
    void *conv_out;
    const float *dt_b, *A, *Dv;   /* (H) each; Dv may be NULL */
    const float *ssm_in;          /* (H, P, N) */
    float *ssm_out;
    const float *gnorm_w;         /* (d_inner): the gated RMSNorm's weight, or NULL: y * silu(z) in the SSD step */
    const void *w_out, *b_out;    /* (d_model, d_inner), (d_model) or NULL */
    int64_t d_model, d_inner, d_state, nheads, headdim, ngroups, d_conv, norm_group, norm_before_gate, res_type,
        act_type, nthreads;
    double eps, gnorm_eps, dt_lo, dt_hi;
} m2_params;

int64_t m2_params_size(void) { return (int64_t)sizeof(m2_params); }

/* out = RMSNorm over groups of gs channels of y * silu(z) (norm_before_gate 0) or of y, then times silu(z) (1),
 * times w; float32 statistics, rounded to at once. tmp: gs floats. */
static void gated_rms_norm_row(const void *y, const void *z, const float *w, void *out, int64_t d, int64_t gs,
                               int before_gate, double eps, int at, float *tmp) {
    for (int64_t g0 = 0; g0 < d; g0 += gs) {
        double ss = 0.0;
        for (int64_t c = 0; c < gs; c++) {
            float v = load_act(y, at, g0 + c);
            if (!before_gate) v *= silu_f(load_act(z, at, g0 + c));
            tmp[c] = v;
            ss += (double)v * v;
        }
        const float rstd = 1.0f / sqrtf((float)(ss / (double)gs) + (float)eps);
        for (int64_t c = 0; c < gs; c++) {
            float o = (tmp[c] * rstd) * w[g0 + c];
            if (before_gate) o *= silu_f(load_act(z, at, g0 + c));
            store_act(out, at, g0 + c, o);
        }
    }
}

/* Returns 0, or -2 when scratch cannot be allocated. */
int mamba2_block_step(const m2_params *p) {
    const int64_t D = p->d_model, di = p->d_inner, N = p->d_state, H = p->nheads, P = p->headdim, G = p->ngroups;
    const int64_t K = p->d_conv, GN = G * N, conv_dim = di + 2 * GN, d_in = 2 * di + 2 * GN + H;
    const int at = (int)p->act_type, rt = (int)p->res_type, nt = (int)p->nthreads;
    const size_t es = at == GV_BF16 ? 2 : 4;
    const int64_t n_act = D + d_in + conv_dim + di + di; /* h, zxbcdt, xBC after the conv, y, the norm's output */
    const int64_t n_f32 = (D > p->norm_group ? D : p->norm_group) + 2 * GN;
    char *act = (char *)malloc((size_t)n_act * es);
    float *f32 = (float *)malloc((size_t)n_f32 * sizeof(float));
    if (act == NULL || f32 == NULL) {
        free(act);
        free(f32);
        return -2;
    }
    char *h = act, *zx = h + D * es, *xbc = zx + d_in * es, *y = xbc + conv_dim * es, *yn = y + di * es;
    float *bc = f32, *tmp = f32 + 2 * GN; /* B then C in float32; the norms' scratch */
    int rc = 0;

    block_add_rms_norm(p->res_in, p->pend, p->res_out, h, p->norm_w, D, rt, at, p->eps, tmp);

    /* in_proj: zx = [z (d_inner), x (d_inner), B (G N), C (G N), dt (H)] */
    rc = gemv(p->w_in, D, at, h, at, p->b_in, zx, d_in, D, nt);
    if (rc != 0) goto done;

    /* conv step over the (x, B, C) channels; the state shifts by one */
    block_conv_step_silu(p->conv_in, p->conv_out, zx + di * es, p->conv_w, p->conv_b, xbc, conv_dim, K, at);
    for (int64_t n = 0; n < 2 * GN; n++) bc[n] = load_act(xbc, at, di + n);

    /* SSD step, head by head (Δ = softplus(dt + dt_bias) clamped, in float32); the gate here without the norm */
    const void *gate = p->gnorm_w ? NULL : zx;
    const int64_t per_group = H / G, dt_at = 2 * di + 2 * GN;
    const float lo = (float)p->dt_lo, hi = (float)p->dt_hi;
    (void)nt;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t hd = 0; hd < H; hd++) {
        const int64_t g = hd / per_group;
        float delta = load_act(zx, at, dt_at + hd) + p->dt_b[hd];
        delta = delta > 20.0f ? delta : log1pf(expf(delta));
        if (delta < lo) delta = lo; /* (comparisons keep a NaN a NaN) */
        if (delta > hi) delta = hi;
        const float decay = expf(delta * p->A[hd]);
        ssd_head(p->ssm_in + hd * P * N, p->ssm_out + hd * P * N, xbc, hd * P, gate, hd * P, y, hd * P, at, delta,
                 decay, p->Dv ? p->Dv + hd : NULL, 0, bc + g * N, bc + GN + g * N, P, N);
    }

    /* gated RMSNorm, then out_proj */
    const void *y_out = y;
    if (p->gnorm_w) {
        gated_rms_norm_row(y, zx, p->gnorm_w, yn, di, p->norm_group, (int)p->norm_before_gate, p->gnorm_eps, at, tmp);
        y_out = yn;
    }
    rc = gemv(p->w_out, di, at, y_out, at, p->b_out, p->out, D, di, nt);

done:
    free(act);
    free(f32);
    return rc;
}
