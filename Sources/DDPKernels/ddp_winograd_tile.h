// ddp_winograd_tile.h — Winograd F(m×m, 3×3) for one tile size m, included
// by ddp_winograd.c once per size with WT_TILE (m) and WT(name) (the name
// with the size appended) defined. Everything here depends on m: the
// transform matrices, the patch (m + 2) and point ((m + 2)²) counts, and the
// phase split of rows into m columns per tile.
//
// The flat loops over a block's columns (and the phase splits) write arrays
// that none of their inputs overlap; `assume_safety` says so, since the
// compiler cannot prove it through pointer arrays and runtime strides (and
// would not vectorise them).
//
// The tiles of a block sit in V, M and Ŷ as rows × tw columns: tile t of
// local tile row lr is column lr·tw + t, and every transform is one flat loop
// over the block's columns (vectorised however short the rows are). Only the
// input transform's phase arrays keep a padding column per tile row (span =
// tw + 1 columns), because a tile's last two input columns are the next
// tile's first phases; it drops them as it stores V. (They were once in V
// and M too, and the GEMMs computed them: a fifth of their work at 8 and 16
// px.)

#define TILE WT_TILE
#define PATCH (WT_TILE + 2)
#define POINTS (PATCH * PATCH)

#if WT_TILE == 4
// Lavin & Gray's F(4×4, 3×3), points 0, ±1, ±2, ∞.
/// Bᵀ·d for one column d[0..5] of an input patch.
#define INPUT_TRANSFORM(d, z)                              \
    do {                                                   \
        z[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];           \
        z[1] = -4.0f * d[1] - 4.0f * d[2] + d[3] + d[4];   \
        z[2] = 4.0f * d[1] - 4.0f * d[2] - d[3] + d[4];    \
        z[3] = -2.0f * d[1] - d[2] + 2.0f * d[3] + d[4];   \
        z[4] = 2.0f * d[1] - d[2] - 2.0f * d[3] + d[4];    \
        z[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];           \
    } while (0)
/// G·g for one column g0..g2 of a filter.
#define FILTER_TRANSFORM(g0, g1, g2, u)                                   \
    do {                                                                  \
        u[0] = (g0) * 0.25f;                                              \
        u[1] = ((g0) + (g1) + (g2)) * (-1.0f / 6);                        \
        u[2] = ((g0) - (g1) + (g2)) * (-1.0f / 6);                        \
        u[3] = (g0) * (1.0f / 24) + (g1) * (1.0f / 12) + (g2) * (1.0f / 6); \
        u[4] = (g0) * (1.0f / 24) - (g1) * (1.0f / 12) + (g2) * (1.0f / 6); \
        u[5] = (g2);                                                      \
    } while (0)
/// Aᵀ·m for one column m[0..5] of a product: the tile's four outputs.
#define OUTPUT_TRANSFORM(m, y)                                                     \
    do {                                                                           \
        float a_ = m[1] + m[2], b_ = m[1] - m[2], c_ = m[3] + m[4], d_ = m[3] - m[4]; \
        y[0] = m[0] + a_ + c_;                                                     \
        y[1] = b_ + 2.0f * d_;                                                     \
        y[2] = a_ + 4.0f * c_;                                                     \
        y[3] = b_ + 8.0f * d_ + m[5];                                              \
    } while (0)
/// A·y for one column y[0..3] of an output-gradient tile: six values.
#define GRADIENT_TRANSFORM(y, u)                                                    \
    do {                                                                            \
        float e_ = y[0] + y[2], o_ = y[1] + y[3];                                   \
        float e4_ = y[0] + 4.0f * y[2], o8_ = 2.0f * y[1] + 8.0f * y[3];            \
        u[0] = y[0]; u[1] = e_ + o_; u[2] = e_ - o_; u[3] = e4_ + o8_; u[4] = e4_ - o8_; u[5] = y[3]; \
    } while (0)
/// Gᵀ·u for one column u[0..5] of a transformed filter gradient: three values.
#define FILTER_GRADIENT(u, g)                                                                  \
    do {                                                                                       \
        g[0] = u[0] * 0.25f - (u[1] + u[2]) * (1.0f / 6) + (u[3] + u[4]) * (1.0f / 24);        \
        g[1] = (u[2] - u[1]) * (1.0f / 6) + (u[3] - u[4]) * (1.0f / 12);                       \
        g[2] = (u[3] + u[4] - u[1] - u[2]) * (1.0f / 6) + u[5];                                \
    } while (0)
#elif WT_TILE == 2
// F(2×2, 3×3), points 0, ±1, ∞.
#define INPUT_TRANSFORM(d, z)                              \
    do {                                                   \
        z[0] = d[0] - d[2];                                \
        z[1] = d[1] + d[2];                                \
        z[2] = d[2] - d[1];                                \
        z[3] = d[1] - d[3];                                \
    } while (0)
#define FILTER_TRANSFORM(g0, g1, g2, u)                    \
    do {                                                   \
        u[0] = (g0);                                       \
        u[1] = ((g0) + (g1) + (g2)) * 0.5f;                \
        u[2] = ((g0) - (g1) + (g2)) * 0.5f;                \
        u[3] = (g2);                                       \
    } while (0)
