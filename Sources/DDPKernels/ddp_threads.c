// ddp_threads.c — the one runtime thread pool every kernel shares.
//
// ddp_parallel_for splits [0, n) into one contiguous chunk per thread, a
// partition that depends only on n and the thread count; kernels that reduce
// across chunks therefore never do (every reduction stays inside one task), so
// their results do not depend on the thread count either.
//
// Workers spin briefly for the next region (kernels come back to back within
// a step) and then sleep on a condition variable, so an idle pool leaves the
// cores to the data loader. A parallel_for inside a task, or one started while
// another thread owns the pool, runs serially on its caller: nothing is ever
// oversubscribed. OpenBLAS, where still called, is held to one thread for the
// same reason.
#define _GNU_SOURCE // sched_getaffinity, CPU_COUNT

#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <immintrin.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define DDP_MAX_THREADS 256

/// Arena bytes lent to a kernel call's per-thread scratch
/// (lend_thread_scratch): `parts` equal parts of `part_floats`, part t for
/// the pool's thread t (0: the thread that lent it). `generation` tells one
/// loan from the next, so each thread carves its part afresh.
typedef struct {
    float *data;
    size_t part_floats;
    int parts;
    uint_fast64_t generation;
} thread_loan;

/// The loan this thread made for its kernel call (it runs part 0), and
/// while a worker runs a chunk of a region, the region's loan and its part.
static _Thread_local thread_loan own_loan, region_loan;
static _Thread_local int region_part;

/// Pause iterations a waiting thread spins before it sleeps (about 50 µs).
#define DDP_SPIN 20000

extern void openblas_set_num_threads(int);

static struct {
    pthread_once_t once;
    pthread_mutex_t region;   // held by the thread that owns the pool
    pthread_mutex_t lock;     // guards the condition variables
    pthread_cond_t start, done;
    int threads;              // including the caller
    atomic_int limit;         // threads a region may use (ddp_set_thread_limit)
    int active;               // threads the current region uses
    atomic_uint_fast64_t generation;
    atomic_int pending;
    ddp_task_fn fn;
    void *arg;
    int64_t n;
    unsigned int mxcsr;       // the region's floating-point mode (the caller's)
    thread_loan loan;         // the caller's per-thread scratch loan, if any
} pool = {.once = PTHREAD_ONCE_INIT,
          .region = PTHREAD_MUTEX_INITIALIZER,
          .lock = PTHREAD_MUTEX_INITIALIZER,
          .start = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

static _Thread_local int inside_task;

static void chunk(int64_t n, int threads, int t, int64_t *begin, int64_t *end) {
    *begin = n * t / threads;
    *end = n * (t + 1) / threads;
}

static void run_chunk(int t) {
    // A region held to fewer threads than the pool has (ddp_set_thread_limit)
    // is split among threads [0, active): the others have no chunk.
    if (t >= pool.active) return;
    // Workers take the floating-point mode of the thread that started the
    // region (denormals flushed inside a compiled step, see ddp_run_entry).
    if (t != 0 && _mm_getcsr() != pool.mxcsr) _mm_setcsr(pool.mxcsr);
    int64_t begin, end;
    chunk(pool.n, pool.active, t, &begin, &end);
    if (begin < end) {
        if (t != 0) {
            region_loan = pool.loan;
            region_part = t;
        }
        inside_task = 1;
        pool.fn(pool.arg, begin, end);
        inside_task = 0;
        region_loan.data = NULL;
    }
}

static void *worker(void *index) {
    int t = (int)(intptr_t)index;
    uint_fast64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen && spins < DDP_SPIN) {
            _mm_pause();
            spins++;
        }
        if (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen) {
            pthread_mutex_lock(&pool.lock);
            while (atomic_load_explicit(&pool.generation, memory_order_acquire) == seen)
                pthread_cond_wait(&pool.start, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = atomic_load_explicit(&pool.generation, memory_order_acquire);
        run_chunk(t);
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

/// DDEPC_THREADS if set, else the CPUs this process may run on.
static int wanted_threads(void) {
    const char *env = getenv("DDEPC_THREADS");
    if (env != NULL) {
        long v = strtol(env, NULL, 10);
        if (v >= 1) return v > DDP_MAX_THREADS ? DDP_MAX_THREADS : (int)v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int count = CPU_COUNT(&set);
        if (count >= 1) return count > DDP_MAX_THREADS ? DDP_MAX_THREADS : count;
    }
    return 1;
}

static void pool_start(void) {
    openblas_set_num_threads(1);
    pool.threads = wanted_threads();
    atomic_store(&pool.limit, pool.threads);
    for (int t = 1; t < pool.threads; t++) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&thread, &attr, worker, (void *)(intptr_t)t) != 0) {
            pool.threads = t; // run with the workers we have
            pthread_attr_destroy(&attr);
            break;
        }
        pthread_attr_destroy(&attr);
    }
}

