// ddp_pool.c — max/avg pooling and nearest/bilinear upsampling, with VJPs.
// All operate per (n, c) plane of an NCHW tensor; the VJPs zero dx and then
// scatter-add. Max pooling, nearest and bilinear upsampling split the planes
// over the pool's threads.
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int64_t planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw;
} pool_shape;

static pool_shape pool_shape_read(const int64_t *ia) {
    pool_shape s = {ia[0] * ia[1], ia[2], ia[3], ia[4], ia[5],
                    ia[6], ia[7], ia[8], ia[9], ia[10], ia[11]};
    return s;
}

/// NaN counts as the largest value, so a window holding one has a NaN maximum.
static inline int pool_greater(float v, float m) { return (v > m) | ((v != v) & (m == m)); } // no branches

/// Per-thread buffers for row_argmax, each as long as an input row: the
/// maxima of the columns, and of the windows starting at each column.
typedef struct {
    float *column_max, *best_max;
    int32_t *column_row, *best_row, *best_column;
} row_scratch;

/// The windows of output row oh of plane x, their maxima found in two
/// passes: down each column of the window's rows, then along the row of
/// column maxima. at[ow] is the index in x of the first maximal element of
/// window ow in row-major order (ties go to the smaller row, then the smaller
/// column), or -1 for a window entirely in padding. The column pass runs over
/// whole rows and vectorizes; this is what makes pooling cheap next to the
/// window-by-window scan.
static void row_argmax(const float *restrict x, const pool_shape *s, int64_t oh, const row_scratch *scratch,
                       int64_t *restrict at) {
    float *restrict column_max = scratch->column_max, *restrict best_max = scratch->best_max;
    int32_t *restrict column_row = scratch->column_row, *restrict best_row = scratch->best_row,
                      *restrict best_column = scratch->best_column;
    int64_t h0 = oh * s->sh - s->ph, h1 = h0 + s->kh < s->h ? h0 + s->kh : s->h;
    if (h0 < 0) h0 = 0;
    if (h0 >= h1) {
        for (int64_t ow = 0; ow < s->ow; ow++) at[ow] = -1;
        return;
    }
    const int64_t w = s->w;
    memcpy(column_max, x + h0 * w, (size_t)w * sizeof(float));
    for (int64_t iw = 0; iw < w; iw++) column_row[iw] = (int32_t)h0;
    for (int64_t ih = h0 + 1; ih < h1; ih++) {
        const float *row = x + ih * w;
        for (int64_t iw = 0; iw < w; iw++) {
            int take = pool_greater(row[iw], column_max[iw]); // a select, so the loop vectorizes
            column_max[iw] = take ? row[iw] : column_max[iw];
            column_row[iw] = take ? (int32_t)ih : column_row[iw];
        }
    }
    // The windows wholly inside the row, [inside0, inside1): first the best
    // of every kw consecutive columns at every start (contiguous selects that
    // vectorize, sw times the work but no strided access), then every sw-th
    // start. The windows at the edges are clipped and go one by one.
    int64_t inside0 = (s->pw + s->sw - 1) / s->sw, inside1 = w - s->kw + s->pw >= 0 ? (w - s->kw + s->pw) / s->sw + 1 : 0;
    if (inside1 > s->ow) inside1 = s->ow;
    if (inside0 > inside1) inside0 = inside1;
    if (inside0 < inside1) {
        int64_t starts = w - s->kw + 1;
        memcpy(best_max, column_max, (size_t)starts * sizeof(float));
        memcpy(best_row, column_row, (size_t)starts * sizeof(int32_t));
        for (int64_t c = 0; c < starts; c++) best_column[c] = (int32_t)c;
        for (int64_t j = 1; j < s->kw; j++)
            for (int64_t c = 0; c < starts; c++) {
                float v = column_max[c + j], m = best_max[c];
                int greater = pool_greater(v, m), tie = (greater | pool_greater(m, v)) == 0;
                int take = greater | (tie & (column_row[c + j] < best_row[c]));
                best_max[c] = take ? v : m;
                best_row[c] = take ? column_row[c + j] : best_row[c];
                best_column[c] = take ? (int32_t)(c + j) : best_column[c];
            }
        for (int64_t ow = inside0; ow < inside1; ow++) {
            int64_t c = ow * s->sw - s->pw;
            at[ow] = (int64_t)best_row[c] * w + best_column[c];
        }
    }
    for (int64_t ow = 0; ow < s->ow; ow++) {
        if (ow == inside0) ow = inside1;
        if (ow >= s->ow) break;
        int64_t w0 = ow * s->sw - s->pw, w1 = w0 + s->kw < w ? w0 + s->kw : w;
        if (w0 < 0) w0 = 0;
        if (w0 >= w1) {
            at[ow] = -1;
            continue;
        }
        int64_t best = w0;
        for (int64_t iw = w0 + 1; iw < w1; iw++) {
            float v = column_max[iw], m = column_max[best];
            int tie = (pool_greater(v, m) | pool_greater(m, v)) == 0;
            best = pool_greater(v, m) | (tie & (column_row[iw] < column_row[best])) ? iw : best;
        }
        at[ow] = (int64_t)column_row[best] * w + best;
    }
}

