/* test_cuda_nccl.c: the NCCL communicator of the CUDA backend (runtime/cuda/nccl_comm.h)
 * on every GPU of the machine in one process (ncclCommInitAll; one rank per GPU, so
 * with one GPU the collectives are the one-rank identities):
 *   all-reduce (ring) equals the rank-order sum to float rounding; the ordered
 *   all-reduce equals it bit for bit (runtime/comm.h's contract); all-to-all with
 *   uneven counts (rank p sends p+q+1 elements to rank q) delivers every element.
 * Without a GPU, without NCCL or without CUDA: "SKIP: ..." and exit 77. */
#include <math.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/test.h"
#if defined(MOEC_HAVE_CUDA) && defined(MOEC_HAVE_NCCL)
#include "runtime/cuda/nccl_comm.h"

#define MAXR 8
#define NEL 100003

static float val(int r, int64_t i) { return (float)sin(0.001 * (double)i + r) * (float)(r + 1); }

int main(void) {
  const Backend *be = rt_backend_cuda();
  if (!be) {
    printf("SKIP: %s\n", rt_cuda_unavailable_reason());
    return 77;
  }
  int R = rt_cuda_device_count();
  if (R > MAXR) R = MAXR;
  RtNccl *c = rt_nccl_init_local(R);
  CHECK(rt_nccl_nranks(c) == R && rt_nccl_nlocal(c) == R);
  static float host[NEL], ref[NEL];
  for (int64_t i = 0; i < NEL; i++) {
    float s = val(0, i);
    for (int r = 1; r < R; r++) s += val(r, i);
    ref[i] = s;
  }
  for (int ordered = 0; ordered < 2; ordered++) {
    void *buf[MAXR];
    for (int r = 0; r < R; r++) {
      rt_cuda_use(rt_cuda_dev(r)); /* Backend.alloc acts on the current GPU */
      buf[r] = be->alloc(NEL * sizeof(float));
      for (int64_t i = 0; i < NEL; i++) host[i] = val(r, i);
      be->upload(buf[r], host, sizeof host);
    }
    if (ordered) rt_nccl_allreduce_sum_ordered(c, buf, NEL, RT_NCCL_F32);
    else rt_nccl_allreduce_sum(c, buf, NEL, RT_NCCL_F32);
    rt_nccl_join(c);
    int bad = 0;
    for (int r = 0; r < R; r++) {
      rt_cuda_sync_dev(rt_cuda_dev(r));
      be->download(host, buf[r], sizeof host);
      for (int64_t i = 0; i < NEL; i++) {
        bool ok = ordered ? host[i] == ref[i] : fabsf(host[i] - ref[i]) <= 1e-5f * (1 + fabsf(ref[i]));
        if (!ok && bad++ < 5)
          fprintf(stderr, "all-reduce%s rank %d [%lld]: %.9g, expected %.9g\n",
                  ordered ? " (ordered)" : "", r, (long long)i, host[i], ref[i]);
      }
      rt_cuda_use(rt_cuda_dev(r));
      be->release(buf[r]);
    }
    CHECK(bad == 0);
    printf("%-4s all-reduce%s over %d GPU(s)\n", bad ? "FAIL" : "ok", ordered ? " (rank order)" : "", R);
  }
  /* all-to-all: rank p sends p+q+1 floats of value 1000p+q+j/1000 to rank q */
  {
    int64_t sc[MAXR][MAXR], sd[MAXR][MAXR], rc[MAXR][MAXR], rd[MAXR][MAXR];
    const int64_t *scp[MAXR], *sdp[MAXR], *rcp[MAXR], *rdp[MAXR];
    void *sb[MAXR], *rb[MAXR];
    int64_t stot[MAXR], rtot[MAXR];
    for (int p = 0; p < R; p++) {
      stot[p] = rtot[p] = 0;
      for (int q = 0; q < R; q++) {
        sc[p][q] = p + q + 1;
        sd[p][q] = stot[p];
        stot[p] += sc[p][q];
        rc[p][q] = q + p + 1; /* what q sends to p */
        rd[p][q] = rtot[p];
        rtot[p] += rc[p][q];
      }
      scp[p] = sc[p];
      sdp[p] = sd[p];
      rcp[p] = rc[p];
      rdp[p] = rd[p];
      rt_cuda_use(rt_cuda_dev(p));
      sb[p] = be->alloc((size_t)stot[p] * sizeof(float));
      rb[p] = be->alloc((size_t)rtot[p] * sizeof(float));
      for (int q = 0; q < R; q++)
        for (int64_t j = 0; j < sc[p][q]; j++) host[sd[p][q] + j] = 1000.0f * p + q + 0.001f * j;
      be->upload(sb[p], host, (size_t)stot[p] * sizeof(float));
    }
    rt_nccl_alltoallv(c, (const void *const *)sb, scp, sdp, rb, rcp, rdp, RT_NCCL_F32);
    rt_nccl_join(c);
    int bad = 0;
    for (int p = 0; p < R; p++) {
      rt_cuda_sync_dev(rt_cuda_dev(p));
      be->download(host, rb[p], (size_t)rtot[p] * sizeof(float));
      for (int q = 0; q < R; q++)
        for (int64_t j = 0; j < rc[p][q]; j++) {
          float want = 1000.0f * q + p + 0.001f * j;
          if (host[rd[p][q] + j] != want && bad++ < 5)
            fprintf(stderr, "all-to-all: rank %d from %d [%lld]: %g, expected %g\n", p, q,
                    (long long)j, host[rd[p][q] + j], want);
        }
      rt_cuda_use(rt_cuda_dev(p));
      be->release(sb[p]);
      be->release(rb[p]);
    }
    CHECK(bad == 0);
    printf("%-4s all-to-all (uneven counts) over %d GPU(s)\n", bad ? "FAIL" : "ok", R);
  }
  rt_nccl_free(c);
  TEST_DONE();
}
#else
int main(void) {
  printf("SKIP: no CUDA device (moec was built without CUDA or without NCCL)\n");
  return 77;
}
#endif
