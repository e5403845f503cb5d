// ddp_winograd.c — stride-1 3×3 convolutions by Winograd's F(4×4, 3×3).
//
// Each 4×4 block of outputs ("tile") is Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A, where d
// is the 6×6 input patch under the tile and g the 3×3 filter (Lavin & Gray,
// "Fast Algorithms for Convolutional Neural Networks", 2016, points 0, ±1,
// ±2, ∞). Summed over input channels, the 36 elementwise products become 36
// independent GEMMs, U[ξ] (O × C) · V[ξ] (C × tiles): 36·2·O·C flops per 16
// outputs instead of 16·18·O·C, a quarter of the multiplications.
//
// The tiles are processed in blocks of whole tile rows. For one block a task
// transforms the input (V, vectorised across the tiles of a row), runs the 36
// GEMMs on the pre-packed U[ξ] (M = U·V) and transforms M back into the
// output rows, applying conv2d's fused epilogue as it stores them; V and M
// stay in the task's cache-sized scratch.
//
// The input gradient of such a convolution is itself one (stride 1, 3×3)
// over dy with the filters transposed and rotated by 180° and padding 2 - p,
// so conv2d_grad_input_winograd is the same code with another weight
// transform.
//
// Error: F(4×4, 3×3) rounds more than the direct sum (its transforms have
// entries up to 8 and 1/24). Against the f64 reference it stayed under 6e-6
// of the output's largest magnitude on WinogradKernelTests' cases; against the
// im2col kernel, under 1.5e-5 on unet-r18's and TransUNet's layers (up to 768
// channels).
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <stdlib.h>
#include <string.h>

#define TILE 4   // outputs per tile side
#define PATCH 6  // transformed tile side, TILE + 3 - 1
#define POINTS 36

/// Floats of V (or M) one block may take (4 MiB): the block's transformed
/// input and products stay in the caches between the transforms and the
/// GEMMs; measured, 1 MiB was 10-20% slower at 128 channels and 2 MiB
/// as much slower at 512.
#define BLOCK_BUDGET ((int64_t)1 << 20)
/// Fewest columns (tiles) a block's GEMMs get, whatever the budget: narrower
/// products waste the micro-kernel's 32-column panels and repack more.
#define BLOCK_MIN_COLUMNS 128

typedef struct {
    // The convolution as the kernel computes it: x (N × C × H × W) to
    // y (N × O × OH × OW), 3×3, stride 1, padding ph, pw.
    int64_t n, c, h, w, o, oh, ow, ph, pw;
    int64_t th, tw;         // tile rows per image, tiles per tile row
    int64_t rows_per_block; // tile rows per block
    const float *x;
    float *y;
    const float *packed_u;  // U[ξ] (O × C), packed for the GEMM, ξ = 0..35
    int64_t packed_floats;  // floats per packed U[ξ]
    const float *scale, *shift, *residual;
    int relu;
    int failed;
} wino_job;

// MARK: - Transforms (Lavin's matrices)

/// Bᵀ·d for one column d0..d5 of a patch.
#define INPUT_TRANSFORM(d0, d1, d2, d3, d4, d5, z)   \
    do {                                             \
        z[0] = 4.0f * d0 - 5.0f * d2 + d4;           \
        z[1] = -4.0f * d1 - 4.0f * d2 + d3 + d4;     \
        z[2] = 4.0f * d1 - 4.0f * d2 - d3 + d4;      \
        z[3] = -2.0f * d1 - d2 + 2.0f * d3 + d4;     \
        z[4] = 2.0f * d1 - d2 - 2.0f * d3 + d4;      \
        z[5] = 4.0f * d1 - 5.0f * d3 + d5;           \
    } while (0)

/// G·g for one column g0..g2 of a filter.
#define FILTER_TRANSFORM(g0, g1, g2, u)              \
    do {                                             \
        u[0] = g0 * 0.25f;                           \
        u[1] = (g0 + g1 + g2) * (-1.0f / 6);         \
        u[2] = (g0 - g1 + g2) * (-1.0f / 6);         \
        u[3] = g0 * (1.0f / 24) + g1 * (1.0f / 12) + g2 * (1.0f / 6); \
        u[4] = g0 * (1.0f / 24) - g1 * (1.0f / 12) + g2 * (1.0f / 6); \
        u[5] = g2;                                   \
    } while (0)

