"""Training-step time of every chapter's model, four ways, on the same random batch:

* reference: the package as the chapters write it (the layers' and optimizers' defaults);
* fast: the performance appendix's opt-in variants (neuroforge_lit.fast: speed_up, the fast loss,
  sgd_step_fused for plain gradient descent, FusedAdamW for AdamW);
* eager: the same model written the way a PyTorch user would (torch.nn + autograd + torch.optim,
  with its fused or multi-tensor optimizer where one exists);
* compiled: that model with torch.compile (the optimizer stays torch.optim's).

Prints a table of ratios and writes benchmarks/results/step_time_<device>.json.

    python benchmarks/step_time.py                       # every model, batches 32 128 512, CPU
    python benchmarks/step_time.py --models mlp --batches 128 --device cuda
    python benchmarks/step_time.py --no-compiled         # skip torch.compile (saves its compile time)

All contestants of a row run interleaved in one process: after a warm-up, each round times a block
of steps of each, in an order that rotates from round to round, and a ratio is the median of the
rounds' own ratios, so machine noise hits all of them alike. Timings on shared machines vary from
run to run: compare ratios measured within one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuroforge_lit.attention import vision_transformer
from neuroforge_lit.conv import convnet
from neuroforge_lit.dropout import Dropout
from neuroforge_lit.fast import FusedAdamW, ForeachAdamW, sgd_step_fused, softmax_cross_entropy_fast, speed_up
from neuroforge_lit.layers import Linear, ReLU, Sequential
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.moe import MoE
from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.optim import Adam, AdamW, GradientDescent

RESULTS = Path(__file__).parent / "results"
SIDES = ("reference", "fast", "eager", "compiled")


# --- steps: each returns a callable that runs one training step ---------------------------------

def _batch(batch, device, d_in=784, classes=10):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(batch, d_in, generator=g).to(device),
            torch.randint(0, classes, (batch,), generator=g).to(device))


def _hand_step(model, optimizer, x, y, loss_fn=softmax_cross_entropy):
    """One step of the package's way: forward, fused loss gradient, backward, update."""
    def step():
        _, dlogits = loss_fn(model.forward(x), y)
        model.backward(dlogits, input_grad=False)
        optimizer.step(model.parameters(), model.gradients())
    return step


def _autograd_step(model, optimizer, x, y, loss=lambda out, y: F.cross_entropy(out, y)):
    """One step the PyTorch way: zero the gradients, forward, autograd backward, update."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(model(x), y).backward()
        optimizer.step()
    return step


def _best(cls, params, **hyper):
    """The fastest variant of a torch.optim class that this PyTorch offers: fused, foreach, plain."""
    params = list(params)
    for kwargs in ({"fused": True}, {"foreach": True}, {}):
        try:
            return cls(params, **hyper, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError(f"no {cls.__name__} variant available")


def _torch_sides(module, make_optimizer, x, y, compiled: bool, loss=lambda out, y: F.cross_entropy(out, y)):
    """The eager step on `module`, and (if asked) the compiled step on a copy of it."""
    sides = {"eager": _autograd_step(module, make_optimizer(module.parameters()), x, y, loss)}
    if compiled:
        twin = copy.deepcopy(module)
        sides["compiled"] = _autograd_step(torch.compile(twin), make_optimizer(twin.parameters()), x, y, loss)
    return sides


def mlp_steps(batch, device, compiled=True, sizes=(784, 512, 128, 10), lr=0.05, norm=None):
    """The MLP chapters' model (with batch or layer norm, chapter 3), trained by gradient descent.
    Fast: speed_up + the fast loss + sgd_step_fused (the update folded into the backward pass)."""
    x, y = _batch(batch, device, sizes[0], sizes[-1])
    reference = normalized_mlp(list(sizes), norm, generator=torch.Generator().manual_seed(0), device=device)
    fast = speed_up(copy.deepcopy(reference))

    def fast_step():
        sgd_step_fused(fast, softmax_cross_entropy_fast(fast.forward(x), y)[1], lr)

    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += {"batch": [nn.BatchNorm1d(b)], "layer": [nn.LayerNorm(b)], None: []}[norm]
            layers.append(nn.ReLU())
    torch_model = nn.Sequential(*layers).to(device)
    return {"reference": _hand_step(reference, GradientDescent(lr), x, y), "fast": fast_step,
            **_torch_sides(torch_model, lambda ps: _best(torch.optim.SGD, ps, lr=lr), x, y, compiled)}


def dropout_steps(batch, device, compiled=True, sizes=(784, 576, 512, 128, 10), lr=2e-3):
    """The dropout chapter's scaled model (dropout 0.2 on the pixels, 0.5 on hidden units), AdamW."""
    x, y = _batch(batch, device)
    g, drops = torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(1)
    layers, torch_layers = [Dropout(0.2, generator=drops)], [nn.Dropout(0.2)]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(a, b, generator=g, device=device))
        torch_layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [ReLU(), Dropout(0.5, generator=drops)]
            torch_layers += [nn.ReLU(), nn.Dropout(0.5)]
    reference = Sequential(*layers)
    fast = speed_up(copy.deepcopy(reference))
    torch_model = nn.Sequential(*torch_layers).to(device)
    return {"reference": _hand_step(reference, AdamW(lr), x, y),
            "fast": _hand_step(fast, FusedAdamW(lr), x, y, softmax_cross_entropy_fast),
            **_torch_sides(torch_model, lambda ps: _best(torch.optim.AdamW, ps, lr=lr), x, y, compiled)}