/// A per-plane kernel's operands; the pool's threads take whole planes (each
/// plane's result is computed by one thread, so nothing depends on the
/// thread count).
typedef struct {
    const float *x, *dy;
    float *y, *dx;
    pool_shape s;
    const int64_t *iw; // upsampling: the source column of each output column
    // upsample_nearest_into: y has out_channels channels per image, plane p
    // of x goes to channel channel0 + p % channels (0: y holds x's planes).
    int64_t out_channels, channel0, channels;
} plane_job;

/// The output plane of input plane p of an upsampling.
static float *upsampled_plane(const plane_job *job, int64_t p) {
    int64_t plane = job->s.oh * job->s.ow;
    if (job->out_channels == 0) return job->y + p * plane;
    return job->y + ((p / job->channels) * job->out_channels + job->channel0 + p % job->channels) * plane;
}

typedef struct {
    plane_job plane;
    int failed;
} pool_job;

/// The calling thread's buffers for row_argmax and its output; 0 (and the
/// job marked failed) without memory.
static int row_argmax_scratch(pool_job *job, row_scratch *r, int64_t **at) {
    const pool_shape *s = &job->plane.s;
    // One allocation, each part a whole number of 64-byte lines.
    size_t w = (size_t)((s->w + 15) & ~15), ow = (size_t)((s->ow + 15) & ~15);
    float *scratch = ddp_thread_scratch(DDP_SCRATCH_GATHER, 5 * w + 2 * ow);
    if (scratch == NULL) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return 0;
    }
    r->column_max = scratch;
    r->column_row = (int32_t *)(scratch + w);
    r->best_max = scratch + 2 * w;
    r->best_row = (int32_t *)(scratch + 3 * w);
    r->best_column = (int32_t *)(scratch + 4 * w);
    *at = (int64_t *)(scratch + 5 * w);
    return 1;
}

static void max_pool_planes(void *arg, int64_t begin, int64_t end) {
    pool_job *job = arg;
    const pool_shape *s = &job->plane.s;
    row_scratch scratch;
    int64_t *at;
    if (!row_argmax_scratch(job, &scratch, &at)) return;
    for (int64_t p = begin; p < end; p++) {
        const float *xp = job->plane.x + p * s->h * s->w;
        float *yp = job->plane.y + p * s->oh * s->ow;
        for (int64_t oh = 0; oh < s->oh; oh++) {
            row_argmax(xp, s, oh, &scratch, at);
            for (int64_t ow = 0; ow < s->ow; ow++) yp[oh * s->ow + ow] = at[ow] >= 0 ? xp[at[ow]] : -INFINITY;
        }
    }
}