/// Most rows a GEMM panel has (12 for AVX-512, 6 for AVX2): the filter
/// transform works on one panel of output channels at a time.
#define PANEL_LANES 16

/// Writes U[ξ] = (G g Gᵀ)[ξ] for every ξ straight into the GEMM's packed
/// layout of A (O × C per ξ), one panel of output channels per step, so each
/// store is a panel row of contiguous floats; g is w[oo][ic] (forward) or
/// w[ic][oo] rotated by 180° (input gradient). Tasks take row panels.
typedef struct {
    const float *w;
    int64_t outputs, inputs; // of the computed convolution
    int transposed;
    ddp_packed_a_layout layout;
    float *packed;
    int64_t packed_floats; // per ξ
} filter_job;

static void transform_filters(void *arg, int64_t begin, int64_t end) {
    filter_job *job = arg;
    int mr = job->layout.mr;
    for (int64_t panel = begin; panel < end; panel++) {
        int64_t oo0 = panel * mr;
        int lanes = job->outputs - oo0 < mr ? (int)(job->outputs - oo0) : mr; // the rest are zero padding
        for (int64_t ic = 0; ic < job->inputs; ic++) {
            float g[9][PANEL_LANES] = {{0}}, gc[3][PATCH][PANEL_LANES], u[POINTS][PANEL_LANES];
            for (int l = 0; l < lanes; l++) {
                int64_t oo = oo0 + l;
                const float *src = job->transposed ? job->w + (ic * job->outputs + oo) * 9 : job->w + (oo * job->inputs + ic) * 9;
                for (int k = 0; k < 9; k++) g[k][l] = job->transposed ? src[8 - k] : src[k];
            }
            for (int s = 0; s < 3; s++) // G·g, column s
                for (int l = 0; l < PANEL_LANES; l++) {
                    float col[PATCH];
                    FILTER_TRANSFORM(g[s][l], g[3 + s][l], g[6 + s][l], col);
                    for (int i = 0; i < PATCH; i++) gc[s][i][l] = col[i];
                }
            for (int i = 0; i < PATCH; i++) // (G·g)·Gᵀ, row i
                for (int l = 0; l < PANEL_LANES; l++) {
                    float row[PATCH];
                    FILTER_TRANSFORM(gc[0][i][l], gc[1][i][l], gc[2][i][l], row);
                    for (int j = 0; j < PATCH; j++) u[i * PATCH + j][l] = row[j];
                }
            float *dst = job->packed + ddp_packed_a_index(&job->layout, job->inputs, oo0, ic);
            for (int xi = 0; xi < POINTS; xi++) memcpy(dst + xi * job->packed_floats, u[xi], (size_t)mr * sizeof(float));
        }
    }
}

// The tiles of a block sit in V and M as rows × span columns, span = tw + 1:
// tile t of local tile row lr is column lr·span + t, and column lr·span + tw
// is padding. With it every transform runs as one flat loop over the block's
// columns (vectorised however short the rows are); the GEMMs compute the
// padding columns too, 1/span of their work, and nothing reads them.

/// Input rows split into four phases: phase q of a row holds its columns
/// 4t + q - pw (zero outside the image) at t = 0..span, so the six columns
/// under tile t are phases 0..3 at t and phases 0..1 at t + 1. Tiles whose
/// four columns are all inside the row read it directly; only the edge tiles
/// check (xrow NULL: a row of padding).
static void split_row(const wino_job *job, const float *xrow, int64_t span, float *p0, float *p1, float *p2, float *p3) {
    if (xrow == NULL) {
        memset(p0, 0, (size_t)span * sizeof(float));
        memset(p1, 0, (size_t)span * sizeof(float));
        memset(p2, 0, (size_t)span * sizeof(float));
        memset(p3, 0, (size_t)span * sizeof(float));
        return;
    }
    int64_t pw = job->pw, w = job->w;
    int64_t first = (pw + 3) / 4;                                // 4t - pw >= 0 from here
    int64_t last = w + pw - 4 >= 0 ? (w + pw - 4) / 4 : -1;       // 4t + 3 - pw < w up to here
    if (last > span - 1) last = span - 1;
    for (int64_t t = 0; t < span; t++) {
        if (t == first && first <= last) {
            const float *x = xrow + 4 * first - pw;
            for (int64_t i = 0; i <= last - first; i++) {
                p0[first + i] = x[4 * i];
                p1[first + i] = x[4 * i + 1];
                p2[first + i] = x[4 * i + 2];
                p3[first + i] = x[4 * i + 3];
            }
            t = last;
            continue;
        }
        float v[4];
        for (int q = 0; q < 4; q++) {
            int64_t iw = 4 * t + q - pw;
            v[q] = iw >= 0 && iw < w ? xrow[iw] : 0.0f;
        }
        p0[t] = v[0]; p1[t] = v[1]; p2[t] = v[2]; p3[t] = v[3];
    }
}