class TorchMoE(nn.Module):
    """The MoE chapter's model as a PyTorch user would write it: the same noisy top-k routing,
    sparse dispatch with index_add, the two CV^2 losses, then ReLU and the read-out; autograd does
    the backward. forward returns (logits, auxiliary loss)."""

    def __init__(self, d_in, d_out, n_experts, k, hidden, classes=10):
        super().__init__()
        self.k = k
        self.w_gate = nn.Parameter(torch.zeros(d_in, n_experts))
        self.w_noise = nn.Parameter(torch.zeros(d_in, n_experts))
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
                                     for _ in range(n_experts))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(d_out, classes))

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
        z = (clean - torch.where(noisy > theta_in, theta_in, theta_out)) / sigma
        prob = 0.5 * (1 + torch.erf(z / 2 ** 0.5))
        aux = 0.1 * self.cv_squared(gates.sum(0)) + 0.1 * self.cv_squared(prob.sum(0))
        out = torch.zeros(len(x), self.experts[0][-1].out_features, device=x.device)
        for i, expert in enumerate(self.experts):
            idx = torch.nonzero(gates[:, i]).squeeze(1)
            if len(idx):
                out = out.index_add(0, idx, gates[idx, i, None] * expert(x[idx]))
        return self.head(out), aux


def moe_steps(batch, device, compiled=True, lr=2e-3):
    """The MoE chapter's model: MoE(784 -> 128, 8 experts of 64 hidden units, k=2) -> ReLU -> Linear."""
    x, y = _batch(batch, device)
    g = torch.Generator().manual_seed(0)
    reference = Sequential(MoE(784, 128, 8, 2, 64, generator=g, noise_generator=torch.Generator().manual_seed(1),
                               device=device), ReLU(), Linear(128, 10, generator=g, device=device))
    fast = speed_up(copy.deepcopy(reference))
    return {"reference": _hand_step(reference, AdamW(lr), x, y),
            "fast": _hand_step(fast, FusedAdamW(lr), x, y, softmax_cross_entropy_fast),
            **_torch_sides(TorchMoE(784, 128, 8, 2, 64).to(device), lambda ps: _best(torch.optim.AdamW, ps, lr=lr),
                           x, y, compiled, loss=lambda out, y: F.cross_entropy(out[0], y) + out[1])}


def conv_steps(batch, device, compiled=True, lr=2e-3):
    """The convolutions chapter's network (two 5x5 convolutions, max pooling, 128 hidden), Adam,
    against the same network of torch.nn.Conv2d / MaxPool2d layers with autograd."""
    x, y = _batch(batch, device)
    reference = convnet(generator=torch.Generator().manual_seed(0), device=device)
    fast = speed_up(copy.deepcopy(reference))
    torch_model = nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                                nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    return {"reference": _hand_step(reference, Adam(lr), x, y),
            "fast": _hand_step(fast, FusedAdamW(lr, weight_decay=0.0), x, y, softmax_cross_entropy_fast),
            **_torch_sides(torch_model, lambda ps: _best(torch.optim.Adam, ps, lr=lr), x, y, compiled)}


