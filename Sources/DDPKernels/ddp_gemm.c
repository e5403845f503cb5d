// ddp_gemm.c — single-precision GEMM with register-tiled micro-kernels for
// the widest vector ISA the machine has (AVX-512 or AVX2+FMA, chosen at run
// time from cpuid), on the runtime thread pool.
//
// Why not OpenBLAS everywhere: the system OpenBLAS is held to its AVX2 kernels
// on every machine of this kind (OPENBLAS_CORETYPE=Haswell), which is half the
// FMA width of an AVX-512 core, and its own threads fight ours on the many
// small per-image products a convolution makes. The AVX2 path here is the
// same algorithm at half width, so both ISAs are tested on an AVX-512 machine
// (DDEPC_ISA=avx2 forces it).
//
// The algorithm is the one BLIS and OpenBLAS use (Goto's): C is computed in
// NC-column slabs; for each KC-deep slice of the sum, a KC×NC block of op(B)
// is packed into NR-column panels and an MC×KC block of op(A) into MR-row
// panels, and an MR×NR micro-kernel keeps its whole tile of C in registers
// while it streams the two panels. Packing absorbs both transposes and the
// zero padding of ragged edges.
//
// Threads split C into contiguous column (or row) ranges of whole panels;
// every element of C is summed by one thread in the same order whatever the
// thread count, so results do not depend on it.
#define _POSIX_C_SOURCE 200809L // clock_gettime under -std=c11

#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define KC 256

/// Computes rows [0, rows) × columns [0, cols) of one MR×NR tile of C (the
/// rest of the packed panels is zero padding), writing C in place. Row k of
/// the B panel is ldb floats after row k - 1 (NR when packed).
typedef void (*micro_kernel)(int64_t kc, const float *restrict a, const float *restrict b, int64_t ldb,
                             float *restrict c, int64_t ldc, int accumulate, int rows, int cols);

typedef struct {
    const char *name;
    int mr, nr;     // micro-tile
    int64_t mc, nc; // cache blocks (multiples of mr and nr)
    micro_kernel kernel;
} gemm_isa;

// MARK: - Micro-kernels
//
// One body per ISA, instantiated for every row count so that the edge tiles
// of a thin product (16 output channels are 12 + 4 rows) run only their own
// rows at full speed instead of a padded full tile copied out of a buffer.
// Ragged columns are masked loads and stores.

// c[r][j] (+)= Σ_k a[k·MR + r] · b[k·NR + j]: rows of broadcasts times two
// vectors of B, 2·rows accumulators (at most 24 of the 32 zmm registers).
// A panel of at most half the columns (`vectors` = 1: a ragged last panel
// of 9 to 16 columns) runs the first vector alone: the same sums for the
// columns it stores, in about 60% of the full tile's time (one FMA per
// broadcast instead of two).
__attribute__((target("avx512f"), always_inline)) static inline void
tile_avx512(const int rows, const int vectors, int64_t kc, const float *restrict a, const float *restrict b, int64_t ldb,
            float *restrict c, int64_t ldc, int accumulate, int cols) {
    enum { MR = 12 };
    __m512 acc0[MR], acc1[MR];
    for (int r = 0; r < rows; r++) {
        acc0[r] = acc1[r] = _mm512_setzero_ps();
        // The tile of C is read (or written) after the sum: fetch it while
        // the sum runs. A C larger than the caches (784×3072 in TransUNet's
        // MLP) otherwise stalls every tile on its rows' misses.
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + r * ldc + 16), _MM_HINT_T0);
    }
    // Unrolled four steps of the sum: on an Intel Xeon (AVX-512, family 6
    // model 207) products of TransUNet's projection shapes ran 4–10% faster,
    // interleaved with the loop as it was in one process. The FMAs per
    // accumulator keep their order, so the results keep their bits.
#pragma clang loop unroll_count(4)
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = vectors == 2 ? _mm512_loadu_ps(b + 16) : b0;
        for (int r = 0; r < rows; r++) {
            __m512 av = _mm512_set1_ps(a[r]);
            acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
            if (vectors == 2) acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
        }
        a += MR;
        b += ldb;
    }
    __mmask16 m0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xFFFF : cols > 16 ? (__mmask16)((1u << (cols - 16)) - 1) : 0;
    for (int r = 0; r < rows; r++) {
        float *cr = c + r * ldc;
        if (accumulate) acc0[r] = _mm512_add_ps(acc0[r], _mm512_maskz_loadu_ps(m0, cr));
        _mm512_mask_storeu_ps(cr, m0, acc0[r]);
        if (vectors == 2) {
            if (accumulate) acc1[r] = _mm512_add_ps(acc1[r], _mm512_maskz_loadu_ps(m1, cr + 16));
            _mm512_mask_storeu_ps(cr + 16, m1, acc1[r]);
        }
    }
}

/// Columns at most which a ragged panel is computed across its rows
/// (tile_avx512_across) instead of across its columns.
#define ACROSS_MOST_COLS 8

