/* Pieces of a fused CPU decode block shared by mamba_block_cpu.c and mamba2_block_cpu.c: the residual add with
 * the block's RMSNorm, and the causal conv step with silu. Values of type code 0 (float32) or 1 (bfloat16, raw
 * uint16 bits); each result is rounded to its buffer's type where the PyTorch step rounds it. */
#ifndef SSMKIT_BLOCK_CPU_H
#define SSMKIT_BLOCK_CPU_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../bf16_cpu.h"

static inline float round_to(int type, float v) {
    if (type != 1) return v;
    return bf16_to_f32(f32_to_bf16(v));
}

static inline float silu_f(float v) { return v / (1.0f + expf(-v)); }

/* res_out = res_in + pend (pend NULL: nothing to add), rounded to rt; h = RMSNorm(res_out) * w rounded once to
 * at (float32 statistics, then x * rstd * w). r32: d floats of scratch. */
static void block_add_rms_norm(const void *res_in, const void *pend, void *res_out, void *h, const float *w,
                               int64_t d, int rt, int at, double eps, float *r32) {
    double ss = 0.0;
    for (int64_t i = 0; i < d; i++) {
        float r = load_act(res_in, rt, i) + (pend ? load_act(pend, at, i) : 0.0f);
        r = round_to(rt, r);
        store_act(res_out, rt, i, r);
        r32[i] = r;
        ss += (double)r * r;
    }
    const float rstd = 1.0f / sqrtf((float)(ss / (double)d) + (float)eps);
    for (int64_t i = 0; i < d; i++) store_act(h, at, i, (r32[i] * rstd) * w[i]);
}

/* One token of a causal depthwise conv over c channels with silu: window = [conv_in (k-1, c) oldest first,
 * x_new (c)], out = silu(window . w + b) with w (c, k) and b (c) or NULL; conv_out = the window's last k-1
 * rows. Every buffer holds type at. */
static void block_conv_step_silu(const void *conv_in, void *conv_out, const void *x_new, const float *w,
                                 const float *b, void *out, int64_t c, int64_t k, int at) {
    for (int64_t d = 0; d < c; d++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < k - 1; j++) acc += load_act(conv_in, at, j * c + d) * w[d * k + j];
        acc += load_act(x_new, at, d) * w[d * k + k - 1];
        if (b) acc += b[d];
        store_act(out, at, d, silu_f(acc));
    }
    if (k > 1) {
        const size_t es = at == 1 ? 2 : 4;
        memcpy(conv_out, (const char *)conv_in + c * es, (size_t)((k - 2) * c) * es);
        memcpy((char *)conv_out + (k - 2) * c * es, x_new, (size_t)c * es);
    }
}

#endif
