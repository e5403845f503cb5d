// ddp_layout.c — general-rank kernels: reduce, permute, copy_region.
//
// Each walks its outer axes with an odometer (index counters plus running
// offsets) and runs a simple loop over the innermost axis.
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <math.h>
#include <stdlib.h>

/// Advances the odometer over axes [0, rank) of `size`, moving the two offsets
/// by the matching strides.
static inline void odometer_step(int rank, const int64_t *size, int64_t *idx,
                                 const int64_t *stride_a, int64_t *off_a,
                                 const int64_t *stride_b, int64_t *off_b) {
    for (int d = rank - 1; d >= 0; d--) {
        idx[d]++;
        *off_a += stride_a[d];
        *off_b += stride_b[d];
        if (idx[d] < size[d]) return;
        *off_a -= stride_a[d] * size[d];
        *off_b -= stride_b[d] * size[d];
        idx[d] = 0;
    }
}

// reduce: sum/mean (double accumulation) or max over the flagged axes.
// Size-1 axes are dropped and neighbouring axes with the same flag merged, so
// the walk alternates kept and reduced axes; the innermost one is either a
// contiguous reduction or an element-wise update of a run of outputs.
int ddp_reduce(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *x = bufs[0];
    float *y = bufs[1];
    int64_t kind = ia[0], rank = ia[1];
    const int64_t *shape = ia + 2, *reduced = ia + 2 + rank;
    if (rank < 0 || rank > DDP_MAX_RANK || kind < 0 || kind > 2) return DDP_ERR_ARGS;

    int64_t size[DDP_MAX_RANK], red[DDP_MAX_RANK];
    int k = 0;
    int64_t out_n = 1, red_n = 1;
    for (int64_t d = 0; d < rank; d++) {
        int64_t r = reduced[d] != 0;
        if (r) red_n *= shape[d]; else out_n *= shape[d];
        if (shape[d] == 1) continue;
        if (k > 0 && red[k - 1] == r) {
            size[k - 1] *= shape[d];
        } else {
            size[k] = shape[d];
            red[k] = r;
            k++;
        }
    }
    if (k == 0) { size[0] = 1; red[0] = 0; k = 1; }
    if (out_n == 0) return DDP_OK;
    if (red_n == 0) { // nothing to reduce: the identity of each reduction
        float v = kind == 0 ? 0.0f : kind == 1 ? NAN : -INFINITY;
        for (int64_t i = 0; i < out_n; i++) y[i] = v;
        return DDP_OK;
    }

    // Strides of the merged axes in x (contiguous) and in y (0 for reduced axes).
    int64_t in_stride[DDP_MAX_RANK], out_stride[DDP_MAX_RANK], idx[DDP_MAX_RANK] = {0};
    int64_t is = 1, os = 1;
    for (int d = k - 1; d >= 0; d--) {
        in_stride[d] = is;
        is *= size[d];
        out_stride[d] = red[d] ? 0 : os;
        if (!red[d]) os *= size[d];
    }
    int64_t inner = size[k - 1], outer = is / inner;
    int inner_reduced = (int)red[k - 1];

    if (kind == 2) {
        for (int64_t i = 0; i < out_n; i++) y[i] = -INFINITY;
        int64_t xo = 0, yo = 0;
        for (int64_t it = 0; it < outer; it++) {
            const float *xr = x + xo;
            if (inner_reduced) {
                float m = y[yo];
                for (int64_t j = 0; j < inner; j++)
                    if (xr[j] > m || isnan(xr[j])) m = xr[j];
                y[yo] = m;
            } else {
                float *yr = y + yo;
                for (int64_t j = 0; j < inner; j++)
                    yr[j] = (xr[j] > yr[j] || isnan(xr[j])) ? xr[j] : yr[j];
            }
            odometer_step(k - 1, size, idx, in_stride, &xo, out_stride, &yo);
        }
        return DDP_OK;
    }

    double *acc = calloc((size_t)out_n, sizeof(double));
    if (acc == NULL) return DDP_ERR_NOMEM;
    int64_t xo = 0, yo = 0;
    for (int64_t it = 0; it < outer; it++) {
        const float *xr = x + xo;
        if (inner_reduced) {
            acc[yo] += ddp_sum_f64(xr, inner);
        } else {
            double *ar = acc + yo;
            for (int64_t j = 0; j < inner; j++) ar[j] += xr[j];
        }
        odometer_step(k - 1, size, idx, in_stride, &xo, out_stride, &yo);
    }
    double scale = kind == 1 ? 1.0 / (double)red_n : 1.0;
    for (int64_t i = 0; i < out_n; i++) y[i] = (float)(acc[i] * scale);
    free(acc);
    return DDP_OK;
}