/// V[ξ][c][·] (rows ld floats apart) for channel c of the block's tile rows
/// [row0, row0 + rows). `work` holds 2·PATCH·4·(ld + span) floats.
static void transform_input_channel(const wino_job *job, int64_t row0, int64_t rows, int64_t c, float *v,
                                    int64_t ld, float *work) {
    int64_t span = job->tw + 1, stride = ld + span; // phase arrays carry one spare tile row
    float *p = work;                         // p[r][q][·]: phase q of input row r under each tile row
    float *z = p + PATCH * 4 * stride;       // z[i][q][·]: Bᵀ applied down the six rows
    for (int64_t lr = 0; lr < rows; lr++) {
        int64_t row = row0 + lr, image = row / job->th, tr = row % job->th;
        const float *xc = job->x + (image * job->c + c) * job->h * job->w;
        for (int r = 0; r < PATCH; r++) {
            int64_t ih = tr * TILE - job->ph + r;
            float *pr = p + r * 4 * stride + lr * span;
            split_row(job, ih >= 0 && ih < job->h ? xc + ih * job->w : NULL, span, pr, pr + stride, pr + 2 * stride,
                      pr + 3 * stride);
        }
    }
    for (int q = 0; q < 4; q++) {
        const float *d0 = p + (0 * 4 + q) * stride, *d1 = p + (1 * 4 + q) * stride, *d2 = p + (2 * 4 + q) * stride,
                    *d3 = p + (3 * 4 + q) * stride, *d4 = p + (4 * 4 + q) * stride, *d5 = p + (5 * 4 + q) * stride;
        float *z0 = z + (0 * 4 + q) * stride, *z1 = z + (1 * 4 + q) * stride, *z2 = z + (2 * 4 + q) * stride,
              *z3 = z + (3 * 4 + q) * stride, *z4 = z + (4 * 4 + q) * stride, *z5 = z + (5 * 4 + q) * stride;
        for (int64_t k = 0; k < ld; k++) {
            float out[PATCH];
            INPUT_TRANSFORM(d0[k], d1[k], d2[k], d3[k], d4[k], d5[k], out);
            z0[k] = out[0]; z1[k] = out[1]; z2[k] = out[2]; z3[k] = out[3]; z4[k] = out[4]; z5[k] = out[5];
        }
    }
    int64_t step = job->c * ld; // from V[ξ] to V[ξ + 1]
    for (int i = 0; i < PATCH; i++) {
        const float *q0 = z + (i * 4) * stride, *q1 = q0 + stride, *q2 = q0 + 2 * stride, *q3 = q0 + 3 * stride;
        float *v0 = v + (int64_t)(i * PATCH) * step + c * ld;
        float *v1 = v0 + step, *v2 = v0 + 2 * step, *v3 = v0 + 3 * step, *v4 = v0 + 4 * step, *v5 = v0 + 5 * step;
        for (int64_t k = 0; k < ld; k++) {
            float out[PATCH];
            INPUT_TRANSFORM(q0[k], q1[k], q2[k], q3[k], q0[k + 1], q1[k + 1], out);
            v0[k] = out[0]; v1[k] = out[1]; v2[k] = out[2]; v3[k] = out[3]; v4[k] = out[4]; v5[k] = out[5];
        }
    }
}

/// Aᵀ·m for one column m0..m5: the four output values.
#define OUTPUT_TRANSFORM(m0, m1, m2, m3, m4, m5, y)                                    \
    do {                                                                               \
        float a_ = (m1) + (m2), b_ = (m1) - (m2), c_ = (m3) + (m4), d_ = (m3) - (m4); \
        y[0] = (m0) + a_ + c_;                                                         \
        y[1] = b_ + 2.0f * d_;                                                         \
        y[2] = a_ + 4.0f * c_;                                                         \
        y[3] = b_ + 8.0f * d_ + (m5);                                                  \
    } while (0)

