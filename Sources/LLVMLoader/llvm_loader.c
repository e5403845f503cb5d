// llvm_loader.c — libLLVM is loaded when the LLVM backend first runs, not
// when ddepc starts.
//
// Linked at start-up, libLLVM-14 took 41 MB of every ddepc process's
// resident memory (the dynamic linker relocates its 7.5 MB of vtables and
// touches its pages), in training, evaluation and prediction too, which
// never generate code. Here each LLVM function ddepc calls
// (llvm_functions.h) is a two-instruction trampoline that jumps through a
// pointer; ddp_llvm_load opens the library and fills the pointers. The
// trampolines jump without touching a register, so they need no signatures
// and the arguments pass through as they came (the technique of the
// Implib.so generator). Until the library is loaded every pointer leads to
// a function that says so and aborts.
#define _GNU_SOURCE
#include "llvm_loader.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#if !defined(__x86_64__)
#error "the LLVM loader's trampolines are written for x86-64"
#endif

static void unloaded(void) {
    fputs("ddepc: an LLVM function was called before libLLVM was loaded (ddp_llvm_load)\n", stderr);
    abort();
}

// The pointers; hidden, so a trampoline reaches its pointer by a
// PC-relative load and not through the global offset table.
#define LLVM_FUNCTION(name) __attribute__((visibility("hidden"))) void *ddp_llvm_pointer_##name = (void *)unloaded;
#include "llvm_functions.h"
#undef LLVM_FUNCTION

// The trampolines, under the LLVM functions' own names.
#define LLVM_FUNCTION(name)                                                  \
    __asm__(".text\n"                                                        \
            ".globl " #name "\n"                                             \
            ".type " #name ", @function\n"                                   \
            ".p2align 4\n" #name ":\n"                                       \
            "\tjmp *ddp_llvm_pointer_" #name "(%rip)\n"                      \
            ".size " #name ", . - " #name "\n");
#include "llvm_functions.h"
#undef LLVM_FUNCTION

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char failure[512]; // empty once loaded

static void load(void) {
    // The versioned name is what the runtime package installs; the plain
    // one comes with the development package.
    void *library = dlopen("libLLVM-14.so.1", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) library = dlopen("libLLVM-14.so", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        const char *why = dlerror();
        snprintf(failure, sizeof failure, "cannot load libLLVM-14 for the LLVM backend (%s); install it (scripts/install-deps.sh) or use --backend c",
                 why ? why : "not found");
        return;
    }
    void *symbol;
#define LLVM_FUNCTION(name)                                                                  \
    if ((symbol = dlsym(library, #name)) == NULL) {                                          \
        snprintf(failure, sizeof failure, "libLLVM-14 has no function %s", #name);           \
        return;                                                                              \
    }                                                                                        \
    ddp_llvm_pointer_##name = symbol;
#include "llvm_functions.h"
#undef LLVM_FUNCTION
}

int ddp_llvm_load(char *error, size_t capacity) {
    pthread_once(&once, load);
    if (failure[0] == '\0') return 1;
    if (error != NULL && capacity > 0) snprintf(error, capacity, "%s", failure);
    return 0;
}
