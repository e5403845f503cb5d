// ddp_mpi.c — the processes of a data-parallel run, over MPI, and the
// `allreduce` kernel that compiled steps call.
//
// MPI is loaded with dlopen when (and only when) the process was started by
// Open MPI's mpirun (OMPI_COMM_WORLD_SIZE > 1), rather than linked: a plain
// build and a single-process run then need no MPI at all, and a data-parallel
// launch on a machine without the library gets a message saying what to
// install instead of a loader error before main. The price is a tiny ABI
// shim: Open MPI's handles are the addresses of its predefined objects
// (ompi_mpi_comm_world, ompi_mpi_float, ...), stable across 3.x-5.x
// (libmpi.so.40). MPICH's integer handles are a different ABI; a launch by
// MPICH's mpiexec is detected (PMI_SIZE) and refused with what to run.
#include "ddp_kernels.h"
#include "ddp_internal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

typedef void *mpi_obj;  // MPI_Comm, MPI_Datatype, MPI_Op, MPI_Errhandler in Open MPI

static struct {
    int active, rank, size;
    void *lib;
    int (*init_thread)(int *, char ***, int, int *);
    int (*initialized)(int *);
    int (*comm_rank)(mpi_obj, int *);
    int (*comm_size)(mpi_obj, int *);
    int (*allreduce)(const void *, void *, int, mpi_obj, mpi_obj, mpi_obj);
    int (*bcast)(void *, int, mpi_obj, int, mpi_obj);
    int (*finalize)(void);
    int (*set_errhandler)(mpi_obj, mpi_obj);
    int (*error_string)(int, char *, int *);
    int (*comm_dup)(mpi_obj, mpi_obj *);
    mpi_obj buckets;  // the communication thread's communicator
    mpi_obj comm_world, dt_float, dt_byte, dt_u64, op_sum, op_max, errors_return;
    double comm_seconds;
    char error[512];
} mpi = {.rank = 0, .size = 1};

#define MPI_IN_PLACE_OMPI ((void *)1)
#define MPI_THREAD_FUNNELED_OMPI 1
#define MPI_THREAD_MULTIPLE_OMPI 3

// Overlap: allreduce_start queues a gradient bucket for a communication
// thread and returns, so the backward pass goes on computing while the
// bucket is exchanged; allreduce_wait (before the optimizer) waits for it.
// The thread exchanges buckets in the order the step starts them, on its
// own communicator (a duplicate of MPI_COMM_WORLD), so its collectives
// match across ranks while the step's own blocking allreduces (batch-norm
// statistics, the loss) go on on MPI_COMM_WORLD (MPI_THREAD_MULTIPLE).
//
// It is off unless DDEPC_OVERLAP=1: the thread needs a core of its own
// (Open MPI polls while it waits), and with one process per core (the
// default, DDEPC_THREADS = the cores) it slows the step down (measured: 2
// ranks on 2 cores, 25-30% fewer images/s). Off, allreduce_start exchanges
// its bucket at once, and allreduce_wait only copies.
enum { COMM_QUEUE = 1024, COMM_PENDING = 256 };
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int running;
    struct { float *data; int64_t n; } jobs[COMM_QUEUE];
    uint64_t submitted, completed;
    struct { const float *data; uint64_t ticket; } pending[COMM_PENDING];
    int pending_count;
    int status;  // the first failure, sticky
} comm = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int env_int(const char *name) {
    const char *value = getenv(name);
    return value && *value ? atoi(value) : 0;
}

static void start_comm_thread(void);

static int fail(char *message, int64_t capacity, const char *text) {
    if (message && capacity > 0) snprintf(message, (size_t)capacity, "%s", text);
    return 1;
}

