#!/usr/bin/env python3
"""moe_layer_torch.py: the MoE layer of bench/moe_layer_cuda.c in PyTorch, forward +
backward, timed with CUDA events (median of --reps after --warmup), on the same GPU.

The layer is the paper's noisy top-k MoE exactly as moec computes it
(docs/moe.md): clean = x.w_gate, sigma = softplus(x.w_noise) + 0.01, noisy = clean +
sigma*n; top-k, softmax over the k; y = sum_j g_j * (relu(x.w1[e] + b1[e]).w2[e] + b2[e]);
aux = 0.01 cv2(importance) + 0.01 cv2(smooth load). Input x [N, D] with a gradient
(a layer inside a network needs dx); loss = sum(y * r) + aux.

Variants:
  loop      the common implementation: per expert, nonzero() its tokens, two matmuls,
            index_add_ back (one small GEMM pair per expert)
  sorted    tokens sorted by expert (stable argsort), contiguous slices per expert
  padded    sorted, then padded to [E, C, D] (C = the largest expert's rows) and
            torch.baddbmm: one batched GEMM per layer GEMM, no Python loop over experts
  grouped   torch._grouped_mm on the sorted rows, when this PyTorch has it for float32
  compiled  torch.compile of `padded` (dynamic shapes)

Run: python3 bench/moe_layer_torch.py [--tokens 8192 --dim 1024 --experts 64 --hidden 4096
     --k 2] [--tf32] [--moec-json FILE] [--json FILE]
With --moec-json (the lines bench_moe_layer_cuda --json wrote), prints moec's layer time
beside each variant and the speedup moec / variant (goal: >= 1.5x the best).
Unverified here (no GPU where it was written); see docs/cuda.md.
"""
import argparse
import json
import math
import sys


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--variants", default="loop,sorted,padded,grouped,compiled")
    ap.add_argument("--moec-json", default=None)
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def main():
    a = parse()
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        print("SKIP: no CUDA device for PyTorch")
        return 77
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.set_float32_matmul_precision("high" if a.tf32 else "highest")
    N, D, E, H, k = a.tokens, a.dim, a.experts, a.hidden, a.k
    gen = torch.Generator(device="cpu").manual_seed(1)

    def uni(*shape, scale):
        return ((torch.rand(*shape, generator=gen) * 2 - 1) * scale).to(dev).requires_grad_()

    # w_gate random (the paper starts it at zero: every token would go to the same experts)
    P = dict(
        w_gate=uni(D, E, scale=1 / math.sqrt(D)),
        w_noise=uni(D, E, scale=1 / math.sqrt(D)),
        w1=uni(E, D, H, scale=1 / math.sqrt(D)),
        b1=uni(E, H, scale=1 / math.sqrt(E)),
        w2=uni(E, H, D, scale=1 / math.sqrt(H)),
        b2=uni(E, D, scale=1 / math.sqrt(E)),
    )
    x = (torch.rand(N, D, generator=gen) * 2 - 1).to(dev).requires_grad_()
    r = (torch.rand(N, D, generator=gen) * 2 - 1).to(dev)

    def cv2(v):
        m = v.mean()
        return ((v - m) ** 2).mean() / (m * m + 1e-10)

    def gate(x, P):
        clean = x @ P["w_gate"]
        sigma = F.softplus(x @ P["w_noise"]) + 0.01
        noisy = clean + sigma * torch.randn_like(clean)
        m = min(k + 1, E)
        top_v, top_i = noisy.topk(m, dim=1)
        gates = F.softmax(top_v[:, :k], dim=1)
        idx = top_i[:, :k]
        thr_k = top_v[:, k - 1 : k]
        thr_k1 = top_v[:, k : k + 1] if k < E else torch.full_like(thr_k, -math.inf)
        t = torch.where(noisy > thr_k1, thr_k1, thr_k)
        load = (0.5 * torch.erfc(-(clean - t) / sigma / math.sqrt(2))).sum(0)
        importance = torch.zeros(E, device=x.device, dtype=x.dtype).scatter_add(
            0, idx.reshape(-1), gates.reshape(-1))
        aux = 0.01 * cv2(importance) + 0.01 * cv2(load)
        return gates, idx, aux

    def layer_loop(x, P):
        gates, idx, aux = gate(x, P)
        y = torch.zeros_like(x)
        for e in range(E):
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            h = F.relu(x[rows] @ P["w1"][e] + P["b1"][e])
            o = h @ P["w2"][e] + P["b2"][e]
            y = y.index_add(0, rows, o * gates[rows, slot, None])
        return y, aux

    def route(idx):
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E)
        return flat, order, counts

    def layer_sorted(x, P):
        gates, idx, aux = gate(x, P)
        flat, order, counts = route(idx)
        src = order // k
        xs = x[src]
        outs, at = [], 0
        for e, c in enumerate(counts.tolist()):
            if c:
                h = F.relu(xs[at : at + c] @ P["w1"][e] + P["b1"][e])
                outs.append(h @ P["w2"][e] + P["b2"][e])
            at += c
        ys = torch.cat(outs) * gates.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add(0, src, ys), aux

    def layer_padded(x, P):
        gates, idx, aux = gate(x, P)
        flat, order, counts = route(idx)
        src = order // k
        es = flat[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(N * k, device=x.device) - starts[es]
        C = int(counts.max())
        xp = x.new_zeros(E, C, D).index_put((es, slot), x[src])
        h = F.relu(torch.baddbmm(P["b1"][:, None, :], xp, P["w1"]))
        o = torch.baddbmm(P["b2"][:, None, :], h, P["w2"])
        ys = o[es, slot] * gates.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add(0, src, ys), aux

    def layer_grouped(x, P):
        gates, idx, aux = gate(x, P)
        flat, order, counts = route(idx)
        src = order // k
        offs = torch.cumsum(counts, 0).to(torch.int32)
        xs = x[src]
        es = flat[order]
        h = F.relu(torch._grouped_mm(xs, P["w1"], offs=offs) + P["b1"][es])
        o = torch._grouped_mm(h, P["w2"], offs=offs) + P["b2"][es]
        ys = o * gates.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add(0, src, ys), aux

    variants = {"loop": layer_loop, "sorted": layer_sorted, "padded": layer_padded,
                "grouped": layer_grouped}
    if "compiled" in a.variants.split(","):
        try:
            variants["compiled"] = torch.compile(layer_padded, dynamic=True)
        except Exception as ex:  # noqa: BLE001
            print(f"compiled: torch.compile unavailable: {ex}", file=sys.stderr)

    def step(fn):
        for p in P.values():
            p.grad = None
        x.grad = None
        y, aux = fn(x, P)
        loss = (y * r).sum() + aux
        loss.backward()

    def time_it(fn):
        for _ in range(a.warmup):
            step(fn)
        torch.cuda.synchronize()
        ts = []
        for _ in range(a.reps):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            step(fn)
            e1.record()
            e1.synchronize()
            ts.append(e0.elapsed_time(e1))
        ts.sort()
        n = len(ts)
        return ts[n // 2] if n % 2 else 0.5 * (ts[n // 2 - 1] + ts[n // 2])

    moec_ms = None
    if a.moec_json:
        try:
            with open(a.moec_json) as f:
                for line in f:
                    j = json.loads(line)
                    if (j.get("k") == k and j.get("tf32") == a.tf32 and j.get("tokens") == N
                            and j.get("experts") == E):
                        moec_ms = j["layer_ms"]
        except OSError as ex:
            print(f"cannot read {a.moec_json}: {ex}", file=sys.stderr)

    mode = "TF32" if a.tf32 else "FP32"
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}: MoE layer fwd+bwd, "
          f"tokens {N}, D {D}, E {E}, H {H}, k {k}, {mode}, median of {a.reps}")
    results = {}
    for name in a.variants.split(","):
        fn = variants.get(name)
        if fn is None:
            continue
        try:
            ms = time_it(fn)
        except Exception as ex:  # noqa: BLE001  (an unsupported op: report, go on)
            print(f"  {name:9s} unavailable: {type(ex).__name__}: {str(ex).splitlines()[0][:100]}")
            torch.cuda.synchronize()
            continue
        results[name] = ms
        extra = f"   moec {moec_ms:.3f} ms: {ms / moec_ms:.2f}x faster" if moec_ms else ""
        print(f"  {name:9s} {ms:9.3f} ms{extra}")
    if results:
        best = min(results, key=results.get)
        line = f"  best: {best} {results[best]:.3f} ms"
        if moec_ms:
            line += f"; moec {moec_ms:.3f} ms = {results[best] / moec_ms:.2f}x the best (goal >= 1.5x)"
        print(line)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps({"bench": "moe_layer_torch", "tokens": N, "dim": D, "experts": E,
                                "hidden": H, "k": k, "tf32": a.tf32, "ms": results,
                                "moec_layer_ms": moec_ms, "torch": torch.__version__}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
