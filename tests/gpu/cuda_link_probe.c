/* cuda_link_probe.c: a program linked against moeccore with --no-as-needed
 * (tests/gpu/test_cuda_link.sh): every library on its link line becomes a dependency,
 * so the toolkit's link-only libcuda.so (lib64/stubs) there would make it need
 * libcuda.so.1. It starts on a machine without a driver and says whether the cuda backend can run (bench/gpu_quick.sh reads
 * that line). */
#include <stdio.h>

#include "runtime/runtime.h"
#ifdef MOEC_HAVE_CUDA
#include "runtime/cuda/cuda.h"
#endif

int main(void) {
  if (rt_backend_cuda()) {
    printf("cuda backend: available\n");
    return 0;
  }
#ifdef MOEC_HAVE_CUDA
  printf("cuda backend: not available (%s)\n", rt_cuda_unavailable_reason());
#else
  printf("cuda backend: not available (moec was built without CUDA)\n");
#endif
  return 0;
}