class TorchViT(nn.Module):
    """The attention chapter's transformer written with torch.nn: nn.MultiheadAttention in pre-norm
    blocks, 16 patches of 7x7, mean over tokens, autograd does the backward pass."""

    def __init__(self, d=64, heads=4, depth=4, hidden=128, patch=7):
        super().__init__()
        self.patch, self.tokens = patch, (28 // patch) ** 2
        self.embed = nn.Linear(patch * patch, d)
        self.position = nn.Parameter(0.02 * torch.randn(self.tokens, d))
        self.norms1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(depth))
        self.attentions = nn.ModuleList(nn.MultiheadAttention(d, heads, batch_first=True) for _ in range(depth))
        self.norms2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, d))
                                  for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 10)

    def forward(self, x):
        p, side = self.patch, 28 // self.patch
        x = x.reshape(len(x), side, p, side, p).permute(0, 1, 3, 2, 4).reshape(len(x), self.tokens, p * p)
        h = self.embed(x) + self.position
        for norm1, attention, norm2, mlp in zip(self.norms1, self.attentions, self.norms2, self.mlps):
            a = norm1(h)
            h = h + attention(a, a, a, need_weights=False)[0]
            h = h + mlp(norm2(h))
        return self.head(self.norm(h.mean(1)))


def transformer_steps(batch, device, compiled=True, lr=2e-3):
    """The attention chapter's vision transformer (D 64, 4 heads, 4 blocks), Adam, against TorchViT."""
    x, y = _batch(batch, device)
    reference = vision_transformer(generator=torch.Generator().manual_seed(0), device=device)
    fast = speed_up(copy.deepcopy(reference))
    return {"reference": _hand_step(reference, Adam(lr), x, y),
            "fast": _hand_step(fast, FusedAdamW(lr, weight_decay=0.0), x, y, softmax_cross_entropy_fast),
            **_torch_sides(TorchViT().to(device), lambda ps: _best(torch.optim.Adam, ps, lr=lr), x, y, compiled)}


MODELS = {
    "mlp": mlp_steps,
    "mlp+batchnorm": lambda batch, device, compiled=True: mlp_steps(batch, device, compiled, norm="batch"),
    "mlp+layernorm": lambda batch, device, compiled=True: mlp_steps(batch, device, compiled, norm="layer"),
    "scaled+dropout": dropout_steps,
    "moe": moe_steps,
    "convnet": conv_steps,
    "transformer": transformer_steps,
}


def adamw_update_steps(device, sizes=(784, 512, 128, 10), lr=1e-3):
    """The AdamW update alone, on the MLP's parameters: chapter 4's AdamW (one tensor at a time),
    the appendix's ForeachAdamW and FusedAdamW, and torch.optim.AdamW (fused where it can be)."""
    g = torch.Generator().manual_seed(0)
    shapes = [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((a, b), (b,))]
    start = [torch.randn(s, generator=g).to(device) for s in shapes]
    grads = [torch.randn(s, generator=g).to(device) for s in shapes]
    other = [-q for q in grads]          # a step refuses the very gradients of the step before it
    sides = {}
    for name, cls in (("reference", AdamW), ("foreach", ForeachAdamW), ("fast", FusedAdamW)):
        params, opt = [p.clone() for p in start], cls(lr)
        sides[name] = lambda opt=opt, params=params: opt.step(params, other if opt.t % 2 else grads)
    theirs = [nn.Parameter(p.clone()) for p in start]
    for p, grad in zip(theirs, grads):
        p.grad = grad.clone()
    sides["eager"] = _best(torch.optim.AdamW, theirs, lr=lr).step
    return sides


def gemm_floor_steps(batch, device, sizes=(784, 512, 128, 10), lr=0.05):
    """A lower bound for any MLP step: only the matrix products a step must do (three forward,
    three weight gradients fused with the update, two input gradients), beside the eager step."""
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

    return {"floor": gemms_only, "eager": mlp_steps(batch, device, compiled=False, sizes=sizes, lr=lr)["eager"]}