/// Stores (or adds) the sums of a panel computed across its rows: element
/// (r, j) is sums[j·lanes + r].
static inline void store_across(const float *sums, int lanes, int rows, int cols, float *restrict c, int64_t ldc,
                                int accumulate) {
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) c[r * ldc + j] = accumulate ? sums[j * lanes + r] + c[r * ldc + j] : sums[j * lanes + r];
}

// A ragged panel of a few columns (a Winograd block of 98 tiles ends in a
// panel of 2): the vectors run down the MR rows of the A panel instead of
// along B's row, one accumulator per column, so each step of the sum is one
// load of A and `cols` broadcasts of B instead of MR broadcasts of A with
// most of every vector wasted. Each c[r][j] is the same chain of FMAs over
// k as in tile_avx512, so the results are the same bits.
__attribute__((target("avx512f"), always_inline)) static inline void
tile_avx512_across(const int cols, int64_t kc, const float *restrict a, const float *restrict b, int64_t ldb,
                   float *restrict c, int64_t ldc, int accumulate, int rows) {
    enum { MR = 12 };
    __m512 acc[ACROSS_MOST_COLS];
    for (int j = 0; j < cols; j++) acc[j] = _mm512_setzero_ps();
    const __mmask16 panel = (1u << MR) - 1;
    for (int64_t k = 0; k < kc; k++) {
        __m512 av = _mm512_maskz_loadu_ps(panel, a);
        for (int j = 0; j < cols; j++) acc[j] = _mm512_fmadd_ps(av, _mm512_set1_ps(b[j]), acc[j]);
        a += MR;
        b += ldb;
    }
    float sums[ACROSS_MOST_COLS][16] __attribute__((aligned(64)));
    for (int j = 0; j < cols; j++) _mm512_store_ps(sums[j], acc[j]);
    store_across(sums[0], 16, rows, cols, c, ldc, accumulate);
}

__attribute__((target("avx512f"))) static void
kernel_avx512_12x32(int64_t kc, const float *restrict a, const float *restrict b, int64_t ldb, float *restrict c,
                    int64_t ldc, int accumulate, int rows, int cols) {
    if (cols <= ACROSS_MOST_COLS) {
        switch (cols) {
#define COLS(n) case n: tile_avx512_across(n, kc, a, b, ldb, c, ldc, accumulate, rows); break;
            COLS(1) COLS(2) COLS(3) COLS(4) COLS(5) COLS(6) COLS(7) COLS(8)
#undef COLS
        }
        return;
    }
    if (cols <= 16) {
        switch (rows) {
#define ROWS(n) case n: tile_avx512(n, 1, kc, a, b, ldb, c, ldc, accumulate, cols); break;
            ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8) ROWS(9) ROWS(10) ROWS(11) ROWS(12)
#undef ROWS
        }
        return;
    }
    switch (rows) {
#define ROWS(n) case n: tile_avx512(n, 2, kc, a, b, ldb, c, ldc, accumulate, cols); break;
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6) ROWS(7) ROWS(8) ROWS(9) ROWS(10) ROWS(11) ROWS(12)
#undef ROWS
    }
}

// The AVX2 counterpart: rows × 2 ymm vectors, at most 12 of the 16 ymm
// registers; a panel of at most 8 columns runs the first vector alone.
__attribute__((target("avx2,fma"), always_inline)) static inline void
tile_avx2(const int rows, const int vectors, int64_t kc, const float *restrict a, const float *restrict b, int64_t ldb,
          float *restrict c, int64_t ldc, int accumulate, int cols) {
    enum { MR = 6 };
    __m256 acc0[MR], acc1[MR];
    for (int r = 0; r < rows; r++) acc0[r] = acc1[r] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = vectors == 2 ? _mm256_loadu_ps(b + 8) : b0;
        for (int r = 0; r < rows; r++) {
            __m256 av = _mm256_broadcast_ss(a + r);
            acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
            if (vectors == 2) acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
        }
        a += MR;
        b += ldb;
    }
    if (cols == 16) {
        for (int r = 0; r < rows; r++) {
            float *cr = c + r * ldc;
            if (accumulate) {
                acc0[r] = _mm256_add_ps(acc0[r], _mm256_loadu_ps(cr));
                acc1[r] = _mm256_add_ps(acc1[r], _mm256_loadu_ps(cr + 8));
            }
            _mm256_storeu_ps(cr, acc0[r]);
            _mm256_storeu_ps(cr + 8, acc1[r]);
        }
        return;
    }
    __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), lane);
    __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols - 8), lane);
    for (int r = 0; r < rows; r++) {
        float *cr = c + r * ldc;
        if (accumulate) acc0[r] = _mm256_add_ps(acc0[r], _mm256_maskload_ps(cr, m0));
        _mm256_maskstore_ps(cr, m0, acc0[r]);
        if (vectors == 2) {
            if (accumulate) acc1[r] = _mm256_add_ps(acc1[r], _mm256_maskload_ps(cr + 8, m1));
            _mm256_maskstore_ps(cr + 8, m1, acc1[r]);
        }
    }
}

/// The AVX2 counterpart of tile_avx512_across, for panels of at most 4 columns.
#define ACROSS_MOST_COLS_AVX2 4

