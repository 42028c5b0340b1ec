/* test_cuda_nccl.c: several GPUs (runtime/cuda/nccl_comm.h, comm_cuda.cu) on the GPUs of
 * the machine:
 *   - the RtNccl calls on every GPU from one thread (ncclCommInitAll; one rank per GPU,
 *     so with one GPU the collectives are the one-rank identities): all-reduce (ring)
 *     equals the rank-order sum to float rounding; the ordered all-reduce equals it bit
 *     for bit (runtime/comm.h's contract); all-to-all with uneven counts (rank p sends
 *     p+q+1 elements to rank q) delivers every element;
 *   - device discipline: calls that name a GPU (contexts, sync, TF32, NCCL set-up) leave
 *     the caller's current GPU as it was; a bound device thread allocates on its GPU;
 *   - the device Comm the launcher gives device threads (rt_comm_nccl_init_all/attach):
 *     one thread per GPU through NCCL, then 3 devices staged through host memory
 *     (nccl false, --no-nccl: virtual devices, several on a GPU): all_reduce_sum of device buffers
 *     bit for bit the rank-order sum, all_to_allv, all_gather and broadcast of device
 *     buffers, a host value through the host Comm, and a subset's all-reduce.
 * Without a GPU, without NCCL or without CUDA: "SKIP: ..." and exit 77. */
#include <math.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/test.h"
#if defined(MOEC_HAVE_CUDA) && defined(MOEC_HAVE_NCCL)
#include <cuda_runtime_api.h>
#include <pthread.h>

#include "runtime/comm.h"
#include "runtime/cuda/nccl_comm.h"

#define MAXR 8
#define NEL 100003

static float val(int r, int64_t i) {
  return (float)sin(0.001 * (double)i + r) * (float)(r + 1);
}

/* ---------------------------------------------------------------- device discipline */

static int current_gpu(void) {
  int g = -1;
  cudaGetDevice(&g);
  return g;
}

static void discipline(int G) {
  int last = G - 1;
  cudaSetDevice(last);
  rt_cuda_set_tf32(true);
  rt_cuda_set_tf32(false);
  for (int g = 0; g < G; g++)
    rt_cuda_sync_dev(rt_cuda_dev(g));
  CHECK(rt_cuda_dev_virtual(0, 3) != NULL); /* made on GPU 0 */
  RtNccl *c = rt_nccl_init_local(G);
  rt_nccl_free(c);
  int cur = current_gpu();
  CHECK(cur == last);
  printf("%-4s device discipline: GPU %d stays current through contexts, sync, TF32, NCCL\n",
         cur == last ? "ok" : "FAIL", last);
  cudaSetDevice(0);
}

/* ---------------------------------------------------------------- the device Comm */

typedef struct DcArgs {
  RtNcclGroup *g;
  int G;
  bool nccl;
} DcArgs;
static pthread_mutex_t dc_mu = PTHREAD_MUTEX_INITIALIZER;
static int dc_bad;

static void dc_fail(int me, const char *what) {
  pthread_mutex_lock(&dc_mu);
  dc_bad++;
  fprintf(stderr, "  device Comm, rank %d: %s\n", me, what);
  pthread_mutex_unlock(&dc_mu);
}

