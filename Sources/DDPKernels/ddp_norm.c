// ddp_norm.c — normalizations, softmax and the losses.
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <math.h>
#include <stdlib.h>

// batch_norm (inference form): y = (x - mean[c]) · gamma[c]/sqrt(var[c] + eps) + beta[c].
int ddp_batch_norm(void *const *bufs, const int64_t *ia, const double *fa) {
    const float *x = bufs[0], *mean = bufs[1], *var = bufs[2], *gamma = bufs[3], *beta = bufs[4];
    float *y = bufs[5];
    int64_t n = ia[0], c = ia[1], hw = ia[2];
    double eps = fa[0];
    for (int64_t ch = 0; ch < c; ch++) {
        float scale = (float)((double)gamma[ch] / sqrt((double)var[ch] + eps));
        float m = mean[ch], b = beta[ch];
        for (int64_t i = 0; i < n; i++) {
            const float *xp = x + (i * c + ch) * hw;
            float *yp = y + (i * c + ch) * hw;
            for (int64_t j = 0; j < hw; j++) yp[j] = (xp[j] - m) * scale + b;
        }
    }
    return DDP_OK;
}

// batch_moments: the per-channel mean and biased variance of x in one pass
// (see ddp_moments_finish). A convolution's epilogue computes the same
// values, bit for bit, from the rows it stores (ddp_internal.h).
typedef struct {
    const double *rows;     // ddp_moments_finish's partial sums, or NULL:
    const float *x;         // summed here, row by row, in the same order
    int64_t n, c, rows_per_plane, row;
    float *out;
} moments_job;

static void moments_channels(void *arg, int64_t begin, int64_t end) {
    const moments_job *job = arg;
    double count = (double)(job->n * job->rows_per_plane * job->row);
    for (int64_t ch = begin; ch < end; ch++) {
        double sum = 0, squares = 0;
        for (int64_t i = 0; i < job->n; i++)
            for (int64_t r = 0; r < job->rows_per_plane; r++) {
                int64_t index = (i * job->c + ch) * job->rows_per_plane + r;
                double partial[2];
                if (job->rows) {
                    partial[0] = job->rows[2 * index];
                    partial[1] = job->rows[2 * index + 1];
                } else {
                    ddp_row_moments(job->x + index * job->row, job->row, partial);
                }
                sum += partial[0];
                squares += partial[1];
            }
        // The variance around the mean as stored (m, rounded to f32), on
        // which a batch norm centers x: E[(x − m)²] = E[x²] − 2m·E[x] + m².
        // Taken around the exact mean instead, a channel whose values sit
        // close together (two 1×1 images) normalized to values whose
        // spread is not 1, and the batch norm's backward pass, which then
        // cancels to about 0, kept that error. In double, its rounding is
        // 2^-52 of mean², far below f32's resolution of the variance
        // unless |mean| > 2^14 σ.
        double mean = sum / count;
        float stored = (float)mean;
        double variance = squares / count - 2 * (double)stored * mean + (double)stored * stored;
        job->out[ch] = stored;
        job->out[job->c + ch] = (float)(variance > 0 ? variance : 0);
    }
}

void ddp_moments_finish(const double *rows, int64_t n, int64_t c, int64_t rows_per_plane, int64_t row, float *out) {
    moments_job job = {rows, NULL, n, c, rows_per_plane, row, out};
    ddp_parallel_for_elements(c, n * c * rows_per_plane * 2, moments_channels, &job);
}

int ddp_batch_moments(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    moments_job job = {NULL, bufs[0], ia[0], ia[1], ia[2], ia[3], bufs[1]};
    if (job.n < 0 || job.c < 0 || job.rows_per_plane < 0 || job.row < 1) return DDP_ERR_ARGS;
    ddp_parallel_for_elements(job.c, job.n * job.c * job.rows_per_plane * job.row, moments_channels, &job);
    return DDP_OK;
}

