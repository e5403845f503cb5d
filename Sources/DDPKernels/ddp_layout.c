// ddp_layout.c — general-rank kernels: reduce, permute, copy_region.
//
// Each walks its outer axes with an odometer (index counters plus running
// offsets) and runs a simple loop over the innermost axis.
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
// contiguous reduction or an element-wise update of a run of outputs. The
// pool's threads split the largest kept axis: each output is summed by one
// thread in the serial order, so the result does not depend on the thread
// count.
//
// reduce_loop reduces values that no buffer holds: a generated loop computes
// them from its operands into a chunk on the stack, run by run, and the same
// walk reduces the chunk. A fused reduction thus never writes its input.
typedef struct {
    const float *x;
    float *y;
    double *acc;
    int64_t kind, k, split;
    int64_t size[DDP_MAX_RANK], red[DDP_MAX_RANK], in_stride[DDP_MAX_RANK], out_stride[DDP_MAX_RANK];
    ddp_loop_fn produce;          // reduce_loop: computes x's elements, else NULL
    void *const *operands;        // its operands (each of x's shape)
    int64_t operand_count;
} reduce_job;

/// Elements of x computed at a time by reduce_loop's loop (16 KiB, in L1).
#define REDUCE_CHUNK 4096

/// x[offset, offset + count): in x, or computed into `chunk` (count ≤ REDUCE_CHUNK).
static const float *reduce_values(const reduce_job *job, int64_t offset, int64_t count, float *chunk) {
    if (job->produce == NULL) return job->x + offset;
    void *pointers[1 + 64];
    pointers[0] = chunk;
    for (int64_t i = 0; i < job->operand_count; i++) pointers[1 + i] = (float *)job->operands[i] + offset;
    job->produce(0, count, pointers);
    return chunk;
}

/// The reduction restricted to [begin, end) of the split axis.
static void reduce_range(void *arg, int64_t begin, int64_t end) {
    const reduce_job *job = arg;
    int k = (int)job->k;
    int64_t size[DDP_MAX_RANK], idx[DDP_MAX_RANK] = {0};
    for (int d = 0; d < k; d++) size[d] = job->size[d];
    size[job->split] = end - begin;
    int64_t xo = begin * job->in_stride[job->split], yo = begin * job->out_stride[job->split];
    int64_t inner = size[k - 1], outer = 1;
    for (int d = 0; d < k - 1; d++) outer *= size[d];
    int inner_reduced = (int)job->red[k - 1];
    // A materialized x is read in whole runs (the order reduce has always
    // had); computed values come a chunk at a time.
    int64_t piece = job->produce != NULL && inner > REDUCE_CHUNK ? REDUCE_CHUNK : inner;
    float chunk[REDUCE_CHUNK] __attribute__((aligned(64))); // used by reduce_loop only
    for (int64_t it = 0; it < outer; it++) {
        for (int64_t j0 = 0; j0 < inner; j0 += piece) {
            int64_t count = inner - j0 < piece ? inner - j0 : piece;
            const float *xr = reduce_values(job, xo + j0, count, chunk);
            if (job->kind == 2) {
                if (inner_reduced) {
                    float m = job->y[yo];
                    for (int64_t j = 0; j < count; j++)
                        if (xr[j] > m || isnan(xr[j])) m = xr[j];
                    job->y[yo] = m;
                } else {
                    float *yr = job->y + yo + j0;
                    for (int64_t j = 0; j < count; j++)
                        yr[j] = (xr[j] > yr[j] || isnan(xr[j])) ? xr[j] : yr[j];
                }
            } else if (inner_reduced) {
                job->acc[yo] += ddp_sum_f64(xr, count);
            } else {
                double *ar = job->acc + yo + j0;
                for (int64_t j = 0; j < count; j++) ar[j] += xr[j];
            }
        }
        odometer_step(k - 1, size, idx, job->in_stride, &xo, job->out_stride, &yo);
    }
}

/// Elements per piece of a reduction to one value (a gradient's squared
/// norm): the pieces are summed by the pool's threads and their sums added
/// in order, so the result depends on the shape alone, not the thread
/// count. One thread summed a 2.4-million-element gradient in 0.67 ms.
#define FULL_PIECE ((int64_t)1 << 15)

typedef struct {
    const reduce_job *job;
    double *sums;  // per piece, for a sum or mean (else NULL)
    float *maxima; // per piece, for a max (else NULL)
} full_job;