// max_pool2d: padding is -infinity, so an all-padding window gives -infinity.
int ddp_max_pool2d(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    pool_job job = {.plane = {.x = bufs[0], .y = bufs[1], .s = pool_shape_read(ia)}};
    ddp_parallel_for_elements(job.plane.s.planes, job.plane.s.planes * job.plane.s.h * job.plane.s.w, max_pool_planes, &job);
    return job.failed ? DDP_ERR_NOMEM : DDP_OK;
}

static void max_pool_grad_planes(void *arg, int64_t begin, int64_t end) {
    pool_job *job = arg;
    const pool_shape *s = &job->plane.s;
    row_scratch scratch;
    int64_t *at;
    if (!row_argmax_scratch(job, &scratch, &at)) return;
    for (int64_t p = begin; p < end; p++) {
        const float *xp = job->plane.x + p * s->h * s->w;
        const float *dyp = job->plane.dy + p * s->oh * s->ow;
        float *dxp = job->plane.dx + p * s->h * s->w;
        memset(dxp, 0, (size_t)(s->h * s->w) * sizeof(float));
        for (int64_t oh = 0; oh < s->oh; oh++) {
            row_argmax(xp, s, oh, &scratch, at);
            for (int64_t ow = 0; ow < s->ow; ow++)
                if (at[ow] >= 0) dxp[at[ow]] += dyp[oh * s->ow + ow];
        }
    }
}

// max_pool2d_grad: dy goes to the first maximal element of each window.
int ddp_max_pool2d_grad(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    pool_job job = {.plane = {.x = bufs[0], .dy = bufs[1], .dx = bufs[2], .s = pool_shape_read(ia)}};
    ddp_parallel_for_elements(job.plane.s.planes, job.plane.s.planes * job.plane.s.h * job.plane.s.w, max_pool_grad_planes,
                              &job);
    return job.failed ? DDP_ERR_NOMEM : DDP_OK;
}

/// Window (oh, ow) clipped to the image, and its divisor as in PyTorch: with
/// count_include_pad the window clipped to the padded image (H + ph, W + pw),
/// otherwise the number of in-image elements.
static float avg_window(const pool_shape *s, int64_t oh, int64_t ow, int include_pad,
                        int64_t *h0, int64_t *h1, int64_t *w0, int64_t *w1) {
    int64_t hs = oh * s->sh - s->ph, ws = ow * s->sw - s->pw;
    int64_t he = hs + s->kh < s->h + s->ph ? hs + s->kh : s->h + s->ph;
    int64_t we = ws + s->kw < s->w + s->pw ? ws + s->kw : s->w + s->pw;
    int64_t padded = (he - hs) * (we - ws);
    if (hs < 0) hs = 0;
    if (ws < 0) ws = 0;
    if (he > s->h) he = s->h;
    if (we > s->w) we = s->w;
    *h0 = hs; *h1 = he; *w0 = ws; *w1 = we;
    int64_t inside = (he > hs && we > ws) ? (he - hs) * (we - ws) : 0;
    return (float)(include_pad ? padded : inside);
}

// avg_pool2d: mean over the window (0 for an empty window).
int ddp_avg_pool2d(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *x = bufs[0];
    float *y = bufs[1];
    pool_shape s = pool_shape_read(ia);
    int include_pad = ia[12] != 0;
    for (int64_t p = 0; p < s.planes; p++) {
        const float *xp = x + p * s.h * s.w;
        float *yp = y + p * s.oh * s.ow;
        for (int64_t oh = 0; oh < s.oh; oh++)
            for (int64_t ow = 0; ow < s.ow; ow++) {
                int64_t h0, h1, w0, w1;
                float div = avg_window(&s, oh, ow, include_pad, &h0, &h1, &w0, &w1);
                float sum = 0.0f;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) sum += xp[ih * s.w + iw];
                yp[oh * s.ow + ow] = div > 0 ? sum / div : 0.0f;
            }
    }
    return DDP_OK;
}

