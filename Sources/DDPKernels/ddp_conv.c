// ddp_conv.c — 2-D convolution and its two VJPs: im2col/col2im + sgemm per
// batch image and group.
//
// The column buffer of one (image, group) is K × P with K = C/groups·KH·KW
// and P = OH·OW. To bound scratch memory on large images it is built in bands
// of whole output rows [oh0, oh1); each band is a column block of the K × P
// matrix, so the sgemm calls simply use leading dimension P on the image side.
// Pointwise convolutions (1×1, stride 1, no padding) skip im2col: the input
// image itself is the K × P matrix.
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <stdlib.h>
#include <string.h>

/// Column-buffer budget in floats (2 MiB); a band is at least one output row.
/// Bands this small keep the columns in cache between im2col, packing and the
/// micro-kernel: measured on unet-r18's layers, 2^19 beat 2^22 by about 10%
/// on the forward and input-gradient convolutions of the wide decoder stages.
#define COL_BUDGET ((int64_t)1 << 19)

typedef struct {
    int64_t n, c, h, w, o, kh, kw, oh, ow, sh, sw, ph, pw, dh, dw, groups;
    int64_t cg, og, k, p; // channels and outputs per group, K, P
    int64_t band_rows;    // output rows per im2col band
    int pointwise;        // input used directly as the column matrix
} conv_shape;

static int conv_shape_read(const int64_t *ia, conv_shape *s) {
    s->n = ia[0]; s->c = ia[1]; s->h = ia[2]; s->w = ia[3];
    s->o = ia[4]; s->kh = ia[5]; s->kw = ia[6]; s->oh = ia[7]; s->ow = ia[8];
    s->sh = ia[9]; s->sw = ia[10]; s->ph = ia[11]; s->pw = ia[12];
    s->dh = ia[13]; s->dw = ia[14]; s->groups = ia[15];
    if (s->groups <= 0 || s->c % s->groups != 0 || s->o % s->groups != 0) return 0;
    if (s->sh <= 0 || s->sw <= 0 || s->kh <= 0 || s->kw <= 0) return 0;
    s->cg = s->c / s->groups;
    s->og = s->o / s->groups;
    s->k = s->cg * s->kh * s->kw;
    s->p = s->oh * s->ow;
    if (s->p == 0) s->oh = 0; // an empty output has no rows to visit
    s->pointwise = s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 && s->ph == 0 &&
                   s->pw == 0 && s->dh == 1 && s->dw == 1 && s->oh == s->h && s->ow == s->w;
    if (s->pointwise) {
        s->band_rows = s->oh;
    } else {
        int64_t row = s->k * s->ow;
        s->band_rows = row > 0 ? COL_BUDGET / row : s->oh;
        if (s->band_rows < 1) s->band_rows = 1;
        if (s->band_rows > s->oh) s->band_rows = s->oh;
    }
    return 1;
}

/// The calling thread's column buffer for one band (kept between calls), or
/// NULL for pointwise convolutions; *ok says whether the memory was there.
static float *col_scratch(const conv_shape *s, int *ok) {
    *ok = 1;
    if (s->pointwise || s->k * s->band_rows * s->ow == 0) return NULL;
    float *col = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(s->k * s->band_rows * s->ow));
    *ok = col != NULL;
    return col;
}