int ddp_mpi_init(char *message, int64_t capacity) {
    if (mpi.active) return 0;
    char text[1024];
    int size = env_int("OMPI_COMM_WORLD_SIZE");
    if (size <= 1) {
        int other = env_int("PMI_SIZE");
        if (size <= 0 && other > 1) {
            snprintf(text, sizeof text,
                     "this process was started by an MPI launcher other than Open MPI's (PMI_SIZE=%d, e.g. MPICH's "
                     "mpiexec or srun); ddepc runs data-parallel over Open MPI: install it (Debian: apt-get install "
                     "openmpi-bin libopenmpi-dev) and launch with Open MPI's `mpirun -np N ddepc train ...`",
                     other);
            return fail(message, capacity, text);
        }
        return 0;  // one process: allreduce is the identity
    }
    // DDEPC_MPI_LIBRARY names Open MPI's libmpi where the loader does not find it.
    const char *given = getenv("DDEPC_MPI_LIBRARY");
    const char *names[] = {given && *given ? given : "libmpi.so.40", "libmpi.so"};
    for (int i = 0; i < (given && *given ? 1 : 2) && !mpi.lib; i++) mpi.lib = dlopen(names[i], RTLD_NOW | RTLD_GLOBAL);
    if (!mpi.lib) {
        snprintf(text, sizeof text,
                 "started by Open MPI's mpirun (%d processes) but Open MPI's library %s cannot be loaded (%s); "
                 "install it on every machine of the job (Debian: apt-get install openmpi-bin libopenmpi-dev, or "
                 "scripts/install-deps.sh), or name it with DDEPC_MPI_LIBRARY=/path/to/libmpi.so",
                 size, names[0], dlerror());
        return fail(message, capacity, text);
    }
#define SYM(field, name)                                                                                    \
    do {                                                                                                    \
        *(void **)&mpi.field = dlsym(mpi.lib, name);                                                       \
        if (!mpi.field) {                                                                                   \
            snprintf(text, sizeof text, "the MPI library found has no symbol %s: it is not Open MPI 3.x-5.x; " \
                     "install Open MPI (Debian: apt-get install openmpi-bin libopenmpi-dev)", name);        \
            return fail(message, capacity, text);                                                           \
        }                                                                                                   \
    } while (0)
    SYM(init_thread, "MPI_Init_thread");
    SYM(initialized, "MPI_Initialized");
    SYM(comm_rank, "MPI_Comm_rank");
    SYM(comm_size, "MPI_Comm_size");
    SYM(allreduce, "MPI_Allreduce");
    SYM(bcast, "MPI_Bcast");
    SYM(finalize, "MPI_Finalize");
    SYM(set_errhandler, "MPI_Comm_set_errhandler");
    SYM(error_string, "MPI_Error_string");
    SYM(comm_dup, "MPI_Comm_dup");
    SYM(comm_world, "ompi_mpi_comm_world");
    SYM(dt_float, "ompi_mpi_float");
    SYM(dt_byte, "ompi_mpi_byte");
    SYM(dt_u64, "ompi_mpi_uint64_t");
    SYM(op_sum, "ompi_mpi_op_sum");
    SYM(op_max, "ompi_mpi_op_max");
    SYM(errors_return, "ompi_mpi_errors_return");
#undef SYM
    // A process waiting in MPI yields its core to the computing threads.
    setenv("OMPI_MCA_mpi_yield_when_idle", "1", 0);
    const char *overlap = getenv("DDEPC_OVERLAP");
    int wanted = overlap && strcmp(overlap, "1") == 0 ? MPI_THREAD_MULTIPLE_OMPI : MPI_THREAD_FUNNELED_OMPI;
    int provided = 0;
    if (mpi.init_thread(NULL, NULL, wanted, &provided) != 0)
        return fail(message, capacity, "MPI_Init_thread failed; see Open MPI's message above");
    // Errors come back as statuses (and become messages) instead of aborting inside MPI.
    mpi.set_errhandler(mpi.comm_world, mpi.errors_return);
    mpi.comm_rank(mpi.comm_world, &mpi.rank);
    mpi.comm_size(mpi.comm_world, &mpi.size);
    mpi.active = 1;
    if (wanted == MPI_THREAD_MULTIPLE_OMPI && provided >= MPI_THREAD_MULTIPLE_OMPI &&
        mpi.comm_dup(mpi.comm_world, &mpi.buckets) == 0)
        start_comm_thread();
    return 0;
}

int ddp_mpi_active(void) { return mpi.active; }
int ddp_mpi_rank(void) { return mpi.rank; }
int ddp_mpi_size(void) { return mpi.size; }
double ddp_mpi_comm_seconds(void) { return mpi.comm_seconds; }
const char *ddp_mpi_last_error(void) { return mpi.error; }

static int check(int code, const char *what) {
    if (code == 0) return 0;
    char text[256] = "";
    int length = 0;
    if (mpi.error_string) mpi.error_string(code, text, &length);
    snprintf(mpi.error, sizeof mpi.error, "%s failed on rank %d of %d: %s", what, mpi.rank, mpi.size, text);
    return 1;
}

