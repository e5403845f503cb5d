// ddp_winograd.c — stride-1 3×3 convolutions by Winograd's F(4×4, 3×3) and
// F(2×2, 3×3).
//
// Each m×m block of outputs ("tile") is Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A, where d
// is the (m+2)×(m+2) input patch under the tile and g the 3×3 filter (Lavin
// & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016). Summed
// over input channels, the (m+2)² elementwise products become as many
// independent GEMMs, U[ξ] (O × C) · V[ξ] (C × tiles): for m = 4, 36·2·O·C
// flops per 16 outputs instead of 16·18·O·C, a quarter of the
// multiplications; for m = 2, 16·2·O·C per 4 outputs, 1/2.25. F(2×2) has a
// cheaper filter transform (16 points against 36), so it pays on smaller
// images. ddp_winograd_tile.h holds the code for one m; it is included once
// per size below.
//
// The tiles are processed in blocks of whole tile rows. For one block a task
// transforms the input (V, vectorised across the tiles of a row), runs the 36
// GEMMs on the pre-packed U[ξ] (M = U·V) and transforms M back into the
// output rows, applying conv2d's fused epilogue as it stores them; V and M
// stay in the task's cache-sized scratch. A layer with too few tiles for a
// block per thread has its blocks shared instead: the threads split a block's
// input channels, then its output channels (winograd_by_channels).
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
// channels). F(2×2, 3×3)'s entries are 0, ±1 and ±1/2: it rounds about as
// the direct sum does.
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <stdlib.h>
#include <string.h>

/// Floats of V (or M) one block may take (4 MiB): the block's transformed
/// input and products stay in the caches between the transforms and the
/// GEMMs; measured, 1 MiB was 10-20% slower at 128 channels and 2 MiB
/// as much slower at 512.
#define BLOCK_BUDGET ((int64_t)1 << 20)
/// Fewest columns (tiles) a block's GEMMs get, whatever the budget: narrower
/// products waste the micro-kernel's 32-column panels and repack more.
#define BLOCK_MIN_COLUMNS 128
/// Most columns a block takes: a thin layer (16 channels at 128 px) fits
/// thousands of tiles in the budget, and the input transform's work rows
/// then outgrow the cache; 512 made its forward and input gradient 18%
/// faster and left the wide layers as they were (Zen 5, measured per layer).
/// WORK_CACHE_FLOATS below now caps blocks tighter still.
#define BLOCK_MAX_COLUMNS 512
/// Most floats of a block's V and M together (12 MiB), below
/// BLOCK_MIN_COLUMNS if need be: the widest layers (1024 + 256 channels at
/// 28 px, TransUNet's first decoder block) took 18 MiB a thread at 98
/// columns, more than the arena the planner could lend each thread there
/// (a 25 MB stretch between two), and each thread kept that much heap for
/// the rest of the process. Capped, they take 63 columns (2 whole panels).
/// The weight gradient's blocks obey it too, from the shape alone.
///
/// The forward and input-gradient blocks may take more where the call's
/// loan of spare arena gives each thread more (less LOAN_MARGIN_FLOATS for
/// the GEMM's packing): memory nothing holds then. Their results do not
/// depend on the blocks. Thin blocks stream every U[ξ] once per block, and
/// for the widest layers that, not the arithmetic, was the cost: ddep-1x's
/// first decoder block (1536 → 512 channels at 28 px, batch 4) took 85 ms
/// in its fine-tuning step with 35-tile blocks, and 60 ms with 98 (Zen 5,
/// 2 threads).
#define BLOCK_MOST_FLOATS ((int64_t)3 << 20)
#define LOAN_MARGIN_FLOATS ((int64_t)1 << 20)
/// Most floats of the input transform's phase arrays per block (32 KiB, in
/// the first-level cache), down to BLOCK_MIN_COLUMNS whatever the budgets
/// above allow; about 140 tiles at any width up to 128 px. Thin layers at 64
/// and 128 px (16 and 32 channels) took 500 tiles per block, their phase
/// arrays spilled, and this cap made their forward and input gradient 7-20%
/// faster; the wide layers did not move (Zen 5, per layer). Half of it
/// helped the 64-px layers more and hurt the 128-px ones; below
/// BLOCK_MIN_COLUMNS (one tile row at 224 px) it was 6% slower.
#define WORK_CACHE_FLOATS ((int64_t)8192)
/// Tiles per block of the weight gradient: the products' sums run over
/// them, so long blocks make long, efficient GEMMs, up to 1024 columns; but
/// a block's V and Ŷ (points × (C + O) × columns) stay within 4 MiB, down
/// to 128 columns, and the blocks of a layer are made equal. With 16 MiB
/// the transforms wrote past the caches and the GEMMs read it back: on
/// unet-r18's and TransUNet's decoder layers from 32 to 112 px it was 5-21%
/// slower, and 1.5% faster on one (768 channels at 14 px; Zen 5, per layer,
/// interleaved). Both from the shape alone (not the thread count), so dw is
/// the same on every machine.
#define WGRAD_BLOCK_COLUMNS 1024
#define WGRAD_MIN_COLUMNS 128
#define WGRAD_BLOCK_BUDGET ((int64_t)1 << 20)
/// Most rows a GEMM panel has (12 for AVX-512, 6 for AVX2): the filter
/// transform works on one panel of output channels at a time.
#define PANEL_LANES 16

