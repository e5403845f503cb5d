// ddp_abi.h — what generated code, the compiler and the runtime kernels
// agree on: the kernels' statuses and signature, their list (whose order is
// the table compiled entry points index), each one's arguments, and the
// entry points' signature. The compiler reads it to emit calls; the kernel
// library implements it (ddp_kernels.h). Nothing here runs a kernel.
//
// Generated code (C or LLVM backend) never links kernel symbols: the runtime
// passes a table of function pointers, indexed by `ddp_kernel_id`, to every
// entry point. One uniform signature keeps both code generators trivial: an
// array of buffer pointers, an array of integer arguments and an array of
// floating-point arguments, in the order documented per kernel below.
//
// Conventions: tensors are dense, row-major (NCHW for images), f32 unless
// said otherwise. Integer arguments are int64_t. Every kernel writes its whole
// output (callers never pre-zero it).
#ifndef DDP_ABI_H
#define DDP_ABI_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Every kernel returns a status, which the generated entry point returns
/// at once when it is not DDP_OK: a kernel that cannot do its work (invalid
/// arguments, no memory for its scratch) never leaves stale output behind
/// silently.
enum { DDP_OK = 0, DDP_ERR_ARGS = 1, DDP_ERR_NOMEM = 2, DDP_ERR_COMM = 3 };

typedef int (*ddp_kernel_fn)(void *const *bufs, const int64_t *ia, const double *fa);
/// A generated loop over the range [begin, end) of its outermost axis.
typedef void (*ddp_loop_fn)(int64_t begin, int64_t end, void *const *pointers);

