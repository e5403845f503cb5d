// ddp_kernels.c — the kernel table, the counter-based normal generator,
// fill, matmul and the sgemm benchmark helper. The other kernels live in
// ddp_conv.c, ddp_layout.c, ddp_pool.c and ddp_norm.c.
#define _POSIX_C_SOURCE 200809L // clock_gettime under -std=c11

#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <immintrin.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// MARK: - Kernel table

#define DDP_TABLE_ENTRY(name) ddp_##name,
static const ddp_kernel_fn kernel_table[ddp_kernel_count] = {DDP_KERNEL_LIST(DDP_TABLE_ENTRY)};
#undef DDP_TABLE_ENTRY

const ddp_kernel_fn *ddp_kernel_table(void) { return kernel_table; }

// MARK: - Profiling table
//
// The same kernels behind wrappers that add each call's wall time to its
// kernel's total: a compiled step given this table reports where its time
// goes, and the time not in any kernel is the generated loops'.

static double profile_seconds[ddp_kernel_count];
static int64_t profile_calls[ddp_kernel_count];

// The call log: each call's kernel and time, in order, while enabled.
typedef struct {
    int32_t kernel;
    double seconds;
} logged_call;
static logged_call *call_log;
static int64_t call_log_capacity, call_log_count;

static void log_call(int kernel, double seconds) {
    if (call_log_count < call_log_capacity) call_log[call_log_count] = (logged_call){kernel, seconds};
    call_log_count++;
}

static double now_seconds(void);