typedef struct {
    // The convolution as the kernel computes it: x (N × C × H × W) to
    // y (N × O × OH × OW), 3×3, stride 1, padding ph, pw.
    int64_t n, c, h, w, o, oh, ow, ph, pw;
    int64_t th, tw;         // tile rows per image, tiles per tile row
    int64_t rows_per_block; // tile rows per block
    const float *x;
    float *y;
    const float *packed_u;  // U[ξ] (O × C), packed for the GEMM
    int64_t packed_floats;  // floats per packed U[ξ]
    ddp_conv_epilogue epilogue;
    ddp_conv_prologue prologue; // on x as each input row is loaded (forward and weight gradient)
    int failed;
} wino_job;

/// The filter transform's job: U[ξ] written into the GEMM's packed layout.
typedef struct {
    const float *w;
    int64_t outputs, inputs; // of the computed convolution
    int transposed;
    ddp_packed_a_layout layout;
    float *packed;
    int64_t packed_floats; // per ξ
} filter_job;

/// The weight gradient's job, one block of tile rows at a time.
typedef struct {
    wino_job geometry; // x, sizes, padding, tiles; o is dy's channels
    const float *dy;
    int64_t row0, rows, ld; // the block being transformed
    float *v, *dyt;         // its V[ξ] (C × ld) and Ŷ[ξ] (O × ld)
    float *du;              // Σ over blocks of Ŷ[ξ]·V[ξ]ᵀ: points × O × C
    float *dw;
    int failed;
} wgrad_job;

static void failed_task(int *failed) { __atomic_store_n(failed, 1, __ATOMIC_RELAXED); }

#ifdef __AVX512F__
#include <immintrin.h>

/// Lanes l of the 16 floats from `start` with 0 <= start + l < w, without a
/// branch (lanes [lo, hi) with both clamped to [0, 16]; none when hi <= lo).
static inline __mmask16 lanes_inside(int64_t start, int64_t w) {
    int64_t lo = -start, hi = w - start;
    lo = lo < 0 ? 0 : lo > 16 ? 16 : lo;
    hi = hi < 0 ? 0 : hi > 16 ? 16 : hi;
    return (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1));
}

/// Lanes l < n of 16.
static inline __mmask16 first_lanes(int64_t n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1); }