int ddp_thread_count(void) {
    pthread_once(&pool.once, pool_start);
    return pool.threads;
}

int ddp_parallel_threads(void) {
    ddp_thread_count();
    return atomic_load(&pool.limit);
}

void ddp_set_thread_limit(int threads) {
    int available = ddp_thread_count();
    atomic_store(&pool.limit, threads < 1 ? 1 : threads > available ? available : threads);
}

void ddp_parallel_for(int64_t n, ddp_task_fn fn, void *arg) {
    if (n <= 0) return;
    int threads = ddp_thread_count();
    if (atomic_load(&pool.limit) == 1 || threads == 1 || n == 1 || inside_task || pthread_mutex_trylock(&pool.region) != 0) {
        fn(arg, 0, n);
        return;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.loan = own_loan;
    pool.n = n;
    pool.mxcsr = _mm_getcsr();
    pool.active = atomic_load(&pool.limit);
    atomic_store_explicit(&pool.pending, threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.start);
    pthread_mutex_unlock(&pool.lock);

    run_chunk(0);

    int spins = 0;
    while (atomic_load_explicit(&pool.pending, memory_order_acquire) != 0 && spins < DDP_SPIN) {
        _mm_pause();
        spins++;
    }
    if (atomic_load_explicit(&pool.pending, memory_order_acquire) != 0) {
        pthread_mutex_lock(&pool.lock);
        while (atomic_load_explicit(&pool.pending, memory_order_acquire) != 0)
            pthread_cond_wait(&pool.done, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
    }
    pthread_mutex_unlock(&pool.region);
}

/// MXCSR's flush-to-zero (results) and denormals-are-zero (operands) bits.
#define FLUSH_DENORMALS 0x8040u

// Denormal floats (below 1.2e-38) take microcode assists or slow paths on
// many x86 cores, and a training step makes them where values decay: Adam's
// first moment of a weight whose gradient stays zero shrinks by 0.9 a step
// and is denormal after about 800 steps. Flushed, they are zero, the same
// choice PyTorch's set_flush_denormal and most inference runtimes make.
static void take_back_loans(void);

int ddp_run_entry(ddp_entry_fn entry, const ddp_buffers *buffers, const ddp_kernel_fn *kernels) {
    unsigned int caller = _mm_getcsr();
    _mm_setcsr(caller | FLUSH_DENORMALS);
    int status = entry(buffers, kernels);
    _mm_setcsr(caller);
    take_back_loans(); // an entry that failed between a loan and its return did not
    return status;
}

/// Bytes of a transparent huge page on x86-64.
#define HUGE_PAGE ((size_t)2 << 20)

static _Thread_local struct {
    float *data;
    size_t floats;
} scratch[DDP_SCRATCH_SLOTS];

void ddp_parallel_for_elements(int64_t n, int64_t elements, ddp_task_fn fn, void *arg) {
    if (n > 1 && elements >= ((int64_t)1 << 15))
        ddp_parallel_for(n, fn, arg);
    else if (n > 0)
        fn(arg, 0, n);
}

/// The region lend_scratch lent the calling thread, if any.
static _Thread_local struct {
    float *data;
    size_t floats;
} lent;

int ddp_lend_scratch(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    lent.data = ia[0] > 0 ? bufs[0] : NULL;
    lent.floats = ia[0] > 0 ? (size_t)ia[0] : 0;
    return DDP_OK;
}

static int64_t loan_misses;

float *ddp_lent_scratch_tail(size_t floats) {
    if (lent.data == NULL) return NULL;
    size_t need = (floats + 15) & ~(size_t)15;
    if (need > (lent.floats & ~(size_t)15)) {
        __atomic_add_fetch(&loan_misses, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    lent.floats = (lent.floats & ~(size_t)15) - need; // whole 64-byte lines before it
    return lent.data + lent.floats;
}

int64_t ddp_scratch_loan_misses(void) { return __atomic_load_n(&loan_misses, __ATOMIC_RELAXED); }

void ddp_release_free_heap(void) { malloc_trim(0); }

static atomic_uint_fast64_t loan_generation;
static atomic_int_fast64_t thread_loans_served, thread_loans_missed;

int ddp_lend_thread_scratch(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    int parts = ddp_parallel_threads();
    size_t part = ia[0] > 0 ? ((size_t)ia[0] / (size_t)parts) & ~(size_t)15 : 0; // whole 64-byte lines
    own_loan.data = part > 0 ? bufs[0] : NULL;
    own_loan.part_floats = part;
    own_loan.parts = parts;
    own_loan.generation = atomic_fetch_add(&loan_generation, 1) + 1;
    return DDP_OK;
}

/// No loan outlives the entry point that made it: the arena it lent may be
/// freed, and a kernel called from outside a step must not write there.
static void take_back_loans(void) {
    lent.data = NULL;
    own_loan.data = NULL;
}

void ddp_thread_scratch_loan_counts(int64_t *served, int64_t *missed) {
    *served = atomic_load(&thread_loans_served);
    *missed = atomic_load(&thread_loans_missed);
}

/// This thread's carving of its part of the current loan: where each slot
/// starts and how much it holds, and how much of the part is taken.
static _Thread_local struct {
    uint_fast64_t generation;
    size_t used;
    size_t offset[DDP_SCRATCH_SLOTS], floats[DDP_SCRATCH_SLOTS];
} carved;

/// The loan the calling thread runs under and its part of it (`*part`), or
/// NULL when there is none or no part for this thread.
static const thread_loan *current_loan(int *part) {
    int in_region = region_loan.data != NULL; // a worker's chunk, else the lending thread
    const thread_loan *loan = in_region ? &region_loan : &own_loan;
    *part = in_region ? region_part : 0;
    return loan->data != NULL && *part < loan->parts ? loan : NULL;
}

/// `floats` for `slot` from this thread's part of the loan it runs under,
/// the same block for every request of the slot that fits it during one
/// loan; NULL without a loan or room (the heap block serves it then).
static float *from_loan(int slot, size_t floats) {
    int part;
    const thread_loan *loan = current_loan(&part);
    if (loan == NULL) return NULL;
    if (carved.generation != loan->generation) {
        carved.generation = loan->generation;
        carved.used = 0;
        memset(carved.offset, 0, sizeof carved.offset);
        memset(carved.floats, 0, sizeof carved.floats);
    }
    float *base = loan->data + (size_t)part * loan->part_floats;
    if (floats <= carved.floats[slot]) return base + carved.offset[slot];
    size_t need = (floats + 15) & ~(size_t)15;
    if (carved.used + need > loan->part_floats) {
        atomic_fetch_add_explicit(&thread_loans_missed, 1, memory_order_relaxed);
        return NULL;
    }
    carved.offset[slot] = carved.used;
    carved.floats[slot] = need;
    carved.used += need;
    atomic_fetch_add_explicit(&thread_loans_served, 1, memory_order_relaxed);
    return base + carved.offset[slot];
}

float *ddp_thread_scratch_shared_block(size_t floats) {
    // Only the thread that lent it, outside a region, before it carved any of it.
    if (region_loan.data != NULL || own_loan.data == NULL) return NULL;
    if (carved.generation == own_loan.generation && carved.used > 0) return NULL;
    size_t whole = own_loan.part_floats * (size_t)own_loan.parts, need = (floats + 15) & ~(size_t)15;
    if (need > whole) {
        atomic_fetch_add_explicit(&thread_loans_missed, 1, memory_order_relaxed);
        return NULL;
    }
    float *block = own_loan.data + (whole - need);
    // The rest, split anew: every later request of this call carves from it.
    own_loan.part_floats = ((whole - need) / (size_t)own_loan.parts) & ~(size_t)15;
    own_loan.generation = atomic_fetch_add(&loan_generation, 1) + 1;
    if (own_loan.part_floats == 0) own_loan.data = NULL;
    atomic_fetch_add_explicit(&thread_loans_served, 1, memory_order_relaxed);
    return block;
}

float *ddp_thread_scratch_block(size_t floats) {
    float *shared = ddp_thread_scratch_shared_block(floats);
    return shared != NULL ? shared : ddp_thread_scratch(DDP_SCRATCH_COLUMNS, floats);
}

size_t ddp_thread_scratch_loan_floats(void) {
    int part;
    const thread_loan *loan = current_loan(&part);
    if (loan == NULL) return 0;
    size_t used = carved.generation == loan->generation ? carved.used : 0; // what its slots took already
    return loan->part_floats > used ? loan->part_floats - used : 0;
}

float *ddp_thread_scratch(int slot, size_t floats) {
    if (slot == DDP_SCRATCH_WEIGHTS && lent.data != NULL) {
        if (floats <= lent.floats) return lent.data;
        __atomic_add_fetch(&loan_misses, 1, __ATOMIC_RELAXED);
    }
    if (slot != DDP_SCRATCH_WEIGHTS) {
        float *lent_part = from_loan(slot, floats);
        if (lent_part != NULL) return lent_part;
    }
    if (floats > scratch[slot].floats) {
        free(scratch[slot].data);
        size_t bytes = (floats * sizeof(float) + 63) & ~(size_t)63;
        if (bytes >= HUGE_PAGE) { // whole huge pages, asked for (see AlignedBuffer in the runtime)
            bytes = (bytes + HUGE_PAGE - 1) & ~(size_t)(HUGE_PAGE - 1);
            scratch[slot].data = aligned_alloc(HUGE_PAGE, bytes);
            if (scratch[slot].data != NULL) madvise(scratch[slot].data, bytes, MADV_HUGEPAGE);
        } else {
            scratch[slot].data = aligned_alloc(64, bytes);
        }
        scratch[slot].floats = scratch[slot].data != NULL ? floats : 0;
    }
    return scratch[slot].data;
}