#define DDP_PROFILE_WRAPPER(name)                                                    \
    static int profiled_##name(void *const *bufs, const int64_t *ia, const double *fa) {  \
        double start = now_seconds();                                                \
        int status = ddp_##name(bufs, ia, fa);                                       \
        double seconds = now_seconds() - start;                                      \
        profile_seconds[ddp_k_##name] += seconds;                                    \
        profile_calls[ddp_k_##name]++;                                               \
        if (call_log != NULL) log_call(ddp_k_##name, seconds);                       \
        return status;                                                               \
    }
DDP_KERNEL_LIST(DDP_PROFILE_WRAPPER)
#undef DDP_PROFILE_WRAPPER

#define DDP_PROFILE_ENTRY(name) profiled_##name,
static const ddp_kernel_fn profiling_table[ddp_kernel_count] = {DDP_KERNEL_LIST(DDP_PROFILE_ENTRY)};
#undef DDP_PROFILE_ENTRY

const ddp_kernel_fn *ddp_profiling_kernel_table(void) { return profiling_table; }

void ddp_profile_reset(void) {
    memset(profile_seconds, 0, sizeof profile_seconds);
    memset(profile_calls, 0, sizeof profile_calls);
}

double ddp_profile_kernel_seconds(int index) {
    return index >= 0 && index < ddp_kernel_count ? profile_seconds[index] : 0.0;
}

int64_t ddp_profile_kernel_calls(int index) {
    return index >= 0 && index < ddp_kernel_count ? profile_calls[index] : 0;
}

int ddp_profile_log_calls(int64_t capacity) {
    free(call_log);
    call_log = capacity > 0 ? malloc((size_t)capacity * sizeof *call_log) : NULL;
    call_log_capacity = call_log != NULL ? capacity : 0;
    call_log_count = 0;
    return capacity <= 0 || call_log != NULL;
}

int64_t ddp_profile_logged_calls(void) { return call_log_count; }

int ddp_profile_logged_kernel(int64_t i) { return i >= 0 && i < call_log_count && i < call_log_capacity ? call_log[i].kernel : -1; }

double ddp_profile_logged_seconds(int64_t i) {
    return i >= 0 && i < call_log_count && i < call_log_capacity ? call_log[i].seconds : 0.0;
}

// MARK: - Random numbers

static uint64_t splitmix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15u;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

// Returns z unrounded; the kernel rounds it to float when storing.
double ddp_normal_at(uint64_t seed, uint64_t i) {
    const double two_pi = 6.283185307179586476925286766559; // == 2 * M_PI exactly
    uint64_t key = splitmix64(seed);
    uint64_t r1 = splitmix64(key + 2 * i);
    uint64_t r2 = splitmix64(key + 2 * i + 1);
    double u1 = (double)((r1 >> 11) + 1) * 0x1p-53;
    double u2 = (double)(r2 >> 11) * 0x1p-53;
    return sqrt(-2.0 * log(u1)) * cos(two_pi * u2);
}

typedef struct {
    uint64_t seed;
    float *y;
} normal_job;

// The kernel takes log and cos of whole vectors from glibc's vector math
// library (libmvec): 20 ns per value was 5% of a DDeP step. Its functions
// may differ from the scalar ones in the last bits of a double; rounded to
// float, not one of 2^24 values differed from ddp_normal_at's when checked.
#if defined(__AVX512F__)
#define NORMAL_LANES 8
typedef __m512d normal_vector;
__m512d _ZGVeN8v_log(__m512d);
__m512d _ZGVeN8v_cos(__m512d);
#define VECTOR_LOG _ZGVeN8v_log
#define VECTOR_COS _ZGVeN8v_cos
#define VECTOR_LOAD _mm512_loadu_pd
#define VECTOR_SET1 _mm512_set1_pd
#define VECTOR_MUL _mm512_mul_pd
#define VECTOR_SQRT _mm512_sqrt_pd
#define VECTOR_STORE_FLOATS(p, v) _mm256_storeu_ps((p), _mm512_cvtpd_ps(v))
#elif defined(__AVX2__)
#define NORMAL_LANES 4
typedef __m256d normal_vector;
__m256d _ZGVdN4v_log(__m256d);
__m256d _ZGVdN4v_cos(__m256d);
#define VECTOR_LOG _ZGVdN4v_log
#define VECTOR_COS _ZGVdN4v_cos
#define VECTOR_LOAD _mm256_loadu_pd
#define VECTOR_SET1 _mm256_set1_pd
#define VECTOR_MUL _mm256_mul_pd
#define VECTOR_SQRT _mm256_sqrt_pd
#define VECTOR_STORE_FLOATS(p, v) _mm_storeu_ps((p), _mm256_cvtpd_ps(v))
#endif

static void normal_range(void *arg, int64_t begin, int64_t end) {
    normal_job *job = arg;
    int64_t i = begin;
#ifdef NORMAL_LANES
    const double two_pi = 6.283185307179586476925286766559; // as in ddp_normal_at
    uint64_t key = splitmix64(job->seed);
    for (; i + NORMAL_LANES <= end; i += NORMAL_LANES) {
        double u1[NORMAL_LANES], u2[NORMAL_LANES];
        for (int l = 0; l < NORMAL_LANES; l++) {
            uint64_t r1 = splitmix64(key + 2 * (uint64_t)(i + l)), r2 = splitmix64(key + 2 * (uint64_t)(i + l) + 1);
            u1[l] = (double)((r1 >> 11) + 1) * 0x1p-53;
            u2[l] = (double)(r2 >> 11) * 0x1p-53;
        }
        normal_vector radius = VECTOR_SQRT(VECTOR_MUL(VECTOR_SET1(-2.0), VECTOR_LOG(VECTOR_LOAD(u1))));
        normal_vector angle = VECTOR_COS(VECTOR_MUL(VECTOR_SET1(two_pi), VECTOR_LOAD(u2)));
        VECTOR_STORE_FLOATS(job->y + i, VECTOR_MUL(radius, angle));
    }
#endif
    for (; i < end; i++) job->y[i] = (float)ddp_normal_at(job->seed, (uint64_t)i);
}

// random_normal: y[i] = (float)ddp_normal_at(seed, i); each element depends on
// its index alone, so the pool's threads split the range freely.
int ddp_random_normal(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    normal_job job = {(uint64_t)*(const int64_t *)bufs[0], bufs[1]};
    ddp_parallel_for(ia[0], normal_range, &job);
    return DDP_OK;
}

// MARK: - Generated loops on the pool

typedef struct {
    ddp_loop_fn loop;
    void *const *pointers;
} loop_job;

static void loop_range(void *arg, int64_t begin, int64_t end) {
    loop_job *job = arg;
    job->loop(begin, end, job->pointers);
}

// parallel_loop: an elementwise loop's outer axis split over the pool. Every
// element is computed alone, so the split does not change any result.
int ddp_parallel_loop(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    loop_job job;
    memcpy(&job.loop, &bufs[0], sizeof job.loop); // a function pointer passed as a buffer
    job.pointers = bufs + 1;
    ddp_parallel_for(ia[0], loop_range, &job);
    return DDP_OK;
}

// MARK: - Fill and matmul

// fill: dst[0..n) = value.
int ddp_fill(void *const *bufs, const int64_t *ia, const double *fa) {
    float *dst = bufs[0];
    float v = (float)fa[0];
    int64_t n = ia[0];
    for (int64_t i = 0; i < n; i++) dst[i] = v;
    return DDP_OK;
}

typedef struct {
    const float *a, *b;
    float *c;
    int64_t m, k, n, lda, ldb, ldc;
    int64_t axes, size[DDP_MAX_RANK], stride[3][DDP_MAX_RANK]; // batch axes; a, b, c strides along them
    int trans_a, trans_b, failed;
} matmul_job;

/// Batch entries [begin, end), each one product (on the pool when the
/// caller is not already one of its tasks).
static void matmul_batches(void *arg, int64_t begin, int64_t end) {
    matmul_job *j = arg;
    for (int64_t i = begin; i < end; i++) {
        int64_t offset[3] = {0, 0, 0}, rest = i;
        for (int64_t axis = j->axes - 1; axis >= 0; axis--) {
            int64_t at = rest % j->size[axis];
            rest /= j->size[axis];
            for (int t = 0; t < 3; t++) offset[t] += at * j->stride[t][axis];
        }
        if (!ddp_gemm(j->trans_a, j->trans_b, j->m, j->n, j->k, j->a + offset[0], j->lda, j->b + offset[1], j->ldb, 0.0f,
                      j->c + offset[2], j->ldc))
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    }
}

// matmul: one sgemm per batch entry, each matrix where its strides put it.
int ddp_matmul(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    matmul_job job = {.a = bufs[0], .b = bufs[1], .c = bufs[2], .axes = ia[0]};
    if (job.axes < 0 || job.axes > DDP_MAX_RANK) return DDP_ERR_ARGS;
    const int64_t *at = ia + 1;
    int64_t batch = 1;
    for (int64_t axis = 0; axis < job.axes; axis++) batch *= job.size[axis] = *at++;
    job.m = at[0], job.k = at[1], job.n = at[2];
    job.trans_a = at[3] != 0, job.trans_b = at[4] != 0;
    job.lda = at[5], job.ldb = at[6], job.ldc = at[7];
    at += 8;
    for (int t = 0; t < 3; t++)
        for (int64_t axis = 0; axis < job.axes; axis++) job.stride[t][axis] = *at++;
    // Many small products (attention heads): one per thread at a time, each
    // serial; few large ones: one after another, each split over the pool.
    if (batch >= ddp_parallel_threads())
        ddp_parallel_for(batch, matmul_batches, &job);
    else
        matmul_batches(&job, 0, batch);
    return job.failed ? DDP_ERR_NOMEM : DDP_OK;
}

// MARK: - Benchmark helper

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double ddp_sgemm_gflops(int64_t n, int64_t reps) {
    if (n <= 0 || reps <= 0) return 0.0;
    size_t count = (size_t)n * (size_t)n;
    float *a = malloc(count * sizeof(float));
    float *b = malloc(count * sizeof(float));
    float *c = malloc(count * sizeof(float));
    double gflops = 0.0;
    if (a && b && c) {
        for (size_t i = 0; i < count; i++) {
            a[i] = (float)(i % 7) * 0.25f - 0.75f;
            b[i] = (float)(i % 5) * 0.5f - 1.0f;
        }
        ddp_gemm(0, 0, n, n, n, a, n, b, n, 0.0f, c, n); // warm-up (thread pool, caches)
        double start = now_seconds();
        for (int64_t r = 0; r < reps; r++) ddp_gemm(0, 0, n, n, n, a, n, b, n, 0.0f, c, n);
        double elapsed = now_seconds() - start;
        if (elapsed > 0) gflops = 2.0 * (double)n * (double)n * (double)n * (double)reps / elapsed * 1e-9;
    }
    free(a);
    free(b);
    free(c);
    return gflops;
}
