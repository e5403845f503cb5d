// ddp_internal.h — helpers shared by the kernel sources (not part of the API).
#ifndef DDP_INTERNAL_H
#define DDP_INTERNAL_H

#include <cblas.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/// Largest rank accepted by reduce, permute and copy_region.
#define DDP_MAX_RANK 16

/// Bilinear taps along one axis (ddp_pool.c): output o reads inputs i0[o]
/// and i1[o] with weights l0[o] and l1[o], computed in float exactly as
/// PyTorch's area_pixel_compute_source_index + guard_index_and_lambda. Shared
/// by the bilinear upsampling and the convolutions that gather their input
/// by it.
typedef struct {
    int64_t *i0, *i1;
    float *l0, *l1;
} ddp_linear_taps;

/// The taps of `out` outputs from `in` inputs. Returns 0 (nothing allocated)
/// for an empty input or on allocation failure.
int ddp_linear_taps_make(int64_t in, int64_t out, int align_corners, ddp_linear_taps *t);
void ddp_linear_taps_free(ddp_linear_taps *t);

/// Row-major C = op(A)·op(B) + beta·C (alpha = 1) on the runtime thread pool
/// (ddp_gemm.c). Returns 0 when it could not get its packing memory.
int ddp_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
             const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

/// Whether ddp_gemm sums this product as dot products of rows (thin, deep
/// A·Bᵀ) rather than by micro-tiles: its elements then round otherwise.
/// Everywhere else each element is the same chain of FMAs over k whatever
/// m and n are, so stacking products' rows does not change a bit.
int ddp_gemm_sums_by_dots(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k);