# --- timing ---------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_group(steps_by_name: dict, device: str, steps: int, blocks: int) -> dict:
    """Seconds per step of every contestant (median over rounds), and every round's times.

    After a warm-up (which also compiles what torch.compile will compile), each of `blocks` rounds
    times `steps` steps of each contestant, the order rotating by one from round to round so that
    none always runs in the state another left (caches, the memory allocator). Ratios should be
    taken with `ratio`, round by round: a slow patch of the machine hits one round's blocks alike.
    """
    names = list(steps_by_name)
    for _ in range(max(3, steps // 2)):
        for name in names:
            steps_by_name[name]()
    _sync(device)
    rounds = []
    for r in range(blocks):
        times = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(steps):
                steps_by_name[name]()
            _sync(device)
            times[name] = (time.perf_counter() - start) / steps
        rounds.append(times)
    return {"median": {n: statistics.median(t[n] for t in rounds) for n in names}, "rounds": rounds}


def round_ratios(timing: dict, name: str, baseline: str) -> list[float]:
    """time(name) / time(baseline) within each round."""
    return [t[name] / t[baseline] for t in timing["rounds"]]


def ratio(timing: dict, name: str, baseline: str) -> float:
    """The median over rounds of time(name) / time(baseline) within the round."""
    return statistics.median(round_ratios(timing, name, baseline))


def spread(timing: dict, name: str, baseline: str) -> list[float]:
    """The smallest and the largest of the rounds' own ratios time(name) / time(baseline)."""
    ratios = round_ratios(timing, name, baseline)
    return [min(ratios), max(ratios)]


def with_spread(row: dict, column: str) -> str:
    """A ratio as the table prints it: the median, then the rounds' range, "0.83 (0.78-0.91)"."""
    low, high = row["spread"][column]
    return f"{row[column]:.2f} ({low:.2f}-{high:.2f})"


def model_row(name: str, batch: int, device: str, steps: int, blocks: int, compiled: bool = True) -> dict:
    """One row of the table: times per step and the ratios the appendix reports."""
    timing = time_group(MODELS[name](batch, device, compiled), device, steps, blocks)
    row = {"model": name, "batch": batch, **{f"{n}_ms": 1e3 * t for n, t in timing["median"].items()},
           "reference/eager": ratio(timing, "reference", "eager"), "fast/eager": ratio(timing, "fast", "eager"),
           "fast/reference": ratio(timing, "fast", "reference")}
    if compiled:
        row.update({"compiled/eager": ratio(timing, "compiled", "eager"),
                    "reference/compiled": ratio(timing, "reference", "compiled"),
                    "fast/compiled": ratio(timing, "fast", "compiled")})
    row["spread"] = {column: spread(timing, *column.split("/")) for column in list(row)
                     if "/" in column}
    return row


def update_row(device: str, steps: int, blocks: int) -> dict:
    timing = time_group(adamw_update_steps(device), device, steps, blocks)
    return {"model": "adamw update", **{f"{n}_ms": 1e3 * t for n, t in timing["median"].items()},
            **{f"{n}/torch": ratio(timing, n, "eager") for n in ("reference", "foreach", "fast")}}


def floor_row(batch: int, device: str, steps: int, blocks: int) -> dict:
    timing = time_group(gemm_floor_steps(batch, device), device, steps, blocks)
    return {"model": "matrix products alone", "batch": batch, "floor/eager": ratio(timing, "floor", "eager")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=15, help="timed rounds (median taken)")
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="leave out the torch.compile'd autograd model")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    columns = ["reference/eager", "fast/eager"] + (["compiled/eager", "fast/compiled"] if args.compiled else [])
    print("each ratio: the median of the rounds' own ratios, then the smallest and largest of them")
    print(f"{'model':<16}{'batch':>6}" + "".join(f"{c:>19}" for c in columns), flush=True)
    rows = []
    for name in args.models:
        for batch in args.batches:
            row = model_row(name, batch, args.device, args.steps, args.blocks, args.compiled)
            rows.append(row)
            print(f"{name:<16}{batch:>6}" + "".join(f"{with_spread(row, c):>19}" for c in columns), flush=True)
    update = update_row(args.device, args.steps, args.blocks)
    floor = floor_row(128, args.device, args.steps, args.blocks)
    rows += [update, floor]
    print("AdamW update alone, against torch.optim.AdamW: "
          + ", ".join(f"{n} {update[f'{n}/torch']:.2f}" for n in ("reference", "foreach", "fast")))
    print(f"matrix products alone, batch 128: {floor['floor/eager']:.2f} of the eager step")
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
