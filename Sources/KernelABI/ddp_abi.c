// ddp_abi.c — the kernels' names, in the order of the table (ddp_abi.h).
#include "ddp_abi.h"

#include <string.h>

#define DDP_NAME_ENTRY(name) #name,
static const char *const kernel_names[ddp_kernel_count] = {DDP_KERNEL_LIST(DDP_NAME_ENTRY)};
#undef DDP_NAME_ENTRY

int ddp_kernel_index(const char *name) {
    if (name == NULL) return -1;
    for (int i = 0; i < ddp_kernel_count; i++)
        if (strcmp(kernel_names[i], name) == 0) return i;
    return -1;
}

const char *ddp_kernel_name(int index) {
    return (index >= 0 && index < ddp_kernel_count) ? kernel_names[index] : NULL;
}