__attribute__((target("avx2,fma"), always_inline)) static inline void
tile_avx2_across(const int cols, int64_t kc, const float *restrict a, const float *restrict b, int64_t ldb,
                 float *restrict c, int64_t ldc, int accumulate, int rows) {
    enum { MR = 6 };
    __m256 acc[ACROSS_MOST_COLS_AVX2];
    for (int j = 0; j < cols; j++) acc[j] = _mm256_setzero_ps();
    const __m256i panel = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, 0, 0);
    for (int64_t k = 0; k < kc; k++) {
        __m256 av = _mm256_maskload_ps(a, panel);
        for (int j = 0; j < cols; j++) acc[j] = _mm256_fmadd_ps(av, _mm256_broadcast_ss(b + j), acc[j]);
        a += MR;
        b += ldb;
    }
    float sums[ACROSS_MOST_COLS_AVX2][8] __attribute__((aligned(32)));
    for (int j = 0; j < cols; j++) _mm256_store_ps(sums[j], acc[j]);
    store_across(sums[0], 8, rows, cols, c, ldc, accumulate);
}

__attribute__((target("avx2,fma"))) static void
kernel_avx2_6x16(int64_t kc, const float *restrict a, const float *restrict b, int64_t ldb, float *restrict c,
                 int64_t ldc, int accumulate, int rows, int cols) {
    if (cols <= ACROSS_MOST_COLS_AVX2) {
        switch (cols) {
#define COLS(n) case n: tile_avx2_across(n, kc, a, b, ldb, c, ldc, accumulate, rows); break;
            COLS(1) COLS(2) COLS(3) COLS(4)
#undef COLS
        }
        return;
    }
    if (cols <= 8) {
        switch (rows) {
#define ROWS(n) case n: tile_avx2(n, 1, kc, a, b, ldb, c, ldc, accumulate, cols); break;
            ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6)
#undef ROWS
        }
        return;
    }
    switch (rows) {
#define ROWS(n) case n: tile_avx2(n, 2, kc, a, b, ldb, c, ldc, accumulate, cols); break;
        ROWS(1) ROWS(2) ROWS(3) ROWS(4) ROWS(5) ROWS(6)
#undef ROWS
    }
}

static const gemm_isa isa_avx512 = {"avx512", 12, 32, 12 * 16, 32 * 128, kernel_avx512_12x32};
static const gemm_isa isa_avx2 = {"avx2", 6, 16, 6 * 24, 16 * 192, kernel_avx2_6x16};

static const gemm_isa *chosen;

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/// The widest ISA this CPU runs, unless DDEPC_ISA=avx2 asks for the narrower.
static const gemm_isa *chosen_isa(void) {
    if (chosen == NULL) {
        const char *forced = getenv("DDEPC_ISA");
        int narrow = forced != NULL && strcmp(forced, "avx2") == 0;
        chosen = (!narrow && cpu_has_avx512()) ? &isa_avx512 : &isa_avx2;
    }
    return chosen;
}

int ddp_set_isa(const char *name) {
    if (name == NULL || strcmp(name, "native") == 0) {
        chosen = cpu_has_avx512() ? &isa_avx512 : &isa_avx2;
        return 1;
    }
    if (strcmp(name, "avx2") == 0) chosen = &isa_avx2;
    else if (strcmp(name, "avx512") == 0 && cpu_has_avx512()) chosen = &isa_avx512;
    else return 0;
    return 1;
}

const char *ddp_gemm_isa(void) { return chosen_isa()->name; }

const char *ddp_cpu_isa(void) { return cpu_has_avx512() ? isa_avx512.name : isa_avx2.name; }

// MARK: - Packing

/// A general strided matrix view: element (i, j) is at p[i·rs + j·cs].
typedef struct {
    const float *p;
    int64_t rs, cs;
} view;

/// Transposes the 8×8 block in r[0..7] (row t becomes column t).
__attribute__((target("avx2"))) static inline void transpose_8x8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/// One panel of a transposed B (element (k, j) at base[k + j·cs], each
/// column contiguous along k), as in pack_b: 8×8 blocks are transposed in
/// registers, so each column is read and each panel row written 8 floats at
/// a time. This is the weight gradient's operand (the columns of im2col),
/// whose element-wise transposition cost more than the product itself when
/// a layer has few output channels.
__attribute__((target("avx2"))) static void pack_b_transposed_panel(const float *base, int64_t cs, int64_t kc,
                                                                    int64_t cols, int nr, float *restrict out) {
    int64_t j = 0;
    for (; j + 8 <= cols; j += 8) {
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) {
            __m256 r[8];
            for (int t = 0; t < 8; t++) r[t] = _mm256_loadu_ps(base + (j + t) * cs + k);
            transpose_8x8(r);
            for (int t = 0; t < 8; t++) _mm256_storeu_ps(out + (k + t) * nr + j, r[t]);
        }
        for (; k < kc; k++)
            for (int t = 0; t < 8; t++) out[k * nr + j + t] = base[(j + t) * cs + k];
    }
    for (; j < cols; j++)
        for (int64_t k = 0; k < kc; k++) out[k * nr + j] = base[j * cs + k];
    for (; j < nr; j++)
        for (int64_t k = 0; k < kc; k++) out[k * nr + j] = 0.0f;
}