/// The outputs o in [0, out) whose input index o·stride + off lies in [0, in)
/// form the range [*lo, *hi).
static void valid_range(int64_t off, int64_t stride, int64_t in, int64_t out,
                        int64_t *lo, int64_t *hi) {
    int64_t l = off >= 0 ? 0 : (-off + stride - 1) / stride;
    int64_t h = off >= in ? 0 : (in - 1 - off) / stride + 1;
    if (h > out) h = out;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

#ifdef __AVX512F__
#include <immintrin.h>

/// Kernel taps (KH·KW) im2col_small handles.
#define SMALL_IM2COL_TAPS 49

/// im2col for images of at most 16 pixels into rows of at most 16 columns
/// (the deepest layers: 4×4): a channel's pixels are one vector, and each
/// tap's row is one permute of it with the padding masked to zero. The
/// general loop ran once per output row of 4 floats, 36 times per channel
/// of a 3×3 convolution, and was a sixth of each 512-channel 4×4 layer.
/// Returns 0 (and does nothing) for larger images.
static int im2col_small(const float *restrict x, const conv_shape *s, int64_t oh0, int64_t oh1,
                        int64_t c0, int64_t c1, float *restrict col, int64_t ld) {
    int64_t pixels = s->h * s->w, cols = (oh1 - oh0) * s->ow, taps = s->kh * s->kw;
    if (pixels > 16 || cols > 16 || taps > SMALL_IM2COL_TAPS) return 0;
    __m512i index[SMALL_IM2COL_TAPS];
    __mmask16 inside[SMALL_IM2COL_TAPS];
    for (int64_t kh = 0; kh < s->kh; kh++)
        for (int64_t kw = 0; kw < s->kw; kw++) {
            int32_t at[16] = {0};
            __mmask16 m = 0;
            for (int64_t p = 0; p < cols; p++) {
                int64_t ih = (oh0 + p / s->ow) * s->sh - s->ph + kh * s->dh;
                int64_t iw = (p % s->ow) * s->sw - s->pw + kw * s->dw;
                if (ih < 0 || ih >= s->h || iw < 0 || iw >= s->w) continue;
                at[p] = (int32_t)(ih * s->w + iw);
                m |= (__mmask16)(1u << p);
            }
            index[kh * s->kw + kw] = _mm512_loadu_si512(at);
            inside[kh * s->kw + kw] = m;
        }
    __mmask16 load = (__mmask16)((1u << pixels) - 1), store = (__mmask16)((1u << cols) - 1);
    for (int64_t c = c0; c < c1; c++) {
        __m512 pixel = _mm512_maskz_loadu_ps(load, x + c * pixels);
        for (int64_t t = 0; t < taps; t++)
            _mm512_mask_storeu_ps(col + (c * taps + t) * ld, store, _mm512_maskz_permutexvar_ps(inside[t], index[t], pixel));
    }
    return 1;
}
#endif

/// col[(c·KH + kh)·KW + kw][(oh - oh0)·OW + ow] = x[c][oh·sh - ph + kh·dh][ow·sw - pw + kw·dw],
/// zero outside the image, for channels c in [c0, c1); x is one group of one
/// image (Cg × H × W) and rows of col are ld floats apart.
static void im2col(const float *restrict x, const conv_shape *s, int64_t oh0, int64_t oh1,
                   int64_t c0, int64_t c1, float *restrict col, int64_t ld) {
#ifdef __AVX512F__
    if (im2col_small(x, s, oh0, oh1, c0, c1, col, ld)) return;
#endif
    int64_t bp = ld;
    for (int64_t c = c0; c < c1; c++) {
        const float *xc = x + c * s->h * s->w;
        for (int64_t kh = 0; kh < s->kh; kh++) {
            for (int64_t kw = 0; kw < s->kw; kw++) {
                float *row = col + ((c * s->kh + kh) * s->kw + kw) * bp;
                int64_t woff = kw * s->dw - s->pw, lo, hi;
                valid_range(woff, s->sw, s->w, s->ow, &lo, &hi);
                for (int64_t oh = oh0; oh < oh1; oh++) {
                    float *r = row + (oh - oh0) * s->ow;
                    int64_t ih = oh * s->sh - s->ph + kh * s->dh;
                    if (ih < 0 || ih >= s->h) {
                        memset(r, 0, (size_t)s->ow * sizeof(float));
                        continue;
                    }
                    const float *xr = xc + ih * s->w + woff;
                    for (int64_t ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                    if (s->sw == 1)
                        for (int64_t ow = lo; ow < hi; ow++) r[ow] = xr[ow];
                    else if (s->sw == 2) // a constant stride, so the gather vectorizes (the strided stems and downsamplings)
                        for (int64_t ow = lo; ow < hi; ow++) r[ow] = xr[2 * ow];
                    else
                        for (int64_t ow = lo; ow < hi; ow++) r[ow] = xr[ow * s->sw];
                    for (int64_t ow = hi; ow < s->ow; ow++) r[ow] = 0.0f;
                }
            }
        }
    }
}

/// The adjoint of im2col: dx[c][ih][iw] += col[...] for every in-image entry.
static void col2im(const float *restrict col, const conv_shape *s, int64_t oh0, int64_t oh1,
                   float *restrict dx, int64_t ld) {
    int64_t bp = ld;
    for (int64_t c = 0; c < s->cg; c++) {
        float *dxc = dx + c * s->h * s->w;
        for (int64_t kh = 0; kh < s->kh; kh++) {
            for (int64_t kw = 0; kw < s->kw; kw++) {
                const float *row = col + ((c * s->kh + kh) * s->kw + kw) * bp;
                int64_t woff = kw * s->dw - s->pw, lo, hi;
                valid_range(woff, s->sw, s->w, s->ow, &lo, &hi);
                for (int64_t oh = oh0; oh < oh1; oh++) {
                    int64_t ih = oh * s->sh - s->ph + kh * s->dh;
                    if (ih < 0 || ih >= s->h) continue;
                    const float *r = row + (oh - oh0) * s->ow;
                    float *dr = dxc + ih * s->w + woff;
                    if (s->sw == 1)
                        for (int64_t ow = lo; ow < hi; ow++) dr[ow] += r[ow];
                    else
                        for (int64_t ow = lo; ow < hi; ow++) dr[ow * s->sw] += r[ow];
                }
            }
        }
    }
}

/// Builds the columns of images [n, n + count) of group g side by side
/// (K × count·rows), one task per channel range.
typedef struct {
    const float *x; // image n, group g
    int64_t image;  // image stride
    const conv_shape *s;
    int64_t oh0, oh1, count, ld;
    float *col;
} im2col_job;

static void im2col_channels(void *arg, int64_t c0, int64_t c1) {
    im2col_job *job = arg;
    int64_t width = (job->oh1 - job->oh0) * job->s->ow;
    for (int64_t i = 0; i < job->count; i++)
        im2col(job->x + i * job->image, job->s, job->oh0, job->oh1, c0, c1, job->col + i * width, job->ld);
}

// MARK: - Drivers
//
// Forward and input-gradient convolutions treat each image on its own, so the
// pool takes whole images (each thread with its own column buffer and a serial
// GEMM) when there are enough of them, and otherwise the images run one after
// another with the GEMM spread over the threads. The weight gradient sums over
// images: it keeps that sum in a fixed order on one thread per element of dw
// (the GEMM splits dw, never the sum), so dw does not depend on the thread
// count.
//
// Small images (the deep layers) make thin products that waste the wide
// micro-tiles, so several images share one product: their columns sit side by
// side (K × nb·P), and the output is gathered from, or scattered to, NCHW.

/// Columns a product should have at least before it runs near full speed.
#define WANTED_COLUMNS 256

/// Applies the epilogue to rows [0, rows) of an output block just computed
/// (channels channel0 + r, rows `stride` floats apart, `cols` each), while it
/// is still in cache; the block starts at element `at` of the output tensor.
static void epilogue_apply(const ddp_conv_epilogue *e, float *out, int64_t at, int64_t rows, int64_t channel0,
                           int64_t stride, int64_t cols) {
    for (int64_t r = 0; r < rows; r++)
        ddp_conv_epilogue_row(e, channel0 + r, at + r * stride, out + at + r * stride, out + at + r * stride, cols);
}

typedef struct {
    const conv_shape *s;
    ddp_conv_epilogue epilogue;
    const float *in;      // x or dy
    const float *packed;  // the weights of each group, packed for the GEMM
    int64_t packed_group; // floats per group in packed
    float *out;
    int failed;
} conv_job;

static void job_failed(conv_job *job) { __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED); }

/// Packs each group's w (Og × K), or its transpose, once for every image
/// (into the calling thread's scratch; the pool's threads only read it).
static int pack_weights(const conv_shape *s, const float *w, int transpose, conv_job *job) {
    int64_t rows = transpose ? s->k : s->og, cols = transpose ? s->og : s->k;
    job->packed_group = ddp_gemm_packed_a_floats(rows, cols);
    float *packed = ddp_thread_scratch(DDP_SCRATCH_WEIGHTS, (size_t)(job->packed_group * s->groups));
    if (packed == NULL) return 0;
    for (int64_t g = 0; g < s->groups; g++)
        ddp_gemm_pack_a(transpose, rows, cols, w + g * s->og * s->k, s->k, packed + g * job->packed_group);
    job->packed = packed;
    return 1;
}

/// Images to put side by side in one product, out of `available`: 1 when an
/// image fills a product (or needs bands of rows), else enough for `wanted`
/// columns within `budget` floats of columns.
static int64_t images_per_product(const conv_shape *s, int64_t available, int64_t wanted, int64_t budget) {
    if (s->band_rows < s->oh || s->p >= wanted || s->p == 0) return 1;
    int64_t nb = (wanted + s->p - 1) / s->p;
    int64_t fit = budget / (s->k * s->p > 0 ? s->k * s->p : 1);
    if (nb > fit) nb = fit;
    if (nb > available) nb = available;
    return nb < 1 ? 1 : nb;
}

/// Whether a layer's weights outweigh the columns of its whole batch (the
/// deep layers of small images: 512 channels at 4×4 hold 9 MiB of weights
/// against 2 MiB of columns). Such a layer runs as one product over the
/// batch, the threads splitting the weights' rows: each thread packs and
/// streams its own share of the weights once, where one product per thread's
/// images would stream all of them through every thread. The columns of the
/// batch then take no more scratch than the packed weights would. Pointwise
/// layers keep reading their input in place: for them im2col would only copy it.
static int weights_dominate(const conv_shape *s) {
    return s->groups == 1 && !s->pointwise && s->band_rows == s->oh && s->og >= s->n * s->p && s->p > 0;
}

/// Runs images [0, n) through per_images: in parallel when there is an image
/// per thread, else serially (the GEMMs inside then use the pool).
static int for_each_image(conv_job *job, ddp_task_fn per_images) {
    if (job->s->n >= ddp_parallel_threads())
        ddp_parallel_for(job->s->n, per_images, job);
    else
        per_images(job, 0, job->s->n);
    return !job->failed;
}

/// Copies rows of `count` floats between an NCHW tensor's images (image
/// stride `image`, channel stride P) and a K × nb·P block (row stride ld).
static void gather_images(const float *nchw, int64_t image, int64_t rows, int64_t p, int64_t nb,
                          float *block, int64_t ld) {
    for (int64_t i = 0; i < nb; i++)
        for (int64_t r = 0; r < rows; r++) memcpy(block + r * ld + i * p, nchw + i * image + r * p, (size_t)p * sizeof(float));
}

static void scatter_images(const float *block, int64_t ld, int64_t rows, int64_t p, int64_t nb, float *nchw,
                           int64_t image) {
    for (int64_t i = 0; i < nb; i++)
        for (int64_t r = 0; r < rows; r++) memcpy(nchw + i * image + r * p, block + r * ld + i * p, (size_t)p * sizeof(float));
}

// conv2d: y[n, g] (Og × P) = w[g] (Og × K) · im2col(x[n, g]) (K × P).
static void conv2d_images(void *arg, int64_t begin, int64_t end) {
    conv_job *job = arg;
    const conv_shape *s = job->s;
    int64_t xs = s->c * s->h * s->w, ys = s->o * s->p; // image strides
    int64_t nb = images_per_product(s, end - begin, WANTED_COLUMNS, COL_BUDGET);
    if (nb > 1) {
        float *col = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(s->k * nb * s->p));
        float *out = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(s->og * nb * s->p));
        if (col == NULL || out == NULL) { job_failed(job); return; }
        for (int64_t n = begin; n < end; n += nb) {
            int64_t count = end - n < nb ? end - n : nb, ld = count * s->p;
            for (int64_t g = 0; g < s->groups; g++) {
                for (int64_t i = 0; i < count; i++)
                    im2col(job->in + (n + i) * xs + g * s->cg * s->h * s->w, s, 0, s->oh, 0, s->cg, col + i * s->p, ld);
                if (!ddp_gemm_with_packed_a(job->packed + g * job->packed_group, 0, s->og, ld, s->k, col, ld, 0.0f, out, ld)) {
                    job_failed(job);
                    return;
                }
                scatter_images(out, ld, s->og, s->p, count, job->out + n * ys + g * s->og * s->p, ys);
                if (job->epilogue.active)
                    for (int64_t i = 0; i < count; i++) {
                        int64_t at = (n + i) * ys + g * s->og * s->p;
                        epilogue_apply(&job->epilogue, job->out, at, s->og, g * s->og, s->p, s->p);
                    }
            }
        }
        return;
    }
    int ok;
    float *col = col_scratch(s, &ok);
    if (!ok) { job_failed(job); return; }
    for (int64_t n = begin; n < end; n++) {
        for (int64_t g = 0; g < s->groups; g++) {
            const float *xg = job->in + n * xs + g * s->cg * s->h * s->w;
            const float *wg = job->packed + g * job->packed_group;
            float *yg = job->out + n * ys + g * s->og * s->p;
            for (int64_t oh0 = 0; oh0 < s->oh; oh0 += s->band_rows) {
                int64_t oh1 = oh0 + s->band_rows < s->oh ? oh0 + s->band_rows : s->oh;
                int64_t bp = (oh1 - oh0) * s->ow;
                if (s->pointwise) {
                    ok = ddp_gemm_with_packed_a(wg, 0, s->og, bp, s->k, xg + oh0 * s->ow, s->p, 0.0f,
                                                yg + oh0 * s->ow, s->p);
                } else {
                    im2col(xg, s, oh0, oh1, 0, s->cg, col, bp);
                    ok = ddp_gemm_with_packed_a(wg, 0, s->og, bp, s->k, col, bp, 0.0f, yg + oh0 * s->ow, s->p);
                }
                if (!ok) { job_failed(job); return; }
                if (job->epilogue.active) {
                    int64_t at = n * ys + g * s->og * s->p + oh0 * s->ow;
                    epilogue_apply(&job->epilogue, job->out, at, s->og, g * s->og, s->p, bp);
                }
            }
        }
    }
}