#define OUTPUT_TRANSFORM(m, y)                             \
    do {                                                   \
        y[0] = m[0] + m[1] + m[2];                         \
        y[1] = m[1] - m[2] - m[3];                         \
    } while (0)
#define GRADIENT_TRANSFORM(y, u)                           \
    do {                                                   \
        u[0] = y[0]; u[1] = y[0] + y[1]; u[2] = y[0] - y[1]; u[3] = -y[1]; \
    } while (0)
#define FILTER_GRADIENT(u, g)                              \
    do {                                                   \
        g[0] = u[0] + (u[1] + u[2]) * 0.5f;                \
        g[1] = (u[1] - u[2]) * 0.5f;                       \
        g[2] = (u[1] + u[2]) * 0.5f + u[3];                \
    } while (0)
#else
#error "WT_TILE must be 2 or 4"
#endif

#ifdef __AVX512F__
/// transform_filters for one panel of the forward's filters, w[oo][ic]: a
/// lane's taps for 16 input channels are 144 contiguous floats, and nine
/// 16×16 transposes turn the panel's runs into one vector (across the lanes)
/// per channel and tap. Gathered one float at a time, the taps took a third
/// of an F(2×2) layer's forward at 8 px.
static void WT(transform_filter_rows_avx512)(const filter_job *job, int64_t panel) {
    int mr = job->layout.mr;
    int64_t oo0 = panel * mr;
    int lanes = job->outputs - oo0 < mr ? (int)(job->outputs - oo0) : mr; // the rest are zero padding
    __mmask16 panel_row = first_lanes(mr);
    const int64_t step = job->packed_floats; // from U[ξ] to U[ξ + 1]; a local, since the stores could alias *job
    for (int64_t ic0 = 0; ic0 < job->inputs; ic0 += 16) {
        int64_t count = job->inputs - ic0 < 16 ? job->inputs - ic0 : 16, floats = 9 * count;
        __m512 taps[144]; // taps[9·i + k]: tap k of channel ic0 + i, lane l from output channel oo0 + l
        for (int b = 0; b < 9; b++) {
            __mmask16 part = lanes_inside(16 * b, floats);
            __m512 r[16];
            for (int l = 0; l < 16; l++)
                r[l] = l < lanes && part ? _mm512_maskz_loadu_ps(part, job->w + ((oo0 + l) * job->inputs + ic0) * 9 + 16 * b)
                                         : _mm512_setzero_ps();
            transpose_16x16(r);
            for (int j = 0; j < 16; j++) taps[16 * b + j] = r[j];
        }
        for (int64_t i = 0; i < count; i++) {
            const __m512 *g = taps + 9 * i;
            __m512 gc[3][PATCH];
            for (int s = 0; s < 3; s++) FILTER_TRANSFORM(g[s], g[3 + s], g[6 + s], gc[s]); // G·g, column s
            float *dst = job->packed + ddp_packed_a_index(&job->layout, job->inputs, oo0, ic0 + i);
            for (int r = 0; r < PATCH; r++) { // (G·g)·Gᵀ, row r
                __m512 u[PATCH];
                FILTER_TRANSFORM(gc[0][r], gc[1][r], gc[2][r], u);
                for (int j = 0; j < PATCH; j++) _mm512_mask_storeu_ps(dst + (r * PATCH + j) * step, panel_row, u[j]);
            }
        }
    }
}
#endif