/// Mean and 1/sqrt(biased variance + eps) of x[0..n), two passes in double.
static void moments(const float *x, int64_t n, double eps, float *mean, float *rstd) {
    double m = n > 0 ? ddp_sum_f64(x, n) / (double)n : 0.0;
    double v = n > 0 ? ddp_sum_sq_dev_f64(x, n, m) / (double)n : 0.0;
    *mean = (float)m;
    *rstd = (float)(1.0 / sqrt(v + eps));
}

/// y = (x - m)·scale + b, then max(·, 0) when relu (fmaxf's rule, as
/// generated loops compute it). plan-memory may give the result its input's
/// bytes, and a vectorizer's overlap check sends y == x to the scalar loop;
/// inlined, the in-place call below reads and writes through one pointer,
/// which needs no check.
static inline __attribute__((always_inline)) void normalize_plane(const float *x, float *y, int64_t n, float m,
                                                                  float scale, float b, int relu) {
    if (relu)
        for (int64_t t = 0; t < n; t++) {
            float v = (x[t] - m) * scale + b;
            y[t] = v != v ? 0.0f : (v >= 0.0f ? v : 0.0f);
        }
    else
        for (int64_t t = 0; t < n; t++) y[t] = (x[t] - m) * scale + b;
}

/// batch_norm_train: one task per channel range; a channel's statistics
/// (its N planes summed in a fixed order) stay on one thread.
typedef struct {
    const float *x, *gamma, *beta;
    float *y;
    int64_t n, c, hw;
    double eps;
    int relu; // y = max(normalized, 0): the ReLU that follows, in the same pass
} batch_norm_job;

static void batch_norm_train_channels(void *arg, int64_t begin, int64_t end) {
    const batch_norm_job *j = arg;
    double count = (double)(j->n * j->hw);
    for (int64_t ch = begin; ch < end; ch++) {
        double sum = 0, squares = 0;
        for (int64_t i = 0; i < j->n; i++) sum += ddp_sum_f64(j->x + (i * j->c + ch) * j->hw, j->hw);
        double mean = count > 0 ? sum / count : 0.0;
        for (int64_t i = 0; i < j->n; i++) squares += ddp_sum_sq_dev_f64(j->x + (i * j->c + ch) * j->hw, j->hw, mean);
        double variance = count > 0 ? squares / count : 0.0;
        float scale = (float)((double)j->gamma[ch] / sqrt(variance + j->eps)), m = (float)mean, b = j->beta[ch];
        for (int64_t i = 0; i < j->n; i++) {
            const float *xp = j->x + (i * j->c + ch) * j->hw;
            float *yp = j->y + (i * j->c + ch) * j->hw;
            if (xp == yp)
                normalize_plane(yp, yp, j->hw, m, scale, b, j->relu);
            else
                normalize_plane(xp, yp, j->hw, m, scale, b, j->relu);
        }
    }
}

int ddp_batch_norm_train(void *const *bufs, const int64_t *ia, const double *fa) {
    batch_norm_job job = {bufs[0], bufs[1], bufs[2], bufs[3], ia[0], ia[1], ia[2], fa[0], ia[3] != 0};
    ddp_parallel_for(job.c, batch_norm_train_channels, &job);
    return DDP_OK;
}

/// The pool's threads take whole normalized groups (or rows): each one's
/// statistics and output stay on one thread, so results do not depend on
/// the thread count.
typedef struct {
    const float *x, *gamma, *beta;
    float *y;
    int64_t c, hw, groups; // group_norm; layer_norm: c = columns
    double eps;
} norm_job;

static void group_norm_groups(void *arg, int64_t begin, int64_t end) {
    const norm_job *j = arg;
    int64_t cg = j->c / j->groups;
    for (int64_t ig = begin; ig < end; ig++) {
        int64_t i = ig / j->groups, g = ig % j->groups;
        const float *xg = j->x + (i * j->c + g * cg) * j->hw;
        float *yg = j->y + (i * j->c + g * cg) * j->hw;
        float mean, rstd;
        moments(xg, cg * j->hw, j->eps, &mean, &rstd);
        for (int64_t k = 0; k < cg; k++) {
            int64_t ch = g * cg + k;
            float scale = rstd * j->gamma[ch], b = j->beta[ch];
            const float *xp = xg + k * j->hw;
            float *yp = yg + k * j->hw;
            for (int64_t t = 0; t < j->hw; t++) yp[t] = (xp[t] - mean) * scale + b;
        }
    }
}