/// The outputs of channel o under the block's tile rows from M[ξ][o][·]
/// (rows ld floats apart): Aᵀ m A, then the epilogue, stored into y.
/// `work` holds (PATCH·4 + 16)·ld + 4·span floats.
static void transform_output_channel(const wino_job *job, int64_t row0, int64_t rows, int64_t o,
                                     const float *m, int64_t ld, float *work) {
    int64_t tw = job->tw, span = tw + 1;
    float *wa = work;                  // wa[i][b][·]: m·A along row i of each tile
    float *ya = wa + PATCH * 4 * ld;   // ya[a][b][·]: Aᵀ·(m·A)
    float *line = ya + 16 * ld;        // one output row, interleaved from ya
    int64_t step = job->o * ld;        // from M[ξ] to M[ξ + 1]
    const float *mo = m + o * ld;
    for (int i = 0; i < PATCH; i++) {
        const float *m0 = mo + (i * PATCH) * step, *m1 = m0 + step, *m2 = m0 + 2 * step, *m3 = m0 + 3 * step,
                    *m4 = m0 + 4 * step, *m5 = m0 + 5 * step;
        float *w0 = wa + (i * 4) * ld, *w1 = w0 + ld, *w2 = w0 + 2 * ld, *w3 = w0 + 3 * ld;
        for (int64_t k = 0; k < ld; k++) {
            float out[4];
            OUTPUT_TRANSFORM(m0[k], m1[k], m2[k], m3[k], m4[k], m5[k], out);
            w0[k] = out[0]; w1[k] = out[1]; w2[k] = out[2]; w3[k] = out[3];
        }
    }
    for (int col = 0; col < 4; col++) {
        const float *m0 = wa + col * ld, *m1 = m0 + 4 * ld, *m2 = m0 + 8 * ld, *m3 = m0 + 12 * ld,
                    *m4 = m0 + 16 * ld, *m5 = m0 + 20 * ld;
        float *y0 = ya + col * ld, *y1 = y0 + 4 * ld, *y2 = y0 + 8 * ld, *y3 = y0 + 12 * ld;
        for (int64_t k = 0; k < ld; k++) {
            float out[4];
            OUTPUT_TRANSFORM(m0[k], m1[k], m2[k], m3[k], m4[k], m5[k], out);
            y0[k] = out[0]; y1[k] = out[1]; y2[k] = out[2]; y3[k] = out[3];
        }
    }
    float scale = job->scale ? job->scale[o] : 1.0f, shift = job->shift ? job->shift[o] : 0.0f;
    int64_t plane = job->oh * job->ow;
    for (int64_t lr = 0; lr < rows; lr++) {
        int64_t row = row0 + lr, image = row / job->th, tr = row % job->th;
        for (int r = 0; r < TILE && tr * TILE + r < job->oh; r++) {
            int64_t at = (image * job->o + o) * plane + (tr * TILE + r) * job->ow;
            const float *q0 = ya + (r * 4) * ld + lr * span, *q1 = q0 + ld, *q2 = q0 + 2 * ld, *q3 = q0 + 3 * ld;
            for (int64_t t = 0; t < tw; t++) {
                line[4 * t] = q0[t];
                line[4 * t + 1] = q1[t];
                line[4 * t + 2] = q2[t];
                line[4 * t + 3] = q3[t];
            }
            float *yr = job->y + at;
            if (job->residual) {
                const float *res = job->residual + at;
                for (int64_t ow = 0; ow < job->ow; ow++) {
                    float e = line[ow] * scale + shift + res[ow];
                    yr[ow] = job->relu && e < 0.0f ? 0.0f : e;
                }
            } else {
                for (int64_t ow = 0; ow < job->ow; ow++) {
                    float e = line[ow] * scale + shift;
                    yr[ow] = job->relu && e < 0.0f ? 0.0f : e;
                }
            }
        }
    }
}

// MARK: - Driver

/// Floats of transform work space for blocks of `rows` tile rows.
static int64_t work_floats(const wino_job *job, int64_t rows) {
    int64_t span = job->tw + 1, ld = rows * span;
    int64_t in = 2 * PATCH * 4 * (ld + span) + 4 * span, out = (PATCH * 4 + 16) * ld + 4 * span;
    return in > out ? in : out;
}