/// split_row for 4 phases, 16 tiles at a time: four masked loads (zero
/// outside the row: the padding) and eight two-source permutes. The loop
/// the compiler made of the scalar form moved 4 tiles per step with one
/// permute per phase, and the edge tiles one float at a time; it was half
/// of the input transform.
static void split_row_avx512_f4(const float *xrow, int64_t w, int64_t pw, int64_t span, float *p, int64_t stride) {
    const __m512i pick01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i pick23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    const __m512i low = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i high = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int64_t t0 = 0; t0 < span; t0 += 16) {
        int64_t start = 4 * t0 - pw;
        if (span - t0 == 1) { // the spare tile column alone (rows of 16·k tiles): four floats
            for (int q = 0; q < 4; q++) p[q * stride + t0] = start + q >= 0 && start + q < w ? xrow[start + q] : 0.0f;
            break;
        }
        __m512 a[4];
        for (int i = 0; i < 4; i++) {
            int64_t at = start + 16 * i;
            a[i] = _mm512_maskz_loadu_ps(lanes_inside(at, w), xrow + at); // masked lanes are not read
        }
        // b: phases 0|1 and 2|3 of tiles t0..t0+7; c: of tiles t0+8..t0+15.
        __m512 b01 = _mm512_permutex2var_ps(a[0], pick01, a[1]), b23 = _mm512_permutex2var_ps(a[0], pick23, a[1]);
        __m512 c01 = _mm512_permutex2var_ps(a[2], pick01, a[3]), c23 = _mm512_permutex2var_ps(a[2], pick23, a[3]);
        __m512 ph[4] = {_mm512_permutex2var_ps(b01, low, c01), _mm512_permutex2var_ps(b01, high, c01),
                        _mm512_permutex2var_ps(b23, low, c23), _mm512_permutex2var_ps(b23, high, c23)};
        if (span - t0 >= 16)
            for (int q = 0; q < 4; q++) _mm512_storeu_ps(p + q * stride + t0, ph[q]);
        else
            for (int q = 0; q < 4; q++) _mm512_mask_storeu_ps(p + q * stride + t0, first_lanes(span - t0), ph[q]);
    }
}

/// split_row for 2 phases, 16 tiles at a time.
static void split_row_avx512_f2(const float *xrow, int64_t w, int64_t pw, int64_t span, float *p, int64_t stride) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int64_t t0 = 0; t0 < span; t0 += 16) {
        int64_t start = 2 * t0 - pw;
        if (span - t0 == 1) { // the spare tile column alone: two floats
            for (int q = 0; q < 2; q++) p[q * stride + t0] = start + q >= 0 && start + q < w ? xrow[start + q] : 0.0f;
            break;
        }
        __m512 a0 = _mm512_maskz_loadu_ps(lanes_inside(start, w), xrow + start);
        __m512 a1 = _mm512_maskz_loadu_ps(lanes_inside(start + 16, w), xrow + start + 16);
        __mmask16 keep = first_lanes(span - t0);
        _mm512_mask_storeu_ps(p + t0, keep, _mm512_permutex2var_ps(a0, even, a1));
        _mm512_mask_storeu_ps(p + stride + t0, keep, _mm512_permutex2var_ps(a0, odd, a1));
    }
}

/// Transposes the 16×16 block in r[0..15] (row t becomes column t).
static inline void transpose_16x16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    // Each 128-bit lane now holds a 4×4 block transposed: lane L of r[4q + j]
    // is column 4L + j of rows 4q..4q+3. Moving the lanes finishes the job.
    for (int j = 0; j < 4; j++) {
        __m512 a = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), b = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
        __m512 c = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88), d = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
        t[j] = _mm512_shuffle_f32x4(a, c, 0x88);
        t[8 + j] = _mm512_shuffle_f32x4(a, c, 0xDD);
        t[4 + j] = _mm512_shuffle_f32x4(b, d, 0x88);
        t[12 + j] = _mm512_shuffle_f32x4(b, d, 0xDD);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}
#endif

/// Copies n < 16 floats: a short tile row into V. The loop the compiler
/// made of it moved one float at a time, and it was 8% of the input
/// transform on unet-r18's inference (tile rows of 2 to 8 tiles).
static inline void copy_short(float *dst, const float *src, int64_t n) {
#ifdef __AVX512F__
    __mmask16 lanes = first_lanes(n);
    _mm512_mask_storeu_ps(dst, lanes, _mm512_maskz_loadu_ps(lanes, src));
#else
    memcpy(dst, src, (size_t)n * sizeof(float));
#endif
}

/// x's row at `src` (w / f floats) repeated f times per element into out
/// (w floats): a nearest-neighbour upsampling of one row.
static inline void upsample_row(const float *restrict src, float *restrict out, int64_t w, int64_t f) {
    if (f == 2) {
        for (int64_t j = 0; j < w / 2; j++) out[2 * j] = out[2 * j + 1] = src[j];
        return;
    }
    for (int64_t j = 0; j < w; j++) out[j] = src[j / f];
}