/// Writes U[ξ] = (G g Gᵀ)[ξ] for every ξ straight into the GEMM's packed
/// layout of A (O × C per ξ), one panel of output channels per step, so each
/// store is a panel row of contiguous floats; g is w[oo][ic] (forward) or
/// w[ic][oo] rotated by 180° (input gradient). Tasks take row panels.
static void WT(transform_filters)(void *arg, int64_t begin, int64_t end) {
    filter_job *job = arg;
    int mr = job->layout.mr;
    for (int64_t panel = begin; panel < end; panel++) {
#ifdef __AVX512F__
        if (!job->transposed) {
            WT(transform_filter_rows_avx512)(job, panel);
            continue;
        }
#endif
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

/// Input rows split into TILE phases: phase q of a row holds its columns
/// TILE·t + q - pw (zero outside the image) at t = 0..span, so the PATCH
/// columns under tile t are phases 0..TILE-1 at t and phases 0..1 at t + 1.
/// `p` has TILE phase arrays, `stride` floats apart; xrow NULL is a row of
/// padding.
static void WT(split_row)(const float *xrow, int64_t w, int64_t pw, int64_t span, float *p, int64_t stride) {
    if (xrow == NULL) {
        for (int q = 0; q < TILE; q++) memset(p + q * stride, 0, (size_t)span * sizeof(float));
        return;
    }
#ifdef __AVX512F__
    WT(split_row_avx512)(xrow, w, pw, span, p, stride);
#else
    // Tiles whose columns are all inside the row read it directly; only the
    // edge tiles check.
    int64_t first = (pw + TILE - 1) / TILE;                                      // TILE·t - pw >= 0 from here
    int64_t last = w + pw - TILE >= 0 ? (w + pw - TILE) / TILE : -1;             // TILE·t + TILE-1 - pw < w up to here
    if (last > span - 1) last = span - 1;
    for (int64_t t = 0; t < span; t++) {
        if (t == first && first <= last) {
            const float *x = xrow + TILE * first - pw;
#pragma clang loop vectorize(assume_safety)
            for (int64_t i = 0; i <= last - first; i++)
                for (int q = 0; q < TILE; q++) p[q * stride + first + i] = x[TILE * i + q];
            t = last;
            continue;
        }
        for (int q = 0; q < TILE; q++) {
            int64_t iw = TILE * t + q - pw;
            p[q * stride + t] = iw >= 0 && iw < w ? xrow[iw] : 0.0f;
        }
    }
#endif
}

/// Asks for the input rows under the block's tile rows of channel c: the
/// next channel's, while this one is transformed. Its rows are a few
/// kilobytes per image, and without the hint each run of them started with
/// the latency of memory.
static void WT(prefetch_rows)(const wino_job *job, int64_t row0, int64_t rows, int64_t c) {
    for (int64_t lr = 0; lr < rows; lr++) {
        int64_t row = row0 + lr, image = row / job->th, tr = row % job->th;
        int64_t from = tr * TILE - job->ph + (lr == 0 ? 0 : 2), to = tr * TILE - job->ph + PATCH; // rows [from, to)
        if (from < 0) from = 0;
        if (to > job->h) to = job->h;
        for (int64_t ih = from; ih < to; ih++) {
            int64_t floats;
            const char *line = (const char *)source_row(job, image, c, ih, &floats);
            for (int64_t b = 0; b < floats * (int64_t)sizeof(float); b += 64) __builtin_prefetch(line + b);
        }
    }
}

/// Floats `transform_input_channel` needs as work space for blocks of up to
/// `rows` tile rows.
static int64_t WT(input_work_floats)(const wino_job *job, int64_t rows) {
    return 2 * PATCH * TILE * (rows + 1) * (job->tw + 1) + input_row_work_floats(job);
}

/// Bᵀ applied along the rows of z (columns k of phases 0..TILE-1, then k + 1
/// of phases 0 and 1; phases `stride` floats apart) for n columns: point j of
/// column k goes to out[j][at + k].
static inline void WT(input_points)(const float *zi, int64_t stride, int64_t n, float *const out[PATCH], int64_t at) {
    #pragma clang loop vectorize(assume_safety)
    for (int64_t k = 0; k < n; k++) {
        float in[PATCH], o[PATCH];
        for (int q = 0; q < TILE; q++) in[q] = zi[q * stride + k];
        in[TILE] = zi[k + 1];
        in[TILE + 1] = zi[stride + k + 1];
        INPUT_TRANSFORM(in, o);
        for (int j = 0; j < PATCH; j++) out[j][at + k] = o[j];
    }
}

/// V[ξ][c][·] (rows ld = rows·tw floats apart) for channel c of the block's
/// tile rows [row0, row0 + rows).
static void WT(transform_input_channel)(const wino_job *job, int64_t row0, int64_t rows, int64_t c, float *v,
                                        int64_t ld, float *work) {
    int64_t tw = job->tw, span = tw + 1, padded = rows * span;
    int64_t stride = padded + span; // phase arrays carry one spare tile row
    float *p = work;                         // p[r][q][·]: phase q of input row r under each tile row
    float *z = p + PATCH * TILE * stride;    // z[i][q][·]: Bᵀ applied down the PATCH rows
    float *prologued = z + PATCH * TILE * stride; // one input row after the prologue
    if (c + 1 < job->c) WT(prefetch_rows)(job, row0, rows, c + 1);
    for (int64_t lr = 0; lr < rows; lr++) {
        int64_t row = row0 + lr, image = row / job->th, tr = row % job->th;
        for (int r = 0; r < PATCH; r++) {
            int64_t ih = tr * TILE - job->ph + r;
            const float *xrow = ih >= 0 && ih < job->h ? input_row(job, image, c, ih, prologued) : NULL;
            WT(split_row)(xrow, job->w, job->pw, span, p + r * TILE * stride + lr * span, stride);
        }
    }
    for (int q = 0; q < TILE; q++) {
        const float *d[PATCH];
        float *zq[PATCH];
        for (int r = 0; r < PATCH; r++) {
            d[r] = p + (r * TILE + q) * stride;
            zq[r] = z + (r * TILE + q) * stride;
        }
        #pragma clang loop vectorize(assume_safety)
        for (int64_t k = 0; k < padded; k++) {
            float in[PATCH], out[PATCH];
            for (int r = 0; r < PATCH; r++) in[r] = d[r][k];
            INPUT_TRANSFORM(in, out);
            for (int r = 0; r < PATCH; r++) zq[r][k] = out[r];
        }
    }
    // Row i of the points. Tile rows of 16 tiles or more vectorise alone and
    // go straight into V; shorter ones are computed over the padded columns
    // into p (no longer read), and their tiles then copied into V.
    int64_t step = job->c * ld; // from V[ξ] to V[ξ + 1]
    for (int i = 0; i < PATCH; i++) {
        const float *zi = z + (i * TILE) * stride;
        float *vi[PATCH], *oj[PATCH];
        for (int j = 0; j < PATCH; j++) {
            vi[j] = v + (int64_t)(i * PATCH + j) * step + c * ld;
            oj[j] = p + j * padded;
        }
        if (tw >= 16) {
            for (int64_t lr = 0; lr < rows; lr++) WT(input_points)(zi + lr * span, stride, tw, vi, lr * tw);
            continue;
        }
        WT(input_points)(zi, stride, padded, oj, 0);
        for (int j = 0; j < PATCH; j++)
            for (int64_t lr = 0; lr < rows; lr++) copy_short(vi[j] + lr * tw, oj[j] + lr * span, tw);
    }
}

/// Floats `transform_output_channel` needs as work space for ld columns.
static int64_t WT(output_work_floats)(const wino_job *job, int64_t ld) {
    return (PATCH * TILE + TILE * TILE) * ld + TILE * (job->tw + 1);
}

/// Blocks of at most `rows` of the rows_total tile rows: a multiple of the
/// threads while there are fewer than 4 a thread, so that they share them
/// evenly.
static int64_t WT(block_count)(int64_t rows_total, int64_t rows, int64_t threads) {
    int64_t blocks = (rows_total + rows - 1) / rows;
    if (blocks < 4 * threads) blocks = (blocks + threads - 1) / threads * threads;
    return blocks > rows_total ? rows_total : blocks;
}

/// Floats one task's scratch takes for blocks of `rows` tile rows: V and M
/// with the transforms' work space, and the GEMMs' packing space.
static int64_t WT(task_floats)(const wino_job *job, int64_t rows) {
    int64_t columns = rows * job->tw, in = WT(input_work_floats)(job, rows), out = WT(output_work_floats)(job, columns);
    return POINTS * (job->c + job->o) * columns + (in > out ? in : out) + ddp_gemm_pack_floats(columns, job->c) + 32; // (each slot's start aligned)
}

/// The outputs of channel o under the block's tile rows from M[ξ][o][·]
/// (rows ld floats apart): Aᵀ m A, then the epilogue, stored into y.
static void WT(transform_output_channel)(const wino_job *job, int64_t row0, int64_t rows, int64_t o,
                                         const float *m, int64_t ld, float *work) {
    int64_t tw = job->tw;
    float *wa = work;                      // wa[i][b][·]: m·A along row i of each tile
    float *ya = wa + PATCH * TILE * ld;    // ya[a][b][·]: Aᵀ·(m·A)
    float *line = ya + TILE * TILE * ld;   // one output row, interleaved from ya
    int64_t step = job->o * ld;            // from M[ξ] to M[ξ + 1]
    const float *mo = m + o * ld;
    for (int i = 0; i < PATCH; i++) {
        const float *mi[PATCH];
        float *wi[TILE];
        for (int j = 0; j < PATCH; j++) mi[j] = mo + (i * PATCH + j) * step;
        for (int b = 0; b < TILE; b++) wi[b] = wa + (i * TILE + b) * ld;
        #pragma clang loop vectorize(assume_safety)
        for (int64_t k = 0; k < ld; k++) {
            float in[PATCH], out[TILE];
            for (int j = 0; j < PATCH; j++) in[j] = mi[j][k];
            OUTPUT_TRANSFORM(in, out);
            for (int b = 0; b < TILE; b++) wi[b][k] = out[b];
        }
    }
    for (int col = 0; col < TILE; col++) {
        #pragma clang loop vectorize(assume_safety)
        for (int64_t k = 0; k < ld; k++) {
            float in[PATCH], out[TILE];
            for (int i = 0; i < PATCH; i++) in[i] = wa[(i * TILE + col) * ld + k];
            OUTPUT_TRANSFORM(in, out);
            for (int a = 0; a < TILE; a++) ya[(a * TILE + col) * ld + k] = out[a];
        }
    }
    int64_t plane = job->oh * job->ow;
    for (int64_t lr = 0; lr < rows; lr++) {
        int64_t row = row0 + lr, image = row / job->th, tr = row % job->th;
        for (int r = 0; r < TILE && tr * TILE + r < job->oh; r++) {
            int64_t at = (image * job->o + o) * plane + (tr * TILE + r) * job->ow;
            const float *q = ya + (r * TILE) * ld + lr * tw;
#pragma clang loop vectorize(assume_safety)
            for (int64_t t = 0; t < tw; t++)
                for (int b = 0; b < TILE; b++) line[TILE * t + b] = q[b * ld + t];
            ddp_conv_epilogue_row(&job->epilogue, o, at, line, job->y + at, job->ow);
        }
    }
}

/// Blocks [begin, end): transform, POINTS GEMMs, transform back.
static void WT(blocks)(void *arg, int64_t begin, int64_t end) {
    wino_job *job = arg;
    int64_t rows_total = job->n * job->th, most = job->rows_per_block * job->tw;
    int64_t v_floats = POINTS * job->c * most, m_floats = POINTS * job->o * most;
    int64_t in = WT(input_work_floats)(job, job->rows_per_block), out = WT(output_work_floats)(job, most);
    float *scratch = ddp_thread_scratch(DDP_SCRATCH_COLUMNS, (size_t)(v_floats + m_floats + (in > out ? in : out)));
    if (scratch == NULL) { failed_task(&job->failed); return; }
    float *v = scratch, *m = scratch + v_floats, *work = m + m_floats;
    for (int64_t b = begin; b < end; b++) {
        int64_t row0 = b * job->rows_per_block;
        int64_t rows = rows_total - row0 < job->rows_per_block ? rows_total - row0 : job->rows_per_block;
        int64_t ld = rows * job->tw;
        for (int64_t c = 0; c < job->c; c++) WT(transform_input_channel)(job, row0, rows, c, v, ld, work);
        for (int xi = 0; xi < POINTS; xi++)
            if (!ddp_gemm_with_packed_a(job->packed_u + xi * job->packed_floats, 0, job->o, ld, job->c,
                                        v + (int64_t)xi * job->c * ld, ld, 0.0f, m + (int64_t)xi * job->o * ld, ld)) {
                failed_task(&job->failed);
                return;
            }
        for (int64_t o = 0; o < job->o; o++) WT(transform_output_channel)(job, row0, rows, o, m, ld, work);
    }
}

/// One block of tile rows shared by the threads (WT(winograd_by_channels)).
typedef struct {
    wino_job *job;
    int64_t row0, rows, ld;
    float *v, *m;   // the block's V[ξ] (C × ld) and M[ξ] (O × ld)
    int64_t mr;     // rows of a panel of U
} WT(shared_block);

/// Input channels [begin, end) of the shared block into V.
static void WT(shared_inputs)(void *arg, int64_t begin, int64_t end) {
    WT(shared_block) *s = arg;
    float *work = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)WT(input_work_floats)(s->job, s->rows));
    if (work == NULL) { failed_task(&s->job->failed); return; }
    for (int64_t c = begin; c < end; c++) WT(transform_input_channel)(s->job, s->row0, s->rows, c, s->v, s->ld, work);
}