typedef struct {
    const conv_job *job;
    const float *block; // Og × N·P
} scatter_job;

/// Writes images [begin, end) of a batch product's output into NCHW and
/// applies the epilogue there.
static void scatter_epilogue_images(void *arg, int64_t begin, int64_t end) {
    scatter_job *sj = arg;
    const conv_shape *s = sj->job->s;
    const ddp_conv_epilogue *e = &sj->job->epilogue;
    int64_t ys = s->o * s->p, ld = s->n * s->p;
    scatter_images(sj->block + begin * s->p, ld, s->og, s->p, end - begin, sj->job->out + begin * ys, ys);
    if (e->active)
        for (int64_t n = begin; n < end; n++)
            epilogue_apply(e, sj->job->out, n * ys, s->og, 0, s->p, s->p);
}

/// conv2d of a layer whose weights dominate: y (O × N·P) = w · im2col(x) as
/// one product, then scattered to NCHW.
static int conv2d_batch(conv_job *job, const float *w) {
    const conv_shape *s = job->s;
    int64_t ld = s->n * s->p;
    float *col = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(s->k * ld));
    float *out = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(s->og * ld));
    if (col == NULL || out == NULL) return DDP_ERR_NOMEM;
    im2col_job columns = {job->in, s->c * s->h * s->w, s, 0, s->oh, s->n, ld, col};
    ddp_parallel_for(s->cg, im2col_channels, &columns);
    if (!ddp_gemm(0, 0, s->og, ld, s->k, w, s->k, col, ld, 0.0f, out, ld)) return DDP_ERR_NOMEM;
    scatter_job scatter = {job, out};
    ddp_parallel_for_elements(s->n, s->og * ld, scatter_epilogue_images, &scatter);
    return DDP_OK;
}

