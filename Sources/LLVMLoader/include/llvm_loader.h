#ifndef DDP_LLVM_LOADER_H
#define DDP_LLVM_LOADER_H

#include <stddef.h>

/// Loads libLLVM (14) and binds every LLVM C API function ddepc calls; safe
/// to call again (later calls only report the first one's result). Returns 1,
/// or 0 with a message in error (capacity bytes, NUL-terminated).
int ddp_llvm_load(char *error, size_t capacity);

#endif