/// op(A) (m×k) packed once for many products with it (a convolution's
/// weights, for every image): ddp_gemm_packed_a_floats(m, k) floats, 64-byte
/// aligned, filled by ddp_gemm_pack_a and read by ddp_gemm_with_packed_a.
int64_t ddp_gemm_packed_a_floats(int64_t m, int64_t k);
void ddp_gemm_pack_a(int trans_a, int64_t m, int64_t k, const float *a, int64_t lda, float *out);
int ddp_gemm_with_packed_a(const float *packed_a, int trans_b, int64_t m, int64_t n, int64_t k,
                           const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
/// Rows [row0, row1) of that product (row0 a multiple of the panel rows),
/// C overwritten, on the calling thread, with the bits the whole product
/// gives them.
int ddp_gemm_rows_with_packed_a(const float *packed_a, int64_t m, int64_t row0, int64_t row1, int64_t n, int64_t k,
                                const float *b, int64_t ldb, float *c, int64_t ldc);

/// Where ddp_gemm_pack_a puts element (i, k) of an m × k matrix, for code
/// that writes a packed A directly (the Winograd filter transforms): row
/// panels of `mr` rows, in blocks of `kc` columns, rows padded to `mpad`
/// (the padding rows must be zero).
typedef struct {
    int mr;
    int64_t kc, mpad;
} ddp_packed_a_layout;
ddp_packed_a_layout ddp_gemm_packed_a_layout(int64_t m);
/// The same layout for panels of `mr` rows, whatever the chosen ISA's are:
/// filters packed ahead of the calls (winograd_filters) say which they used.
ddp_packed_a_layout ddp_gemm_packed_a_layout_for(int64_t m, int mr);
/// An m × k matrix packed in one layout, copied into another (zero padding).
void ddp_gemm_repack_a(const float *from, ddp_packed_a_layout from_layout, float *to, ddp_packed_a_layout to_layout,
                       int64_t m, int64_t k);
static inline int64_t ddp_packed_a_index(const ddp_packed_a_layout *l, int64_t k_total, int64_t i, int64_t k) {
    int64_t pc = k / l->kc * l->kc, kc = k_total - pc < l->kc ? k_total - pc : l->kc;
    return pc * l->mpad + i / l->mr * l->mr * kc + (k - pc) * l->mr + i % l->mr;
}

/// Per-thread scratch buffers, kept between calls and grown on demand
/// (ddp_threads.c); NULL when the memory is not there. One slot per use, so
/// a kernel's buffer and the GEMM's packing space never alias.
enum {
    DDP_SCRATCH_GEMM_PACK, DDP_SCRATCH_COLUMNS, DDP_SCRATCH_GATHER, DDP_SCRATCH_WEIGHTS, DDP_SCRATCH_TRANSFORM, DDP_SCRATCH_MOMENTS,
    DDP_SCRATCH_SLOTS
};
float *ddp_thread_scratch(int slot, size_t floats);
/// Floats of spare arena the calling thread's scratch may still take during
/// this call (what its slots left of its part of the lend_thread_scratch
/// loan), 0 without a loan.
size_t ddp_thread_scratch_loan_floats(void);
/// `floats` of one buffer a kernel call's tasks share, from the end of the
/// current loan (across the threads' parts), the rest split anew among the
/// threads for the call's other requests. NULL when the calling thread lent
/// none, already carved from it, or it is smaller.
float *ddp_thread_scratch_shared_block(size_t floats);

/// A block a kernel call's tasks share: ddp_thread_scratch_shared_block,
/// else the calling thread's DDP_SCRATCH_COLUMNS slot. NULL when neither
/// holds `floats`.
float *ddp_thread_scratch_block(size_t floats);

/// `floats` from the end of the region lend_scratch lent the calling thread
/// for this call, 64-byte aligned, the rest left lent for the call's weights
/// scratch: a kernel's planned buffer of its own beside its weights. NULL
/// without a loan (the caller allocates then) or when the loan is smaller
/// (counted as a loan miss).
float *ddp_lent_scratch_tail(size_t floats);

/// Packing floats one thread's product op(A)·B asks of its scratch
/// (DDP_SCRATCH_GEMM_PACK) with A packed ahead, k deep and n columns.
int64_t ddp_gemm_pack_floats(int64_t n, int64_t k);

/// Sums of x[0..n) and of its squares, in double, into out[0], out[1]:
/// the partial batch moments of one output row. Eight lanes of each (which
/// vectorize) added in a fixed order, so a row's sums are the same bits
/// wherever they are taken: in a convolution's epilogue or in batch_moments.
static inline void ddp_row_moments(const float *x, int64_t n, double *out) {
    double s[8] = {0}, q[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) {
            double v = x[i + l];
            s[l] += v;
            q[l] += v * v;
        }
    double sum = 0, squares = 0;
    for (; i < n; i++) {
        double v = x[i];
        sum += v;
        squares += v * v;
    }
    for (int l = 0; l < 8; l++) {
        sum += s[l];
        squares += q[l];
    }
    out[0] = sum;
    out[1] = squares;
}

/// The batch moments of an [N, C, rows × row] tensor from its rows'
/// partial sums (ddp_row_moments, row r of plane (n, c) at
/// rows[2·((n·C + c)·rows_per_plane + r)]): out[c] = the mean of channel c,
/// out[C + c] = its variance (biased), each channel summed in the order
/// (n, r) on one thread, so they do not depend on the thread count.
void ddp_moments_finish(const double *rows, int64_t n, int64_t c, int64_t rows_per_plane, int64_t row, float *out);

/// The convolution kernels' fused epilogue (conv2d's and conv2d_grad_input's,
/// plain and Winograd): y = act(acc·scale[c] + shift[c] + residual)·[gate > 0],
/// each part present when its flag is set (see ddp_kernels.h). The gate is
/// the ReLU's backward: a product with 1 or 0, so a NaN or infinite
/// accumulator stays one where the gate is open. With `moments` (forward
/// convolutions only) it also sums each output row it stores into
/// `row_sums`, which the kernel provides and turns into the batch moments
/// of y (ddp_moments_finish) once every row is stored.
typedef struct {
    const float *scale, *shift, *residual, *gate;
    const float *gate_scale, *gate_shift; // the gate is gate·gate_scale[c] + gate_shift[c] (has_gate 2)
    float *moments;                       // batch_moments of y: [2, O] (has_moments)
    double *row_sums;                     // partial sums per output row, 2 per row (set by the kernel)
    int64_t row;                          // output row length (set by the kernel)
    int relu, active;
    int buffers; // how many buffers it took after the kernel's first three
} ddp_conv_epilogue;

/// Reads the six epilogue flags at `flags` (has_scale, has_shift,
/// has_residual, relu, has_gate, has_moments) and takes the buffers that
/// follow the kernel's first three, in that order.
static inline ddp_conv_epilogue ddp_conv_epilogue_read(void *const *bufs, const int64_t *flags) {
    ddp_conv_epilogue e = {0};
    int next = 3;
    if (flags[0]) e.scale = bufs[next++];
    if (flags[1]) e.shift = bufs[next++];
    if (flags[2]) e.residual = bufs[next++];
    e.relu = flags[3] != 0;
    if (flags[4]) e.gate = bufs[next++];
    if (flags[4] == 2) {
        e.gate_scale = bufs[next++];
        e.gate_shift = bufs[next++];
    }
    if (flags[5]) e.moments = bufs[next++];
    e.active = e.scale || e.shift || e.residual || e.relu || e.gate || e.moments;
    e.buffers = next - 3;
    return e;
}

/// Makes the epilogue gather y's batch moments (y: n × channels planes of
/// `rows` rows of `row`): takes the calling thread's scratch for the rows'
/// sums. 0 when the memory is not there; 1 also when there are no moments.
static inline int ddp_conv_epilogue_begin_moments(ddp_conv_epilogue *e, int64_t n, int64_t channels, int64_t rows,
                                                  int64_t row) {
    if (!e->moments) return 1;
    size_t doubles = (size_t)(2 * n * channels * rows);
    e->row_sums = (double *)ddp_thread_scratch(DDP_SCRATCH_MOMENTS, 2 * (doubles > 0 ? doubles : 1));
    e->row = row;
    return e->row_sums != NULL;
}

/// The batch moments from the rows' sums, once every row is stored.
static inline void ddp_conv_epilogue_end_moments(const ddp_conv_epilogue *e, int64_t n, int64_t channels, int64_t rows) {
    if (e->moments) ddp_moments_finish(e->row_sums, n, channels, rows, e->row, e->moments);
}

/// A convolution's prologue, on its input as each row is loaded:
/// - kind 1, affine: x·scale[c] + shift[c], then max(·, 0) when relu (the
///   previous layer's normalization and activation, which then need no pass
///   of their own); the padding stays 0;
/// - kind 2, gathered: the input is concat(upsample_nearest(x), skip) along
///   channels, never written: its first `upsampled` channels are x's
///   (N × upsampled × H/fh × W/fw, each element repeated fh × fw times), the
///   rest skip's (N × (C − upsampled) × H × W); a decoder block's input;
/// - kind 3, gathered by bilinear interpolation: as kind 2 with
///   upsample_bilinear (align_corners when relu's flag is 1), its taps made
///   by ddp_conv_prologue_begin.
typedef struct {
    const float *scale, *shift;
    int relu, active;
    int gather, bilinear, align_corners;
    const float *skip;
    int64_t fh, fw, upsampled;
    ddp_linear_taps rows, columns; // bilinear: of the input's rows and columns in x's
    /// bilinear: columns.i0 and columns.i1 less the i0 of their block of 16
    /// columns (i0 first, then i1, w each): a block's taps then lie in 32
    /// floats from that i0, which two-source permutes reach.
    int32_t *column_offsets;
} ddp_conv_prologue;

/// Reads the prologue flags at `flags` (kind, relu, fh, fw, upsampled) of a
/// convolution of `channels` input channels; its buffers start at
/// `bufs[next]`: [scale, shift] (affine), [skip] (gathered, when some
/// channels are not upsampled).
static inline ddp_conv_prologue ddp_conv_prologue_read(void *const *bufs, int next, const int64_t *flags, int64_t channels) {
    ddp_conv_prologue p = {0};
    if (flags[0] == 1) {
        p.scale = bufs[next];
        p.shift = bufs[next + 1];
        p.relu = flags[1] != 0;
        p.active = 1;
    } else if (flags[0] == 2 || flags[0] == 3) {
        p.active = p.gather = 1;
        p.bilinear = flags[0] == 3;
        p.align_corners = p.bilinear && flags[1] != 0;
        p.fh = flags[2];
        p.fw = flags[3];
        p.upsampled = flags[4];
        p.skip = p.upsampled < channels ? bufs[next] : NULL;
    }
    return p;
}

/// Whether the prologue's flags are ones the kernels apply to an input of
/// `channels` × h × w: a known kind; gathered, whole factors of h and w and
/// 1 to `channels` upsampled channels.
static inline int ddp_conv_prologue_valid(const int64_t *flags, int64_t channels, int64_t h, int64_t w) {
    if (flags[0] == 0 || flags[0] == 1) return 1;
    return (flags[0] == 2 || flags[0] == 3) && flags[2] >= 1 && flags[3] >= 1 && h % flags[2] == 0 &&
           w % flags[3] == 0 && flags[4] >= 1 && flags[4] <= channels;
}

/// Frees what ddp_conv_prologue_begin made.
static inline void ddp_conv_prologue_end(ddp_conv_prologue *p) {
    if (p->rows.i0) ddp_linear_taps_free(&p->rows);
    if (p->columns.i0) ddp_linear_taps_free(&p->columns);
    free(p->column_offsets);
    p->rows.i0 = p->columns.i0 = NULL;
    p->column_offsets = NULL;
}

/// Makes what the prologue needs for an input of h × w (a bilinear
/// gather's taps); 0 when out of memory. ddp_conv_prologue_end frees it.
static inline int ddp_conv_prologue_begin(ddp_conv_prologue *p, int64_t h, int64_t w) {
    if (!p->bilinear || h == 0 || w == 0) return 1;
    if (!ddp_linear_taps_make(h / p->fh, h, p->align_corners, &p->rows)) return 0;
    p->column_offsets = malloc((size_t)(2 * w) * sizeof(int32_t));
    if (p->column_offsets == NULL || !ddp_linear_taps_make(w / p->fw, w, p->align_corners, &p->columns)) {
        ddp_conv_prologue_end(p);
        return 0;
    }
    for (int64_t j = 0; j < w; j++) {
        int64_t base = p->columns.i0[j - j % 16];
        p->column_offsets[j] = (int32_t)(p->columns.i0[j] - base);
        p->column_offsets[w + j] = (int32_t)(p->columns.i1[j] - base);
    }
    return 1;
}

/// The prologue on one row of channel c's input, x[0..n) into out.
static inline void ddp_conv_prologue_row(const ddp_conv_prologue *p, int64_t c, const float *restrict x,
                                         float *restrict out, int64_t n) {
    float scale = p->scale[c], shift = p->shift[c];
    if (p->relu)
        for (int64_t i = 0; i < n; i++) {
            float v = x[i] * scale + shift;
            out[i] = v > 0.0f ? v : 0.0f;
        }
    else
        for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale + shift;
}

/// The epilogue on `count` accumulators of channel `channel` whose output
/// elements start at element `at` of the output tensor (where the residual
/// and gate elements are too), from `acc` into `y` (which may be `acc`).
/// `y` may also be the residual or the gate, when plan-memory places the
/// result there (a Winograd kernel's, whose accumulators are its own): each
/// element is read before it is written. (A copy of the loop for y == res,
/// through one pointer, made unet-r18's residual convolutions 1.7-4.7× slower
/// than this loop, whose overlap the compiler checks at run time.)
static inline void ddp_conv_epilogue_row(const ddp_conv_epilogue *e, int64_t channel, int64_t at, const float *acc,
                                         float *y, int64_t count) {
    float scale = e->scale ? e->scale[channel] : 1.0f, shift = e->shift ? e->shift[channel] : 0.0f;
    const float *res = e->residual ? e->residual + at : NULL, *gate = e->gate ? e->gate + at : NULL;
    // A plain gate is g·1 + 0 = g exactly (fused or not), its sign unchanged.
    float gate_scale = e->gate_scale ? e->gate_scale[channel] : 1.0f, gate_shift = e->gate_shift ? e->gate_shift[channel] : 0.0f;
    int relu = e->relu; // invariant: the compiler unswitches the loop on it, res and gate
    if (acc != y || e->scale || e->shift || res || relu || gate)
        for (int64_t j = 0; j < count; j++) {
            float v = acc[j] * scale + shift;
            if (res) v += res[j];
            if (relu) v = v > 0.0f ? v : 0.0f;
            if (gate) v *= gate[j] * gate_scale + gate_shift > 0.0f ? 1.0f : 0.0f;
            y[j] = v;
        }
    // The stored rows' sums, while they are in cache: `at` starts a row and
    // `count` is whole rows (every kernel stores rows, bands or planes).
    if (e->row_sums)
        for (int64_t r = 0; r < count; r += e->row) ddp_row_moments(y + r, e->row, e->row_sums + 2 * ((at + r) / e->row));
}


/// A task covers [begin, end) of a parallel_for's index range.
typedef void (*ddp_task_fn)(void *arg, int64_t begin, int64_t end);

/// Runs fn over [0, n) split into one contiguous chunk per pool thread
/// (ddp_threads.c); serially when called from inside a task.
void ddp_parallel_for(int64_t n, ddp_task_fn fn, void *arg);

/// ddp_parallel_for when the work touches at least 2^15 elements, else fn
/// over [0, n) on the caller: below that, waking the pool costs more than
/// it saves.
void ddp_parallel_for_elements(int64_t n, int64_t elements, ddp_task_fn fn, void *arg);

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

/// e^x within 2 ulp, branch-free so that loops over it vectorize (libm's
/// expf is a call per element). Cephes' reduction x = n·ln2 + r, |r| ≤ ln2/2,
/// and its degree-6 polynomial; 2^n is built in the exponent bits. Results
/// below e^-87.3 flush to about 1e-38 instead of reaching 0, those above
/// e^88 saturate there; NaN stays NaN.
static inline float ddp_expf(float x) {
    x = x < -87.33654f ? -87.33654f : x;
    x = x > 88.0f ? 88.0f : x;
    // n = round(x / ln2), read from the low mantissa bits of a float near 1.5·2^23.
    float shifted = x * 1.44269504088896341f + 12582912.0f;
    float n = shifted - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits;
    memcpy(&bits, &shifted, sizeof bits);
    int32_t scale_bits = (int32_t)((uint32_t)(bits - 0x4B400000 + 127) << 23);
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

#endif