int ddp_conv2d(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    conv_shape s;
    if (!conv_shape_read(ia, &s)) return DDP_ERR_ARGS;
    conv_job job = {.s = &s, .epilogue = ddp_conv_epilogue_read(bufs, ia + 16), .in = bufs[0], .out = bufs[2]};
    if (!ddp_conv_epilogue_begin_moments(&job.epilogue, s.n, s.o, s.oh, s.ow)) return DDP_ERR_NOMEM;
    int status = DDP_OK;
    if (weights_dominate(&s)) {
        status = conv2d_batch(&job, bufs[1]);
    } else {
        if (!pack_weights(&s, bufs[1], 0, &job)) return DDP_ERR_NOMEM;
        if (!for_each_image(&job, conv2d_images)) status = DDP_ERR_NOMEM;
    }
    if (status == DDP_OK) ddp_conv_epilogue_end_moments(&job.epilogue, s.n, s.o, s.oh);
    return status;
}

// conv2d_grad_input: col = w[g]ᵀ (K × Og) · dy[n, g] (Og × P), then col2im into dx.
static void conv2d_grad_input_images(void *arg, int64_t begin, int64_t end) {
    conv_job *job = arg;
    const conv_shape *s = job->s;
    int64_t xs = s->c * s->h * s->w, ys = s->o * s->p; // image strides
    int64_t nb = images_per_product(s, end - begin, WANTED_COLUMNS, COL_BUDGET);
    if (nb > 1) {
        float *col = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(s->k * nb * s->p));
        float *dyb = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(s->og * nb * s->p));
        if (col == NULL || dyb == NULL) { job_failed(job); return; }
        memset(job->out + begin * xs, 0, (size_t)((end - begin) * xs) * sizeof(float));
        for (int64_t n = begin; n < end; n += nb) {
            int64_t count = end - n < nb ? end - n : nb, ld = count * s->p;
            for (int64_t g = 0; g < s->groups; g++) {
                gather_images(job->in + n * ys + g * s->og * s->p, ys, s->og, s->p, count, dyb, ld);
                if (!ddp_gemm_with_packed_a(job->packed + g * job->packed_group, 0, s->k, ld, s->og, dyb, ld, 0.0f, col, ld)) {
                    job_failed(job);
                    return;
                }
                for (int64_t i = 0; i < count; i++)
                    col2im(col + i * s->p, s, 0, s->oh, job->out + (n + i) * xs + g * s->cg * s->h * s->w, ld);
            }
            if (job->epilogue.active)
                for (int64_t i = 0; i < count; i++)
                    epilogue_apply(&job->epilogue, job->out, (n + i) * xs, s->c, 0, s->h * s->w, s->h * s->w);
        }
        return;
    }
    int ok;
    float *col = col_scratch(s, &ok);
    if (!ok) { job_failed(job); return; }
    for (int64_t n = begin; n < end; n++) {
        float *dxn = job->out + n * xs;
        if (!s->pointwise) memset(dxn, 0, (size_t)xs * sizeof(float));
        for (int64_t g = 0; g < s->groups; g++) {
            const float *dyg = job->in + n * ys + g * s->og * s->p;
            const float *wg = job->packed + g * job->packed_group;
            float *dxg = dxn + g * s->cg * s->h * s->w;
            for (int64_t oh0 = 0; oh0 < s->oh; oh0 += s->band_rows) {
                int64_t oh1 = oh0 + s->band_rows < s->oh ? oh0 + s->band_rows : s->oh;
                int64_t bp = (oh1 - oh0) * s->ow;
                if (s->pointwise) {
                    ok = ddp_gemm_with_packed_a(wg, 0, s->k, bp, s->og, dyg + oh0 * s->ow, s->p, 0.0f,
                                                dxg + oh0 * s->ow, s->p);
                } else {
                    ok = ddp_gemm_with_packed_a(wg, 0, s->k, bp, s->og, dyg + oh0 * s->ow, s->p, 0.0f, col, bp);
                    col2im(col, s, oh0, oh1, dxg, bp);
                }
                if (!ok) { job_failed(job); return; }
            }
        }
        // The image's dx is whole only now: col2im adds overlapping windows.
        if (job->epilogue.active) epilogue_apply(&job->epilogue, job->out, n * xs, s->c, 0, s->h * s->w, s->h * s->w);
    }
}