/// One panel of an A stored by rows (element (r, k) at base[r·rs + k]), as
/// in pack_a: blocks of 8 rows × 8 columns are transposed in registers, so
/// each row is read and each panel column written 8 floats at a time. These
/// are a convolution's weights (output channels × C·KH·KW); gathered one
/// element at a time, their packing took a fifth of a deep layer's forward
/// convolution. Lanes past `rows` are zero.
__attribute__((target("avx2"))) static void pack_a_rows_panel(const float *base, int64_t rs, int64_t kc, int rows, int mr,
                                                              float *restrict out) {
    for (int r0 = 0; r0 < mr; r0 += 8) {
        int width = mr - r0 < 8 ? mr - r0 : 8; // the panel's lanes this block fills
        int real = rows - r0 < width ? rows - r0 : width;
        if (real <= 0) {
            for (int64_t k = 0; k < kc; k++)
                for (int l = 0; l < width; l++) out[k * mr + r0 + l] = 0.0f;
            continue;
        }
        const float *row[8];
        for (int t = 0; t < 8; t++) row[t] = base + (r0 + (t < real ? t : real - 1)) * rs; // lanes past real are dropped
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) {
            __m256 r[8];
            for (int t = 0; t < 8; t++) r[t] = _mm256_loadu_ps(row[t] + k);
            transpose_8x8(r); // r[t]: column k + t, one lane per row
            for (int t = 0; t < 8; t++) {
                float *dst = out + (k + t) * mr + r0;
                if (real == 8) {
                    _mm256_storeu_ps(dst, r[t]);
                } else if (real == 4 && width == 4) {
                    _mm_storeu_ps(dst, _mm256_castps256_ps128(r[t]));
                } else {
                    float lanes[8];
                    _mm256_storeu_ps(lanes, r[t]);
                    for (int l = 0; l < width; l++) dst[l] = l < real ? lanes[l] : 0.0f;
                }
            }
        }
        for (; k < kc; k++)
            for (int l = 0; l < width; l++) out[k * mr + r0 + l] = l < real ? row[l][k] : 0.0f;
    }
}

/// Rows [i0, i0+mc) × columns [k0, k0+kc) of A, as ⌈mc/MR⌉ panels of kc·MR
/// floats, each column of a panel contiguous; rows past mc are zero. The
/// writes are sequential whichever way A is stored.
static void pack_a(view a, int64_t i0, int64_t mc, int64_t k0, int64_t kc, int mr, float *restrict out) {
    for (int64_t ip = 0; ip < mc; ip += mr) {
        int64_t rows = mc - ip < mr ? mc - ip : mr;
        const float *base = a.p + (i0 + ip) * a.rs + k0 * a.cs;
        if (a.rs == 1 && rows == mr) {
            for (int64_t k = 0; k < kc; k++) {
                const float *src = base + k * a.cs;
                for (int r = 0; r < mr; r++) out[k * mr + r] = src[r];
            }
        } else if (a.cs == 1) {
            pack_a_rows_panel(base, a.rs, kc, (int)rows, mr, out);
        } else {
            const float *row[32];
            for (int64_t r = 0; r < rows; r++) row[r] = base + r * a.rs;
            for (int64_t k = 0; k < kc; k++) {
                float *dst = out + k * mr;
                int64_t r = 0;
                for (; r < rows; r++) dst[r] = row[r][k * a.cs];
                for (; r < mr; r++) dst[r] = 0.0f;
            }
        }
        out += kc * mr;
    }
}

/// Rows [k0, k0+kc) × columns [j0, j0+nc) of B, as ⌈nc/NR⌉ panels of kc·NR
/// floats, each row of a panel contiguous; columns past nc are zero.
static void pack_b(view b, int64_t k0, int64_t kc, int64_t j0, int64_t nc, int nr, float *restrict out) {
    for (int64_t jp = 0; jp < nc; jp += nr) {
        int64_t cols = nc - jp < nr ? nc - jp : nr;
        const float *base = b.p + k0 * b.rs + (j0 + jp) * b.cs;
        if (b.cs == 1 && cols == nr) {
            // A panel row is 64 or 128 bytes: copied inline, not by a memcpy call.
            for (int64_t k = 0; k < kc; k++) {
                const float *src = base + k * b.rs;
                if (nr == 32)
                    __builtin_memcpy_inline(out + k * nr, src, 32 * sizeof(float));
                else if (nr == 16)
                    __builtin_memcpy_inline(out + k * nr, src, 16 * sizeof(float));
                else
                    for (int j = 0; j < nr; j++) out[k * nr + j] = src[j];
            }
        } else if (b.cs == 1) {
            for (int64_t k = 0; k < kc; k++) {
                const float *src = base + k * b.rs;
                float *dst = out + k * nr;
                int64_t j = 0;
                for (; j < cols; j++) dst[j] = src[j];
                for (; j < nr; j++) dst[j] = 0.0f;
            }
        } else if (b.rs == 1) {
            pack_b_transposed_panel(base, b.cs, kc, cols, nr, out);
        } else {
            for (int64_t j = 0; j < cols; j++) {
                const float *src = base + j * b.cs;
                for (int64_t k = 0; k < kc; k++) out[k * nr + j] = src[k * b.rs];
            }
            for (int64_t j = cols; j < nr; j++)
                for (int64_t k = 0; k < kc; k++) out[k * nr + j] = 0.0f;
        }
        out += kc * nr;
    }
}