// Sum over the processes, then divide by their number, in place: the mean
// of the per-process values. MPI_Allreduce gives every rank the same bits.
static int reduce_now(float *out, int64_t n, mpi_obj communicator) {
    const int64_t chunk = (int64_t)1 << 30;
    for (int64_t done = 0; done < n; done += chunk) {
        int count = (int)(n - done < chunk ? n - done : chunk);
        if (check(mpi.allreduce(MPI_IN_PLACE_OMPI, out + done, count, mpi.dt_float, mpi.op_sum, communicator),
                  "MPI_Allreduce"))
            return DDP_ERR_COMM;
    }
    const float inverse_size = 1.0f / (float)mpi.size;
    if ((mpi.size & (mpi.size - 1)) == 0) {
        for (int64_t i = 0; i < n; i++) out[i] *= inverse_size;  // exact for a power of two
    } else {
        for (int64_t i = 0; i < n; i++) out[i] /= (float)mpi.size;
    }
    return DDP_OK;
}

static void *comm_main(void *unused) {
    (void)unused;
    pthread_mutex_lock(&comm.lock);
    for (;;) {
        while (comm.completed == comm.submitted) pthread_cond_wait(&comm.cond, &comm.lock);
        float *data = comm.jobs[comm.completed % COMM_QUEUE].data;
        int64_t n = comm.jobs[comm.completed % COMM_QUEUE].n;
        int failed = comm.status;
        pthread_mutex_unlock(&comm.lock);
        // After a failure the job is over (the error stops this process); no more collectives.
        int status = failed ? DDP_ERR_COMM : reduce_now(data, n, mpi.buckets);
        pthread_mutex_lock(&comm.lock);
        if (status != DDP_OK && !comm.status) comm.status = status;
        comm.completed++;
        pthread_cond_broadcast(&comm.cond);
    }
    return NULL;
}

static void start_comm_thread(void) {
    pthread_t thread;
    pthread_attr_t attributes;
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attributes, comm_main, NULL) == 0) comm.running = 1;
    pthread_attr_destroy(&attributes);
}

// Queues `data` (caller holds the lock); returns its ticket.
static uint64_t submit(float *data, int64_t n) {
    while (comm.submitted - comm.completed == COMM_QUEUE) pthread_cond_wait(&comm.cond, &comm.lock);
    uint64_t ticket = comm.submitted++;
    comm.jobs[ticket % COMM_QUEUE].data = data;
    comm.jobs[ticket % COMM_QUEUE].n = n;
    pthread_cond_broadcast(&comm.cond);
    return ticket;
}

// Waits for `ticket` (caller holds the lock); the time waited is the
// communication the step could not hide.
static int await(uint64_t ticket) {
    double start = now_seconds();
    while (comm.completed <= ticket) pthread_cond_wait(&comm.cond, &comm.lock);
    mpi.comm_seconds += now_seconds() - start;
    return comm.status;
}

int ddp_mpi_allreduce_mean(const float *in, float *out, int64_t n) {
    if (in != out) memmove(out, in, (size_t)n * sizeof(float));
    if (!mpi.active) return DDP_OK;
    double start = now_seconds();
    int status = reduce_now(out, n, mpi.comm_world);
    pthread_mutex_lock(&comm.lock);
    mpi.comm_seconds += now_seconds() - start;
    pthread_mutex_unlock(&comm.lock);
    return status;
}

int ddp_allreduce(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    if (ia[0] < 0) return DDP_ERR_ARGS;
    return ddp_mpi_allreduce_mean((const float *)bufs[0], (float *)bufs[1], ia[0]);
}

int ddp_allreduce_start(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *x = (const float *)bufs[0];
    float *h = (float *)bufs[1];
    int64_t n = ia[0];
    if (n < 0) return DDP_ERR_ARGS;
    if (!mpi.active || !comm.running) return ddp_mpi_allreduce_mean(x, h, n);
    if (x != h) memmove(h, x, (size_t)n * sizeof(float));
    pthread_mutex_lock(&comm.lock);
    if (comm.pending_count == COMM_PENDING) {
        pthread_mutex_unlock(&comm.lock);
        return DDP_ERR_ARGS;
    }
    uint64_t ticket = submit(h, n);
    comm.pending[comm.pending_count].data = h;
    comm.pending[comm.pending_count].ticket = ticket;
    comm.pending_count++;
    pthread_mutex_unlock(&comm.lock);
    return DDP_OK;
}