static void layer_norm_rows(void *arg, int64_t begin, int64_t end) {
    const norm_job *j = arg;
    for (int64_t r = begin; r < end; r++) {
        const float *xr = j->x + r * j->c;
        float *yr = j->y + r * j->c;
        float mean, rstd;
        moments(xr, j->c, j->eps, &mean, &rstd);
        for (int64_t t = 0; t < j->c; t++) yr[t] = (xr[t] - mean) * rstd * j->gamma[t] + j->beta[t];
    }
}

// group_norm: statistics per (n, group) over C/G channels × HW, then the
// per-channel affine.
int ddp_group_norm(void *const *bufs, const int64_t *ia, const double *fa) {
    const float *x = bufs[0], *gamma = bufs[1], *beta = bufs[2];
    float *y = bufs[3];
    int64_t n = ia[0], c = ia[1], hw = ia[2], groups = ia[3];
    if (groups <= 0 || c % groups != 0) return DDP_ERR_ARGS;
    norm_job job = {x, gamma, beta, y, c, hw, groups, fa[0]};
    ddp_parallel_for(n * groups, group_norm_groups, &job);
    return DDP_OK;
}

/// group_norm_grad_terms: what a group norm's backward pass needs from x and
/// dy, in one read of each per group (the group's x, at most a few hundred
/// KiB, is read again from cache for its moments). One task per (n, group),
/// every sum in double in a fixed order: results do not depend on the
/// thread count.
typedef struct {
    const float *x, *dy, *gamma;
    float *terms;
    int64_t n, c, hw, groups;
    double eps;
} group_norm_grad_job;

/// Σ dy and Σ dy·(x − mean) over x[0..n), dy[0..n), in double.
static void dy_sums(const float *x, const float *dy, int64_t n, double mean, double *sum_dy, double *sum_dy_dx) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, p0 = 0, p1 = 0, p2 = 0, p3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += dy[i]; s1 += dy[i + 1]; s2 += dy[i + 2]; s3 += dy[i + 3];
        p0 += dy[i] * (x[i] - mean); p1 += dy[i + 1] * (x[i + 1] - mean);
        p2 += dy[i + 2] * (x[i + 2] - mean); p3 += dy[i + 3] * (x[i + 3] - mean);
    }
    for (; i < n; i++) {
        s0 += dy[i];
        p0 += dy[i] * (x[i] - mean);
    }
    *sum_dy = (s0 + s1) + (s2 + s3);
    *sum_dy_dx = (p0 + p1) + (p2 + p3);
}

static void group_norm_grad_groups(void *arg, int64_t begin, int64_t end) {
    const group_norm_grad_job *j = arg;
    int64_t cg = j->c / j->groups, plane = j->n * j->c;
    float *a = j->terms, *b = a + plane, *mu = b + plane, *c0 = mu + plane, *dgamma = c0 + plane, *dbeta = dgamma + plane;
    for (int64_t ig = begin; ig < end; ig++) {
        int64_t first = (ig / j->groups) * j->c + (ig % j->groups) * cg; // (n, channel) of the group's first plane
        const float *xg = j->x + first * j->hw, *dyg = j->dy + first * j->hw;
        double count = (double)(cg * j->hw);
        double mean = ddp_sum_f64(xg, cg * j->hw) / count;
        double r = 1.0 / sqrt(ddp_sum_sq_dev_f64(xg, cg * j->hw, mean) / count + j->eps);
        double mean_g = 0, mean_g_xhat = 0; // A and B of the header, times count
        for (int64_t k = 0; k < cg; k++) {
            int64_t at = first + k;
            double sum_dy, sum_dy_dx;
            dy_sums(xg + k * j->hw, dyg + k * j->hw, j->hw, mean, &sum_dy, &sum_dy_dx);
            double gamma = j->gamma[at % j->c];
            mean_g += gamma * sum_dy;
            mean_g_xhat += gamma * r * sum_dy_dx;
            dgamma[at] = (float)(r * sum_dy_dx);
            dbeta[at] = (float)sum_dy;
        }
        mean_g /= count;
        mean_g_xhat /= count;
        for (int64_t k = 0; k < cg; k++) {
            int64_t at = first + k;
            a[at] = (float)(r * j->gamma[at % j->c]);
            b[at] = (float)(-r * r * mean_g_xhat);
            mu[at] = (float)mean;
            c0[at] = (float)(-r * mean_g);
        }
    }
}