int64_t ddp_gemm_pack_floats(int64_t n, int64_t k) {
    const gemm_isa *isa = chosen_isa();
    int64_t kc_most = k < KC ? k : KC, b_cols = n < isa->nc ? (n + isa->nr - 1) / isa->nr * isa->nr : isa->nc;
    return kc_most * b_cols; // as gemm_block asks, with A packed (no rows of A)
}

// MARK: - Serial GEMM on one thread's part of C

typedef struct {
    const gemm_isa *isa;
    view a, b;       // op(A) m×k, op(B) k×n
    float *c;        // element (i, j) at c[i·rs + j·cs]
    int64_t rs, cs;
    int64_t m, n, k;
    const float *apacked; // op(A) already packed (ddp_gemm_pack_a), or NULL
    int64_t mpad;         // m rounded up to whole panels
    int accumulate;  // add to C instead of overwriting it
    int split_rows;  // threads split the rows of C instead of its columns
    int direct_b;    // the micro-kernel reads B's rows where they are (see direct_b)
    int failed;
} gemm_problem;

/// C[i0:i1, j0:j1] (+)= op(A)[i0:i1, :] · op(B)[:, j0:j1].
static int gemm_block(const gemm_problem *g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    const gemm_isa *isa = g->isa;
    const int mr = isa->mr, nr = isa->nr;
    // Packing space for this block's panels only (at most mc rows, nc
    // columns, KC deep): a small product borrows little of a scratch loan.
    int64_t kc_most = g->k < KC ? g->k : KC;
    int64_t a_rows = g->apacked != NULL ? 0 : i1 - i0 < isa->mc ? (i1 - i0 + mr - 1) / mr * mr : isa->mc;
    int64_t b_cols = j1 - j0 < isa->nc ? (j1 - j0 + nr - 1) / nr * nr : isa->nc;
    int64_t a_floats = (a_rows * kc_most + 15) & ~(int64_t)15; // B's panels start on a cache line
    float *packed = ddp_thread_scratch(DDP_SCRATCH_GEMM_PACK, (size_t)(a_floats + kc_most * b_cols));
    if (packed == NULL) return 0;
    float *apack = packed, *bpack = packed + a_floats;
    float tile[12 * 32] __attribute__((aligned(64)));
    int direct = g->cs == 1; // the micro-kernel writes rows of C in place

    for (int64_t jc = j0; jc < j1; jc += isa->nc) {
        int64_t nc = j1 - jc < isa->nc ? j1 - jc : isa->nc;
        // Whole panels of a B read in place (see direct_b); a ragged last
        // panel is still packed, with its zero padding.
        int64_t direct_cols = g->direct_b ? nc / nr * nr : 0;
        for (int64_t pc = 0; pc < g->k; pc += KC) {
            int64_t kc = g->k - pc < KC ? g->k - pc : KC;
            int accumulate = g->accumulate || pc > 0;
            if (direct_cols < nc) pack_b(g->b, pc, kc, jc + direct_cols, nc - direct_cols, nr, bpack);
            for (int64_t ic = i0; ic < i1; ic += isa->mc) {
                int64_t mc = i1 - ic < isa->mc ? i1 - ic : isa->mc;
                const float *ablock = apack;
                if (g->apacked != NULL)
                    ablock = g->apacked + pc * g->mpad + ic * kc;
                else
                    pack_a(g->a, ic, mc, pc, kc, mr, apack);
                for (int64_t jr = 0; jr < nc; jr += nr) {
                    int64_t cols = nc - jr < nr ? nc - jr : nr;
                    int in_place = jr < direct_cols;
                    const float *bp = in_place ? g->b.p + pc * g->b.rs + jc + jr : bpack + (jr - direct_cols) * kc;
                    int64_t ldb = in_place ? g->b.rs : nr;
                    for (int64_t ir = 0; ir < mc; ir += mr) {
                        int64_t rows = mc - ir < mr ? mc - ir : mr;
                        float *ct = g->c + (ic + ir) * g->rs + (jc + jr) * g->cs;
                        const float *ap = ablock + ir * kc;
                        if (direct) {
                            isa->kernel(kc, ap, bp, ldb, ct, g->rs, accumulate, (int)rows, (int)cols);
                            continue;
                        }
                        isa->kernel(kc, ap, bp, ldb, tile, nr, 0, mr, nr);
                        for (int64_t r = 0; r < rows; r++)
                            for (int64_t j = 0; j < cols; j++) {
                                float *e = ct + r * g->rs + j * g->cs;
                                *e = accumulate ? *e + tile[r * nr + j] : tile[r * nr + j];
                            }
                    }
                }
            }
        }
    }
    return 1;
}

