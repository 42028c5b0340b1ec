#!/usr/bin/python3
"""lm_torch.py: the PyTorch side of the LSTM-MoE language-model benchmark.

The same model and sizes as bench/lm_bench.moe: V=10000, D=256,
embedding -> LSTM 256 -> MoE (16 experts of 256->512->256, noisy top-4 gating,
importance and load losses) -> LSTM 256 -> softmax over V; B=32, T=20, Adam(1e-3),
truncated BPTT (the LSTM state carried across steps, detached). The MoE is written
as PyTorch users commonly write it (the shape of the widely copied
"SparseDispatcher" implementations): a gate matmul, noisy top-k, then a Python loop
over experts with index_select / index_add_. Tokens come from a small random
Markov chain (the data does not change the speed).

    /usr/bin/python3 bench/lm_torch.py [--threads 2] [--steps 30] [--warmup 5] [--json]
        [--device cpu|cuda] [--tf32] [--compile]

On --device cuda (bench/gpu.sh): nn.LSTM runs cuDNN's LSTM; TF32 is off for
matmuls and cuDNN unless --tf32 (moec's default is FP32 too); --compile wraps the
MoE layer in torch.compile. The step ends with xent.item() as before, which waits
for the GPU (moec reads its loss every step too), and the clock stops after a
torch.cuda.synchronize().

Prints tokens/s (B*T per step over the timed steps); with --json the last line is
{"tokens_per_s": ..., ...}. Run it with OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set
to the same thread count (bench/run_lm_bench.sh does).
"""

import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def cv_squared(x, eps=1e-10):
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.float().var(unbiased=False) / (x.float().mean() ** 2 + eps)


class Expert(nn.Module):
    def __init__(self, d_in, hidden, d_out):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class MoE(nn.Module):
    def __init__(self, d, experts=16, hidden=512, k=4, w_importance=0.01, w_load=0.01):
        super().__init__()
        self.E, self.k = experts, k
        self.w_importance, self.w_load = w_importance, w_load
        self.experts = nn.ModuleList([Expert(d, hidden, d) for _ in range(experts)])
        self.w_gate = nn.Parameter(torch.zeros(d, experts))
        self.w_noise = nn.Parameter(torch.zeros(d, experts))
        self.normal = torch.distributions.Normal(0.0, 1.0)

    def prob_in_top_k(self, clean, noisy, sigma, top_values):
        n = clean.size(0)
        m = top_values.size(1)
        flat = top_values.flatten()
        pos_in = torch.arange(n, device=clean.device) * m + self.k
        thr_in = torch.gather(flat, 0, pos_in).unsqueeze(1)
        is_in = noisy > thr_in
        thr_out = torch.gather(flat, 0, pos_in - 1).unsqueeze(1)
        p_in = self.normal.cdf((clean - thr_in) / sigma)
        p_out = self.normal.cdf((clean - thr_out) / sigma)
        return torch.where(is_in, p_in, p_out)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        clean = x @ self.w_gate
        sigma = F.softplus(x @ self.w_noise) + 0.01
        noisy = clean + torch.randn_like(clean) * sigma if self.training else clean
        top_vals, top_idx = noisy.topk(min(self.k + 1, self.E), dim=1)
        k_vals, k_idx = top_vals[:, :self.k], top_idx[:, :self.k]
        k_gates = torch.softmax(k_vals, dim=1)
        gates = torch.zeros_like(clean).scatter(1, k_idx, k_gates)
        importance = gates.sum(0)
        if self.training and self.k < self.E:
            load = self.prob_in_top_k(clean, noisy, sigma, top_vals).sum(0)
        else:
            load = (gates > 0).sum(0).float()
        aux = self.w_importance * cv_squared(importance) + self.w_load * cv_squared(load)

        # dispatch: a loop over experts
        y = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows = (k_idx == e).any(dim=1).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            out = expert(x.index_select(0, rows))
            y.index_add_(0, rows, out * gates[rows, e].unsqueeze(1))
        return y.reshape(shape), aux


