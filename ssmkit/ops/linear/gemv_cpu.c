/* Matrix-vector product for batch-1 decoding on the CPU: y = W x (+ bias).
 *
 * At one row, F.linear on a 2-core x86 CPU streamed the weights at ~14-19 GB/s (float32 and
 * bfloat16) where a plain pass over the same bytes ran at ~33 GB/s and this kernel at 30-56;
 * decoding reads every weight once per token, so that rate sets the decode rate
 * (benchmarks/gemv_cpu.py).
 *
 * Each thread takes a contiguous block of rows, so its reads are one sequential stream; a row is
 * a dot product along K in float32 (four accumulators of 16 lanes with AVX-512, with a software
 * prefetch ahead of the stream; plain C the compiler vectorises elsewhere). The bias is added in
 * float32 and the result rounded once to the weight's dtype (bfloat16: round to nearest even), as
 * F.linear does.
 *
 * Types: 0 = float32, 1 = bfloat16 (raw uint16 bits). Threads: OpenMP where the compiler has it
 * (torch's own runtime when it is the same libgomp), else one.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../bf16_cpu.h"
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

enum { GV_F32 = 0, GV_BF16 = 1 };

int64_t gemv_abi(void) { return 1; }

#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 512 /* ahead of the stream: 256-4096 measured alike, within the machine's noise */
#endif

#if defined(__AVX512F__)
static inline __m512 load16_bf16(const uint16_t *p) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static inline __m512 load16_bf16_masked(const uint16_t *p, __mmask16 m) {
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

static float dot_bf16(const uint16_t *w, const float *x, int64_t K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES + 64, _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(load16_bf16(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(load16_bf16(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(load16_bf16(w + k + 32), _mm512_loadu_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(load16_bf16(w + k + 48), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1u);
        a0 = _mm512_fmadd_ps(load16_bf16_masked(w + k, m), _mm512_maskz_loadu_ps(m, x + k), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static float dot_f32(const float *w, const float *x, int64_t K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 64 <= K; k += 64) {
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES + 128, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES + 192, _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 32), _mm512_loadu_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 48), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k < K; k += 16) {
        __mmask16 m = K - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (K - k)) - 1u);
        a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + k), _mm512_maskz_loadu_ps(m, x + k), a0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}
#else
static float dot_bf16(const uint16_t *w, const float *x, int64_t K) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < K; k++) acc += bf16_to_f32(w[k]) * x[k];
    return acc;
}

static float dot_f32(const float *w, const float *x, int64_t K) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < K; k++) acc += w[k] * x[k];
    return acc;
}
#endif

/* W: (N, K), rows ldw elements apart, of type wt; x: K contiguous values of type xt; bias: N values of type
 * wt, or NULL; y: N values of type wt. Returns 0, or -1 when the float32 copy of x cannot be allocated. */
int gemv(const void *W, int64_t ldw, int wt, const void *x, int xt, const void *bias, void *y, int64_t N,
         int64_t K, int nthreads) {
    float *xs = NULL;
    const float *xf = (const float *)x;
    if (xt == GV_BF16) {
        xs = (float *)malloc((size_t)(K > 0 ? K : 1) * sizeof(float));
        if (xs == NULL) return -1;
        for (int64_t k = 0; k < K; k++) xs[k] = bf16_to_f32(((const uint16_t *)x)[k]);
        xf = xs;
    }
    (void)nthreads;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++) {
        float acc;
        if (wt == GV_BF16) {
            acc = dot_bf16((const uint16_t *)W + n * ldw, xf, K);
            if (bias != NULL) acc += bf16_to_f32(((const uint16_t *)bias)[n]);
            ((uint16_t *)y)[n] = f32_to_bf16(acc);
        } else {
            acc = dot_f32((const float *)W + n * ldw, xf, K);
            if (bias != NULL) acc += ((const float *)bias)[n];
            ((float *)y)[n] = acc;
        }
    }
    free(xs);
    return 0;
}