static void full_pieces(void *arg, int64_t begin, int64_t end) {
    const full_job *f = arg;
    for (int64_t p = begin; p < end; p++) {
        reduce_job piece = *f->job;
        if (f->sums != NULL) piece.acc = f->sums + p;
        else piece.y = f->maxima + p;
        int64_t last = (p + 1) * FULL_PIECE < piece.size[0] ? (p + 1) * FULL_PIECE : piece.size[0];
        reduce_range(&piece, p * FULL_PIECE, last);
    }
}

/// A reduction of all of x (one merged axis, reduced) in pieces; y[0] the
/// maximum, or acc[0] the sum, of the pieces' in order.
static int reduce_full(reduce_job *job) {
    int64_t pieces = (job->size[0] + FULL_PIECE - 1) / FULL_PIECE;
    int max = job->kind == 2;
    full_job f = {job, max ? NULL : calloc((size_t)pieces, sizeof(double)),
                  max ? malloc((size_t)pieces * sizeof(float)) : NULL};
    if (f.sums == NULL && f.maxima == NULL) return DDP_ERR_NOMEM;
    if (max)
        for (int64_t p = 0; p < pieces; p++) f.maxima[p] = -INFINITY;
    ddp_parallel_for(pieces, full_pieces, &f);
    if (max) {
        float m = -INFINITY;
        for (int64_t p = 0; p < pieces; p++)
            if (f.maxima[p] > m || isnan(f.maxima[p])) m = f.maxima[p];
        job->y[0] = m;
    } else {
        double sum = 0.0;
        for (int64_t p = 0; p < pieces; p++) sum += f.sums[p];
        job->acc[0] = sum;
    }
    free(f.sums);
    free(f.maxima);
    return DDP_OK;
}

/// reduce and reduce_loop: x's values from `x`, or from `produce`.
static int reduce_run(reduce_job job, const int64_t *ia) {
    float *y = job.y;
    int64_t kind = ia[0], rank = ia[1];
    const int64_t *shape = ia + 2, *reduced = ia + 2 + rank;
    if (rank < 0 || rank > DDP_MAX_RANK || kind < 0 || kind > 2) return DDP_ERR_ARGS;
    job.kind = kind;
    int k = 0;
    int64_t out_n = 1, red_n = 1;
    for (int64_t d = 0; d < rank; d++) {
        int64_t r = reduced[d] != 0;
        if (r) red_n *= shape[d]; else out_n *= shape[d];
        if (shape[d] == 1) continue;
        if (k > 0 && job.red[k - 1] == r) {
            job.size[k - 1] *= shape[d];
        } else {
            job.size[k] = shape[d];
            job.red[k] = r;
            k++;
        }
    }
    if (k == 0) { job.size[0] = 1; job.red[0] = 0; k = 1; }
    job.k = k;
    if (out_n == 0) return DDP_OK;
    if (red_n == 0) { // nothing to reduce: the identity of each reduction
        float v = kind == 0 ? 0.0f : kind == 1 ? NAN : -INFINITY;
        for (int64_t i = 0; i < out_n; i++) y[i] = v;
        return DDP_OK;
    }

    // Strides of the merged axes in x (contiguous) and in y (0 for reduced
    // axes); the largest kept axis is the one the threads split.
    int64_t is = 1, os = 1;
    job.split = k - 1;
    for (int d = k - 1; d >= 0; d--) {
        job.in_stride[d] = is;
        is *= job.size[d];
        job.out_stride[d] = job.red[d] ? 0 : os;
        if (!job.red[d]) os *= job.size[d];
        if (!job.red[d] && (job.red[job.split] || job.size[d] > job.size[job.split])) job.split = d;
    }
    int full = (int)job.red[job.split]; // no kept axis: one task over axis 0
    if (full) job.split = 0;
    if (kind != 2) {
        job.acc = calloc((size_t)out_n, sizeof(double));
        if (job.acc == NULL) return DDP_ERR_NOMEM;
    } else {
        for (int64_t i = 0; i < out_n; i++) y[i] = -INFINITY;
    }
    if (full && job.k == 1 && job.size[0] > FULL_PIECE) {
        int status = reduce_full(&job);
        if (status != DDP_OK) {
            free(job.acc);
            return status;
        }
    } else {
        ddp_parallel_for_elements(job.size[job.split], full ? 0 : is, reduce_range, &job);
    }
    if (kind != 2) {
        double scale = kind == 1 ? 1.0 / (double)red_n : 1.0;
        for (int64_t i = 0; i < out_n; i++) y[i] = (float)(job.acc[i] * scale);
        free(job.acc);
    }
    return DDP_OK;
}