/// Blocks [begin, end): transform, 36 GEMMs, transform back.
static void wino_blocks(void *arg, int64_t begin, int64_t end) {
    wino_job *job = arg;
    int64_t rows_total = job->n * job->th, span = job->tw + 1, most = job->rows_per_block * span;
    int64_t v_floats = POINTS * job->c * most, m_floats = POINTS * job->o * most;
    float *scratch = ddp_thread_scratch(DDP_SCRATCH_COLUMNS,
                                        (size_t)(v_floats + m_floats + work_floats(job, job->rows_per_block)));
    if (scratch == NULL) { __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED); return; }
    float *v = scratch, *m = scratch + v_floats, *work = m + m_floats;
    for (int64_t b = begin; b < end; b++) {
        int64_t row0 = b * job->rows_per_block;
        int64_t rows = rows_total - row0 < job->rows_per_block ? rows_total - row0 : job->rows_per_block;
        int64_t ld = rows * span;
        for (int64_t c = 0; c < job->c; c++) transform_input_channel(job, row0, rows, c, v, ld, work);
        for (int xi = 0; xi < POINTS; xi++)
            if (!ddp_gemm_with_packed_a(job->packed_u + xi * job->packed_floats, 0, job->o, ld, job->c,
                                        v + (int64_t)xi * job->c * ld, ld, 0.0f, m + (int64_t)xi * job->o * ld, ld)) {
                __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
                return;
            }
        for (int64_t o = 0; o < job->o; o++) transform_output_channel(job, row0, rows, o, m, ld, work);
    }
}

/// Runs the convolution described by job (x, y, sizes, padding, epilogue)
/// with filters w: w[o][c] (transposed = 0) or w[c][o] rotated (1).
static int winograd(wino_job *job, const float *w, int transposed) {
    if (job->n * job->oh * job->ow == 0 || job->o == 0) return DDP_OK;
    job->th = (job->oh + TILE - 1) / TILE;
    job->tw = (job->ow + TILE - 1) / TILE;

    // Filters: transformed straight into the GEMM's packed layout.
    job->packed_floats = ddp_gemm_packed_a_floats(job->o, job->c);
    float *packed = ddp_thread_scratch(DDP_SCRATCH_WEIGHTS, (size_t)(POINTS * job->packed_floats));
    if (packed == NULL) return DDP_ERR_NOMEM;
    filter_job filters = {w, job->o, job->c, transposed, ddp_gemm_packed_a_layout(job->o), packed, job->packed_floats};
    ddp_parallel_for(filters.layout.mpad / filters.layout.mr, transform_filters, &filters);
    job->packed_u = packed;

    // Blocks of whole tile rows within the budget, as many as the threads
    // can share evenly when the budget allows fewer.
    int64_t rows_total = job->n * job->th;
    int64_t per_row = POINTS * (job->c > job->o ? job->c : job->o) * (job->tw + 1);
    int64_t rows = BLOCK_BUDGET / (per_row > 0 ? per_row : 1), fewest = (BLOCK_MIN_COLUMNS + job->tw) / (job->tw + 1);
    if (rows < fewest) rows = fewest;
    int64_t threads = ddp_parallel_threads(), blocks = (rows_total + rows - 1) / rows;
    if (blocks < 4 * threads) blocks = (blocks + threads - 1) / threads * threads;
    if (blocks > rows_total) blocks = rows_total;
    job->rows_per_block = (rows_total + blocks - 1) / blocks;
    blocks = (rows_total + job->rows_per_block - 1) / job->rows_per_block;
    ddp_parallel_for(blocks, wino_blocks, job);
    return job->failed ? DDP_ERR_NOMEM : DDP_OK;
}

// MARK: - Weight gradient
//
// y_t = Aᵀ (U ⊙ V_t) A is linear in U = G g Gᵀ, so the gradient of a filter
// is dg = Gᵀ [ Σ_t (A dY_t Aᵀ) ⊙ V_t ] G: the same input transform V, the
// output gradient's 4×4 tiles taken to 6×6 by A·dY·Aᵀ (Ŷ), and per point ξ
// one product summed over every tile, dU[ξ] (O × C) += Ŷ[ξ] (O × tiles) ·
// V[ξ]ᵀ (tiles × C). The blocks of tiles run in order, and each product is
// one task's, so the sums' order (hence dw) does not depend on the thread
// count.