typedef struct {
    const conv_shape *s;
    const ddp_conv_epilogue *epilogue;
    const float *col; // K × N·P
    float *dx;
} col2im_job;

static void col2im_images(void *arg, int64_t begin, int64_t end) {
    col2im_job *job = arg;
    const conv_shape *s = job->s;
    int64_t xs = s->c * s->h * s->w;
    for (int64_t n = begin; n < end; n++) {
        memset(job->dx + n * xs, 0, (size_t)xs * sizeof(float));
        col2im(job->col + n * s->p, s, 0, s->oh, job->dx + n * xs, s->n * s->p);
        if (job->epilogue->active) epilogue_apply(job->epilogue, job->dx, n * xs, s->c, 0, s->h * s->w, s->h * s->w);
    }
}

/// conv2d_grad_input of a layer whose weights dominate: col (K × N·P) =
/// wᵀ · dy as one product, then col2im image by image.
static int conv2d_grad_input_batch(conv_job *job, const float *w) {
    const conv_shape *s = job->s;
    int64_t ld = s->n * s->p;
    float *col = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(s->k * ld));
    float *dyb = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(s->og * ld));
    if (col == NULL || dyb == NULL) return DDP_ERR_NOMEM;
    gather_images(job->in, s->o * s->p, s->og, s->p, s->n, dyb, ld);
    if (!ddp_gemm(1, 0, s->k, ld, s->og, w, s->k, dyb, ld, 0.0f, col, ld)) return DDP_ERR_NOMEM;
    col2im_job scatter = {s, &job->epilogue, col, job->out};
    ddp_parallel_for_elements(s->n, s->k * ld, col2im_images, &scatter);
    return DDP_OK;
}