static void gemm_task(void *arg, int64_t begin, int64_t end) {
    gemm_problem *g = arg;
    int64_t unit = g->split_rows ? g->isa->mr : g->isa->nr;
    int64_t extent = g->split_rows ? g->m : g->n;
    int64_t lo = begin * unit, hi = end * unit < extent ? end * unit : extent;
    int ok = g->split_rows ? gemm_block(g, lo, hi, 0, g->n) : gemm_block(g, 0, g->m, lo, hi);
    if (!ok) __atomic_store_n(&g->failed, 1, __ATOMIC_RELAXED);
}

// MARK: - Entry point

/// Products below this many multiply-adds run on the calling thread: waking
/// the pool would cost more than it saves.
#define PARALLEL_MIN_MACS ((int64_t)1 << 18)

/// Splits C between the pool's threads (or not, for small products) and runs.
static int gemm_run(gemm_problem *g) {
    const gemm_isa *isa = g->isa;
    int64_t row_panels = (g->m + isa->mr - 1) / isa->mr, col_panels = (g->n + isa->nr - 1) / isa->nr;
    // A prepacked A is laid out by panels of rows: split columns to keep it whole.
    g->split_rows = g->apacked == NULL && row_panels > col_panels;
    int64_t tasks = g->split_rows ? row_panels : col_panels;
    if (tasks == 1 || g->m * g->n * g->k < PARALLEL_MIN_MACS)
        g->failed = !gemm_block(g, 0, g->m, 0, g->n);
    else
        ddp_parallel_for(tasks, gemm_task, g);
    return !g->failed;
}

/// C = beta·C for beta other than 0 and 1, and C = beta·C alone for an empty
/// sum; returns whether a product remains to be added.
static int gemm_prepare_c(int64_t m, int64_t n, int64_t k, float beta, float *c, int64_t ldc) {
    if (m <= 0 || n <= 0) return 0;
    if (beta != 0.0f && beta != 1.0f)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) c[i * ldc + j] *= beta;
    if (k <= 0) {
        if (beta == 0.0f)
            for (int64_t i = 0; i < m; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return 0;
    }
    return 1;
}

// MARK: - Thin, deep products of rows

/// c[i][j] (+)= Σ_p a[i·lda + p] · b[j·ldb + p] for a block of at most 4×4
/// elements: each a dot product of two contiguous rows, 16 lanes of p at a
/// time (16 accumulators), the lanes then summed in a fixed order. Rows and
/// columns past the block's own repeat its last one and are not stored.
__attribute__((target("avx512f"))) static void dot_block_avx512(const float *a, int64_t lda, const float *b, int64_t ldb,
                                                                int64_t k, int rows, int cols, float *c, int64_t ldc,
                                                                int accumulate) {
    const float *ar[4], *br[4];
    for (int i = 0; i < 4; i++) ar[i] = a + (i < rows ? i : rows - 1) * lda;
    for (int j = 0; j < 4; j++) br[j] = b + (j < cols ? j : cols - 1) * ldb;
    __m512 acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t p = 0; p < k; p += 16) {
        __mmask16 mask = k - p >= 16 ? 0xFFFF : (__mmask16)((1u << (k - p)) - 1);
        __m512 av[4], bv[4];
        for (int i = 0; i < 4; i++) av[i] = _mm512_maskz_loadu_ps(mask, ar[i] + p);
        for (int j = 0; j < 4; j++) bv[j] = _mm512_maskz_loadu_ps(mask, br[j] + p);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) acc[i][j] = _mm512_fmadd_ps(av[i], bv[j], acc[i][j]);
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float sum = _mm512_reduce_add_ps(acc[i][j]);
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + sum : sum;
        }
}

typedef struct {
    const float *a, *b;
    float *c;
    int64_t lda, ldb, ldc, m, n, k;
    int accumulate;
} dot_job;

/// Row blocks [begin, end) of C (4 rows each), every column.
static void dot_rows(void *arg, int64_t begin, int64_t end) {
    const dot_job *job = arg;
    for (int64_t i0 = 4 * begin; i0 < 4 * end && i0 < job->m; i0 += 4) {
        int rows = job->m - i0 < 4 ? (int)(job->m - i0) : 4;
        for (int64_t j0 = 0; j0 < job->n; j0 += 4) {
            int cols = job->n - j0 < 4 ? (int)(job->n - j0) : 4;
            dot_block_avx512(job->a + i0 * job->lda, job->lda, job->b + j0 * job->ldb, job->ldb, job->k, rows, cols,
                             job->c + i0 * job->ldc + j0, job->ldc, job->accumulate);
        }
    }
}

/// The products dot_rows takes: A·Bᵀ with both stored by rows along the sum,
/// at most 16 × 32 and at least 128 deep. A Winograd point's weight gradient
/// in a 16-channel layer is 16×16 summed over 1024 tiles: it filled a 12×32
/// micro-tile a third and packed both operands for each product.
#define DOT_MAX_ROWS 16
#define DOT_MAX_COLS 32
#define DOT_MIN_DEPTH 128

