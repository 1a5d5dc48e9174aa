"""Training-step time: the package's hand-written forward + backward + update against the same
model written the way a PyTorch user would (torch.nn + autograd + torch.optim, fused/foreach
optimizers where available). Prints a table and writes benchmarks/results/step_time.json.

    python benchmarks/step_time.py                  # all models, batches 32 128 512, CPU
    python benchmarks/step_time.py --models mlp --batches 128 --device cuda

The two implementations run interleaved in one process (warm-up first, then rounds of one block of
steps each, in alternating order), and the ratio is the median of the rounds' ratios, so machine
noise hits both alike. Timings on shared machines vary from run to run: compare the *ratio*
measured within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuroforge_lit.dropout import Dropout
from neuroforge_lit.fused import FusedAdamW, sgd_step_fused
from neuroforge_lit.layers import Linear, ReLU, Sequential
from neuroforge_lit.moe import MoE
from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.optim import AdamW
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.training import GradientDescent

RESULTS = Path(__file__).parent / "results"


# --- one model = a pair of step functions over the same random batch ---------------------------

def mlp_pair(batch: int, device: str, sizes=(784, 512, 128, 10), lr=0.05, norm=None, fused=False):
    """fused=True times sgd_step_fused (the update folded into the backward pass) instead of
    backward followed by GradientDescent.step; the autograd side is the same either way."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, sizes[0], generator=g).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(device)

    ours = normalized_mlp(list(sizes), norm, generator=g, device=device)
    opt = GradientDescent(lr)

    def fused_step():
        sgd_step_fused(ours, softmax_cross_entropy(ours.forward(x), y)[1], lr)

    hand_step = fused_step if fused else _hand_step(ours, opt, x, y)

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if norm == "batch":
                layers.append(nn.BatchNorm1d(b))
            elif norm == "layer":
                layers.append(nn.LayerNorm(b))
            layers.append(nn.ReLU())
    ref = nn.Sequential(*layers).to(device)
    ref_opt = _best_sgd(ref.parameters(), lr)

    return hand_step, _autograd_step(ref, ref_opt, x, y)


def _best(cls, params, **hyper):
    """The fastest variant of a torch.optim class that this PyTorch offers: fused, foreach, plain."""
    params = list(params)
    for kwargs in ({"fused": True}, {"foreach": True}, {}):
        try:
            return cls(params, **hyper, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError(f"no {cls.__name__} variant available")


def _best_sgd(params, lr):
    return _best(torch.optim.SGD, params, lr=lr)


def _hand_step(model, opt, x, y):
    """One step of the package's way: forward, fused loss gradient, backward, update."""
    def step():
        loss, dlogits = softmax_cross_entropy(model.forward(x), y)
        model.backward(dlogits, input_grad=False)
        opt.step(model.parameters(), model.gradients())
    return step


def _autograd_step(model, optimizer, x, y):
    """One step the PyTorch way: zero the gradients, forward, autograd backward, update."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return step


def _batch(batch, device, d_in=784, classes=10):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch, d_in, generator=g).to(device),
            torch.randint(0, classes, (batch,), generator=g).to(device))


def dropout_pair(batch: int, device: str, sizes=(784, 576, 512, 128, 10), lr=2e-3):
    """The dropout chapter's model (dropout 0.2 on inputs, 0.5 on hidden units) with AdamW."""
    x, y = _batch(batch, device)
    g, drops = torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(1)
    layers, ref_layers = [Dropout(0.2, generator=drops)], [nn.Dropout(0.2)]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b, generator=g, device=device))
        ref_layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [ReLU(), Dropout(0.5, generator=drops)]
            ref_layers += [nn.ReLU(), nn.Dropout(0.5)]
    ours, opt = Sequential(*layers), FusedAdamW(lr)
    ref = nn.Sequential(*ref_layers).to(device)
    ref_opt = _best(torch.optim.AdamW, ref.parameters(), lr=lr)

    hand_step = _hand_step(ours, opt, x, y)

    return hand_step, _autograd_step(ref, ref_opt, x, y)


class TorchMoE(nn.Module):
    """The MoE chapter's layer as a PyTorch user would write it: same noisy top-k routing, sparse
    dispatch with index_add, the two CV^2 losses; autograd does the backward."""

    def __init__(self, d_in, d_out, n_experts, k, hidden):
        super().__init__()
        self.k = k
        self.w_gate = nn.Parameter(torch.zeros(d_in, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(d_in, n_experts))
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
                                     for _ in range(n_experts))

    @staticmethod
    def cv_squared(v):
        return v.var(correction=0) / (v.mean() ** 2 + 1e-10)

    def forward(self, x):
        clean = x @ self.w_gate
        sigma = F.softplus(x @ self.w_noise) + 1e-2
        noisy = clean + torch.randn_like(clean) * sigma
        top_vals, top_idx = noisy.topk(self.k + 1, dim=1)
        gates = torch.zeros_like(clean).scatter(1, top_idx[:, :self.k], F.softmax(top_vals[:, :self.k], dim=1))
        theta_in, theta_out = top_vals[:, self.k:self.k + 1], top_vals[:, self.k - 1:self.k]
        normal = torch.distributions.Normal(0.0, 1.0)
        prob = normal.cdf((clean - torch.where(noisy > theta_in, theta_in, theta_out)) / sigma)
        aux = 0.1 * self.cv_squared(gates.sum(0)) + 0.1 * self.cv_squared(prob.sum(0))
        out = None
        for i, expert in enumerate(self.experts):
            idx = torch.nonzero(gates[:, i]).squeeze(1)
            if len(idx):
                y_i = gates[idx, i, None] * expert(x[idx])
                out = torch.zeros(len(x), y_i.shape[1], device=x.device).index_add(0, idx, y_i) if out is None \
                    else out.index_add(0, idx, y_i)
        return out, aux