// X(name): the kernel list. The order is the ABI; append only.
//
// conv2d             bufs [x, w, y, (scale), (shift), (residual), (gate), (moments)]
//                    ia [N,C,H,W, O,KH,KW, OH,OW, sh,sw, ph,pw, dh,dw, groups,
//                        has_scale, has_shift, has_residual, relu, has_gate, has_moments]
//                    x[N,C,H,W], w[O,C/groups,KH,KW], y[N,O,OH,OW]; cross-correlation
//                    as in PyTorch; zero padding. The epilogue (fused_conv2d) makes
//                    y = act(conv·scale[o] + shift[o] + residual[n,o,i,j])·[gate[n,o,i,j] > 0],
//                    each part present when its flag is 1 (its buffer then follows, in this
//                    order); act is max(·, 0) when relu is 1. has_gate 2: the gate buffer
//                    is followed by [gscale, gshift] (one value per channel of y) and the
//                    factor is [gate·gscale[o] + gshift[o] > 0] (a ReLU's backward read
//                    from the normalized value before it, not the ReLU's output).
//                    has_moments 1: the moments buffer [2, O] gets batch_moments(y), its
//                    rows summed as they are stored (the same bits as batch_moments).
// conv2d_grad_input  bufs [dy, w, dx, (scale), (shift), (residual), (gate)]
//                    ia as conv2d's. dx[N,C,H,W] = conv2d's VJP wrt x, then the same
//                    epilogue over dx's channels (fused_conv2d_grad_input: the gate is
//                    the following ReLU's backward, the residual a gradient summed in);
//                    has_moments must be 0 (DDP_ERR_ARGS otherwise).
// conv2d_grad_weight bufs [x, dy, dw]    ia as conv2d's geometry. dw[O,C/groups,KH,KW] = VJP wrt w.
// conv2d_winograd    as conv2d, ia followed by the tile size m (4 or 2), for 3×3, stride 1,
//                    dilation 1, one group, padding ≤ 2 (DDP_ERR_ARGS otherwise): Winograd
//                    F(m×m, 3×3), see ddp_winograd.c; then the prologue flags
//                    [kind, relu, fh, fw, upsampled]:
//                    kind 0, none (the other flags 0);
//                    kind 1, affine: bufs end with [pscale, pshift] (C values each) and the
//                    convolution reads x[n][c] as x·pscale[c] + pshift[c] (then max(·, 0)
//                    when relu), the padding 0;
//                    kind 2, gathered: the convolution's input (N×C×H×W) is
//                    concat(upsample_nearest(x), skip) on channels: x is N×upsampled×(H/fh)×(W/fw),
//                    1 ≤ upsampled ≤ C, fh and fw whole factors of H and W; with
//                    upsampled < C, bufs end with [skip] (N×(C−upsampled)×H×W);
//                    kind 3, gathered by bilinear interpolation: as kind 2 with
//                    upsample_bilinear in place of upsample_nearest, align_corners
//                    when the relu flag is 1.
// conv2d_grad_input_winograd  as conv2d_grad_input, ia followed by m; geometries as above;
//                    then prologue flags [kind, align, fh, fw, upsampled] as conv2d_winograd's
//                    and g, images per group: kind 0, none (g 0); kind 2 or 3, the gradient
//                    of a convolution that gathered its input with upsampled = C (no skip),
//                    taken back through the upsampling: dx is N×C×(H/fh)×(W/fw), the gradient
//                    wrt x, and the epilogue flags are 0. g images at a time (g ≥ 1), their
//                    gradient wrt the upsampled input goes to g·C·H·W floats taken from the
//                    end of the call's lend_scratch loan (after the transformed filters).
// winograd_filters   bufs [w, u]         ia [O, C, m, p]
//                    u = the filters w[O,C,3,3] transformed for F(m×m, 3×3), (m+2)² planes
//                    U[ξ] (O × C) each packed for the GEMM in row panels of p rows
//                    (1 ≤ p ≤ 16): the layout ddp_gemm_pack_a writes, rows padded with
//                    zeros to a multiple of p; (m+2)²·⌈O/p⌉·p·C floats.
// conv2d_winograd_prepacked   as conv2d_winograd (prologue flags included), ia followed by
//                    p: w is winograd_filters' u for panels of p rows. Where p is not the chosen ISA's (12 with
//                    AVX-512, 6 with AVX2) u is repacked for it on each call.
// conv2d_grad_weight_winograd as conv2d_grad_weight, ia followed by m; geometries as above;
//                    then conv2d_winograd's prologue flags, its buffers after dw: the
//                    weight gradient of a convolution that applied one.
// matmul             bufs [a, b, c]      ia [d, size_0..size_{d-1}, M, K, N, trans_a, trans_b,
//                        lda, ldb, ldc, a_stride_0..a_stride_{d-1}, b_stride_.., c_stride_..]
//                    for each index i of the d batch axes: c_i (M×N, rows ldc apart) =
//                    op(a_i) · op(b_i), where a_i starts at a + Σ i_t·a_stride_t and is
//                    M×K (K×M if trans_a) with rows lda apart, b_i likewise K×N (N×K if
//                    trans_b), and c_i at c + Σ i_t·c_stride_t. Strides in elements; a
//                    stride of 0 shares one matrix along that axis.
// reduce             bufs [x, y]         ia [kind, rank, shape[rank]..., reduced[rank]...]
//                    kind 0 = sum, 1 = mean, 2 = max over the axes whose `reduced`
//                    flag is 1; y has the same rank with those axes of size 1.
//                    Sums accumulate in double.
// reduce_loop        bufs [loop, y, p0, p1, ...]  ia as reduce, then [operands]
//                    reduce of a fused reduction's input, which no buffer holds: `loop`
//                    (a ddp_loop_fn over one flat axis of x's elements) writes the
//                    values of x[begin, end) to its first pointer from its operands
//                    p0, p1, ... (each of x's shape), and the kernel reduces them in
//                    chunks small enough to stay in cache, in reduce's order.
// permute            bufs [x, y]         ia [rank, in_shape[rank]..., perm[rank]...]
//                    y.shape[i] = x.shape[perm[i]]; y[j...] = x[...] (numpy transpose).
// copy_region        bufs [src, dst]     ia [rank, src_shape[rank], dst_shape[rank],
//                                            src_start[rank], src_step[rank],
//                                            dst_start[rank], count[rank]]
//                    dst[dst_start + k] = src[src_start + k*src_step] for every index k
//                    in the box `count`; elements of dst outside the box are untouched.
//                    Element size 4 bytes (f32 or i32).
// fill               bufs [dst]          ia [n]  fa [value]   dst[0..n) = value (f32)
// max_pool2d         bufs [x, y]         ia [N,C,H,W, OH,OW, KH,KW, sh,sw, ph,pw]
//                    padding counts as -infinity.
// max_pool2d_grad    bufs [x, dy, dx]    ia as max_pool2d; the gradient goes to the first
//                    maximal element of each window (row-major order), accumulated.
// avg_pool2d         bufs [x, y]         ia as max_pool2d + [count_include_pad]
// avg_pool2d_grad    bufs [dy, dx]       ia as avg_pool2d
// upsample_nearest   bufs [x, y]         ia [N,C,H,W, OH,OW]
//                    PyTorch 'nearest': src = floor(dst * H / OH) (computed as
//                    (dst * H) / OH in integers), same for width.
// upsample_nearest_into bufs [x, y]      ia [N,C,H,W, OH,OW, CY,C0]: upsample_nearest into
//                    channels [C0, C0 + C) of y (N × CY × OH × OW), the others untouched
//                    (a concatenation's upsampled operand, written in place).
// upsample_nearest_grad bufs [dy, dx]    ia as upsample_nearest
// upsample_bilinear  bufs [x, y]         ia [N,C,H,W, OH,OW, align_corners]
//                    align_corners=1: src = dst * (H-1)/(OH-1) (0 when OH == 1);
//                    align_corners=0: src = max(0, (dst + 0.5) * H/OH - 0.5);
//                    PyTorch semantics (upsample_bilinear2d), no antialiasing.
// upsample_bilinear_grad bufs [dy, dx]   ia as upsample_bilinear
// batch_norm         bufs [x, mean, var, gamma, beta, y]  ia [N,C,HW]  fa [eps]
//                    y = (x - mean[c]) / sqrt(var[c] + eps) * gamma[c] + beta[c]
// batch_norm_train   bufs [x, gamma, beta, y]  ia [N,C,HW, relu]  fa [eps]
//                    batch_norm with x's own statistics per channel (mean and
//                    biased variance over N × HW, summed in double); then
//                    y = fmaxf(y, 0) when relu is 1.
// group_norm         bufs [x, gamma, beta, y]  ia [N,C,HW,G]  fa [eps]
//                    statistics (mean, biased variance) per (n, group) over
//                    C/G channels × HW; then per-channel affine.
// group_norm_grad_terms bufs [x, dy, gamma, t]  ia [N,C,HW,G]  fa [eps]
//                    the backward pass of group_norm(x, gamma, beta) for an
//                    upstream gradient dy, as six [N,C] planes of t (f32[6,N,C]):
//                    a, b, mu, c with dx = a·dy + b·(x − mu) + c per (n, channel),
//                    and the (n, channel) parts of dgamma and dbeta (summed over n
//                    by the caller). With r = 1/√(var + eps) and the group's mean
//                    and biased variance (over C/G channels × HW, in double),
//                    A = mean(gamma·dy), B = mean(gamma·dy·x̂) over the group:
//                    a = r·gamma, b = −r²·B, c = −r·A, dgamma part = Σ dy·x̂,
//                    dbeta part = Σ dy (over HW).
// layer_norm         bufs [x, gamma, beta, y]  ia [rows, cols]  fa [eps]
//                    per row: biased variance; gamma/beta have `cols` entries.
// layer_norm_grad_terms bufs [x, dy, gamma, t]  ia [rows, cols]  fa [eps]
//                    the backward pass of layer_norm(x, gamma, beta) for an upstream
//                    gradient dy, per row, as four [rows] vectors of t (f32[4,rows]):
//                    r, b, mu, c with dx = r·gamma·dy + b·(x − mu) + c. With the row's
//                    mean, r = 1/√(biased var + eps), A = mean(gamma·dy) and
//                    B = mean(gamma·dy·x̂) (in double): b = −r²·B, c = −r·A.
// layer_norm_grad_params bufs [x, dy, t, p]  ia [rows, cols]
//                    dgamma = Σ over rows of dy·(x − mu)·r and dbeta = Σ dy, as
//                    p = f32[2, cols], from layer_norm_grad_terms' t.
// softmax            bufs [x, y]         ia [outer, dim, inner]  over the middle axis
// log_softmax        bufs [x, y]         ia [outer, dim, inner]
// mse                bufs [a, b, y]      ia [n]   y[0] = mean((a-b)^2), accumulated in double
// cross_entropy      bufs [logits, labels, y]  ia [N,C,HW, ignore]
//                    logits f32[N,C,HW], labels int32[N,HW]; y[0] = mean over pixels
//                    whose label != ignore of -log_softmax(logits)[label]; 0 when
//                    every pixel is ignored. A label outside [0,C) that is not
//                    `ignore` is treated as ignored (the runtime validates masks).
// cross_entropy_grad bufs [logits, labels, g, dx]  ia [N,C,HW, ignore]
//                    dx = g[0] * (softmax(logits) - onehot(label)) / count for
//                    counted pixels, 0 for ignored ones.
// random_normal      bufs [seed, y]      ia [n]
//                    seed: one int64. Counter-based: element i depends only on
//                    (seed, i). See ddp_normal_at() below.
// parallel_loop      bufs [loop, p0, p1, ...]  ia [extent]
//                    runs a generated elementwise loop on the thread pool: `loop` is a
//                    ddp_loop_fn, called with disjoint ranges [begin, end) covering
//                    [0, extent) of its outermost axis and the pointers p0, p1, ...
// allreduce          bufs [x, y]         ia [n]
//                    y[0..n) = the mean over the processes of a data-parallel run of
//                    their x[0..n) (MPI_Allreduce sum, then / size: every process gets
//                    the same bits); x itself in a single process. y may be x.
//                    DDP_ERR_COMM when MPI fails (ddp_mpi_last_error() says how).
// allreduce_start    bufs [x, h]         ia [n]
//                    h = x, and h's mean over the processes begins on the
//                    communication thread (the step goes on computing); h is complete
//                    once allreduce_wait(h) has returned. Single process: h = x.
// allreduce_wait     bufs [h, y]         ia [n]
//                    waits for allreduce_start's h, then y = h (y may be h).
//                    With DDEPC_OVERLAP=1 buckets are exchanged on a communication thread
//                    (own communicator) in the order they are started, while the step
//                    computes on; otherwise allreduce_start exchanges at once (the same bits).
// batch_moments      bufs [x, y]         ia [N, C, rows, row]
//                    x: N × C planes of `rows` rows of `row` elements; y[0][c] = the mean
//                    of channel c, y[1][c] = its biased variance, from sums in double of
//                    each row (8 lanes each) added in the order (n, row): the same bits
//                    as a forward convolution's epilogue with has_moments gathers.
// lend_scratch       bufs [region]       ia [floats]
//                    lends `region` (floats × 4 bytes of the arena, planned for the
//                    next kernel call) to the calling thread: a kernel's request for
//                    its weights scratch takes it when it fits, instead of a heap
//                    block the thread keeps. floats = 0 takes the loan back; the
//                    generated code does so right after the call it planned for.
// lend_thread_scratch bufs [region]      ia [floats]
//                    lends `region` (floats × 4 bytes of the arena that nothing holds
//                    during the next kernel call) to that call's per-thread scratch
//                    (im2col columns, Winograd blocks, GEMM packing, gathers): one
//                    equal part per thread the pool may use, the caller's first,
//                    handed to the pool's threads with each parallel region. A
//                    request that does not fit what is left of its thread's part
//                    takes the thread's heap block as before. floats = 0 takes
//                    the loan back.
#define DDP_KERNEL_LIST(X) \
    X(conv2d) X(conv2d_grad_input) X(conv2d_grad_weight) X(matmul) \
    X(reduce) X(permute) X(copy_region) X(fill) \
    X(max_pool2d) X(max_pool2d_grad) X(avg_pool2d) X(avg_pool2d_grad) \
    X(upsample_nearest) X(upsample_nearest_into) X(upsample_nearest_grad) \
    X(upsample_bilinear) X(upsample_bilinear_grad) \
    X(batch_norm) X(batch_norm_train) X(group_norm) X(layer_norm) \
    X(softmax) X(log_softmax) X(mse) X(cross_entropy) X(cross_entropy_grad) \
    X(random_normal) X(parallel_loop) X(allreduce) \
    X(allreduce_start) X(allreduce_wait) \
    X(conv2d_winograd) X(conv2d_grad_input_winograd) X(conv2d_grad_weight_winograd) \
    X(reduce_loop) X(lend_scratch) X(winograd_filters) X(conv2d_winograd_prepacked) \
    X(lend_thread_scratch) X(group_norm_grad_terms) \
    X(layer_norm_grad_terms) X(layer_norm_grad_params) X(batch_moments)

