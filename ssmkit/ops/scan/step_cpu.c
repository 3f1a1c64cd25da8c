/* Selective scan, one token (decoding) on the CPU: h <- exp(dt A) h + dt B u ; y = C . h + D u, gated by
 * silu(z); dt = softplus(delta + bias) (or delta + bias). One call in place of the ~20 small tensor ops of
 * the PyTorch step (step.py), whose per-op cost set the decode rate at batch 1.
 *
 * Math in float32. Activations (u, delta, z, B, C, y) are float32 or bfloat16 (raw uint16 bits, type code
 * 1); A (D, N), D, bias and the states are float32. The new state goes to its own buffer (the step is
 * pure). Strides: rows of u / delta / z / B / C / y are rs[0..5] elements apart, channels contiguous;
 * the states (B, D, N) contiguous; B and C hold G groups of N, channel d reading group d / (D / G).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../bf16_cpu.h"

int64_t step_abi(void) { return 1; }

/* Returns 0, -1 for a state size past the stack buffers (N > 1024), -2 when the per-channel scratch cannot be
 * allocated. */
int ss_step(const float *h0, float *h1, const void *u, const void *delta, const void *z, const void *Bm,
            const void *Cm, void *y, const float *A, const float *Dv, const float *bias, int bf16, int softplus_on,
            int64_t batch, int64_t dim, int64_t dstate, int64_t ngroups, const int64_t *rs) {
    if (dstate > 1024) return -1;
    int64_t per_group = dim / ngroups;
    float b_f[1024], c_f[1024], prod[1024];
    float *scratch = (float *)malloc((size_t)(3 * (dim > 0 ? dim : 1)) * sizeof(float));
    if (scratch == NULL) return -2;
    float *dt = scratch, *uv = scratch + dim, *gate = scratch + 2 * dim;
    for (int64_t b = 0; b < batch; b++) {
        /* per channel, vectorised: dt = softplus(delta + bias), u, silu(z) (or 1) */
        for (int64_t d = 0; d < dim; d++) {
            dt[d] = load_act(delta, bf16, b * rs[1] + d) + (bias ? bias[d] : 0.0f);
            uv[d] = load_act(u, bf16, b * rs[0] + d);
            gate[d] = z ? load_act(z, bf16, b * rs[2] + d) : 0.0f;
        }
        if (softplus_on) {
#pragma omp simd
            for (int64_t d = 0; d < dim; d++) dt[d] = dt[d] > 20.0f ? dt[d] : log1pf(expf(dt[d]));
        }
        if (z) {
#pragma omp simd
            for (int64_t d = 0; d < dim; d++) gate[d] = gate[d] / (1.0f + expf(-gate[d]));
        }
        for (int64_t g = 0; g < ngroups; g++) {
            for (int64_t n = 0; n < dstate; n++) {
                b_f[n] = load_act(Bm, bf16, b * rs[3] + g * dstate + n);
                c_f[n] = load_act(Cm, bf16, b * rs[4] + g * dstate + n);
            }
            for (int64_t d = g * per_group; d < (g + 1) * per_group; d++) {
                float dtd = dt[d], dtu = dtd * uv[d];
                const float *a = A + d * dstate, *s0 = h0 + (b * dim + d) * dstate;
                float *s1 = h1 + (b * dim + d) * dstate;
#pragma omp simd
                for (int64_t n = 0; n < dstate; n++) {
                    float h = expf(dtd * a[n]) * s0[n] + dtu * b_f[n];
                    s1[n] = h;
                    prod[n] = h * c_f[n];
                }
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t n = 0; n < dstate; n++) acc += prod[n];
                if (Dv) acc += Dv[d] * uv[d];
                if (z) acc *= gate[d];
                store_act(y, bf16, b * rs[5] + d, acc);
            }
        }
    }
    free(scratch);
    return 0;
}