// avg_pool2d_grad: each window spreads dy / divisor over its in-image elements.
int ddp_avg_pool2d_grad(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *dy = bufs[0];
    float *dx = bufs[1];
    pool_shape s = pool_shape_read(ia);
    int include_pad = ia[12] != 0;
    memset(dx, 0, (size_t)(s.planes * s.h * s.w) * sizeof(float));
    for (int64_t p = 0; p < s.planes; p++) {
        const float *dyp = dy + p * s.oh * s.ow;
        float *dxp = dx + p * s.h * s.w;
        for (int64_t oh = 0; oh < s.oh; oh++)
            for (int64_t ow = 0; ow < s.ow; ow++) {
                int64_t h0, h1, w0, w1;
                float div = avg_window(&s, oh, ow, include_pad, &h0, &h1, &w0, &w1);
                if (div <= 0) continue;
                float g = dyp[oh * s.ow + ow] / div;
                for (int64_t ih = h0; ih < h1; ih++)
                    for (int64_t iw = w0; iw < w1; iw++) dxp[ih * s.w + iw] += g;
            }
    }
    return DDP_OK;
}

/// Nearest source index per output index: (o · in) / out; NULL for an empty input.
static int64_t *nearest_indices(int64_t in, int64_t out) {
    if (in <= 0) return NULL;
    int64_t *idx = malloc((size_t)(out > 0 ? out : 1) * sizeof(int64_t));
    if (idx)
        for (int64_t o = 0; o < out; o++) idx[o] = o * in / out;
    return idx;
}

static void nearest_planes(void *arg, int64_t begin, int64_t end) {
    const plane_job *job = arg;
    const pool_shape *s = &job->s;
    if (s->oh == 2 * s->h && s->ow == 2 * s->w) {
        // Doubling (every U-Net decoder block): each input row is written
        // twice, each element twice in a row. Unit-stride loads and a copy
        // of the row instead of an indexed load per output element; the
        // general loop took 1 ms of unet-r18's inference.
        for (int64_t p = begin; p < end; p++) {
            float *yp = upsampled_plane(job, p);
            for (int64_t r = 0; r < s->h; r++) {
                const float *restrict xr = job->x + (p * s->h + r) * s->w;
                float *restrict yr = yp + 2 * r * s->ow;
                for (int64_t c = 0; c < s->w; c++) {
                    yr[2 * c] = xr[c];
                    yr[2 * c + 1] = xr[c];
                }
                memcpy(yr + s->ow, yr, (size_t)s->ow * sizeof(float));
            }
        }
        return;
    }
    for (int64_t p = begin; p < end; p++) {
        float *yp = upsampled_plane(job, p);
        for (int64_t r = 0; r < s->oh; r++) {
            const float *xr = job->x + (p * s->h + r * s->h / s->oh) * s->w;
            float *yr = yp + r * s->ow;
            for (int64_t c = 0; c < s->ow; c++) yr[c] = xr[job->iw[c]];
        }
    }
}

static int upsample_nearest(plane_job job) {
    int64_t *iw = nearest_indices(job.s.w, job.s.ow);
    if (iw == NULL) return DDP_ERR_NOMEM;
    job.iw = iw;
    ddp_parallel_for_elements(job.s.planes, job.s.planes * job.s.oh * job.s.ow, nearest_planes, &job);
    free(iw);
    return DDP_OK;
}

// upsample_nearest: y[oh, ow] = x[oh·H/OH, ow·W/OW].
int ddp_upsample_nearest(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    return upsample_nearest((plane_job){.x = bufs[0], .y = bufs[1],
                                        .s = {.planes = ia[0] * ia[1], .h = ia[2], .w = ia[3], .oh = ia[4], .ow = ia[5]}});
}