int ddp_gemm_sums_by_dots(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k) {
    return chosen_isa() == &isa_avx512 && !trans_a && trans_b && m <= DOT_MAX_ROWS && n <= DOT_MAX_COLS && k >= DOT_MIN_DEPTH;
}

int ddp_gemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, const float *a, int64_t lda,
             const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (!gemm_prepare_c(m, n, k, beta, c, ldc)) return 1;
    const gemm_isa *isa = chosen_isa();
    if (ddp_gemm_sums_by_dots(trans_a, trans_b, m, n, k)) {
        dot_job job = {a, b, c, lda, ldb, ldc, m, n, k, beta != 0.0f};
        int64_t blocks = (m + 3) / 4; // each element is summed by one task in one order
        if (m * n * k < PARALLEL_MIN_MACS)
            dot_rows(&job, 0, blocks);
        else
            ddp_parallel_for(blocks, dot_rows, &job);
        return 1;
    }
    gemm_problem g = {
        .isa = isa,
        .a = trans_a ? (view){a, 1, lda} : (view){a, lda, 1},
        .b = trans_b ? (view){b, 1, ldb} : (view){b, ldb, 1},
        .c = c, .rs = ldc, .cs = 1, .m = m, .n = n, .k = k,
        .accumulate = beta != 0.0f,
    };
    // A product narrower than one panel wastes most of every micro-tile;
    // computing Cᵀ = op(B)ᵀ·op(A)ᵀ instead puts the long side in the vectors.
    if (n < isa->nr && m > n) {
        view at = g.a;
        g.a = (view){g.b.p, g.b.cs, g.b.rs};
        g.b = (view){at.p, at.cs, at.rs};
        g.m = n;
        g.n = m;
        g.rs = 1;
        g.cs = ldc;
    }
    return gemm_run(&g);
}

// MARK: - A packed once for many products

static int64_t padded_rows(int64_t m) {
    int mr = chosen_isa()->mr;
    return (m + mr - 1) / mr * mr;
}

int64_t ddp_gemm_packed_a_floats(int64_t m, int64_t k) { return padded_rows(m) * k; }

ddp_packed_a_layout ddp_gemm_packed_a_layout(int64_t m) {
    return ddp_gemm_packed_a_layout_for(m, chosen_isa()->mr);
}

ddp_packed_a_layout ddp_gemm_packed_a_layout_for(int64_t m, int mr) {
    return (ddp_packed_a_layout){mr, KC, (m + mr - 1) / mr * mr};
}

int ddp_gemm_panel_rows(void) { return chosen_isa()->mr; }

void ddp_gemm_repack_a(const float *from, ddp_packed_a_layout from_layout, float *to, ddp_packed_a_layout to_layout,
                       int64_t m, int64_t k) {
    memset(to, 0, (size_t)(to_layout.mpad * k) * sizeof(float));
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < k; j++)
            to[ddp_packed_a_index(&to_layout, k, i, j)] = from[ddp_packed_a_index(&from_layout, k, i, j)];
}

typedef struct {
    view a;
    int64_t m, k, mpad;
    int mr;
    float *out;
} pack_job;

/// Packs row panels [begin, end) of every KC block.
static void pack_a_panels(void *arg, int64_t begin, int64_t end) {
    pack_job *job = arg;
    for (int64_t pc = 0; pc < job->k; pc += KC) {
        int64_t kc = job->k - pc < KC ? job->k - pc : KC;
        int64_t i0 = begin * job->mr, i1 = end * job->mr < job->m ? end * job->mr : job->m;
        if (i0 < i1) pack_a(job->a, i0, i1 - i0, pc, kc, job->mr, job->out + pc * job->mpad + i0 * kc);
    }
}

void ddp_gemm_pack_a(int trans_a, int64_t m, int64_t k, const float *a, int64_t lda, float *out) {
    pack_job job = {trans_a ? (view){a, 1, lda} : (view){a, lda, 1}, m, k, padded_rows(m), chosen_isa()->mr, out};
    ddp_parallel_for(job.mpad / job.mr, pack_a_panels, &job);
}

/// Whether the micro-kernel may read B's panels in place, rows ldb floats
/// apart, instead of packing them: B stored by rows, and its rows spread
/// over the first-level cache's sets. Rows a multiple of 512 bytes apart
/// share at most 8 of its 64 sets and evict each other: an F(2x2) layer
/// with 128 tiles (rows 512 bytes apart) was 8% slower read in place. With
/// the weights packed once, packing B was what remained of the products'
/// overhead: reading the Winograd transforms' V and the stem's im2col
/// columns in place saved 0.45 and 0.3 ms of unet-r18's inference (Zen 5,
/// per-kernel profile, 4 rounds).
///
/// Except with few row panels of A: each panel of B is then read only that
/// many times, too few to repay packing it even where its rows conflict.
/// With 6 panels or fewer (72 rows with AVX-512, 36 with AVX2) B is read in
/// place whatever its stride: Winograd layers of unet-r18's decoder with 16,
/// 32 and 64 output channels got 4-14% faster (Zen 5, 8 images, 5 interleaved
/// runs); at 128 output channels reading in place was 2% slower.
static int direct_b(int trans_b, int64_t ldb, int64_t row_panels) {
    return !trans_b && ((ldb * (int64_t)sizeof(float)) % 512 != 0 || row_panels <= 6);
}

