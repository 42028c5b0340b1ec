/* version.c: moec's version and the features this build has (moec --version, and the
 * metadata of every checkpoint). */
#include "common.h"

#ifndef MOEC_VERSION
#define MOEC_VERSION "unknown"
#endif

const char *mc_version(void) {
  return MOEC_VERSION;
}

const char *mc_features(void) {
  return "cpu"
#ifdef MOEC_HAVE_LLVM
         ", llvm"
#endif
#ifdef MOEC_HAVE_MPI
         ", mpi"
#endif
#ifdef MOEC_HAVE_CUDA
         ", cuda"
#endif
#ifdef MOEC_HAVE_NVRTC
         ", nvrtc"
#endif
#ifdef MOEC_HAVE_NCCL
         ", nccl"
#endif
      ;
}