// upsample_nearest_into: the same into channels [C0, C0 + C) of a CY-channel y.
int ddp_upsample_nearest_into(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (ia[1] <= 0 || ia[7] < 0 || ia[7] + ia[1] > ia[6]) return DDP_ERR_ARGS;
    return upsample_nearest((plane_job){.x = bufs[0], .y = bufs[1],
                                        .s = {.planes = ia[0] * ia[1], .h = ia[2], .w = ia[3], .oh = ia[4], .ow = ia[5]},
                                        .out_channels = ia[6], .channel0 = ia[7], .channels = ia[1]});
}

static void nearest_grad_planes(void *arg, int64_t begin, int64_t end) {
    const plane_job *job = arg;
    const pool_shape *s = &job->s;
    if (s->oh == 2 * s->h && s->ow == 2 * s->w) {
        // Doubling: each source sums its 2×2 block, in the general loop's
        // order (row by row, left to right), so the sums are the same floats.
        for (int64_t p = begin; p < end; p++)
            for (int64_t r = 0; r < s->h; r++) {
                const float *restrict d0 = job->dy + (p * s->oh + 2 * r) * s->ow, *restrict d1 = d0 + s->ow;
                float *restrict dxr = job->dx + (p * s->h + r) * s->w;
                for (int64_t c = 0; c < s->w; c++) dxr[c] = ((d0[2 * c] + d0[2 * c + 1]) + d1[2 * c]) + d1[2 * c + 1];
            }
        return;
    }
    for (int64_t p = begin; p < end; p++) {
        memset(job->dx + p * s->h * s->w, 0, (size_t)(s->h * s->w) * sizeof(float));
        for (int64_t r = 0; r < s->oh; r++) {
            float *dxr = job->dx + (p * s->h + r * s->h / s->oh) * s->w;
            const float *dyr = job->dy + (p * s->oh + r) * s->ow;
            for (int64_t c = 0; c < s->ow; c++) dxr[job->iw[c]] += dyr[c];
        }
    }
}

// upsample_nearest_grad: dx[ih, iw] = Σ dy over the outputs that read it.
int ddp_upsample_nearest_grad(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    plane_job job = {.dy = bufs[0], .dx = bufs[1], .s = {.planes = ia[0] * ia[1], .h = ia[2], .w = ia[3], .oh = ia[4], .ow = ia[5]}};
    int64_t *iw = nearest_indices(job.s.w, job.s.ow);
    if (iw == NULL) return DDP_ERR_NOMEM;
    job.iw = iw;
    ddp_parallel_for_elements(job.s.planes, job.s.planes * job.s.oh * job.s.ow, nearest_grad_planes, &job);
    free(iw);
    return DDP_OK;
}

int ddp_linear_taps_make(int64_t in, int64_t out, int align_corners, ddp_linear_taps *t) {
    if (in <= 0) return 0;
    size_t n = (size_t)(out > 0 ? out : 1);
    t->i0 = malloc(2 * n * sizeof(int64_t));
    t->l0 = malloc(2 * n * sizeof(float));
    if (t->i0 == NULL || t->l0 == NULL) {
        free(t->i0);
        free(t->l0);
        return 0;
    }
    t->i1 = t->i0 + n;
    t->l1 = t->l0 + n;
    float scale = align_corners ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f)
                                : (float)in / (float)out;
    for (int64_t o = 0; o < out; o++) {
        float src;
        if (align_corners) {
            src = scale * (float)o;
        } else {
            // Two statements so the compiler cannot fuse them into an FMA.
            float scaled = scale * ((float)o + 0.5f);
            src = scaled - 0.5f;
            if (src < 0.0f) src = 0.0f;
        }
        int64_t i = (int64_t)floorf(src);
        if (i > in - 1) i = in - 1;
        float lambda = src - (float)i;
        lambda = lambda < 0.0f ? 0.0f : lambda > 1.0f ? 1.0f : lambda;
        t->i0[o] = i;
        t->i1[o] = i < in - 1 ? i + 1 : i;
        t->l1[o] = lambda;
        t->l0[o] = 1.0f - lambda;
    }
    return 1;
}