int ddp_conv2d_grad_input(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    conv_shape s;
    if (!conv_shape_read(ia, &s)) return DDP_ERR_ARGS;
    conv_job job = {.s = &s, .epilogue = ddp_conv_epilogue_read(bufs, ia + 16), .in = bufs[0], .out = bufs[2]};
    if (job.epilogue.moments) return DDP_ERR_ARGS; // the moments of a gradient are nobody's statistics
    if (weights_dominate(&s)) return conv2d_grad_input_batch(&job, bufs[1]);
    if (!pack_weights(&s, bufs[1], 1, &job)) return DDP_ERR_NOMEM;
    return for_each_image(&job, conv2d_grad_input_images) ? DDP_OK : DDP_ERR_NOMEM;
}

/// dw (+)= the weight gradient of images [n0, n1), one product per group of
/// images (and band of rows) on the calling thread's scratch; dw must start
/// zeroed. A layer whose weights dominate sums its images in one product
/// (its columns take no more memory than dw itself).
static int grad_weight_images(const conv_shape *s, const float *x, const float *dy, int64_t n0, int64_t n1, float *dw) {
    int64_t xs = s->c * s->h * s->w, ys = s->o * s->p; // image strides
    int64_t nb = images_per_product(s, n1 - n0, 4 * WANTED_COLUMNS, weights_dominate(s) ? s->og * s->k : COL_BUDGET);
    float *col = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(s->k * nb * s->band_rows * s->ow));
    float *dyb = nb > 1 ? ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(s->og * nb * s->p)) : NULL;
    if ((col == NULL && s->k * s->band_rows * s->ow > 0) || (nb > 1 && dyb == NULL)) return 0;
    for (int64_t n = n0; n < n1; n += nb) {
        int64_t count = n1 - n < nb ? n1 - n : nb;
        for (int64_t g = 0; g < s->groups; g++) {
            const float *xg = x + n * xs + g * s->cg * s->h * s->w;
            const float *dyg = dy + n * ys + g * s->og * s->p;
            float *dwg = dw + g * s->og * s->k;
            for (int64_t oh0 = 0; oh0 < s->oh; oh0 += s->band_rows) {
                int64_t oh1 = oh0 + s->band_rows < s->oh ? oh0 + s->band_rows : s->oh;
                int64_t ld = count * (oh1 - oh0) * s->ow;
                im2col_job columns = {xg, xs, s, oh0, oh1, count, ld, col};
                ddp_parallel_for(s->cg, im2col_channels, &columns);
                int ok;
                if (count > 1) {
                    gather_images(dyg, ys, s->og, s->p, count, dyb, ld);
                    ok = ddp_gemm(0, 1, s->og, s->k, ld, dyb, ld, col, ld, 1.0f, dwg, s->k);
                } else {
                    ok = ddp_gemm(0, 1, s->og, s->k, ld, dyg + oh0 * s->ow, s->p, col, ld, 1.0f, dwg, s->k);
                }
                if (!ok) return 0;
            }
        }
    }
    return 1;
}