// permute: y[j0..jr) = x[i] with i[perm[d]] = j[d] (numpy transpose). Output
// axes whose source elements are adjacent in x are merged first.
int ddp_permute(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *x = bufs[0];
    float *y = bufs[1];
    int64_t rank = ia[0];
    const int64_t *in_shape = ia + 1, *perm = ia + 1 + rank;
    if (rank < 0 || rank > DDP_MAX_RANK) return DDP_ERR_ARGS;

    int64_t in_stride[DDP_MAX_RANK];
    int64_t s = 1;
    for (int64_t d = rank - 1; d >= 0; d--) {
        in_stride[d] = s;
        s *= in_shape[d];
    }
    if (s == 0) return DDP_OK;

    // Output axes (size, source stride), size-1 axes dropped, mergeable ones merged.
    int64_t size[DDP_MAX_RANK], src_stride[DDP_MAX_RANK];
    int k = 0;
    for (int64_t d = 0; d < rank; d++) {
        if (perm[d] < 0 || perm[d] >= rank) return DDP_ERR_ARGS;
        int64_t n = in_shape[perm[d]], st = in_stride[perm[d]];
        if (n == 1) continue;
        if (k > 0 && src_stride[k - 1] == st * n) {
            size[k - 1] *= n;
            src_stride[k - 1] = st;
        } else {
            size[k] = n;
            src_stride[k] = st;
            k++;
        }
    }
    if (k == 0) { size[0] = 1; src_stride[0] = 1; k = 1; }

    int64_t dst_stride[DDP_MAX_RANK], idx[DDP_MAX_RANK] = {0};
    int64_t ds = 1;
    for (int d = k - 1; d >= 0; d--) {
        dst_stride[d] = ds;
        ds *= size[d];
    }
    int64_t inner = size[k - 1], step = src_stride[k - 1], outer = ds / inner;
    int64_t xo = 0, yo = 0;
    for (int64_t it = 0; it < outer; it++) {
        const float *xr = x + xo;
        float *yr = y + yo;
        if (step == 1)
            for (int64_t j = 0; j < inner; j++) yr[j] = xr[j];
        else
            for (int64_t j = 0; j < inner; j++) yr[j] = xr[j * step];
        odometer_step(k - 1, size, idx, src_stride, &xo, dst_stride, &yo);
    }
    return DDP_OK;
}

// copy_region: dst[dst_start + k] = src[src_start + k·src_step] over the box
// `count`; 4-byte elements copied as raw bits.
int ddp_copy_region(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const uint32_t *src = bufs[0];
    uint32_t *dst = bufs[1];
    int64_t rank = ia[0];
    if (rank < 0 || rank > DDP_MAX_RANK) return DDP_ERR_ARGS;
    const int64_t *src_shape = ia + 1, *dst_shape = src_shape + rank;
    const int64_t *src_start = dst_shape + rank, *src_step = src_start + rank;
    const int64_t *dst_start = src_step + rank, *count = dst_start + rank;

    int64_t size[DDP_MAX_RANK], ss[DDP_MAX_RANK], dsr[DDP_MAX_RANK], idx[DDP_MAX_RANK] = {0};
    int64_t s_el = 1, d_el = 1, so = 0, doff = 0, total = 1;
    for (int64_t d = rank - 1; d >= 0; d--) {
        size[d] = count[d];
        ss[d] = s_el * src_step[d];
        dsr[d] = d_el;
        so += s_el * src_start[d];
        doff += d_el * dst_start[d];
        s_el *= src_shape[d];
        d_el *= dst_shape[d];
        total *= count[d];
    }
    if (total == 0) return DDP_OK;
    if (rank == 0) {
        dst[0] = src[0];
        return DDP_OK;
    }
    int64_t inner = size[rank - 1], step = ss[rank - 1], outer = total / inner;
    for (int64_t it = 0; it < outer; it++) {
        const uint32_t *sr = src + so;
        uint32_t *dr = dst + doff;
        if (step == 1)
            for (int64_t j = 0; j < inner; j++) dr[j] = sr[j];
        else
            for (int64_t j = 0; j < inner; j++) dr[j] = sr[j * step];
        odometer_step((int)rank - 1, size, idx, ss, &so, dsr, &doff);
    }
    return DDP_OK;
}
