"""Oracles for hand-written gradients: autograd and central finite differences.

Hand-written (not generated from the book). This is the only module of the package that uses
autograd, and it uses it only to *check* the hand-written backward passes, never to train.

The contract: ``f(**inputs)`` is a forward pass written with differentiable torch operations that
returns a tensor; ``hand`` holds the gradients your backward pass computed for the upstream
gradient ``dout`` (for a scalar output, leave ``dout=None``: it means d(out)/d(out) = 1).
Both oracles differentiate the scalar ``sum(f(**inputs) * dout)``, whose gradient with respect
to each input is exactly what a backward pass returns.

    >>> report = gradient_check(lambda x, W, b: x @ W + b, dict(x=x, W=W, b=b),
    ...                         hand=dict(x=dx, W=dW, b=db), dout=dout)
    >>> report.assert_ok()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

__all__ = ["rel_error", "abs_error", "parity_gap", "autograd_grads", "numerical_grads", "gradient_check",
           "GradientReport"]

# Expected error levels in float64 (stated next to the check, as cs231n does):
# autograd and a correct hand-written backward agree to rounding (~1e-15 relative);
# central differences with h = 1e-6 carry truncation + rounding error of ~1e-9 relative.
# A gradient that is exactly zero in theory (a bias before batch norm) is ~1e-17 by hand and
# ~1e-10 by finite differences: relative error means nothing there, so a row also passes when the
# absolute error is below the oracle's noise floor.
AUTOGRAD_TOL, AUTOGRAD_ATOL = 1e-10, 1e-13
NUMERICAL_TOL, NUMERICAL_ATOL = 1e-6, 1e-8


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normwise relative error ``max|a - b| / max(max|a|, max|b|)``; 0.0 when both are zero."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    scale = max(a.abs().max().item(), b.abs().max().item()) if a.numel() else 0.0
    return 0.0 if scale == 0.0 else (a - b).abs().max().item() / scale


def _scalar(f: Callable[..., torch.Tensor], inputs: Mapping[str, torch.Tensor], dout):
    out = f(**inputs)
    return out.sum() if dout is None else (out * dout).sum()


def autograd_grads(f, inputs: Mapping[str, torch.Tensor], wrt, dout=None) -> dict[str, torch.Tensor]:
    """Gradients of ``sum(f(**inputs) * dout)`` with respect to the inputs named in ``wrt``, by autograd."""
    leaves = {k: (v.detach().clone().requires_grad_(k in wrt) if torch.is_tensor(v) else v)
              for k, v in inputs.items()}
    grads = torch.autograd.grad(_scalar(f, leaves, dout), [leaves[k] for k in wrt], allow_unused=True)
    return {k: (torch.zeros_like(leaves[k]) if g is None else g) for k, g in zip(wrt, grads)}


@torch.no_grad()
def numerical_grads(f, inputs: Mapping[str, torch.Tensor], wrt, dout=None, h: float = 1e-6):
    """Central differences ``(f(x + h) - f(x - h)) / 2h`` of ``sum(f(**inputs) * dout)``, element by element."""
    work = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    grads = {}
    for name in wrt:
        x = work[name]
        g = torch.zeros_like(x)
        flat, gflat = x.view(-1), g.view(-1)
        for i in range(flat.numel()):
            old = flat[i].item()
            flat[i] = old + h
            plus = _scalar(f, work, dout).item()
            flat[i] = old - h
            minus = _scalar(f, work, dout).item()
            flat[i] = old
            gflat[i] = (plus - minus) / (2 * h)
        grads[name] = g
    return grads


def abs_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|``."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return (a - b).abs().max().item() if a.numel() else 0.0


def parity_gap(pairs, atol: float = 1e-15) -> float:
    """The largest relative error over pairs (variant, reference) of tensors that should agree to
    rounding, such as a fast variant and the reference it replaces. A pair whose absolute error is
    below ``atol`` counts as 0: two roundings of a value that is zero in theory (the gradient of a
    bias just before batch norm, ~1e-17) have no meaningful relative error."""
    gaps = [0.0 if abs_error(a, b) <= atol else rel_error(a, b) for a, b in pairs]
    return max(gaps, default=0.0)


@dataclass
class GradientReport:
    """One row per input: the hand-written gradient's relative and absolute error vs each oracle."""

    rows: list[tuple] = field(default_factory=list)  # (name, shape, rel_a, abs_a, rel_n, abs_n)

    @staticmethod
    def row_ok(row) -> bool:
        _, _, rel_a, abs_a, rel_n, abs_n = row
        return ((rel_a <= AUTOGRAD_TOL or abs_a <= AUTOGRAD_ATOL)
                and (rel_n <= NUMERICAL_TOL or abs_n <= NUMERICAL_ATOL))

    @property
    def ok(self) -> bool:
        return all(self.row_ok(r) for r in self.rows)

    def __str__(self) -> str:
        w = max([12] + [len(r[0]) + 3 for r in self.rows])
        lines = [f"{'gradient':<{w}}{'shape':<14}{'vs autograd: rel':>17}{'abs':>10}"
                 f"{'vs finite diff: rel':>21}{'abs':>10}  ok"]
        for row in self.rows:
            name, shape, rel_a, abs_a, rel_n, abs_n = row
            lines.append(f"{'d' + name:<{w}}{str(shape):<14}{rel_a:>17.1e}{abs_a:>10.1e}{rel_n:>21.1e}"
                         f"{abs_n:>10.1e}  {'yes' if self.row_ok(row) else 'NO'}")
        lines.append(f"(float64; a row passes when the relative or the absolute error is small: "
                     f"{AUTOGRAD_TOL:.0e} / {AUTOGRAD_ATOL:.0e} vs autograd, "
                     f"{NUMERICAL_TOL:.0e} / {NUMERICAL_ATOL:.0e} vs finite differences)")
        return "\n".join(lines)

    __repr__ = __str__

    def assert_ok(self) -> "GradientReport":
        if not self.ok:
            raise AssertionError("hand-written gradient disagrees with the oracles:\n" + str(self))
        return self


def gradient_check(f, inputs: Mapping[str, torch.Tensor], hand: Mapping[str, torch.Tensor],
                   dout: torch.Tensor | None = None, numerical: bool = True, h: float = 1e-6) -> GradientReport:
    """Compare hand-written gradients ``hand`` with autograd and (optionally) finite differences.

    Use float64 and small shapes: finite differences cost two forward passes per element. Their
    rounding error is about ``1e-16 * abs(f) / h``, so a function whose value is large against its
    gradient (a loss near a constant) needs a larger step ``h``.
    """
    for k, v in inputs.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float64:
            raise TypeError(f"gradient_check needs float64 inputs; {k!r} is {v.dtype}")
    wrt = list(hand)
    auto = autograd_grads(f, inputs, wrt, dout)
    num = numerical_grads(f, inputs, wrt, dout, h) if numerical else None
    report = GradientReport()
    for k in wrt:
        if hand[k].shape != inputs[k].shape:
            raise ValueError(f"gradient d{k} has shape {tuple(hand[k].shape)}, "
                             f"but input {k!r} has shape {tuple(inputs[k].shape)}")
        rel_n, abs_n = (rel_error(hand[k], num[k]), abs_error(hand[k], num[k])) if numerical else (0.0, 0.0)
        report.rows.append((k, tuple(hand[k].shape), rel_error(hand[k], auto[k]),
                            abs_error(hand[k], auto[k]), rel_n, abs_n))
    return report