def moe_pair(batch: int, device: str, lr=2e-3):
    """The MoE chapter's model: MoE(784 -> 128, 8 experts of 64 hidden units, k=2) -> ReLU -> Linear."""
    x, y = _batch(batch, device)
    g = torch.Generator().manual_seed(0)
    ours = Sequential(MoE(784, 128, 8, 2, 64, generator=g, noise_generator=torch.Generator().manual_seed(1),
                          device=device), ReLU(), Linear(128, 10, generator=g, device=device))
    opt = FusedAdamW(lr)
    moe = TorchMoE(784, 128, 8, 2, 64).to(device)
    head = nn.Sequential(nn.ReLU(), nn.Linear(128, 10)).to(device)
    ref_opt = _best(torch.optim.AdamW, list(moe.parameters()) + list(head.parameters()), lr=lr)

    hand_step = _hand_step(ours, opt, x, y)

    def autograd_step():
        ref_opt.zero_grad(set_to_none=True)
        out, aux = moe(x)
        (F.cross_entropy(head(out), y) + aux).backward()
        ref_opt.step()

    return hand_step, autograd_step


def adamw_pair(batch: int, device: str, sizes=(784, 512, 128, 10), optimizer=FusedAdamW):
    """The AdamW update alone on the MLP's parameters (batch is unused: the update does not see it);
    optimizer=AdamW times the multi-tensor version of the optimizers chapter instead."""
    g = torch.Generator().manual_seed(0)
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    ours = [torch.randn(s, generator=g).to(device) for s in shapes]
    grads = [torch.randn(s, generator=g).to(device) for s in shapes]
    opt = optimizer(1e-3)
    theirs = [nn.Parameter(p.clone()) for p in ours]
    for p, gr in zip(theirs, grads):
        p.grad = gr.clone()
    ref_opt = _best(torch.optim.AdamW, theirs, lr=1e-3)
    return (lambda: opt.step(ours, grads)), ref_opt.step


def gemm_floor_pair(batch: int, device: str, sizes=(784, 512, 128, 10), lr=0.05):
    """A lower bound for any MLP step: only the matrix products a step must do (three forward,
    three weight gradients fused with the update, two input gradients), against the autograd step."""
    x, y = _batch(batch, device)
    g = torch.Generator().manual_seed(0)
    Ws = [(torch.randn(a, b, generator=g) / a ** 0.5).to(device) for a, b in zip(sizes[:-1], sizes[1:])]
    bs = [torch.zeros(b, device=device) for b in sizes[1:]]

    def gemms_only():
        inputs, h = [], x
        for W, b in zip(Ws, bs):
            inputs.append(h)
            h = torch.addmm(b, h, W)
        d = h / len(h)
        for i in reversed(range(len(Ws))):
            dx = d @ Ws[i].T if i else None
            Ws[i].addmm_(inputs[i].T, d, alpha=-lr * 1e-3)
            d = dx

    _, autograd_step = mlp_pair(batch, device, sizes, lr)
    return gemms_only, autograd_step


MODELS = {
    "mlp": mlp_pair,
    "mlp (fused sgd)": lambda batch, device: mlp_pair(batch, device, fused=True),
    "mlp+batchnorm": lambda batch, device: mlp_pair(batch, device, norm="batch"),
    "mlp+layernorm": lambda batch, device: mlp_pair(batch, device, norm="layer"),
    "scaled+dropout": dropout_pair,
    "moe": moe_pair,
    "adamw-update": adamw_pair,
    "adamw (foreach)": lambda batch, device: adamw_pair(batch, device, optimizer=AdamW),
}


# --- timing ---------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(hand, auto, device: str, steps: int, blocks: int) -> tuple[float, float, float]:
    """Seconds per step of each, and their ratio hand / auto.

    After a warm-up, each of `blocks` rounds times `steps` steps of one and then `steps` of the
    other, the order alternating from round to round so that neither always runs in the state
    the other left (caches, the memory allocator). The times are medians over the rounds; the
    ratio is the median of the rounds' own ratios, so a slow patch of the machine, which hits both
    blocks of a round alike, cancels out of it.
    """
    for _ in range(max(3, steps // 2)):  # warm-up: allocator, kernels, optimizer state
        hand()
        auto()
    _sync(device)
    sides, rounds = [("hand", hand), ("auto", auto)], []
    for r in range(blocks):
        times = {}
        for name, fn in (sides if r % 2 == 0 else sides[::-1]):
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            times[name] = (time.perf_counter() - start) / steps
        rounds.append((times["hand"], times["auto"]))
    return (statistics.median(h for h, _ in rounds), statistics.median(a for _, a in rounds),
            statistics.median(h / a for h, a in rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=15, help="timed blocks (median taken)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    print(f"{'model':<16}{'batch':>6}{'hand-written':>15}{'autograd':>12}{'ratio':>8}")
    for name in args.models:
        for batch in args.batches:
            hand, auto = MODELS[name](batch, args.device)
            t_hand, t_auto, ratio = time_pair(hand, auto, args.device, args.steps, args.blocks)
            rows.append({"model": name, "batch": batch, "hand_ms": 1e3 * t_hand,
                         "autograd_ms": 1e3 * t_auto, "ratio": ratio})
            print(f"{name:<16}{batch:>6}{1e3 * t_hand:>12.3f} ms{1e3 * t_auto:>9.3f} ms"
                  f"{ratio:>8.2f}", flush=True)
    meta = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.platform()}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    out = args.out or RESULTS / f"step_time_{args.device.split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