int ddp_group_norm_grad_terms(void *const *bufs, const int64_t *ia, const double *fa) {
    group_norm_grad_job job = {bufs[0], bufs[1], bufs[2], bufs[3], ia[0], ia[1], ia[2], ia[3], fa[0]};
    if (job.groups <= 0 || job.c % job.groups != 0) return DDP_ERR_ARGS;
    ddp_parallel_for_elements(job.n * job.groups, job.n * job.c * job.hw, group_norm_grad_groups, &job);
    return DDP_OK;
}

/// layer_norm_grad_terms: a layer norm's backward pass per row, from one read
/// of the row's dy and x (x read again from cache for its moments). Rows are
/// split between threads, each summed in double in a fixed order.
typedef struct {
    const float *x, *dy, *gamma, *terms;
    float *out;
    int64_t rows, cols;
    double eps;
} layer_norm_grad_job;

/// Σ w·dy and Σ w·dy·(x − mean) over [0, n), in double.
static void weighted_dy_sums(const float *x, const float *dy, const float *w, int64_t n, double mean,
                             double *sum_dy, double *sum_dy_dx) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0, p0 = 0, p1 = 0, p2 = 0, p3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double g0 = (double)w[i] * dy[i], g1 = (double)w[i + 1] * dy[i + 1];
        double g2 = (double)w[i + 2] * dy[i + 2], g3 = (double)w[i + 3] * dy[i + 3];
        s0 += g0; s1 += g1; s2 += g2; s3 += g3;
        p0 += g0 * (x[i] - mean); p1 += g1 * (x[i + 1] - mean);
        p2 += g2 * (x[i + 2] - mean); p3 += g3 * (x[i + 3] - mean);
    }
    for (; i < n; i++) {
        double g = (double)w[i] * dy[i];
        s0 += g;
        p0 += g * (x[i] - mean);
    }
    *sum_dy = (s0 + s1) + (s2 + s3);
    *sum_dy_dx = (p0 + p1) + (p2 + p3);
}

static void layer_norm_grad_rows(void *arg, int64_t begin, int64_t end) {
    const layer_norm_grad_job *j = arg;
    float *rstd = j->out, *b = rstd + j->rows, *mu = b + j->rows, *c = mu + j->rows;
    double count = (double)j->cols;
    for (int64_t row = begin; row < end; row++) {
        const float *x = j->x + row * j->cols, *dy = j->dy + row * j->cols;
        double mean = ddp_sum_f64(x, j->cols) / count;
        double r = 1.0 / sqrt(ddp_sum_sq_dev_f64(x, j->cols, mean) / count + j->eps);
        double sum_g, sum_g_dx;
        weighted_dy_sums(x, dy, j->gamma, j->cols, mean, &sum_g, &sum_g_dx);
        rstd[row] = (float)r;
        b[row] = (float)(-r * r * r * sum_g_dx / count);
        mu[row] = (float)mean;
        c[row] = (float)(-r * sum_g / count);
    }
}

int ddp_layer_norm_grad_terms(void *const *bufs, const int64_t *ia, const double *fa) {
    layer_norm_grad_job job = {.x = bufs[0], .dy = bufs[1], .gamma = bufs[2], .out = bufs[3],
                               .rows = ia[0], .cols = ia[1], .eps = fa[0]};
    ddp_parallel_for_elements(job.rows, job.rows * job.cols, layer_norm_grad_rows, &job);
    return DDP_OK;
}

/// Columns of dgamma and dbeta one task sums, all rows in order: each
/// column's sums are one thread's, whatever the thread count.
#define LAYER_NORM_PARAM_COLUMNS 64