int ddp_allreduce_wait(void *const *bufs, const int64_t *ia, const double *fa) {
    (void)fa;
    const float *h = (const float *)bufs[0];
    float *y = (float *)bufs[1];
    int64_t n = ia[0];
    if (n < 0) return DDP_ERR_ARGS;
    int status = DDP_OK;
    if (mpi.active && comm.running) {
        pthread_mutex_lock(&comm.lock);
        int found = -1;
        for (int i = 0; i < comm.pending_count; i++)
            if (comm.pending[i].data == h) found = i;
        if (found < 0) {
            pthread_mutex_unlock(&comm.lock);
            return DDP_ERR_ARGS;  // no allreduce_start of this buffer
        }
        uint64_t ticket = comm.pending[found].ticket;
        comm.pending[found] = comm.pending[--comm.pending_count];
        status = await(ticket);
        pthread_mutex_unlock(&comm.lock);
    }
    if (status == DDP_OK && y != h) memmove(y, h, (size_t)n * sizeof(float));
    return status;
}

int ddp_mpi_broadcast(void *data, int64_t bytes, int root) {
    if (!mpi.active) return 0;
    const int64_t chunk = (int64_t)1 << 30;
    for (int64_t done = 0; done < bytes; done += chunk) {
        int count = (int)(bytes - done < chunk ? bytes - done : chunk);
        if (check(mpi.bcast((char *)data + done, count, mpi.dt_byte, root, mpi.comm_world), "MPI_Bcast")) return 1;
    }
    return 0;
}

int ddp_mpi_all_equal(uint64_t value) {
    if (!mpi.active) return 1;
    // max(v) == v and max(~v) == ~v on every rank iff every rank holds v.
    uint64_t pair[2] = {value, ~value};
    if (check(mpi.allreduce(MPI_IN_PLACE_OMPI, pair, 2, mpi.dt_u64, mpi.op_max, mpi.comm_world), "MPI_Allreduce"))
        return -1;
    return pair[0] == value && pair[1] == ~value;
}

int ddp_mpi_max_i64(int64_t *value) {
    if (!mpi.active) return 0;
    uint64_t biased = (uint64_t)*value ^ 0x8000000000000000ull;  // order-preserving as unsigned
    if (check(mpi.allreduce(MPI_IN_PLACE_OMPI, &biased, 1, mpi.dt_u64, mpi.op_max, mpi.comm_world), "MPI_Allreduce"))
        return 1;
    *value = (int64_t)(biased ^ 0x8000000000000000ull);
    return 0;
}

// Exits without MPI_Finalize: Open MPI's mpirun then stops every other
// process of the job and names this one ("exited with non-zero status ...
// Process name: [[job,1],RANK]"). MPI_Abort would do the same, but Open MPI
// 4.1 garbles its notice ("ORTE_ERROR_LOG: Data unpack would read past end
// of buffer") when the aborting process has printed its own message.
void ddp_mpi_abort(int code) {
    fflush(stdout);
    fflush(stderr);
    _exit(code == 0 ? 1 : code);
}

void ddp_mpi_finalize(void) {
    if (mpi.active) {
        mpi.finalize();
        mpi.active = 0;
    }
}

// What this process says when mpirun stops it (SIGTERM after another
// process of the job died): two buffers, so the handler never reads one
// that is being written.
static char stop_text[2][2048];
static volatile sig_atomic_t stop_index = -1;

static void on_stop(int signal_number) {
    int index = stop_index;
    if (index >= 0) {
        const char *text = stop_text[index];
        ssize_t ignored = write(STDERR_FILENO, text, strlen(text));
        (void)ignored;
    }
    _exit(128 + signal_number);
}

void ddp_mpi_set_stop_message(const char *text) {
    int next = stop_index == 0 ? 1 : 0;
    snprintf(stop_text[next], sizeof stop_text[next], "%s", text);
    if (stop_index < 0) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_handler = on_stop;
        sigemptyset(&action.sa_mask);
        sigaction(SIGTERM, &action, NULL);
        sigaction(SIGINT, &action, NULL);
        sigaction(SIGHUP, &action, NULL);
    }
    stop_index = next;
}