/// A·y for one column y0..y3 of an output-gradient tile: six values.
#define GRADIENT_TRANSFORM(y0, y1, y2, y3, u)                             \
    do {                                                                  \
        float e_ = (y0) + (y2), o_ = (y1) + (y3);                         \
        float e4_ = (y0) + 4.0f * (y2), o8_ = 2.0f * (y1) + 8.0f * (y3);  \
        u[0] = (y0);                                                      \
        u[1] = e_ + o_;                                                   \
        u[2] = e_ - o_;                                                   \
        u[3] = e4_ + o8_;                                                 \
        u[4] = e4_ - o8_;                                                 \
        u[5] = (y3);                                                      \
    } while (0)

/// Gᵀ·u for one column u0..u5 of a 6×6 filter gradient: three values.
#define FILTER_GRADIENT(u0, u1, u2, u3, u4, u5, g)                                                      \
    do {                                                                                                \
        g[0] = (u0) * 0.25f - ((u1) + (u2)) * (1.0f / 6) + ((u3) + (u4)) * (1.0f / 24);                  \
        g[1] = ((u2) - (u1)) * (1.0f / 6) + ((u3) - (u4)) * (1.0f / 12);                                 \
        g[2] = ((u3) + (u4) - (u1) - (u2)) * (1.0f / 6) + (u5);                                          \
    } while (0)

typedef struct {
    wino_job geometry; // x, sizes, padding, tiles; o is dy's channels
    const float *dy;
    int64_t row0, rows, ld; // the block being transformed
    float *v, *dyt;         // its V[ξ] (C × ld) and Ŷ[ξ] (O × ld)
    float *du;              // Σ over blocks of Ŷ[ξ]·V[ξ]ᵀ: 36 × O × C
    float *dw;
    int failed;
} wgrad_job;

static void failed_task(int *failed) { __atomic_store_n(failed, 1, __ATOMIC_RELAXED); }

/// Floats a task needs to transform one channel of a block.
static int64_t wgrad_work_floats(const wino_job *g, int64_t ld) {
    int64_t span = g->tw + 1;
    return 2 * PATCH * 4 * (ld + span) + 4 * span;
}

static void wgrad_input_channels(void *arg, int64_t begin, int64_t end) {
    wgrad_job *job = arg;
    float *work = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)wgrad_work_floats(&job->geometry, job->ld));
    if (work == NULL) { failed_task(&job->failed); return; }
    const wino_job *g = &job->geometry;
    int64_t span = g->tw + 1;
    for (int64_t c = begin; c < end; c++) {
        transform_input_channel(g, job->row0, job->rows, c, job->v, job->ld, work);
        // The padding columns hold whatever the flat loops left there; Ŷ is
        // zero in them, and 0 · (a stray NaN) would not be.
        for (int xi = 0; xi < POINTS; xi++)
            for (int64_t lr = 0; lr < job->rows; lr++) job->v[(xi * g->c + c) * job->ld + lr * span + g->tw] = 0.0f;
    }
}