/// Panels [begin, end) of output channels: their rows of the POINTS GEMMs,
/// then their outputs from M.
static void WT(shared_outputs)(void *arg, int64_t begin, int64_t end) {
    WT(shared_block) *s = arg;
    wino_job *job = s->job;
    int64_t o0 = begin * s->mr, o1 = end * s->mr < job->o ? end * s->mr : job->o;
    float *work = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)WT(output_work_floats)(job, s->ld));
    if (work == NULL) { failed_task(&job->failed); return; }
    for (int xi = 0; xi < POINTS; xi++)
        if (!ddp_gemm_rows_with_packed_a(job->packed_u + xi * job->packed_floats, job->o, o0, o1, s->ld, job->c,
                                         s->v + (int64_t)xi * job->c * s->ld, s->ld, s->m + (int64_t)xi * job->o * s->ld, s->ld)) {
            failed_task(&job->failed);
            return;
        }
    for (int64_t o = o0; o < o1; o++) WT(transform_output_channel)(job, s->row0, s->rows, o, s->m, s->ld, work);
}

/// The convolution in blocks that all threads work on together, for layers
/// with too few tiles to give each thread blocks of its own (small images
/// of many channels: the 8×8 and 4×4 layers of unet-r18 at batch 8). Split
/// by tiles, every thread streamed all of U[ξ] (up to 28 MB) for its one
/// narrow block, and the GEMMs used half of each column panel. Here the
/// threads split the block's input channels for V, then U's panels of output
/// channels: U is read once, by parts, and the GEMMs take the whole block's
/// columns. unet-r18's 4×4 layers (512 channels, F(2×2), batch 8) took
/// 2.3–2.7 ms instead of 2.8–3.5 (Xeon with AVX-512, 2 threads, 4
/// interleaved rounds). Every output is computed as in a block of its own
/// (each element of M is the same chain of FMAs), so the bits are those of
/// the split by tiles.
static int WT(winograd_by_channels)(wino_job *job, int64_t mr, int64_t threads) {
    // The one shared block may take what the threads' own blocks would
    // (BLOCK_MOST_FLOATS each): fewer blocks, fewer passes over U.
    int64_t rows_total = job->n * job->th;
    int64_t per_row = POINTS * (job->c + job->o) * job->tw;
    int64_t rows = threads * BLOCK_MOST_FLOATS / (per_row > 0 ? per_row : 1);
    if (rows < 1) rows = 1;
    int64_t blocks = (rows_total + rows - 1) / rows;
    rows = (rows_total + blocks - 1) / blocks;
    size_t floats = (size_t)(per_row * rows);
    float *v = ddp_thread_scratch_block(floats);
    if (v == NULL) return DDP_ERR_NOMEM;
    for (int64_t row0 = 0; row0 < rows_total && !job->failed; row0 += rows) {
        int64_t count = rows_total - row0 < rows ? rows_total - row0 : rows, ld = count * job->tw;
        WT(shared_block) s = {job, row0, count, ld, v, v + POINTS * job->c * ld, mr};
        ddp_parallel_for(job->c, WT(shared_inputs), &s);
        if (!job->failed) ddp_parallel_for((job->o + mr - 1) / mr, WT(shared_outputs), &s);
    }
    return job->failed ? DDP_ERR_NOMEM : DDP_OK;
}