static void layer_norm_grad_columns(void *arg, int64_t begin, int64_t end) {
    const layer_norm_grad_job *j = arg;
    const float *rstd = j->terms, *mu = j->terms + 2 * j->rows;
    for (int64_t block = begin; block < end; block++) {
        int64_t first = block * LAYER_NORM_PARAM_COLUMNS;
        int64_t n = j->cols - first < LAYER_NORM_PARAM_COLUMNS ? j->cols - first : LAYER_NORM_PARAM_COLUMNS;
        double dgamma[LAYER_NORM_PARAM_COLUMNS] = {0}, dbeta[LAYER_NORM_PARAM_COLUMNS] = {0};
        for (int64_t row = 0; row < j->rows; row++) {
            const float *x = j->x + row * j->cols + first, *dy = j->dy + row * j->cols + first;
            double r = rstd[row], m = mu[row];
            for (int64_t k = 0; k < n; k++) {
                dgamma[k] += (double)dy[k] * ((x[k] - m) * r);
                dbeta[k] += dy[k];
            }
        }
        for (int64_t k = 0; k < n; k++) {
            j->out[first + k] = (float)dgamma[k];
            j->out[j->cols + first + k] = (float)dbeta[k];
        }
    }
}

int ddp_layer_norm_grad_params(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    layer_norm_grad_job job = {.x = bufs[0], .dy = bufs[1], .terms = bufs[2], .out = bufs[3], .rows = ia[0], .cols = ia[1]};
    int64_t blocks = (job.cols + LAYER_NORM_PARAM_COLUMNS - 1) / LAYER_NORM_PARAM_COLUMNS;
    ddp_parallel_for_elements(blocks, job.rows * job.cols, layer_norm_grad_columns, &job);
    return DDP_OK;
}

// layer_norm: per row, y = (x - mean) · rstd · gamma[j] + beta[j].
int ddp_layer_norm(void *const *bufs, const int64_t *ia, const double *fa) {
    const float *x = bufs[0], *gamma = bufs[1], *beta = bufs[2];
    float *y = bufs[3];
    norm_job job = {x, gamma, beta, y, ia[1], 0, 0, fa[0]};
    ddp_parallel_for(ia[0], layer_norm_rows, &job);
    return DDP_OK;
}

/// Softmax or log-softmax over the middle axis of [outer, dim, inner]. The
/// inner axis is the vector dimension: per-position maxima and sums live in
/// scratch arrays of length `inner` (sums in double).
typedef struct {
    const float *x;
    float *y;
    int64_t dim, inner;
    int log_form, failed;
} softmax_job;

/// Lanes of the partial maxima and sums of a contiguous row: one vector's
/// worth, summed in a fixed order so results do not depend on the ISA.
#define ROW_LANES 16

/// Softmax (or log-softmax) of one contiguous row (inner = 1: attention's
/// last axis, a classifier's logits): vectorized maximum, exponentials and
/// sum (in double, lanes combined in a fixed order).
static void softmax_row(const float *restrict x, float *restrict y, int64_t dim, int log_form) {
    float lane_max[ROW_LANES];
    for (int l = 0; l < ROW_LANES; l++) lane_max[l] = x[0];
    int64_t d = 0;
    for (; d + ROW_LANES <= dim; d += ROW_LANES)
        for (int l = 0; l < ROW_LANES; l++) lane_max[l] = x[d + l] > lane_max[l] ? x[d + l] : lane_max[l];
    float m = lane_max[0];
    for (int l = 1; l < ROW_LANES; l++) m = lane_max[l] > m ? lane_max[l] : m;
    for (; d < dim; d++) m = x[d] > m ? x[d] : m;
    for (d = 0; d < dim; d++) y[d] = ddp_expf(x[d] - m);
    double lane_sum[ROW_LANES] = {0};
    for (d = 0; d + ROW_LANES <= dim; d += ROW_LANES)
        for (int l = 0; l < ROW_LANES; l++) lane_sum[l] += y[d + l];
    double sum = 0;
    for (int l = 0; l < ROW_LANES; l++) sum += lane_sum[l];
    for (; d < dim; d++) sum += y[d];
    if (log_form) {
        float shift = m + (float)log(sum);
        for (d = 0; d < dim; d++) y[d] = x[d] - shift;
    } else {
        float scale = (float)(1.0 / sum);
        for (d = 0; d < dim; d++) y[d] *= scale;
    }
}

