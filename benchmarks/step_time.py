"""Training-step time: the package's hand-written forward + backward + update against the same
model written the way a PyTorch user would (torch.nn + autograd + torch.optim, fused/foreach
optimizers where available). Prints a table and writes benchmarks/results/step_time.json.

    python benchmarks/step_time.py                  # all models, batches 32 128 512, CPU
    python benchmarks/step_time.py --models mlp --batches 128 --device cuda

The two implementations run interleaved in one process (warm-up first, then alternating blocks of
steps), and the figure is the median over blocks, so machine noise hits both alike. Timings on
shared machines vary from run to run: compare the *ratio* measured within one run.
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

from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.training import GradientDescent

RESULTS = Path(__file__).parent / "results"


# --- one model = a pair of step functions over the same random batch ---------------------------

def mlp_pair(batch: int, device: str, sizes=(784, 512, 128, 10), lr=0.05, norm=None):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, sizes[0], generator=g).to(device)
    y = torch.randint(0, sizes[-1], (batch,), generator=g).to(device)

    ours = normalized_mlp(list(sizes), norm, generator=g, device=device)
    opt = GradientDescent(lr)

    def hand_step():
        loss, dlogits = softmax_cross_entropy(ours.forward(x), y)
        ours.backward(dlogits, input_grad=False)
        opt.step(ours.parameters(), ours.gradients())

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

    def autograd_step():
        ref_opt.zero_grad(set_to_none=True)
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()

    return hand_step, autograd_step


def _best_sgd(params, lr):
    params = list(params)
    for kwargs in ({"fused": True}, {"foreach": True}, {}):
        try:
            opt = torch.optim.SGD(params, lr=lr, **kwargs)
            return opt
        except (RuntimeError, TypeError, ValueError):
            continue
    raise RuntimeError("no SGD variant available")


MODELS = {
    "mlp": mlp_pair,
    "mlp+batchnorm": lambda batch, device: mlp_pair(batch, device, norm="batch"),
    "mlp+layernorm": lambda batch, device: mlp_pair(batch, device, norm="layer"),
}


# --- timing ---------------------------------------------------------------------------------------

def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(hand, auto, device: str, steps: int, blocks: int) -> tuple[float, float]:
    for _ in range(max(3, steps // 2)):  # warm-up: allocator, kernels, optimizer state
        hand()
        auto()
    _sync(device)
    times = {"hand": [], "auto": []}
    for _ in range(blocks):
        for name, fn in (("hand", hand), ("auto", auto)):
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return statistics.median(times["hand"]), statistics.median(times["auto"])


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
    print(f"{'model':<14}{'batch':>6}{'hand-written':>15}{'autograd':>12}{'ratio':>8}")
    for name in args.models:
        for batch in args.batches:
            hand, auto = MODELS[name](batch, args.device)
            t_hand, t_auto = time_pair(hand, auto, args.device, args.steps, args.blocks)
            rows.append({"model": name, "batch": batch, "hand_ms": 1e3 * t_hand,
                         "autograd_ms": 1e3 * t_auto, "ratio": t_hand / t_auto})
            print(f"{name:<14}{batch:>6}{1e3 * t_hand:>12.3f} ms{1e3 * t_auto:>9.3f} ms"
                  f"{t_hand / t_auto:>8.2f}", flush=True)
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