/// A small weight gradient (at most WGRAD_SPLIT_FLOATS) sums its images in
/// WGRAD_SPLIT_GROUPS groups: each group is one task's, into a partial dw of
/// its own, and the partials are added in group order, so dw does not depend
/// on the thread count. One product over the batch split its few weights
/// between the threads, and each thread packed all of both long operands:
/// for the 7×7 stem (64 × 147 weights over 8 × 4096 pixels) the packing
/// cost more than the product.
#define WGRAD_SPLIT_GROUPS 8
#define WGRAD_SPLIT_FLOATS ((int64_t)1 << 16)

typedef struct {
    const conv_shape *s;
    const float *x, *dy;
    float *partials; // WGRAD_SPLIT_GROUPS × O·K
    int64_t groups;
    int failed;
} grad_weight_job;

static void grad_weight_groups(void *arg, int64_t begin, int64_t end) {
    grad_weight_job *job = arg;
    const conv_shape *s = job->s;
    for (int64_t g = begin; g < end; g++) {
        float *partial = job->partials + g * s->o * s->k;
        memset(partial, 0, (size_t)(s->o * s->k) * sizeof(float));
        int64_t n0 = s->n * g / job->groups, n1 = s->n * (g + 1) / job->groups;
        if (!grad_weight_images(s, job->x, job->dy, n0, n1, partial)) __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
    }
}