/// The forward's filters w[o][c] transformed into U[ξ], packed for a GEMM
/// whose panels have `panel` rows: what winograd_filters computes once for
/// the calls that follow.
static void WT(pack_filters)(const float *w, int64_t o, int64_t c, int panel, float *packed) {
    ddp_packed_a_layout layout = ddp_gemm_packed_a_layout_for(o, panel);
    filter_job filters = {w, o, c, 0, layout, packed, layout.mpad * c};
    ddp_parallel_for(layout.mpad / layout.mr, WT(transform_filters), &filters);
}

/// Runs the convolution described by job (x, y, sizes, padding, epilogue)
/// with filters w: w[o][c] (transposed = 0) or w[c][o] rotated (1); or,
/// with prepacked_panel > 0, U itself as WT(pack_filters) wrote it for
/// panels of that many rows.
static int WT(winograd)(wino_job *job, const float *w, int transposed, int prepacked_panel) {
    if (job->n * job->oh * job->ow == 0 || job->o == 0) return DDP_OK;
    job->th = (job->oh + TILE - 1) / TILE;
    job->tw = (job->ow + TILE - 1) / TILE;

    // Filters: transformed straight into the GEMM's packed layout, unless
    // they were packed ahead for this ISA's panels.
    job->packed_floats = ddp_gemm_packed_a_floats(job->o, job->c);
    ddp_packed_a_layout layout = ddp_gemm_packed_a_layout(job->o);
    if (prepacked_panel == layout.mr) {
        job->packed_u = w;
    } else {
        float *packed = ddp_thread_scratch(DDP_SCRATCH_WEIGHTS, (size_t)(POINTS * job->packed_floats));
        if (packed == NULL) return DDP_ERR_NOMEM;
        if (prepacked_panel > 0) { // packed for another ISA's panels (the ISA chosen after compiling)
            ddp_packed_a_layout from = ddp_gemm_packed_a_layout_for(job->o, prepacked_panel);
            for (int xi = 0; xi < POINTS; xi++)
                ddp_gemm_repack_a(w + xi * from.mpad * job->c, from, packed + xi * job->packed_floats, layout, job->o, job->c);
        } else {
            filter_job filters = {w, job->o, job->c, transposed, layout, packed, job->packed_floats};
            ddp_parallel_for(layout.mpad / layout.mr, WT(transform_filters), &filters);
        }
        job->packed_u = packed;
    }

    // Blocks of whole tile rows within the budget, as many as the threads
    // can share evenly when the budget allows fewer.
    int64_t rows_total = job->n * job->th;
    int64_t per_row = POINTS * (job->c > job->o ? job->c : job->o) * (job->tw + 1);
    int64_t rows = BLOCK_BUDGET / (per_row > 0 ? per_row : 1), fewest = (BLOCK_MIN_COLUMNS + job->tw) / (job->tw + 1);
    int64_t most = (BLOCK_MAX_COLUMNS + job->tw) / (job->tw + 1);
    if (rows > most) rows = most;
    if (rows < fewest) rows = fewest;
    int64_t in_cache = WORK_CACHE_FLOATS / WT(input_work_floats)(job, 0) - 1; // see WORK_CACHE_FLOATS
    if (rows > in_cache) rows = in_cache > fewest ? in_cache : fewest;
    int64_t most_floats = BLOCK_MOST_FLOATS, lent = (int64_t)ddp_thread_scratch_loan_floats() - LOAN_MARGIN_FLOATS;
    if (lent > most_floats) most_floats = lent;
    int64_t capped = most_floats / (POINTS * (job->c + job->o) * job->tw); // see BLOCK_MOST_FLOATS
    if (rows > capped) rows = capped > 1 ? capped : 1;
    int64_t threads = ddp_parallel_threads(), blocks = WT(block_count)(rows_total, rows, threads);
    rows = (rows_total + blocks - 1) / blocks;
    // At most one block a thread, and output channels for two panels a
    // thread: the threads share the blocks instead (see winograd_by_channels).
    // Decided before the loan below: cutting such a layer's one block a
    // thread into thinner ones to fit a loan made each stream all of U for
    // a fraction of a panel's columns (unet-r18's first decoder layer, 768
    // channels on 8×8 images: 4 blocks of 8 tiles, 9-10 ms a call against
    // 3.3-4.5 shared; Zen 5, 2 threads).
    if (threads > 1 && (rows_total + rows - 1) / rows <= threads && layout.mpad / layout.mr >= 2 * threads)
        return WT(winograd_by_channels)(job, layout.mr, threads);
    // A loan of spare arena too small for these blocks but holding blocks
    // of half as many tile rows or more: blocks that fit it. The heap block
    // a thread would take instead it keeps for the rest of the process, on
    // top of the arena; shorter blocks only stream U[ξ] more often, and the
    // result does not depend on them. (TransUNet's widest input gradients
    // missed their loans by a fifth once the bilinear gather shrank its
    // fine-tuning arena, and two 9 MB heap blocks took more than it saved.)
    int64_t loan = (int64_t)ddp_thread_scratch_loan_floats();
    if (loan > 0 && WT(task_floats)(job, rows) > loan) {
        int64_t fit = rows;
        while (fit > 1 && WT(task_floats)(job, fit) > loan) fit--;
        if (2 * fit >= rows && WT(task_floats)(job, fit) <= loan) blocks = WT(block_count)(rows_total, fit, threads);
    }
    job->rows_per_block = (rows_total + blocks - 1) / blocks;
    blocks = (rows_total + job->rows_per_block - 1) / job->rows_per_block;
    ddp_parallel_for(blocks, WT(blocks), job);
    return job->failed ? DDP_ERR_NOMEM : DDP_OK;
}

