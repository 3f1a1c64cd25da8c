/* SSD (Mamba-2), one token (decoding) on the CPU: per head h, with delta = softplus(dt + bias) (or dt + bias)
 * and decay = exp(delta A_h),  S_h <- decay S_h + delta x_h B_g^T ;  y_h = S_h C_g + D x_h, gated by silu(z_h).
 * One pass over the (B, H, P, N) state in place of the PyTorch step's dozen tensor ops over it (step.py).
 *
 * Math in float32. Activations (x, dt, z, B, C, y) are float32 or bfloat16 (raw uint16 bits, type code 1);
 * A (H), D (H) or (H, P), bias (H) and the states are float32. The new state goes to its own buffer (the step
 * is pure). Strides: rows (batch) of x / dt / z / B / C / y are rs[0..5] elements apart; within a row x, z, y
 * are (H, P), dt (H), B and C (G, N), all contiguous; the states (B, H, P, N) contiguous. Head h reads group
 * h / (H / G).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../bf16_cpu.h"

int64_t ssd_step_abi(void) { return 1; }

/* One head: S1 = decay S0 + (delta x) B^T, y = S1 C + D x, times silu(z) where z is given; S0, S1 (P, N), b_f, c_f
 * (N) float32; x, z, y hold P values from element xo, zo, yo of their buffers; Dh: D's (P) values (d_per_p), its
 * one value, or NULL. The fused Mamba-2 block (../decode/mamba2_block_cpu.c) runs it too. */
static inline void ssd_head(const float *s0, float *s1, const void *x, int64_t xo, const void *z, int64_t zo, void *y,
                            int64_t yo, int bf16, float delta, float decay, const float *Dh, int d_per_p,
                            const float *b_f, const float *c_f, int64_t P, int64_t N) {
    for (int64_t p = 0; p < P; p++) {
        const float xv = load_act(x, bf16, xo + p), xd = xv * delta;
        const float *r0 = s0 + p * N;
        float *r1 = s1 + p * N;
        float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; n++) {
            float s = decay * r0[n] + xd * b_f[n];
            r1[n] = s;
            acc += s * c_f[n];
        }
        if (Dh) acc += (d_per_p ? Dh[p] : Dh[0]) * xv;
        if (z) {
            const float zv = load_act(z, bf16, zo + p);
            acc *= zv / (1.0f + expf(-zv));
        }
        store_act(y, bf16, yo + p, acc);
    }
}

/* d_per_p: D is (H, P) (1) or (H) (0). Returns 0, or -1 for a state size past the stack buffers (N > 1024). */
int ssd_step(const float *h0, float *h1, const void *x, const void *dt, const void *z, const void *Bm, const void *Cm,
             void *y, const float *A, const float *Dv, int d_per_p, const float *bias, int bf16, int softplus_on,
             int64_t batch, int64_t H, int64_t P, int64_t N, int64_t G, const int64_t *rs) {
    if (N > 1024) return -1;
    float b_f[1024], c_f[1024];
    const int64_t per_group = H / G;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / per_group;
            if (h % per_group == 0) {
                for (int64_t n = 0; n < N; n++) {
                    b_f[n] = load_act(Bm, bf16, b * rs[3] + g * N + n);
                    c_f[n] = load_act(Cm, bf16, b * rs[4] + g * N + n);
                }
            }
            float delta = load_act(dt, bf16, b * rs[1] + h) + (bias ? bias[h] : 0.0f);
            if (softplus_on) delta = delta > 20.0f ? delta : log1pf(expf(delta));
            const float decay = expf(delta * A[h]);
            const float *Dh = Dv ? Dv + (d_per_p ? h * P : h) : NULL;
            const int64_t base = (b * H + h) * P * N;
            ssd_head(h0 + base, h1 + base, x, b * rs[0] + h * P, z, b * rs[2] + h * P, y, b * rs[5] + h * P, bf16,
                     delta, decay, Dh, d_per_p, b_f, c_f, P, N);
        }
    }
    return 0;
}