/// Where row ih (inside the image) of input channel c of `image` is read
/// from, and how many floats: x's row; with a gathered input, a row of x
/// (an upsampled channel: w / fw floats; bilinear, the first of the two it
/// blends) or of skip.
static inline const float *source_row(const wino_job *job, int64_t image, int64_t c, int64_t ih, int64_t *floats) {
    const ddp_conv_prologue *p = &job->prologue;
    *floats = job->w;
    if (!p->gather) return job->x + ((image * job->c + c) * job->h + ih) * job->w;
    if (c >= p->upsampled) return p->skip + ((image * (job->c - p->upsampled) + c - p->upsampled) * job->h + ih) * job->w;
    *floats = job->w / p->fw;
    int64_t source = p->bilinear ? p->rows.i0[ih] : ih / p->fh;
    return job->x + ((image * p->upsampled + c) * (job->h / p->fh) + source) * *floats;
}

/// Row ih of an upsampled channel c, bilinear: x's two rows blended into
/// `blend` (w / fw floats), then interpolated along the row into out (w
/// floats). Blending first interpolates fw times fewer floats down the
/// column; the result differs from upsample_bilinear's (along the row
/// first) in rounding only.
static inline void bilinear_input_row(const wino_job *job, int64_t image, int64_t c, int64_t ih, float *restrict blend,
                                      float *restrict out) {
    const ddp_conv_prologue *p = &job->prologue;
    int64_t sw;
    const float *restrict r0 = source_row(job, image, c, ih, &sw), *restrict r1 = r0 + (p->rows.i1[ih] - p->rows.i0[ih]) * sw;
    float a0 = p->rows.l0[ih], a1 = p->rows.l1[ih];
    for (int64_t j = 0; j < sw; j++) blend[j] = a0 * r0[j] + a1 * r1[j];
    const ddp_linear_taps *t = &p->columns;
#ifdef __AVX512F__
    // 16 columns at a time: their taps lie in the 32 floats from the first
    // one's i0, two masked loads (nothing past the row read) and a
    // two-source permute per tap. With the scalar loop below, the
    // four gathered convolutions of TransUNet's inference took 8-12 ms more
    // than before, about what the upsampling they replace took; with this,
    // about 2 ms more.
    const int32_t *offsets0 = p->column_offsets, *offsets1 = offsets0 + job->w;
    for (int64_t j = 0; j < job->w; j += 16) {
        __mmask16 keep = first_lanes(job->w - j);
        int64_t base = t->i0[j];
        __m512 lo = _mm512_maskz_loadu_ps(lanes_inside(base, sw), blend + base);
        __m512 hi = _mm512_maskz_loadu_ps(lanes_inside(base + 16, sw), blend + base + 16);
        __m512 v0 = _mm512_permutex2var_ps(lo, _mm512_maskz_loadu_epi32(keep, offsets0 + j), hi);
        __m512 v1 = _mm512_permutex2var_ps(lo, _mm512_maskz_loadu_epi32(keep, offsets1 + j), hi);
        __m512 y = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(keep, t->l0 + j), v0, _mm512_mul_ps(_mm512_maskz_loadu_ps(keep, t->l1 + j), v1));
        _mm512_mask_storeu_ps(out + j, keep, y);
    }
#else
    for (int64_t j = 0; j < job->w; j++) out[j] = t->l0[j] * blend[t->i0[j]] + t->l1[j] * blend[t->i1[j]];
#endif
}

/// Floats input_row needs as work space: a row after the prologue, and a
/// bilinear gather's blended row.
static inline int64_t input_row_work_floats(const wino_job *job) {
    const ddp_conv_prologue *p = &job->prologue;
    return !p->active ? 0 : job->w + (p->bilinear ? job->w / p->fw : 0);
}

/// Row ih (inside the image) of input channel c as the convolution reads
/// it: x's row, or the row the prologue makes of its source in `work`
/// (input_row_work_floats).
static inline const float *input_row(const wino_job *job, int64_t image, int64_t c, int64_t ih, float *work) {
    const ddp_conv_prologue *p = &job->prologue;
    if (p->bilinear && c < p->upsampled) {
        bilinear_input_row(job, image, c, ih, work + job->w, work);
        return work;
    }
    int64_t floats;
    const float *row = source_row(job, image, c, ih, &floats);
    if (!p->active || (p->gather && floats == job->w)) return row; // (a skip row, or x's row upsampled only down)
    if (p->gather) {
        upsample_row(row, work, job->w, p->fw);
        return work;
    }
    ddp_conv_prologue_row(p, c, row, work, job->w);
    return work;
}