class LM(nn.Module):
    def __init__(self, V=10000, D=256, experts=16, hidden=512, k=4):
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.lstm1 = nn.LSTM(D, D, batch_first=True)
        self.moe = MoE(D, experts, hidden, k)
        self.lstm2 = nn.LSTM(D, D, batch_first=True)
        self.out = nn.Linear(D, V)

    def forward(self, ids, targets, state):
        s1, s2 = state
        h, s1 = self.lstm1(self.emb(ids), s1)
        m, aux = self.moe(h)
        h, s2 = self.lstm2(m, s2)
        logits = self.out(h)
        xent = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return xent, aux, (s1, s2)


def markov_stream(V, B, n, seed):
    """B streams of n+1 tokens from a random sparse Markov chain (8 successors per word)."""
    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(0, V, (V, 8), generator=g)
    toks = torch.empty(B, n + 1, dtype=torch.long)
    toks[:, 0] = torch.randint(0, V, (B,), generator=g)
    choice = torch.randint(0, 8, (B, n), generator=g)
    for t in range(n):
        toks[:, t + 1] = succ[toks[:, t], choice[:, t]]
    return toks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--unroll", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--tf32", action="store_true", help="cuda: TF32 matmuls and cuDNN")
    ap.add_argument("--compile", action="store_true", help="torch.compile the MoE layer")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            print("lm_torch: --device cuda but torch.cuda.is_available() is False", file=sys.stderr)
            return 1
        torch.backends.cudnn.enabled = True
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = a.tf32
        torch.backends.cudnn.allow_tf32 = a.tf32
    B, T = a.batch, a.unroll
    model = LM(a.vocab, a.dim, a.experts, a.hidden, a.k)
    for n, p in model.named_parameters():  # uniform init as moec's, gates at zero
        if "w_gate" in n or "w_noise" in n or "bias" in n:
            nn.init.zeros_(p)
        else:
            nn.init.uniform_(p, -0.05, 0.05)
    model = model.to(dev)
    if a.compile:
        model.moe = torch.compile(model.moe)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    nsteps = a.warmup + a.steps
    data = markov_stream(a.vocab, B, nsteps * T, a.seed).to(dev)
    nparams = sum(p.numel() for p in model.parameters())
    where = (f"{torch.get_num_threads()} threads" if dev.type == "cpu" else
             f"{torch.cuda.get_device_name(dev)}, cuDNN {torch.backends.cudnn.version()}, "
             f"TF32 {'on' if a.tf32 else 'off'}{', compiled MoE' if a.compile else ''}")
    print(f"lm_torch: torch {torch.__version__}, {where}, "
          f"{nparams/1e6:.2f}M parameters, B={B} T={T}, {a.warmup} warm-up + {a.steps} timed steps",
          flush=True)

    state = (None, None)
    model.train()
    t0 = None
    losses = []
    for step in range(nsteps):
        if step == a.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        chunk = data[:, step * T:(step + 1) * T + 1]
        ids, targets = chunk[:, :-1], chunk[:, 1:]
        xent, aux, state = model(ids, targets, state)
        state = tuple(tuple(s.detach() for s in st) for st in state)  # truncated BPTT
        loss = xent + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(xent.item())
        if step % 10 == 0 or step == nsteps - 1:
            print(f"step {step:4d}  loss {xent.item():.4f}  aux {float(aux):.5f}", flush=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tps = a.steps * B * T / dt
    print(f"lm_torch: {tps:.0f} tokens/s ({dt / a.steps * 1000:.1f} ms/step)")
    if a.json:
        print(json.dumps({"tokens_per_s": tps, "ms_per_step": dt / a.steps * 1000,
                          "steps": a.steps, "threads": torch.get_num_threads(),
                          "device": a.device, "tf32": a.tf32, "compile": a.compile,
                          "params": nparams, "final_loss": losses[-1]}))


if __name__ == "__main__":
    sys.exit(main())