void ddp_linear_taps_free(ddp_linear_taps *t) {
    free(t->i0);
    free(t->l0);
}

/// Planes [begin, end) of a bilinear resize or its gradient; planes are
/// independent, so the pool's threads take whole planes.
///
/// The resize is separable. Enlarging (oh ≥ h), each input row is first
/// interpolated along the width once, into a plane of h × ow floats on the
/// thread's scratch, and each output row is then a weighted sum of two of
/// those rows: the gathers along the width run h times per plane instead of
/// twice per output row, and the rows' sums vectorize. The gradient runs
/// the same steps backwards. Shrinking, the direct form reads less.
typedef struct {
    const float *in;
    float *out;
    int64_t h, w, oh, ow;
    const ddp_linear_taps *th, *tw;
    int failed;
} bilinear_job;

/// Row r of x interpolated along the width: out[c] = l0w·x[i0] + l1w·x[i1].
static void bilinear_row(const float *restrict x, const ddp_linear_taps *tw, int64_t ow, float *restrict out) {
    for (int64_t c = 0; c < ow; c++) out[c] = tw->l0[c] * x[tw->i0[c]] + tw->l1[c] * x[tw->i1[c]];
}

static void bilinear_planes(void *arg, int64_t begin, int64_t end) {
    bilinear_job *j = arg;
    const ddp_linear_taps *th = j->th, *tw = j->tw;
    int separable = j->oh >= j->h;
    float *rows = separable ? ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(j->h * j->ow)) : NULL;
    if (separable && rows == NULL) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t p = begin; p < end; p++) {
        if (separable) {
            for (int64_t i = 0; i < j->h; i++) bilinear_row(j->in + (p * j->h + i) * j->w, tw, j->ow, rows + i * j->ow);
            for (int64_t r = 0; r < j->oh; r++) {
                const float *restrict r0 = rows + th->i0[r] * j->ow, *restrict r1 = rows + th->i1[r] * j->ow;
                float a0 = th->l0[r], a1 = th->l1[r];
                float *restrict yr = j->out + (p * j->oh + r) * j->ow;
                for (int64_t c = 0; c < j->ow; c++) yr[c] = a0 * r0[c] + a1 * r1[c];
            }
            continue;
        }
        for (int64_t r = 0; r < j->oh; r++) {
            const float *x0 = j->in + (p * j->h + th->i0[r]) * j->w, *x1 = j->in + (p * j->h + th->i1[r]) * j->w;
            float a0 = th->l0[r], a1 = th->l1[r];
            float *yr = j->out + (p * j->oh + r) * j->ow;
            for (int64_t c = 0; c < j->ow; c++) {
                int64_t c0 = tw->i0[c], c1 = tw->i1[c];
                float b0 = tw->l0[c], b1 = tw->l1[c];
                yr[c] = a0 * (b0 * x0[c0] + b1 * x0[c1]) + a1 * (b0 * x1[c0] + b1 * x1[c1]);
            }
        }
    }
}