#define WT_TILE 4
#define WT(name) name##_f4
#include "ddp_winograd_tile.h"
#undef WT
#undef WT_TILE

#define WT_TILE 2
#define WT(name) name##_f2
#include "ddp_winograd_tile.h"
#undef WT
#undef WT_TILE

/// Whether the geometry is one these kernels compute (3×3, stride 1,
/// dilation 1, one group, padding at most 2) with a known tile size.
static int winograd_geometry(const int64_t *ia, int64_t tile) {
    return ia[5] == 3 && ia[6] == 3 && ia[9] == 1 && ia[10] == 1 && ia[13] == 1 && ia[14] == 1 && ia[15] == 1 &&
           ia[11] >= 0 && ia[11] <= 2 && ia[12] >= 0 && ia[12] <= 2 && ia[7] == ia[2] + 2 * ia[11] - 2 &&
           ia[8] == ia[3] + 2 * ia[12] - 2 && (tile == 2 || tile == 4);
}

/// conv2d_winograd, with the filters packed ahead for panels of `panel`
/// rows when it is above 0.
static int forward(void *const *bufs, const int64_t *ia, int panel) {
    if (!winograd_geometry(ia, ia[22]) || !ddp_conv_prologue_valid(ia + 23, ia[1], ia[2], ia[3])) return DDP_ERR_ARGS;
    ddp_conv_epilogue epilogue = ddp_conv_epilogue_read(bufs, ia + 16);
    wino_job job = {.n = ia[0], .c = ia[1], .h = ia[2], .w = ia[3], .o = ia[4], .oh = ia[7], .ow = ia[8],
                    .ph = ia[11], .pw = ia[12], .x = bufs[0], .y = bufs[2], .epilogue = epilogue,
                    .prologue = ddp_conv_prologue_read(bufs, 3 + epilogue.buffers, ia + 23, ia[1])}; // its buffers follow the epilogue's
    if (!ddp_conv_prologue_begin(&job.prologue, job.h, job.w)) return DDP_ERR_NOMEM;
    if (!ddp_conv_epilogue_begin_moments(&job.epilogue, job.n, job.o, job.oh, job.ow)) {
        ddp_conv_prologue_end(&job.prologue);
        return DDP_ERR_NOMEM;
    }
    int status = ia[22] == 4 ? winograd_f4(&job, bufs[1], 0, panel) : winograd_f2(&job, bufs[1], 0, panel);
    if (status == DDP_OK) ddp_conv_epilogue_end_moments(&job.epilogue, job.n, job.o, job.oh);
    ddp_conv_prologue_end(&job.prologue);
    return status;
}

int ddp_conv2d_winograd(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    return forward(bufs, ia, 0);
}

int ddp_conv2d_winograd_prepacked(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (ia[28] < 1 || ia[28] > PANEL_LANES) return DDP_ERR_ARGS;
    return forward(bufs, ia, (int)ia[28]);
}

int ddp_winograd_filters(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    int64_t o = ia[0], c = ia[1], tile = ia[2], panel = ia[3];
    if ((tile != 2 && tile != 4) || panel < 1 || panel > PANEL_LANES || o < 0 || c < 0) return DDP_ERR_ARGS;
    if (o > 0 && c > 0) (tile == 4 ? pack_filters_f4 : pack_filters_f2)(bufs[0], o, c, (int)panel, bufs[1]);
    return DDP_OK;
}

/// dx of `images` images from dy: conv(dy, rot180(w)ᵀ) with padding 2 - p,
/// from O channels to C, then the epilogue.
static int grad_input_images(void *const *bufs, const int64_t *ia, int64_t images, const float *dy, float *dx) {
    wino_job job = {.n = images, .c = ia[4], .h = ia[7], .w = ia[8], .o = ia[1], .oh = ia[2], .ow = ia[3],
                    .ph = 2 - ia[11], .pw = 2 - ia[12], .x = dy, .y = dx,
                    .epilogue = ddp_conv_epilogue_read(bufs, ia + 16)};
    if (job.epilogue.moments) return DDP_ERR_ARGS; // the moments of a gradient are nobody's statistics
    return ia[22] == 4 ? winograd_f4(&job, bufs[1], 1, 0) : winograd_f2(&job, bufs[1], 1, 0);
}

