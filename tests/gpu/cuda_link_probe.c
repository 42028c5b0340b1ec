/* cuda_link_probe.c: a program linked against moeccore with --no-as-needed
 * (tests/gpu/test_cuda_link.sh): every library on its link line becomes a dependency,
 * so a stub libcuda.so there would make it need libcuda.so.1. It starts on a machine
 * without a driver and says whether a GPU is there. */
#include <stdio.h>

#include "runtime/runtime.h"

int main(void) {
  printf("cuda backend: %s\n", rt_backend_cuda() ? "available" : "not available");
  return 0;
}