typedef enum {
#define DDP_KERNEL_ENUM(name) ddp_k_##name,
    DDP_KERNEL_LIST(DDP_KERNEL_ENUM)
#undef DDP_KERNEL_ENUM
    ddp_kernel_count
} ddp_kernel_id;

/// The base pointers every entry point is passed, one per region of the
/// artifact's buffer layout, in the order of `BufferLayout.Region.allCases`:
/// weights, state (optimizer moments, running statistics, prepared weights),
/// the call's inputs and outputs, and the activation arena.
typedef struct ddp_buffers {
    char *params;
    char *state;
    char *io;
    char *arena;
} ddp_buffers;

/// A compiled entry point, `int ddp_<name>(const ddp_buffers *b, const ddp_kernel_fn *k)`.
typedef int (*ddp_entry_fn)(const ddp_buffers *buffers, const ddp_kernel_fn *kernels);

/// The revision of the kernels' argument layouts (each one's bufs and ia
/// above): raised whenever one changes, so that an artifact generated for
/// another layout is refused rather than run (the kernel ABI hash covers it
/// and the kernel names). 2: conv2d's epilogue flags gained has_moments.
/// 3: the Winograd prologue flags became [kind, relu, fh, fw, upsampled].
/// 4: prologue kind 3, a gather by bilinear interpolation. 5: the Winograd
/// input gradient takes the prologue flags (its gathered form). 6: matmul
/// takes strides for every batch axis and row strides for all three matrices.
#define DDP_KERNEL_ARGUMENT_REVISION 6

/// Index of a kernel by name, or -1.
int ddp_kernel_index(const char *name);
/// Name of a kernel by index, or NULL.
const char *ddp_kernel_name(int index);

#ifdef __cplusplus
}
#endif

#endif
