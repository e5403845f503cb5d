// ddp_kernels.h — the runtime kernels every compiled ddepc module calls: the
// implementation of ddp_abi.h (whose kernel list documents each kernel's
// arguments), the table of them that entry points are passed, and what the
// runtime asks of the library (threads, ISA, scratch loans, profiling, MPI).
#ifndef DDP_KERNELS_H
#define DDP_KERNELS_H

#include <stdint.h>

#include "ddp_abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/// Each kernel of the list, by its name.
#define DDP_KERNEL_DECL(name) \
    int ddp_##name(void *const *bufs, const int64_t *ia, const double *fa);
DDP_KERNEL_LIST(DDP_KERNEL_DECL)
#undef DDP_KERNEL_DECL

/// Runs a compiled entry point with denormal floats flushed to zero (MXCSR's
/// FTZ and DAZ bits) on the calling thread and on the pool's threads for
/// every parallel region it starts, and gives the caller its own
/// floating-point mode back after. Returns the entry point's status.
int ddp_run_entry(ddp_entry_fn entry, const ddp_buffers *buffers, const ddp_kernel_fn *kernels);

/// Requests for weights scratch that a lend_scratch loan did not cover (the
/// kernel then used the thread's heap block): 0 when the compiler's planned
/// sizes hold. For tests.
int64_t ddp_scratch_loan_misses(void);
/// Per-thread scratch requests a lend_thread_scratch loan served, and those
/// it could not (the thread's heap block served them). For tests and bench.
void ddp_thread_scratch_loan_counts(int64_t *served, int64_t *missed);

/// Gives the C heap's free pages back to the system (glibc's malloc_trim):
/// called once the compiler's data is dropped, so that a step's peak RSS
/// holds only the step's memory.
void ddp_release_free_heap(void);

/// The table passed to compiled entry points, indexed by ddp_kernel_id.
const ddp_kernel_fn *ddp_kernel_table(void);
/// The same kernels, each call timed (for `ddepc bench --profile`): totals per
/// kernel since the last ddp_profile_reset(). Not for concurrent steps.
const ddp_kernel_fn *ddp_profiling_kernel_table(void);
void ddp_profile_reset(void);
double ddp_profile_kernel_seconds(int index);
int64_t ddp_profile_kernel_calls(int index);
/// With a capacity > 0, the profiling table also logs each call (its kernel
/// and time) in order, the first `capacity` of them; 0 stops and frees the
/// log. Returns 0 without memory. Logged calls can then be read back by
/// position; ddp_profile_logged_calls counts past the capacity too.
int ddp_profile_log_calls(int64_t capacity);
int64_t ddp_profile_logged_calls(void);
int ddp_profile_logged_kernel(int64_t i);
double ddp_profile_logged_seconds(int64_t i);


/// The counter-based normal generator shared by the kernel and the reference
/// interpreter (which re-implements it in Swift bit for bit):
///   mix(z): z += 0x9E3779B97F4A7C15; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
///           z = (z ^ z>>27) * 0x94D049BB133111EB; return z ^ z>>31   (splitmix64)
///   key = mix(seed); r1 = mix(key + 2i); r2 = mix(key + 2i + 1)
///   u1 = ((r1 >> 11) + 1) * 2^-53   in (0, 1]
///   u2 = (r2 >> 11) * 2^-53         in [0, 1)
///   z  = sqrt(-2 log u1) * cos(2π u2), in double, rounded to float.
/// The random_normal kernel computes log and cos with glibc's vector math
/// library; RandomNormalKernelTests holds its floats equal to this one's.
double ddp_normal_at(uint64_t seed, uint64_t i);

/// Measured-peak helper for benchmarks: runs an n×n×n sgemm `reps` times and
/// returns the achieved GFLOP/s.
double ddp_sgemm_gflops(int64_t n, int64_t reps);

/// The fp32 FMA rate of this machine at the micro-kernels' ISA on the pool's
/// threads, measured by a register-only FMA loop of about `seconds`.
double ddp_fma_peak_gflops(double seconds);

/// Threads of the runtime pool (DDEPC_THREADS, else the CPUs this process may use).
int ddp_thread_count(void);
/// Threads a parallel region uses now (the pool's, or ddp_set_thread_limit's cap).
int ddp_parallel_threads(void);
/// Caps the threads a parallel region uses (1 ... ddp_thread_count()); for
/// benchmarks and for tests that results do not depend on the thread count.
void ddp_set_thread_limit(int threads);
/// The vector ISA the GEMM micro-kernels run: "avx512" or "avx2" (DDEPC_ISA=avx2 forces it).
const char *ddp_gemm_isa(void);
/// The widest of those this CPU runs: "avx512" or "avx2".
const char *ddp_cpu_isa(void);
/// Rows of the GEMM micro-kernel's panels at that ISA: what winograd_filters
/// should pack for.
int ddp_gemm_panel_rows(void);
/// Chooses the micro-kernels' ISA: "avx2", "avx512" (where the CPU has it) or
/// "native" (the widest); returns 0 when this CPU cannot run it.
int ddp_set_isa(const char *name);

/// The processes of a data-parallel run (ddp_mpi.c). ddp_mpi_init starts
/// MPI when the process was launched by Open MPI's mpirun with more than one
/// process, and does nothing otherwise (rank 0 of 1); it returns nonzero and
/// writes what to install or run into `message` when that cannot work.
int ddp_mpi_init(char *message, int64_t capacity);
int ddp_mpi_active(void);
int ddp_mpi_rank(void);
int ddp_mpi_size(void);
/// Seconds the steps have waited for communication so far (exchanges not hidden
/// behind computation, and waiting for the slowest process).
double ddp_mpi_comm_seconds(void);
/// What the last failed MPI call said.
const char *ddp_mpi_last_error(void);
/// Mean over the processes (see the allreduce kernel); in may be out.
int ddp_mpi_allreduce_mean(const float *in, float *out, int64_t n);
/// Rank `root`'s bytes to every process; nonzero on failure.
int ddp_mpi_broadcast(void *data, int64_t bytes, int root);
/// 1 when every process passed the same value, 0 when not, -1 on failure.
int ddp_mpi_all_equal(uint64_t value);
/// The maximum over the processes, in place; nonzero on failure.
int ddp_mpi_max_i64(int64_t *value);
/// Ends this process at once with `code` (nonzero); under mpirun that stops every
/// process of the job.
void ddp_mpi_abort(int code);
void ddp_mpi_finalize(void);
/// Printed on stderr when mpirun stops this process (SIGTERM, SIGINT, SIGHUP),
/// which then exits; the first call installs the handler.
void ddp_mpi_set_stop_message(const char *text);

#ifdef __cplusplus
}
#endif

#endif
