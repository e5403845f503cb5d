// ddp_internal.h — helpers shared by the kernel sources (not part of the API).
#ifndef DDP_INTERNAL_H
#define DDP_INTERNAL_H

#include <cblas.h>
#include <stdint.h>
#include <string.h>

/// Largest rank accepted by reduce, permute and copy_region.
#define DDP_MAX_RANK 16

/// Row-major C = op(A)·op(B) + beta·C (alpha = 1). Empty products are handled
/// here so that BLAS never sees a zero leading dimension.
static inline void ddp_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                            const float *a, int64_t lda, const float *b, int64_t ldb,
                            float beta, float *c, int64_t ldc) {
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (beta == 0.0f)
            for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, 1.0f,
                a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
}

/// Sum of x[0..n) in double. Four independent accumulators keep the loop
/// throughput-bound rather than latency-bound.
static inline double ddp_sum_f64(const float *x, int64_t n) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += x[i]; s1 += x[i + 1]; s2 += x[i + 2]; s3 += x[i + 3];
    }
    for (; i < n; i++) s0 += x[i];
    return (s0 + s1) + (s2 + s3);
}

/// Sum of (x[i] - mean)^2 over x[0..n) in double.
static inline double ddp_sum_sq_dev_f64(const float *x, int64_t n, double mean) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double d0 = x[i] - mean, d1 = x[i + 1] - mean, d2 = x[i + 2] - mean, d3 = x[i + 3] - mean;
        s0 += d0 * d0; s1 += d1 * d1; s2 += d2 * d2; s3 += d3 * d3;
    }
    for (; i < n; i++) {
        double d = x[i] - mean;
        s0 += d * d;
    }
    return (s0 + s1) + (s2 + s3);
}

#endif