/// Ŷ[ξ][o][·] for output-gradient channels [begin, end) of the block; the
/// padding column of each tile row is zero, so the garbage V has there adds
/// nothing.
static void wgrad_gradient_channels(void *arg, int64_t begin, int64_t end) {
    wgrad_job *job = arg;
    const wino_job *g = &job->geometry;
    int64_t tw = g->tw, span = tw + 1, ld = job->ld, step = g->o * ld;
    float *work = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)(2 * PATCH * 4 * ld + 4 * span));
    if (work == NULL) { failed_task(&job->failed); return; }
    float *p = work;                 // p[a][q][·]: column q of row a of each tile (phases of dy's rows)
    float *z = p + 4 * 4 * ld;       // z[i][q][·]: A applied down the tile's four rows
    float *padded = z + PATCH * 4 * ld;
    for (int64_t o = begin; o < end; o++) {
        for (int64_t lr = 0; lr < job->rows; lr++) {
            int64_t row = job->row0 + lr, image = row / g->th, tr = row % g->th;
            const float *dyo = job->dy + (image * g->o + o) * g->oh * g->ow;
            for (int a = 0; a < TILE; a++) {
                int64_t oh = tr * TILE + a;
                memset(padded, 0, (size_t)(4 * span) * sizeof(float));
                if (oh < g->oh) memcpy(padded, dyo + oh * g->ow, (size_t)g->ow * sizeof(float));
                float *pa = p + a * 4 * ld + lr * span;
                for (int64_t t = 0; t < span; t++)
                    for (int q = 0; q < 4; q++) pa[q * ld + t] = t < tw ? padded[4 * t + q] : 0.0f;
            }
        }
        for (int q = 0; q < 4; q++) {
            const float *y0 = p + (0 * 4 + q) * ld, *y1 = p + (1 * 4 + q) * ld, *y2 = p + (2 * 4 + q) * ld,
                        *y3 = p + (3 * 4 + q) * ld;
            float *z0 = z + (0 * 4 + q) * ld, *z1 = z + (1 * 4 + q) * ld, *z2 = z + (2 * 4 + q) * ld,
                  *z3 = z + (3 * 4 + q) * ld, *z4 = z + (4 * 4 + q) * ld, *z5 = z + (5 * 4 + q) * ld;
            for (int64_t k = 0; k < ld; k++) {
                float u[PATCH];
                GRADIENT_TRANSFORM(y0[k], y1[k], y2[k], y3[k], u);
                z0[k] = u[0]; z1[k] = u[1]; z2[k] = u[2]; z3[k] = u[3]; z4[k] = u[4]; z5[k] = u[5];
            }
        }
        for (int i = 0; i < PATCH; i++) {
            const float *q0 = z + (i * 4) * ld, *q1 = q0 + ld, *q2 = q0 + 2 * ld, *q3 = q0 + 3 * ld;
            float *d0 = job->dyt + (int64_t)(i * PATCH) * step + o * ld;
            float *d1 = d0 + step, *d2 = d0 + 2 * step, *d3 = d0 + 3 * step, *d4 = d0 + 4 * step, *d5 = d0 + 5 * step;
            for (int64_t k = 0; k < ld; k++) {
                float u[PATCH];
                GRADIENT_TRANSFORM(q0[k], q1[k], q2[k], q3[k], u);
                d0[k] = u[0]; d1[k] = u[1]; d2[k] = u[2]; d3[k] = u[3]; d4[k] = u[4]; d5[k] = u[5];
            }
        }
    }
}

/// dU[ξ] += Ŷ[ξ]·V[ξ]ᵀ for ξ in [begin, end), each product on this task.
static void wgrad_products(void *arg, int64_t begin, int64_t end) {
    wgrad_job *job = arg;
    const wino_job *g = &job->geometry;
    for (int64_t xi = begin; xi < end; xi++)
        if (!ddp_gemm(0, 1, g->o, g->c, job->ld, job->dyt + xi * g->o * job->ld, job->ld, job->v + xi * g->c * job->ld,
                      job->ld, 1.0f, job->du + xi * g->o * g->c, g->c)) {
            failed_task(&job->failed);
            return;
        }
}

/// dw[o][c] = Gᵀ dU[·][o][c] G for output channels [begin, end).
static void wgrad_filters(void *arg, int64_t begin, int64_t end) {
    wgrad_job *job = arg;
    const wino_job *g = &job->geometry;
    int64_t plane = g->o * g->c;
    for (int64_t o = begin; o < end; o++)
        for (int64_t c = 0; c < g->c; c++) {
            const float *u = job->du + o * g->c + c;
            float rows[3][PATCH]; // Gᵀ applied down each column j
            for (int j = 0; j < PATCH; j++) {
                float col[3];
                FILTER_GRADIENT(u[(0 * PATCH + j) * plane], u[(1 * PATCH + j) * plane], u[(2 * PATCH + j) * plane],
                                u[(3 * PATCH + j) * plane], u[(4 * PATCH + j) * plane], u[(5 * PATCH + j) * plane], col);
                for (int s = 0; s < 3; s++) rows[s][j] = col[s];
            }
            float *dw = job->dw + (o * g->c + c) * 9;
            for (int s = 0; s < 3; s++) {
                float out[3];
                FILTER_GRADIENT(rows[s][0], rows[s][1], rows[s][2], rows[s][3], rows[s][4], rows[s][5], out);
                dw[s * 3 + 0] = out[0]; dw[s * 3 + 1] = out[1]; dw[s * 3 + 2] = out[2];
            }
        }
}