static void bilinear_grad_planes(void *arg, int64_t begin, int64_t end) {
    bilinear_job *j = arg;
    const ddp_linear_taps *th = j->th, *tw = j->tw;
    int separable = j->oh >= j->h;
    float *rows = separable ? ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(j->h * j->ow)) : NULL;
    if (separable && rows == NULL) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    memset(j->out + begin * j->h * j->w, 0, (size_t)((end - begin) * j->h * j->w) * sizeof(float));
    for (int64_t p = begin; p < end; p++) {
        if (separable) {
            // Along the height: rows[i] = Σ over output rows r of l(r, i)·dy[r].
            memset(rows, 0, (size_t)(j->h * j->ow) * sizeof(float));
            for (int64_t r = 0; r < j->oh; r++) {
                float *restrict r0 = rows + th->i0[r] * j->ow, *restrict r1 = rows + th->i1[r] * j->ow;
                const float *restrict dyr = j->in + (p * j->oh + r) * j->ow;
                float a0 = th->l0[r], a1 = th->l1[r];
                if (r0 == r1) {
                    for (int64_t c = 0; c < j->ow; c++) r0[c] += (a0 + a1) * dyr[c];
                } else {
                    for (int64_t c = 0; c < j->ow; c++) r0[c] += a0 * dyr[c];
                    for (int64_t c = 0; c < j->ow; c++) r1[c] += a1 * dyr[c];
                }
            }
            // Along the width: scattered into dx's row.
            for (int64_t i = 0; i < j->h; i++) {
                const float *ri = rows + i * j->ow;
                float *d = j->out + (p * j->h + i) * j->w;
                for (int64_t c = 0; c < j->ow; c++) {
                    d[tw->i0[c]] += tw->l0[c] * ri[c];
                    d[tw->i1[c]] += tw->l1[c] * ri[c];
                }
            }
            continue;
        }
        for (int64_t r = 0; r < j->oh; r++) {
            float *d0 = j->out + (p * j->h + th->i0[r]) * j->w, *d1 = j->out + (p * j->h + th->i1[r]) * j->w;
            float a0 = th->l0[r], a1 = th->l1[r];
            const float *dyr = j->in + (p * j->oh + r) * j->ow;
            for (int64_t c = 0; c < j->ow; c++) {
                int64_t c0 = tw->i0[c], c1 = tw->i1[c];
                float b0 = tw->l0[c], b1 = tw->l1[c], g = dyr[c];
                d0[c0] += a0 * b0 * g;
                d0[c1] += a0 * b1 * g;
                d1[c0] += a1 * b0 * g;
                d1[c1] += a1 * b1 * g;
            }
        }
    }
}

// upsample_bilinear: y = l0h·(l0w·x00 + l1w·x01) + l1h·(l0w·x10 + l1w·x11).
int ddp_upsample_bilinear(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *x = bufs[0];
    float *y = bufs[1];
    int64_t planes = ia[0] * ia[1], h = ia[2], w = ia[3], oh = ia[4], ow = ia[5];
    int align = ia[6] != 0;
    ddp_linear_taps th, tw;
    if (!ddp_linear_taps_make(h, oh, align, &th)) return DDP_ERR_NOMEM;
    if (!ddp_linear_taps_make(w, ow, align, &tw)) {
        ddp_linear_taps_free(&th);
        return DDP_ERR_NOMEM;
    }
    bilinear_job job = {x, y, h, w, oh, ow, &th, &tw, 0};
    ddp_parallel_for(planes, bilinear_planes, &job);
    ddp_linear_taps_free(&th);
    ddp_linear_taps_free(&tw);
    return job.failed ? DDP_ERR_NOMEM : DDP_OK;
}

// upsample_bilinear_grad: scatter-add dy with the four forward weights.
int ddp_upsample_bilinear_grad(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *dy = bufs[0];
    float *dx = bufs[1];
    int64_t planes = ia[0] * ia[1], h = ia[2], w = ia[3], oh = ia[4], ow = ia[5];
    int align = ia[6] != 0;
    ddp_linear_taps th, tw;
    if (!ddp_linear_taps_make(h, oh, align, &th)) return DDP_ERR_NOMEM;
    if (!ddp_linear_taps_make(w, ow, align, &tw)) {
        ddp_linear_taps_free(&th);
        return DDP_ERR_NOMEM;
    }
    bilinear_job job = {dy, dx, h, w, oh, ow, &th, &tw, 0};
    ddp_parallel_for(planes, bilinear_grad_planes, &job);
    ddp_linear_taps_free(&th);
    ddp_linear_taps_free(&tw);
    return job.failed ? DDP_ERR_NOMEM : DDP_OK;
}