int ddp_reduce(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    return reduce_run((reduce_job){.x = bufs[0], .y = bufs[1]}, ia);
}

int ddp_reduce_loop(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    int64_t rank = ia[1];
    if (rank < 0 || rank > DDP_MAX_RANK) return DDP_ERR_ARGS;
    int64_t operands = ia[2 + 2 * rank];
    if (operands < 1 || operands > 64) return DDP_ERR_ARGS;
    reduce_job job = {.y = bufs[1], .operands = bufs + 2, .operand_count = operands};
    memcpy(&job.produce, &bufs[0], sizeof job.produce); // a function pointer passed as a buffer
    return reduce_run(job, ia);
}

// A strided copy of 4-byte elements over merged axes (permute and
// copy_region): the pool's threads split the outermost axis.
typedef struct {
    const uint32_t *src;
    uint32_t *dst;
    int k;
    int64_t size[DDP_MAX_RANK], src_stride[DDP_MAX_RANK], dst_stride[DDP_MAX_RANK];
} copy_job;

static void copy_range(void *arg, int64_t begin, int64_t end) {
    const copy_job *job = arg;
    int k = job->k;
    int64_t size[DDP_MAX_RANK], idx[DDP_MAX_RANK] = {0};
    for (int d = 0; d < k; d++) size[d] = job->size[d];
    size[0] = end - begin;
    int64_t so = begin * job->src_stride[0], doff = begin * job->dst_stride[0];
    int64_t inner = size[k - 1], step = job->src_stride[k - 1], dstep = job->dst_stride[k - 1], outer = 1;
    for (int d = 0; d < k - 1; d++) outer *= size[d];
    for (int64_t it = 0; it < outer; it++) {
        const uint32_t *sr = job->src + so;
        uint32_t *dr = job->dst + doff;
        if (step == 1 && dstep == 1)
            for (int64_t j = 0; j < inner; j++) dr[j] = sr[j];
        else
            for (int64_t j = 0; j < inner; j++) dr[j * dstep] = sr[j * step];
        odometer_step(k - 1, size, idx, job->src_stride, &so, job->dst_stride, &doff);
    }
}

// permute: y[j0..jr) = x[i] with i[perm[d]] = j[d] (numpy transpose). Output
// axes whose source elements are adjacent in x are merged first.
int ddp_permute(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
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
    copy_job job = {.src = bufs[0], .dst = bufs[1]};
    int k = 0;
    for (int64_t d = 0; d < rank; d++) {
        if (perm[d] < 0 || perm[d] >= rank) return DDP_ERR_ARGS;
        int64_t n = in_shape[perm[d]], st = in_stride[perm[d]];
        if (n == 1) continue;
        if (k > 0 && job.src_stride[k - 1] == st * n) {
            job.size[k - 1] *= n;
            job.src_stride[k - 1] = st;
        } else {
            job.size[k] = n;
            job.src_stride[k] = st;
            k++;
        }
    }
    if (k == 0) { job.size[0] = 1; job.src_stride[0] = 1; k = 1; }
    job.k = k;
    int64_t ds = 1;
    for (int d = k - 1; d >= 0; d--) {
        job.dst_stride[d] = ds;
        ds *= job.size[d];
    }
    ddp_parallel_for_elements(job.size[0], s, copy_range, &job);
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

    copy_job job = {.k = (int)rank};
    int64_t s_el = 1, d_el = 1, so = 0, doff = 0, total = 1;
    for (int64_t d = rank - 1; d >= 0; d--) {
        job.size[d] = count[d];
        job.src_stride[d] = s_el * src_step[d];
        job.dst_stride[d] = d_el;
        so += s_el * src_start[d];
        doff += d_el * dst_start[d];
        s_el *= src_shape[d];
        d_el *= dst_shape[d];
        total *= count[d];
    }
    if (total == 0) return DDP_OK;
    if (src + so == dst + doff && s_el == d_el && s_el == total) return DDP_OK; // a whole tensor onto itself (insert in place)
    if (rank == 0) {
        dst[0] = src[0];
        return DDP_OK;
    }
    job.src = src + so;
    job.dst = dst + doff;
    ddp_parallel_for_elements(job.size[0], total, copy_range, &job);
    return DDP_OK;
}