/// Rows [begin, end) of the outer axis, with this task's own scratch; the
/// pool's threads take whole rows, so results do not depend on their count.
static void softmax_rows(void *arg, int64_t begin, int64_t end) {
    softmax_job *job = arg;
    int64_t dim = job->dim, inner = job->inner;
    if (inner == 1) {
        for (int64_t o = begin; o < end; o++) softmax_row(job->x + o * dim, job->y + o * dim, dim, job->log_form);
        return;
    }
    float *mx = malloc((size_t)inner * sizeof(float));
    double *sum = malloc((size_t)inner * sizeof(double));
    if (mx == NULL || sum == NULL) {
        free(mx);
        free(sum);
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return;
    }
    for (int64_t o = begin; o < end; o++) {
        const float *xo = job->x + o * dim * inner;
        float *yo = job->y + o * dim * inner;
        for (int64_t j = 0; j < inner; j++) {
            mx[j] = xo[j];
            sum[j] = 0.0;
        }
        for (int64_t d = 1; d < dim; d++) {
            const float *xr = xo + d * inner;
            for (int64_t j = 0; j < inner; j++) mx[j] = xr[j] > mx[j] ? xr[j] : mx[j];
        }
        for (int64_t d = 0; d < dim; d++) {
            const float *xr = xo + d * inner;
            float *yr = yo + d * inner;
            for (int64_t j = 0; j < inner; j++) {
                float e = ddp_expf(xr[j] - mx[j]);
                sum[j] += e;
                if (!job->log_form) yr[j] = e;
            }
        }
        if (job->log_form) {
            for (int64_t j = 0; j < inner; j++) mx[j] += (float)log(sum[j]);
            for (int64_t d = 0; d < dim; d++) {
                const float *xr = xo + d * inner;
                float *yr = yo + d * inner;
                for (int64_t j = 0; j < inner; j++) yr[j] = xr[j] - mx[j];
            }
        } else {
            for (int64_t j = 0; j < inner; j++) mx[j] = (float)(1.0 / sum[j]);
            for (int64_t d = 0; d < dim; d++) {
                float *yr = yo + d * inner;
                for (int64_t j = 0; j < inner; j++) yr[j] *= mx[j];
            }
        }
    }
    free(mx);
    free(sum);
}

static int softmax_impl(const float *x, float *y, int64_t outer, int64_t dim, int64_t inner,
                        int log_form) {
    if (dim <= 0 || inner <= 0) return DDP_OK;
    softmax_job job = {x, y, dim, inner, log_form, 0};
    ddp_parallel_for(outer, softmax_rows, &job);
    return job.failed ? DDP_ERR_NOMEM : DDP_OK;
}

// softmax: y = exp(x - max) / Σ exp(x - max) over the middle axis.
int ddp_softmax(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    return softmax_impl(bufs[0], bufs[1], ia[0], ia[1], ia[2], 0);
}

// log_softmax: y = x - max - log Σ exp(x - max) over the middle axis.
int ddp_log_softmax(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    return softmax_impl(bufs[0], bufs[1], ia[0], ia[1], ia[2], 1);
}

// mse: y[0] = mean((a - b)^2), accumulated in double (NaN for n = 0, as PyTorch).
int ddp_mse(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *a = bufs[0], *b = bufs[1];
    float *y = bufs[2];
    int64_t n = ia[0];
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        double d0 = (double)a[i] - b[i], d1 = (double)a[i + 1] - b[i + 1];
        double d2 = (double)a[i + 2] - b[i + 2], d3 = (double)a[i + 3] - b[i + 3];
        s0 += d0 * d0; s1 += d1 * d1; s2 += d2 * d2; s3 += d3 * d3;
    }
    for (; i < n; i++) {
        double d = (double)a[i] - b[i];
        s0 += d * d;
    }
    y[0] = (float)(((s0 + s1) + (s2 + s3)) / (double)n);
    return DDP_OK;
}