/// Tiles per block of the weight gradient: the products' sums run over
/// them, so long blocks make long, efficient GEMMs; fixed (not from the
/// thread count), so dw is the same on every machine.
#define WGRAD_BLOCK_COLUMNS 1024

/// Whether the geometry is one this kernel computes: 3×3, stride 1,
/// dilation 1, one group, padding at most 2.
static int winograd_geometry(const int64_t *ia) {
    return ia[5] == 3 && ia[6] == 3 && ia[9] == 1 && ia[10] == 1 && ia[13] == 1 && ia[14] == 1 && ia[15] == 1 &&
           ia[11] >= 0 && ia[11] <= 2 && ia[12] >= 0 && ia[12] <= 2 && ia[7] == ia[2] + 2 * ia[11] - 2 &&
           ia[8] == ia[3] + 2 * ia[12] - 2;
}

int ddp_conv2d_winograd(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (!winograd_geometry(ia)) return DDP_ERR_ARGS;
    wino_job job = {.n = ia[0], .c = ia[1], .h = ia[2], .w = ia[3], .o = ia[4], .oh = ia[7], .ow = ia[8],
                    .ph = ia[11], .pw = ia[12], .x = bufs[0], .y = bufs[2], .relu = ia[19] != 0};
    int next = 3;
    if (ia[16]) job.scale = bufs[next++];
    if (ia[17]) job.shift = bufs[next++];
    if (ia[18]) job.residual = bufs[next++];
    return winograd(&job, bufs[1], 0);
}

int ddp_conv2d_grad_weight_winograd(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (!winograd_geometry(ia)) return DDP_ERR_ARGS;
    wgrad_job job = {.geometry = {.n = ia[0], .c = ia[1], .h = ia[2], .w = ia[3], .o = ia[4], .oh = ia[7], .ow = ia[8],
                                  .ph = ia[11], .pw = ia[12], .x = bufs[0]},
                     .dy = bufs[1], .dw = bufs[2]};
    wino_job *g = &job.geometry;
    int64_t plane = g->o * g->c;
    if (plane == 0) return DDP_OK;
    if (g->n * g->oh * g->ow == 0) {
        memset(job.dw, 0, (size_t)(plane * 9) * sizeof(float));
        return DDP_OK;
    }
    g->th = (g->oh + TILE - 1) / TILE;
    g->tw = (g->ow + TILE - 1) / TILE;
    int64_t span = g->tw + 1, rows_total = g->n * g->th;
    int64_t rows = (WGRAD_BLOCK_COLUMNS + span - 1) / span;
    if (rows > rows_total) rows = rows_total;
    int64_t most = rows * span;
    float *blocks = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(POINTS * (g->c + g->o) * most));
    job.du = ddp_thread_scratch(DDP_SCRATCH_WEIGHTS, (size_t)(POINTS * plane));
    if (blocks == NULL || job.du == NULL) return DDP_ERR_NOMEM;
    memset(job.du, 0, (size_t)(POINTS * plane) * sizeof(float));
    job.v = blocks;
    job.dyt = blocks + POINTS * g->c * most;
    for (job.row0 = 0; job.row0 < rows_total; job.row0 += rows) {
        job.rows = rows_total - job.row0 < rows ? rows_total - job.row0 : rows;
        job.ld = job.rows * span;
        ddp_parallel_for(g->c, wgrad_input_channels, &job);
        ddp_parallel_for(g->o, wgrad_gradient_channels, &job);
        ddp_parallel_for(POINTS, wgrad_products, &job);
        if (job.failed) return DDP_ERR_NOMEM;
    }
    ddp_parallel_for(g->o, wgrad_filters, &job);
    return DDP_OK;
}

int ddp_conv2d_grad_input_winograd(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (!winograd_geometry(ia)) return DDP_ERR_ARGS;
    // dx = conv(dy, rot180(w)ᵀ) with padding 2 - p: from O channels to C.
    wino_job job = {.n = ia[0], .c = ia[4], .h = ia[7], .w = ia[8], .o = ia[1], .oh = ia[2], .ow = ia[3],
                    .ph = 2 - ia[11], .pw = 2 - ia[12], .x = bufs[0], .y = bufs[2]};
    return winograd(&job, bufs[1], 1);
}