static void dc_thread(Comm *host, void *arg) {
  DcArgs *a = arg;
  Comm *c = rt_comm_nccl_attach(a->g, host);
  const Backend *be = rt_backend_cuda();
  int me = c->rank, P = c->size, gpu = a->nccl ? me : me % a->G;
  if (current_gpu() != gpu) dc_fail(me, "not on its GPU after attach");
  enum { N = 4099 };
  float *d = be->alloc(N * sizeof(float)), *h = mc_malloc(N * sizeof(float));
  if (rt_cuda_pointer_gpu(d) != gpu) dc_fail(me, "Backend.alloc on another GPU");
  /* all_reduce_sum: the rank-order sum, bit for bit */
  for (int i = 0; i < N; i++)
    h[i] = val(me, i);
  be->upload(d, h, N * sizeof(float));
  c->all_reduce_sum_f32(c, d, N);
  be->download(h, d, N * sizeof(float));
  for (int i = 0; i < N; i++) {
    float ref = val(0, i);
    for (int r = 1; r < P; r++)
      ref += val(r, i);
    if (h[i] != ref) {
      dc_fail(me, "all_reduce_sum_f32 is not the rank-order sum");
      break;
    }
  }
  /* all_to_allv: p sends p+q+1 floats of value 100p+q to q */
  int64_t sc[8], sd[8], rc[8], rd[8], st = 0, rt = 0;
  for (int q = 0; q < P; q++) {
    sc[q] = (me + q + 1) * 4;
    sd[q] = st;
    st += sc[q];
    rc[q] = (q + me + 1) * 4;
    rd[q] = rt;
    rt += rc[q];
  }
  float *sb = be->alloc((size_t)st), *rb = be->alloc((size_t)rt), *hs = mc_malloc((size_t)st + 4),
        *hr = mc_malloc((size_t)rt + 4);
  for (int q = 0; q < P; q++)
    for (int j = 0; j < sc[q] / 4; j++)
      hs[sd[q] / 4 + j] = 100.0f * me + q;
  be->upload(sb, hs, (size_t)st);
  c->all_to_allv(c, sb, sc, sd, rb, rc, rd);
  be->download(hr, rb, (size_t)rt);
  for (int q = 0; q < P; q++)
    for (int j = 0; j < rc[q] / 4; j++)
      if (hr[rd[q] / 4 + j] != 100.0f * q + me) {
        dc_fail(me, "all_to_allv delivered a wrong element");
        q = P;
        break;
      }
  /* all_gather and broadcast of device buffers */
  int32_t *gs = be->alloc(2 * sizeof(int32_t)), *gr = be->alloc((size_t)P * 2 * sizeof(int32_t));
  int32_t mine[2] = {me, 7 * me}, all[16];
  be->upload(gs, mine, sizeof mine);
  c->all_gather(c, gs, gr, sizeof mine);
  be->download(all, gr, (size_t)P * sizeof mine);
  for (int p = 0; p < P; p++)
    if (all[2 * p] != p || all[2 * p + 1] != 7 * p) dc_fail(me, "all_gather");
  be->upload(gs, mine, sizeof mine);
  c->broadcast(c, gs, sizeof mine, P - 1);
  be->download(mine, gs, sizeof mine);
  if (mine[0] != P - 1 || mine[1] != 7 * (P - 1)) dc_fail(me, "broadcast");
  /* a host value: the host Comm */
  double x = me + 0.5;
  c->all_reduce_sum_f64(c, &x, 1);
  if (x != P * (P - 1) / 2.0 + 0.5 * P) dc_fail(me, "host all_reduce");
  /* a subset: ranks 0 and P-1 */
  uint64_t mask = 1ull | 1ull << (P - 1);
  if (mask >> me & 1) {
    Comm *s = comm_subset(c, mask);
    float one = (float)(me + 1);
    be->upload(d, &one, sizeof one);
    s->all_reduce_sum_f32(s, d, 1);
    be->download(&one, d, sizeof one);
    if (one != (P > 1 ? 1.0f + (float)P : 1.0f)) dc_fail(me, "subset all_reduce");
  }
  be->release(d);
  be->release(sb);
  be->release(rb);
  be->release(gs);
  be->release(gr);
  mc_free(h);
  mc_free(hs);
  mc_free(hr);
  rt_comm_nccl_free(c);
}

static void device_comm(int P, int G, bool nccl) {
  DcArgs a = {rt_comm_nccl_init_all(P, nccl), G, nccl};
  dc_bad = 0;
  int rc = rt_inproc_run(P, dc_thread, &a);
  rt_comm_nccl_group_free(a.g);
  CHECK(rc == 0 && dc_bad == 0);
  printf("%-4s device Comm on %d device(s), %s: all_reduce (rank order), all_to_allv, "
         "all_gather, broadcast, host values, a subset\n",
         rc == 0 && dc_bad == 0 ? "ok" : "FAIL", P, nccl ? "NCCL" : "staged (--no-nccl)");
}

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
    for (int r = 1; r < R; r++)
      s += val(r, i);
    ref[i] = s;
  }
  for (int ordered = 0; ordered < 2; ordered++) {
    void *buf[MAXR];
    for (int r = 0; r < R; r++) {
      rt_cuda_use(rt_cuda_dev(r)); /* Backend.alloc acts on the current GPU */
      buf[r] = be->alloc(NEL * sizeof(float));
      for (int64_t i = 0; i < NEL; i++)
        host[i] = val(r, i);
      be->upload(buf[r], host, sizeof host);
    }
    if (ordered)
      rt_nccl_allreduce_sum_ordered(c, buf, NEL, RT_NCCL_F32);
    else
      rt_nccl_allreduce_sum(c, buf, NEL, RT_NCCL_F32);
    rt_nccl_join(c);
    int bad = 0;
    for (int r = 0; r < R; r++) {
      rt_cuda_sync_dev(rt_cuda_dev(r));
      be->download(host, buf[r], sizeof host);
      for (int64_t i = 0; i < NEL; i++) {
        bool ok =
            ordered ? host[i] == ref[i] : fabsf(host[i] - ref[i]) <= 1e-5f * (1 + fabsf(ref[i]));
        if (!ok && bad++ < 5)
          fprintf(stderr, "all-reduce%s rank %d [%lld]: %.9g, expected %.9g\n",
                  ordered ? " (ordered)" : "", r, (long long)i, host[i], ref[i]);
      }
      rt_cuda_use(rt_cuda_dev(r));
      be->release(buf[r]);
    }
    CHECK(bad == 0);
    printf("%-4s all-reduce%s over %d GPU(s)\n", bad ? "FAIL" : "ok",
           ordered ? " (rank order)" : "", R);
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
        for (int64_t j = 0; j < sc[p][q]; j++)
          host[sd[p][q] + j] = 1000.0f * p + q + 0.001f * j;
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
  discipline(rt_cuda_device_count());
  device_comm(R, rt_cuda_device_count(), true);
  device_comm(3, rt_cuda_device_count(), false);
  TEST_DONE();
}
#else
int main(void) {
  printf("SKIP: no CUDA device (moec was built without CUDA or without NCCL)\n");
  return 77;
}
#endif