/// C (+)= op(A)·op(B) with A packed ahead (m rows in all), of which a
/// caller computes `row_panels` panels of rows.
static gemm_problem packed_a_problem(const float *packed_a, int trans_b, int64_t m, int64_t n, int64_t k, const float *b,
                                     int64_t ldb, float *c, int64_t ldc, int accumulate, int64_t row_panels) {
    return (gemm_problem){
        .isa = chosen_isa(),
        .b = trans_b ? (view){b, 1, ldb} : (view){b, ldb, 1},
        .c = c, .rs = ldc, .cs = 1, .m = m, .n = n, .k = k,
        .apacked = packed_a, .mpad = padded_rows(m),
        .accumulate = accumulate,
        .direct_b = direct_b(trans_b, ldb, row_panels),
    };
}

int ddp_gemm_with_packed_a(const float *packed_a, int trans_b, int64_t m, int64_t n, int64_t k,
                           const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
    if (!gemm_prepare_c(m, n, k, beta, c, ldc)) return 1;
    gemm_problem g = packed_a_problem(packed_a, trans_b, m, n, k, b, ldb, c, ldc, beta != 0.0f,
                                      padded_rows(m) / chosen_isa()->mr);
    return gemm_run(&g);
}

/// Rows [row0, row1) of C = op(A)·B with A packed ahead (m rows in all),
/// on the calling thread: a task's share of a product whose A the threads
/// split by panels, so that each reads only its rows of A. Each row is
/// summed as ddp_gemm_with_packed_a sums it, so the result has its bits.
int ddp_gemm_rows_with_packed_a(const float *packed_a, int64_t m, int64_t row0, int64_t row1, int64_t n, int64_t k,
                                const float *b, int64_t ldb, float *c, int64_t ldc) {
    const gemm_isa *isa = chosen_isa();
    if (row1 > m) row1 = m;
    if (row0 >= row1 || n <= 0) return 1;
    if (k <= 0) { // an empty sum
        for (int64_t i = row0; i < row1; i++) memset(c + i * ldc, 0, (size_t)n * sizeof(float));
        return 1;
    }
    gemm_problem g = packed_a_problem(packed_a, 0, m, n, k, b, ldb, c, ldc, 0, (row1 - row0 + isa->mr - 1) / isa->mr);
    return gemm_block(&g, row0, row1, 0, n);
}

// MARK: - Peak

// Independent FMA chains, enough to cover the latency of both FMA pipes; the
// result is kept so the loop is not optimised away.
#define PEAK_CHAINS 12

__attribute__((target("avx512f"))) static float fma_loop_avx512(int64_t iterations) {
    __m512 acc[PEAK_CHAINS], x = _mm512_set1_ps(0.999999f), y = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < PEAK_CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
    for (int64_t it = 0; it < iterations; it++)
#pragma clang loop unroll(full)
        for (int i = 0; i < PEAK_CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
    float sum = 0;
    for (int i = 0; i < PEAK_CHAINS; i++) sum += _mm512_reduce_add_ps(acc[i]);
    return sum;
}

__attribute__((target("avx2,fma"))) static float fma_loop_avx2(int64_t iterations) {
    __m256 acc[PEAK_CHAINS], x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < PEAK_CHAINS; i++) acc[i] = _mm256_set1_ps((float)i);
    for (int64_t it = 0; it < iterations; it++)
#pragma clang loop unroll(full)
        for (int i = 0; i < PEAK_CHAINS; i++) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
    float lanes[8], sum = 0;
    for (int i = 0; i < PEAK_CHAINS; i++) {
        _mm256_storeu_ps(lanes, acc[i]);
        for (int l = 0; l < 8; l++) sum += lanes[l];
    }
    return sum;
}

typedef struct {
    int64_t iterations;
    volatile float sink;
} peak_job;

static void peak_task(void *arg, int64_t begin, int64_t end) {
    peak_job *job = arg;
    for (int64_t t = begin; t < end; t++)
        job->sink = chosen_isa() == &isa_avx512 ? fma_loop_avx512(job->iterations) : fma_loop_avx2(job->iterations);
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double ddp_fma_peak_gflops(double seconds) {
    int threads = ddp_parallel_threads(), lanes = chosen_isa() == &isa_avx512 ? 16 : 8;
    peak_job job = {.iterations = 1 << 16};
    double elapsed = 0;
    // Grow the loop until one round takes a measurable time, then time it.
    for (;;) {
        double start = seconds_now();
        ddp_parallel_for(threads, peak_task, &job);
        elapsed = seconds_now() - start;
        if (elapsed >= seconds || job.iterations > ((int64_t)1 << 40)) break;
        job.iterations *= elapsed > 0 && seconds / elapsed < 16 ? 2 : 8;
    }
    double flops = 2.0 * lanes * PEAK_CHAINS * (double)job.iterations * threads;
    return elapsed > 0 ? flops / elapsed * 1e-9 : 0.0;
}
