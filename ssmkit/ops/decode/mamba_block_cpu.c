/* A Mamba block's decode step for one token on the CPU, in one call: the residual add, RMSNorm, in_proj,
 * the causal conv step with silu, x_proj, dt_proj, the selective scan step with the silu(z) gate, out_proj.
 *
 * At batch 1 the PyTorch step spends more time issuing its ~40 small ops per block than streaming the
 * weights; here the projections run the matrix-vector kernel (../linear/gemv_cpu.c, OpenMP threads over
 * rows) and the scan the C step (../scan/step_cpu.c), with the rest in plain loops between them.
 *
 * Every intermediate is rounded to the activations' dtype where the PyTorch step rounds it (its tensors are
 * in that dtype): the normalised input, in_proj's output, the conv output, x_proj's and dt_proj's outputs, y
 * and the block's output. Types: 0 = float32, 1 = bfloat16. The residual has its own type (float32 when the
 * model keeps it in float32); the small parameters (norm and conv weights, biases of dt, A, D) come as
 * float32. New states go to their own buffers.
 */
#include "../linear/gemv_cpu.c"
#include "../scan/step_cpu.c"
#include "block_cpu.h"

typedef struct {
    const void *res_in, *pend;    /* (d_model): the residual (res_type), the previous block's output or NULL */
    void *res_out, *out;          /* (d_model): residual + pend (res_type), this block's output */
    const float *norm_w;          /* (d_model) */
    const void *w_in, *b_in;      /* (2 d_inner, d_model), (2 d_inner) or NULL */
    const float *conv_w, *conv_b; /* (d_inner, d_conv), (d_inner) or NULL */
    const void *conv_in;          /* (d_conv - 1, d_inner): the previous inputs, oldest first */
    void *conv_out;
    const void *w_x;              /* (dt_rank + 2 d_state, d_inner) */
    const void *w_dt;             /* (d_inner, dt_rank) */
    const float *dt_b, *A, *Dv;   /* (d_inner), (d_inner, d_state), (d_inner) */
    const float *ssm_in;          /* (d_inner, d_state) */
    float *ssm_out;
    const void *w_out, *b_out;    /* (d_model, d_inner), (d_model) or NULL */
    int64_t d_model, d_inner, d_state, dt_rank, d_conv, res_type, act_type, nthreads;
    double eps;
} mb_params;

int64_t mb_params_size(void) { return (int64_t)sizeof(mb_params); }

/* Returns 0; -1 or -2 when scratch cannot be allocated or d_state is past the scan step's buffers. */
int mamba_block_step(const mb_params *p) {
    const int64_t D = p->d_model, di = p->d_inner, N = p->d_state, R = p->dt_rank, K = p->d_conv;
    const int at = (int)p->act_type, rt = (int)p->res_type, nt = (int)p->nthreads;
    const size_t es = at == GV_BF16 ? 2 : 4;
    const int64_t n_act = D + 2 * di + di + (R + 2 * N) + di + di; /* h, xz, uc, xdbl, dt, y */
    char *act = (char *)malloc((size_t)n_act * es);
    float *r32 = (float *)malloc((size_t)D * sizeof(float));
    if (act == NULL || r32 == NULL) {
        free(act);
        free(r32);
        return -2;
    }
    char *h = act, *xz = h + D * es, *uc = xz + 2 * di * es, *xdbl = uc + di * es, *dt = xdbl + (R + 2 * N) * es;
    char *y = dt + di * es;
    int rc = 0;

    /* residual add and RMSNorm (float32 statistics, then x * rstd * w rounded once) */
    block_add_rms_norm(p->res_in, p->pend, p->res_out, h, p->norm_w, D, rt, at, p->eps, r32);

    /* in_proj: xz = [u, z] */
    rc = gemv(p->w_in, D, at, h, at, p->b_in, xz, 2 * di, D, nt);
    if (rc != 0) goto done;

    /* conv step: window = [previous K-1 inputs, u]; uc = silu(window . w + b); the state shifts by one */
    block_conv_step_silu(p->conv_in, p->conv_out, xz, p->conv_w, p->conv_b, uc, di, K, at);

    /* x_proj -> (dt, B, C); dt_proj without its bias (the scan step adds it before the softplus) */
    rc = gemv(p->w_x, di, at, uc, at, NULL, xdbl, R + 2 * N, di, nt);
    if (rc != 0) goto done;
    rc = gemv(p->w_dt, R, at, xdbl, at, NULL, dt, di, R, nt);
    if (rc != 0) goto done;

    /* scan step with D and the silu(z) gate, then out_proj */
    const int64_t rs[6] = {0, 0, 0, 0, 0, 0};
    rc = ss_step(p->ssm_in, p->ssm_out, uc, dt, xz + di * es, xdbl + R * es, xdbl + (R + N) * es, y, p->A, p->Dv,
                 p->dt_b, at == GV_BF16, 1, 1, di, N, 1, rs);
    if (rc != 0) goto done;
    rc = gemv(p->w_out, di, at, y, at, p->b_out, p->out, D, di, nt);

done:
    free(act);
    free(r32);
    return rc;
}