// MARK: - Weight gradient
//
// y_t = Aᵀ (U ⊙ V_t) A is linear in U = G g Gᵀ, so the gradient of a filter
// is dg = Gᵀ [ Σ_t (A dY_t Aᵀ) ⊙ V_t ] G: the same input transform V, the
// output gradient's tiles taken to PATCH × PATCH by A·dY·Aᵀ (Ŷ), and per
// point ξ one product summed over every tile, dU[ξ] (O × C) += Ŷ[ξ]
// (O × tiles) · V[ξ]ᵀ (tiles × C). The blocks of tiles run in order, and
// each product is one task's, so the sums' order (hence dw) does not depend
// on the thread count.

static void WT(wgrad_input_channels)(void *arg, int64_t begin, int64_t end) {
    wgrad_job *job = arg;
    const wino_job *g = &job->geometry;
    float *work = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)WT(input_work_floats)(g, job->rows));
    if (work == NULL) { failed_task(&job->failed); return; }
    for (int64_t c = begin; c < end; c++) WT(transform_input_channel)(g, job->row0, job->rows, c, job->v, job->ld, work);
}

/// Ŷ[ξ][o][·] for output-gradient channels [begin, end) of the block.
static void WT(wgrad_gradient_channels)(void *arg, int64_t begin, int64_t end) {
    wgrad_job *job = arg;
    const wino_job *g = &job->geometry;
    int64_t tw = g->tw, ld = job->ld, step = g->o * ld;
    float *work = ddp_thread_scratch(DDP_SCRATCH_GATHER, (size_t)((TILE * TILE + PATCH * TILE) * ld));
    if (work == NULL) { failed_task(&job->failed); return; }
    float *p = work;                     // p[a][q][·]: column q of row a of each tile
    float *z = p + TILE * TILE * ld;     // z[i][q][·]: A applied down the tile's rows
    for (int64_t o = begin; o < end; o++) {
        for (int64_t lr = 0; lr < job->rows; lr++) {
            int64_t row = job->row0 + lr, image = row / g->th, tr = row % g->th;
            const float *dyo = job->dy + (image * g->o + o) * g->oh * g->ow;
            // Columns TILE·t + q of the tile's row a, zero past the edge.
            for (int a = 0; a < TILE; a++) {
                int64_t oh = tr * TILE + a;
                WT(split_row)(oh < g->oh ? dyo + oh * g->ow : NULL, g->ow, 0, tw, p + a * TILE * ld + lr * tw, ld);
            }
        }
        for (int q = 0; q < TILE; q++) {
            #pragma clang loop vectorize(assume_safety)
            for (int64_t k = 0; k < ld; k++) {
                float in[TILE], out[PATCH];
                for (int a = 0; a < TILE; a++) in[a] = p[(a * TILE + q) * ld + k];
                GRADIENT_TRANSFORM(in, out);
                for (int i = 0; i < PATCH; i++) z[(i * TILE + q) * ld + k] = out[i];
            }
        }
        for (int i = 0; i < PATCH; i++) {
            float *d[PATCH];
            for (int j = 0; j < PATCH; j++) d[j] = job->dyt + (int64_t)(i * PATCH + j) * step + o * ld;
            #pragma clang loop vectorize(assume_safety)
            for (int64_t k = 0; k < ld; k++) {
                float in[TILE], out[PATCH];
                for (int q = 0; q < TILE; q++) in[q] = z[(i * TILE + q) * ld + k];
                GRADIENT_TRANSFORM(in, out);
                for (int j = 0; j < PATCH; j++) d[j][k] = out[j];
            }
        }
    }
}

