/* trace.c: spans in the Chrome trace-event format (what chrome://tracing and Perfetto
 * open): {"name", "cat", "ph":"X", "ts", "dur" (microseconds), "pid", "tid", "args"}.
 * The traced loop runs each instruction as the interpreter does and times it; it is
 * entered only when a step is traced (KernelCtx.trace), so untraced steps run the
 * compiled host program untouched. The run writes the file (train_loop.c). */
#include <string.h>

#include "trace.h"

void rt_trace_span(RtTrace *t, const char *name, const char *cat, double t0, double t1,
                   const char *args) {
  McBuf *b = &t->ev;
  mc_buf_printf(b, "%s\n{\"name\":", t->n++ ? "," : "");
  mc_buf_json_string(b, name);
  mc_buf_printf(b, ",\"cat\":\"%s\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":0,\"tid\":%d",
                cat, (t0 - t->epoch) * 1e6, (t1 - t0) * 1e6, t->tid);
  if (args) mc_buf_printf(b, ",\"args\":{%s}", args);
  mc_buf_putc(b, '}');
}

/* all-to-all, all-reduce, ... for a collective; forward or backward for a kernel */
static const char *category(const Program *p, const Node *n, int k) {
  switch (n->op) {
  case OP_ALL_TO_ALL:
  case OP_ALL_TO_ALL_BACK:
  case OP_TABLE_GATHER:
  case OP_TABLE_SCATTER:
    return "all-to-all";
  case OP_ALL_REDUCE:
  case OP_SPARSE_ALL_REDUCE:
    return "all-reduce";
  case OP_ALL_GATHER_TOPM:
  case OP_ALL_GATHER_ROWS:
    return "all-gather";
  case OP_RESHARD:
    return "reshard";
  default:
    return k < p->first_backward ? "forward" : "backward";
  }
}

void rt_trace_exec(Program *p, const KernelCtx *ctx, int from, int to) {
  RtTrace *t = ctx->trace;
  bool sync = p->be != &rt_backend_cpu && p->be->sync;
  McBuf args = {0};
  for (int k = from; k < to; k++) {
    const Instr *ins = &p->instrs[k];
    const Node *n = ins->node;
    KernelCtx c = *ctx;
    if (ins->on_subset) { /* as rt_exec's interpreter loop */
      c.batch0 = ins->sub.batch0 + ctx->micro_row0;
      c.batch_local = ins->sub.batch_local;
      c.device = ins->sub.device;
      c.ndevices = ins->sub.ndevices;
    }
    double t0 = mc_now();
    ins->fn(&c, n, ins->in, ins->out);
    if (sync) p->be->sync();
    double t1 = mc_now();
    args.len = 0;
    mc_buf_printf(&args, "\"layer\":");
    mc_buf_json_string(&args, n->layer ? n->layer : "");
    mc_buf_printf(&args, ",\"output\":");
    mc_buf_json_string(&args, n->nout ? n->out[0]->name : "");
    mc_buf_printf(&args, ",\"instr\":%d", k);
    char name[160];
    snprintf(name, sizeof name, "%s%s%s", ir_ops[n->op].name, n->layer ? " " : "",
             n->layer ? n->layer : "");
    rt_trace_span(t, name, category(p, n, k), t0, t1, args.data);
  }
  mc_buf_free(&args);
}