/// The input gradient of a convolution that gathered its input (flags
/// [kind, align, fh, fw, upsampled] as its forward's, no skip, then the
/// images per group): the gradient wrt x, a group of images at a time. The
/// group's gradient wrt the upsampled input (C × H × W an image) goes to a
/// block at the end of the call's weights scratch, and the upsampling's
/// gradient takes it back to x's size in dx: the full-size gradient of the
/// batch is never held where an image has tiles enough to keep the threads
/// busy alone.
static int grad_input_gathered(void *const *bufs, const int64_t *ia) {
    const int64_t *flags = ia + 23;
    int64_t n = ia[0], c = ia[1], h = ia[2], w = ia[3], o = ia[4], oh = ia[7], ow = ia[8], group = ia[28];
    if (!ddp_conv_prologue_valid(flags, c, h, w) || flags[0] < 2 || flags[4] != c || (flags[0] == 2 && flags[1] != 0) ||
        group < 1)
        return DDP_ERR_ARGS;
    for (int k = 16; k < 22; k++)
        if (ia[k] != 0) return DDP_ERR_ARGS; // an epilogue would act on the upsampled gradient, which no buffer holds
    int64_t fh = flags[2], fw = flags[3];
    if (group > n) group = n;
    size_t image = (size_t)(c * h * w);
    if (n == 0 || image == 0) return DDP_OK;
    float *owned = NULL, *block = ddp_lent_scratch_tail(image * (size_t)group);
    if (block == NULL && (block = owned = aligned_alloc(64, (image * (size_t)group * sizeof(float) + 63) & ~(size_t)63)) == NULL)
        return DDP_ERR_NOMEM;
    int status = DDP_OK;
    for (int64_t i = 0; i < n && status == DDP_OK; i += group) {
        int64_t images = n - i < group ? n - i : group;
        const float *dy = (const float *)bufs[0] + i * o * oh * ow;
        float *dx = (float *)bufs[2] + i * c * (h / fh) * (w / fw);
        status = grad_input_images(bufs, ia, images, dy, block);
        int64_t upsample_ia[7] = {images, c, h / fh, w / fw, h, w, flags[1]};
        void *upsample_bufs[2] = {block, dx};
        if (status == DDP_OK)
            status = flags[0] == 3 ? ddp_upsample_bilinear_grad(upsample_bufs, upsample_ia, NULL)
                                   : ddp_upsample_nearest_grad(upsample_bufs, upsample_ia, NULL);
    }
    free(owned);
    return status;
}

int ddp_conv2d_grad_input_winograd(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (!winograd_geometry(ia, ia[22])) return DDP_ERR_ARGS;
    if (ia[23] != 0) return grad_input_gathered(bufs, ia);
    return grad_input_images(bufs, ia, ia[0], bufs[0], bufs[2]);
}

int ddp_conv2d_grad_weight_winograd(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (!winograd_geometry(ia, ia[16]) || !ddp_conv_prologue_valid(ia + 17, ia[1], ia[2], ia[3])) return DDP_ERR_ARGS;
    wgrad_job job = {.geometry = {.n = ia[0], .c = ia[1], .h = ia[2], .w = ia[3], .o = ia[4], .oh = ia[7], .ow = ia[8],
                                  .ph = ia[11], .pw = ia[12], .x = bufs[0],
                                  .prologue = ddp_conv_prologue_read(bufs, 3, ia + 17, ia[1])},
                     .dy = bufs[1], .dw = bufs[2]};
    int64_t plane = ia[4] * ia[1];
    if (plane == 0) return DDP_OK;
    if (ia[0] * ia[7] * ia[8] == 0) {
        memset(job.dw, 0, (size_t)(plane * 9) * sizeof(float));
        return DDP_OK;
    }
    if (!ddp_conv_prologue_begin(&job.geometry.prologue, job.geometry.h, job.geometry.w)) return DDP_ERR_NOMEM;
    int status = ia[16] == 4 ? grad_weight_f4(&job) : grad_weight_f2(&job);
    ddp_conv_prologue_end(&job.geometry.prologue);
    return status;
}