/// dU[ξ] += Ŷ[ξ]·V[ξ]ᵀ for ξ in [begin, end), each product on this task.
static void WT(wgrad_products)(void *arg, int64_t begin, int64_t end) {
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
static void WT(wgrad_filters)(void *arg, int64_t begin, int64_t end) {
    wgrad_job *job = arg;
    const wino_job *g = &job->geometry;
    int64_t plane = g->o * g->c;
#ifdef __AVX512F__
    // 16 input channels at a time: each point's values for them are
    // contiguous in dU. One float at a time, this took a sixth of a wide
    // F(2×2) layer's weight gradient.
    for (int64_t o = begin; o < end; o++)
        for (int64_t c0 = 0; c0 < g->c; c0 += 16) {
            int64_t count = g->c - c0 < 16 ? g->c - c0 : 16;
            __mmask16 live = first_lanes(count);
            const float *u = job->du + o * g->c + c0;
            __m512 rows[3][PATCH], taps[9];
            for (int j = 0; j < PATCH; j++) { // Gᵀ applied down each column j
                __m512 col[PATCH], out[3];
                for (int i = 0; i < PATCH; i++) col[i] = _mm512_maskz_loadu_ps(live, u + (i * PATCH + j) * plane);
                FILTER_GRADIENT(col, out);
                for (int s = 0; s < 3; s++) rows[s][j] = out[s];
            }
            for (int s = 0; s < 3; s++) FILTER_GRADIENT(rows[s], (taps + 3 * s));
            float staged[9][16];
            for (int k = 0; k < 9; k++) _mm512_storeu_ps(staged[k], taps[k]);
            float *dw = job->dw + (o * g->c + c0) * 9; // count filters of 9 taps, one after another
#pragma clang loop vectorize(disable)
            for (int64_t l = 0; l < count; l++)
                for (int k = 0; k < 9; k++) dw[l * 9 + k] = staged[k][l];
        }
#else
    for (int64_t o = begin; o < end; o++)
        for (int64_t c = 0; c < g->c; c++) {
            const float *u = job->du + o * g->c + c;
            float rows[3][PATCH]; // Gᵀ applied down each column j
            for (int j = 0; j < PATCH; j++) {
                float col[PATCH], out[3];
                for (int i = 0; i < PATCH; i++) col[i] = u[(i * PATCH + j) * plane];
                FILTER_GRADIENT(col, out);
                for (int s = 0; s < 3; s++) rows[s][j] = out[s];
            }
            float *dw = job->dw + (o * g->c + c) * 9;
            for (int s = 0; s < 3; s++) {
                float out[3];
                FILTER_GRADIENT(rows[s], out);
                dw[s * 3 + 0] = out[0]; dw[s * 3 + 1] = out[1]; dw[s * 3 + 2] = out[2];
            }
        }
#endif
}

static int WT(grad_weight)(wgrad_job *job) {
    wino_job *g = &job->geometry;
    int64_t plane = g->o * g->c;
    g->th = (g->oh + TILE - 1) / TILE;
    g->tw = (g->ow + TILE - 1) / TILE;
    int64_t span = g->tw + 1, rows_total = g->n * g->th;
    int64_t columns = WGRAD_BLOCK_BUDGET / (POINTS * (g->c + g->o));
    if (columns > WGRAD_BLOCK_COLUMNS) columns = WGRAD_BLOCK_COLUMNS;
    if (columns < WGRAD_MIN_COLUMNS) columns = WGRAD_MIN_COLUMNS;
    if (columns > BLOCK_MOST_FLOATS / (POINTS * (g->c + g->o))) columns = BLOCK_MOST_FLOATS / (POINTS * (g->c + g->o));
    int64_t rows = (columns + span - 1) / span;
    if (rows > rows_total) rows = rows_total;
    int64_t block_count = (rows_total + rows - 1) / rows;
    rows = (rows_total + block_count - 1) / block_count; // no short last block
    int64_t most = rows * g->tw;
    // One block every task shares: from the loan of spare arena across the
    // threads' parts where it fits (one thread's part may not hold it),
    // not a heap block the thread keeps. Its size comes from the shape
    // alone, so dw's bits do not depend on the loan or the thread count.
    size_t block_floats = (size_t)(POINTS * (g->c + g->o) * most);
    float *blocks = ddp_thread_scratch_block(block_floats);
    job->du = ddp_thread_scratch(DDP_SCRATCH_WEIGHTS, (size_t)(POINTS * plane));
    if (blocks == NULL || job->du == NULL) return DDP_ERR_NOMEM;
    memset(job->du, 0, (size_t)(POINTS * plane) * sizeof(float));
    job->v = blocks;
    job->dyt = blocks + POINTS * g->c * most;
    for (job->row0 = 0; job->row0 < rows_total; job->row0 += rows) {
        job->rows = rows_total - job->row0 < rows ? rows_total - job->row0 : rows;
        job->ld = job->rows * g->tw;
        ddp_parallel_for(g->c, WT(wgrad_input_channels), job);
        ddp_parallel_for(g->o, WT(wgrad_gradient_channels), job);
        ddp_parallel_for(POINTS, WT(wgrad_products), job);
        if (job->failed) return DDP_ERR_NOMEM;
    }
    ddp_parallel_for(g->o, WT(wgrad_filters), job);
    return DDP_OK;
}

#undef TILE
#undef PATCH
#undef POINTS
#undef INPUT_TRANSFORM
#undef FILTER_TRANSFORM
#undef OUTPUT_TRANSFORM
#undef GRADIENT_TRANSFORM
#undef FILTER_GRADIENT