/// Per-pixel max and Σ exp(logit - max) over the classes of one image
/// (logits C × HW), vectorized over the pixels.
static void class_stats(const float *logits, int64_t c, int64_t hw, float *mx, double *sum) {
    for (int64_t p = 0; p < hw; p++) {
        mx[p] = logits[p];
        sum[p] = 0.0;
    }
    for (int64_t k = 1; k < c; k++) {
        const float *lr = logits + k * hw;
        for (int64_t p = 0; p < hw; p++) mx[p] = lr[p] > mx[p] ? lr[p] : mx[p];
    }
    for (int64_t k = 0; k < c; k++) {
        const float *lr = logits + k * hw;
        for (int64_t p = 0; p < hw; p++) sum[p] += ddp_expf(lr[p] - mx[p]);
    }
}

/// Whether a pixel's label is counted: not `ignore` and inside [0, C).
static inline int label_counted(int32_t label, int64_t c, int64_t ignore) {
    return label != ignore && label >= 0 && label < c;
}

// cross_entropy: mean over counted pixels of log Σ exp(logits) - logits[label].
int ddp_cross_entropy(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *logits = bufs[0];
    const int32_t *labels = bufs[1];
    float *y = bufs[2];
    int64_t n = ia[0], c = ia[1], hw = ia[2], ignore = ia[3];
    y[0] = 0.0f;
    if (c <= 0 || hw <= 0) return DDP_OK;
    float *mx = malloc((size_t)hw * sizeof(float));
    double *sum = malloc((size_t)hw * sizeof(double));
    if (mx && sum) {
        double total = 0.0;
        int64_t count = 0;
        for (int64_t i = 0; i < n; i++) {
            const float *li = logits + i * c * hw;
            const int32_t *lab = labels + i * hw;
            class_stats(li, c, hw, mx, sum);
            for (int64_t p = 0; p < hw; p++) {
                if (!label_counted(lab[p], c, ignore)) continue;
                total += log(sum[p]) + (double)mx[p] - (double)li[lab[p] * hw + p];
                count++;
            }
        }
        y[0] = count > 0 ? (float)(total / (double)count) : 0.0f;
    }
    free(mx);
    free(sum);
    return DDP_OK;
}

// cross_entropy_grad: dx = g · (softmax(logits) - onehot(label)) / count on
// counted pixels, 0 elsewhere.
int ddp_cross_entropy_grad(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *logits = bufs[0], *g = bufs[2];
    const int32_t *labels = bufs[1];
    float *dx = bufs[3];
    int64_t n = ia[0], c = ia[1], hw = ia[2], ignore = ia[3];
    if (c <= 0 || hw <= 0) return DDP_OK;
    int64_t count = 0;
    for (int64_t i = 0; i < n * hw; i++) count += label_counted(labels[i], c, ignore);
    float *mx = malloc((size_t)hw * sizeof(float));
    double *sum = malloc((size_t)hw * sizeof(double));
    float *scale = malloc((size_t)hw * sizeof(float));
    if (mx && sum && scale) {
        float gs = count > 0 ? (float)((double)g[0] / (double)count) : 0.0f;
        for (int64_t i = 0; i < n; i++) {
            const float *li = logits + i * c * hw;
            const int32_t *lab = labels + i * hw;
            float *di = dx + i * c * hw;
            class_stats(li, c, hw, mx, sum);
            for (int64_t p = 0; p < hw; p++)
                scale[p] = label_counted(lab[p], c, ignore) ? (float)(gs / sum[p]) : 0.0f;
            for (int64_t k = 0; k < c; k++) {
                const float *lr = li + k * hw;
                float *dr = di + k * hw;
                for (int64_t p = 0; p < hw; p++) dr[p] = ddp_expf(lr[p] - mx[p]) * scale[p];
            }
            for (int64_t p = 0; p < hw; p++)
                if (label_counted(lab[p], c, ignore)) di[lab[p] * hw + p] -= gs;
        }
    }
    free(mx);
    free(sum);
    free(scale);
    return DDP_OK;
}