// conv2d_grad_weight: dw[g] (Og × K) = Σ_n dy[n, g] (Og × P) · im2col(x[n, g])ᵀ (P × K),
// the sum over images and pixels done as one product per group of images.
int ddp_conv2d_grad_weight(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    conv_shape s;
    if (!conv_shape_read(ia, &s)) return DDP_ERR_ARGS;
    const float *x = bufs[0], *dy = bufs[1];
    float *dw = bufs[2];
    int64_t weights = s.o * s.k;
    if (s.n > 1 && weights <= WGRAD_SPLIT_FLOATS) {
        grad_weight_job job = {&s, x, dy, NULL, s.n < WGRAD_SPLIT_GROUPS ? s.n : WGRAD_SPLIT_GROUPS, 0};
        job.partials = ddp_thread_scratch(DDP_SCRATCH_WEIGHTS, (size_t)(job.groups * weights));
        if (job.partials == NULL) return DDP_ERR_NOMEM;
        ddp_parallel_for(job.groups, grad_weight_groups, &job);
        if (job.failed) return DDP_ERR_NOMEM;
        for (int64_t i = 0; i < weights; i++) {
            float sum = job.partials[i];
            for (int64_t g = 1; g < job.groups; g++) sum += job.partials[g * weights + i];
            dw[i] = sum;
        }
        return DDP_OK;
    }
    memset(dw, 0, (size_t)weights * sizeof(float));
    return grad_weight_images(&s, x, dy, 0, s.n, dw) ? DDP_OK : DDP_ERR_NOMEM;
}
