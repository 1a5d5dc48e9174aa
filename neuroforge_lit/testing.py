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
import __future__

import ast
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["rel_error", "abs_error", "parity_gap", "autograd_grads", "numerical_grads", "finite_differences",
           "gradient_check", "model_gradient_check", "mutants", "GradientReport", "GradientRow", "FiniteDifference",
           "NumericalComparison"]

# Autograd and a correct hand-written backward agree to rounding (~1e-15 relative), so a row passes
# against autograd when its relative or its absolute error is below these (an absolute error because
# a gradient that is zero in theory, the bias before a batch norm, is ~1e-17 by hand).
AUTOGRAD_TOL, AUTOGRAD_ATOL = 1e-10, 1e-13
# Finite differences have an error of their own that depends on the function, the input and the step
# (truncation, and rounding eps * |f| / h, amplified where the function cancels): one fixed tolerance
# is too tight for some inputs and too loose to catch anything for others. So every entry gets its
# own: NUMERICAL_SAFETY times the error the differences estimate for themselves (`finite_differences`),
# and never more than the old fixed bound, NUMERICAL_TOL relative to the gradient's largest entry or
# NUMERICAL_ATOL absolute. tests/test_oracle.py calibrates the factor on ill-conditioned cases.
NUMERICAL_TOL, NUMERICAL_ATOL = 1e-6, 1e-8
NUMERICAL_SAFETY = 4.0
_EPS = torch.finfo(torch.float64).eps
_REFINE_ABOVE = 4.0     # refine an entry whose truncation estimate exceeds this many rounding bounds
_REFINE_TO = 2.0        # ... choosing the next step so that truncation is about this many
_REFINEMENTS = 2        # at most this many further step pairs per entry


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Normwise relative error ``max|a - b| / max(max|a|, max|b|)``; 0.0 when both are zero; inf
    when either holds a NaN, or an infinity the other does not match (a NaN would otherwise
    compare as small as anything, and a check would pass it)."""
    a, b = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return 0.0 if not (a.isnan().any() or b.isnan().any()) and torch.equal(a, b) else math.inf
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


class FiniteDifference(NamedTuple):
    """A finite-difference gradient and, entry by entry, the error it estimates for itself."""

    value: torch.Tensor
    error: torch.Tensor


def _flat(x: torch.Tensor):
    """A flat view of ``x`` to write entries into: a NumPy view on the CPU (fast), else the tensor."""
    flat = x.view(-1)
    return flat.numpy() if flat.device.type == "cpu" else flat


def _rms(x: torch.Tensor) -> float:
    """The input's scale, which the steps are relative to: its root mean square, 1 if it is all zero."""
    rms = x.detach().to(torch.float64).square().mean().sqrt().item() if x.numel() else 0.0
    return rms if math.isfinite(rms) and rms > 0 else 1.0


class _Intermediates(TorchFunctionMode):
    """Collects every intermediate tensor that depends on the inputs, with its gradient kept."""

    def __init__(self):
        super().__init__()
        self.seen: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.requires_grad and t.grad_fn is not None and t.is_floating_point():
                t.retain_grad()
                self.seen[id(t)] = t
        return out


def _rounding_size(f, inputs: Mapping[str, torch.Tensor], wrt, dout):
    """``(N, gradients)``: N bounds, to first order, how far float64 rounding moves the computed
    ``phi = sum(f(**inputs) * dout)``: ``|error| <= eps / 2 * N``, with N the sum of ``|v| * |dphi/dv|``
    over every value v that depends on the inputs (the inputs themselves, and each intermediate: each
    operation rounds its result by a relative eps / 2). This sees a cancellation such as
    ``logsumexp(z) - z[y]`` at large logits, or ``x - mean(x)`` for two close rows, which ``|phi|``
    alone misses by orders of magnitude. By autograd, on one forward pass; where ``f`` cannot be
    differentiated, ``N`` is ``|phi| + sum |f * dout|`` and the gradients are None."""
    leaves = {k: (v.detach().clone().requires_grad_(k in wrt) if torch.is_tensor(v) else v)
              for k, v in inputs.items()}
    try:
        with torch.enable_grad(), _Intermediates() as seen:
            phi = _scalar(f, leaves, dout)
        phi.backward()
    except RuntimeError:                                  # not differentiable by autograd
        with torch.no_grad():
            terms = f(**inputs) if dout is None else f(**inputs) * dout
        return terms.abs().sum().item() + abs(terms.sum().item()), None
    size = abs(phi.item())
    for t in [*seen.seen.values(), *(leaves[k] for k in wrt)]:
        if t.grad is not None:
            size += (t.detach().abs() * t.grad.abs()).sum().item()
    return size, {k: leaves[k].grad for k in wrt}


@torch.no_grad()
def finite_differences(f, inputs: Mapping[str, torch.Tensor], wrt, dout=None,
                       h: float | None = None) -> dict[str, FiniteDifference]:
    """Gradients of ``sum(f(**inputs) * dout)`` by central differences, each with its error estimate.

    Entry by entry, with steps ``h`` and ``h/2`` (``D(h) = (phi(x + h) - phi(x - h)) / 2h``):

    * the value is Richardson's extrapolation ``(4 D(h/2) - D(h)) / 3``, whose truncation error is
      of order ``h^4`` instead of ``h^2``;
    * its error estimate is ``|D(h) - D(h/2)|`` (the truncation error of ``D(h/2)``, three times over,
      far more than the extrapolation's) plus ``eps * N / (h/2)``, a bound on what rounding does to
      the extrapolation, with ``N`` from ``_rounding_size``: the rounding of every intermediate
      value, which a cancellation amplifies (``eps * |phi| / h`` misses that);
    * the first step balances the two, ``h = (3 eps N s^2 / G)^(1/3)``, with ``s`` the input's root
      mean square and ``G`` its gradient's largest entry (``h``, if given, is a smallest first step,
      relative to ``s``). Where the truncation estimate still exceeds the rounding bound (a steep
      function, a kink within the step), the entry is redone with a step chosen from the two, at most
      twice, keeping the smallest estimate.
    """
    work = {k: (v.detach().clone(memory_format=torch.contiguous_format) if torch.is_tensor(v) else v)
            for k, v in inputs.items()}
    size, grads = _rounding_size(f, work, wrt, dout)
    size = size if math.isfinite(size) else math.inf

    def phi() -> float:
        return _scalar(f, work, dout).item()

    def central(flat, i: int, step: float) -> tuple[float, float]:
        """(D, half the step actually taken) at entry i: x_i +- step rounds, the quotient must not."""
        old = float(flat[i])
        up, down = old + step, old - step
        flat[i] = up
        plus = phi()
        flat[i] = down
        minus = phi()
        flat[i] = old
        return (plus - minus) / (up - down), (up - down) / 2

    def pair(flat, i: int, step: float, known=None) -> list:
        """[value, truncation estimate, half of the smaller step, step, D(step / 2)]."""
        d_big = known if known is not None else central(flat, i, step)[0]
        d_small, half = central(flat, i, step / 2)
        return [(4 * d_small - d_big) / 3, abs(d_big - d_small), half, step, d_small]

    result = {}
    for k in wrt:
        x = work[k]
        flat, s = _flat(x), _rms(x)
        largest = grads[k].abs().max().item() if grads is not None and x.numel() else math.nan
        largest = largest if math.isfinite(largest) else size / s
        largest = max(largest, _EPS * size / s, 1e-300)
        first = min(max((3 * _EPS * size * s * s / largest) ** (1 / 3), 1e-10 * s, (h or 0.0) * s), 1e-2 * s)
        values, errors = [], []
        for i in range(x.numel()):
            p = pair(flat, i, first)
            rounding = _EPS * size / p[2]
            best = (p[0], p[1] + rounding)
            for _ in range(_REFINEMENTS):
                if not p[1] > _REFINE_ABOVE * rounding:             # rounding-bound already (or NaN)
                    break
                shrink = max((_REFINE_TO * rounding / p[1]) ** (1 / 3), 1e-3)
                p = pair(flat, i, p[3] / 2, known=p[4]) if shrink > 0.35 else pair(flat, i, p[3] * shrink)
                rounding = _EPS * size / p[2]
                if p[1] + rounding < best[1]:
                    best = (p[0], p[1] + rounding)
            values.append(best[0])
            errors.append(best[1])
        result[k] = FiniteDifference(torch.tensor(values, dtype=torch.float64, device=x.device).view_as(x),
                                     torch.tensor(errors, dtype=torch.float64, device=x.device).view_as(x))
    return result


def numerical_grads(f, inputs: Mapping[str, torch.Tensor], wrt, dout=None, h: float | None = None):
    """Gradients of ``sum(f(**inputs) * dout)`` by central differences, element by element: the
    values of ``finite_differences`` (Richardson-extrapolated, with a step chosen per input; ``h``,
    if given, is a smallest first step relative to the input's root mean square)."""
    return {k: fd.value for k, fd in finite_differences(f, inputs, wrt, dout, h).items()}


def abs_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` (inf where a NaN or infinity is not matched, as in ``rel_error``)."""
    if rel_error(a, b) == math.inf:
        return math.inf
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
class NumericalComparison:
    """A hand-written gradient against finite differences, entry by entry: each entry's tolerance
    (``NUMERICAL_SAFETY`` times the differences' error estimate, at most the fixed bound), the
    largest ``|hand - fd| / tolerance`` (1 or less passes) and where it is."""

    fd: FiniteDifference
    tolerance: torch.Tensor
    ratio: float
    worst: tuple           # the index of the entry with the largest ratio
    hand: float            # the hand-written gradient there
    error: float           # |hand - fd| there
    capped: bool           # some entry's estimate exceeded the fixed bound: the differences are unsure there

    @classmethod
    def of(cls, hand: torch.Tensor, fd: FiniteDifference, safety: float | None = None) -> "NumericalComparison":
        safety = NUMERICAL_SAFETY if safety is None else safety
        a = hand.detach().to(torch.float64).reshape(fd.value.shape)
        largest = max(a.abs().max().item(), fd.value.abs().max().item()) if a.numel() else 0.0
        bound = max(NUMERICAL_TOL * largest, NUMERICAL_ATOL) if math.isfinite(largest) else NUMERICAL_ATOL
        wanted = safety * fd.error + 64 * _EPS * (largest if math.isfinite(largest) else 0.0)
        tolerance = wanted.clamp(max=bound)
        diff = (a - fd.value).abs()
        ratio = (diff / tolerance.clamp(min=1e-300)).nan_to_num(math.inf)   # a NaN is never a pass
        if not a.numel():
            return cls(fd, tolerance, 0.0, (), math.nan, 0.0, False)
        flat = int(torch.argmax(ratio.reshape(-1)))
        worst = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.ndim else ()
        return cls(fd, tolerance, ratio.reshape(-1)[flat].item(), worst, a.reshape(-1)[flat].item(),
                   diff.reshape(-1)[flat].item(), bool((wanted > bound).any()))

    @property
    def ok(self) -> bool:
        return self.ratio <= 1.0


class GradientRow(NamedTuple):
    """One gradient's errors: (name, shape, rel_autograd, abs_autograd, rel_numerical, abs_numerical)."""

    name: str
    shape: tuple
    rel_autograd: float
    abs_autograd: float
    rel_numerical: float
    abs_numerical: float


class _Row(GradientRow):
    """A row with the entry-by-entry finite-difference comparison behind its numbers (``numerical``)."""

    numerical: NumericalComparison | None = None


def _row(*fields, numerical: NumericalComparison | None = None) -> _Row:
    row = _Row(*fields)
    row.numerical = numerical
    return row


@dataclass
class GradientReport:
    """One row per input: the hand-written gradient's relative and absolute error vs each oracle."""

    rows: list[tuple] = field(default_factory=list)  # (name, shape, rel_a, abs_a, rel_n, abs_n)
    name: str = ""                                     # what was checked: the backward, the layer

    @staticmethod
    def autograd_ok(row) -> bool:
        return row[2] <= AUTOGRAD_TOL or row[3] <= AUTOGRAD_ATOL

    @staticmethod
    def numerical_ok(row) -> bool:
        """Every entry within its own tolerance; a plain 6-tuple row, by the fixed bound."""
        numerical = getattr(row, "numerical", None)
        if numerical is not None:
            return numerical.ok
        return row[4] <= NUMERICAL_TOL or row[5] <= NUMERICAL_ATOL

    @staticmethod
    def row_ok(row) -> bool:
        return GradientReport.autograd_ok(row) and GradientReport.numerical_ok(row)

    @property
    def ok(self) -> bool:
        return all(self.row_ok(r) for r in self.rows)

    def __str__(self) -> str:
        w = max([12] + [len(r[0]) + 3 for r in self.rows])
        lines = [f"{self.name}:"] if self.name else []
        lines += [f"{'gradient':<{w}}{'shape':<14}{'vs autograd: rel':>17}{'abs':>10}"
                  f"{'vs finite diff: rel':>21}{'abs':>10}{'err/tol':>9}  ok"]
        for row in self.rows:
            name, shape, rel_a, abs_a, rel_n, abs_n = row
            numerical = getattr(row, "numerical", None)
            share = "-" if numerical is None else f"{numerical.ratio:.2g}"
            lines.append(f"{'d' + name:<{w}}{str(shape):<14}{rel_a:>17.1e}{abs_a:>10.1e}{rel_n:>21.1e}"
                         f"{abs_n:>10.1e}{share:>9}  {'yes' if self.row_ok(row) else 'NO'}")
        lines.append(f"(float64. vs autograd: the relative or the absolute error below {AUTOGRAD_TOL:.0e} / "
                     f"{AUTOGRAD_ATOL:.0e}.")
        lines.append(f" vs finite differences: each entry within {NUMERICAL_SAFETY:g} x the error the differences "
                     f"estimate for it, at most")
        lines.append(f" {NUMERICAL_TOL:.0e} relative / {NUMERICAL_ATOL:.0e} absolute; err/tol is the worst entry's "
                     f"share of its tolerance)")
        return "\n".join(lines)

    __repr__ = __str__

    def failures(self) -> list[str]:
        """One line per (gradient, oracle) that disagrees: the error, the tolerance it exceeds."""
        found = []
        for row in self.rows:
            name, _, rel_a, abs_a, rel_n, abs_n = row
            if not self.autograd_ok(row):
                found.append(f"d{name} vs autograd: relative error {rel_a:.1e} > {AUTOGRAD_TOL:.0e} "
                             f"(absolute {abs_a:.1e} > {AUTOGRAD_ATOL:.0e})")
            if self.numerical_ok(row):
                continue
            numerical = getattr(row, "numerical", None)
            if numerical is None:
                found.append(f"d{name} vs finite differences: relative error {rel_n:.1e} > {NUMERICAL_TOL:.0e} "
                             f"(absolute {abs_n:.1e} > {NUMERICAL_ATOL:.0e})")
                continue
            at = numerical.worst
            fd_value = numerical.fd.value[at].item() if numerical.fd.value.numel() else float("nan")
            unsure = ("; the differences' own error estimate exceeds that bound there (a kink or a jump "
                      "within the step?)" if numerical.capped else "")
            found.append(f"d{name} vs finite differences: entry {list(at)} is off by {numerical.error:.1e}, "
                         f"{numerical.ratio:.3g} x its tolerance {numerical.tolerance[at].item():.1e} "
                         f"(hand {numerical.hand:.10g}, finite differences {fd_value:.10g} "
                         f"+- {numerical.fd.error[at].item():.1e}; "
                         f"relative error {rel_n:.1e}){unsure}")
        return found

    def assert_ok(self) -> "GradientReport":
        """Raise ``AssertionError`` naming what was checked, each gradient that disagrees, the
        oracle, the error and the tolerance (then the whole table); return self when all agree."""
        if not self.ok:
            what = f"{self.name}: " if self.name else ""
            raise AssertionError(f"{what}hand-written gradient disagrees with the oracles: "
                                 + "; ".join(self.failures()) + "\n" + str(self))
        return self


def gradient_check(f, inputs: Mapping[str, torch.Tensor], hand: Mapping[str, torch.Tensor],
                   dout: torch.Tensor | None = None, numerical: bool = True, h: float | None = None,
                   name: str = "") -> GradientReport:
    """Compare hand-written gradients ``hand`` with autograd and (optionally) finite differences.
    ``name`` (the backward or layer being checked) heads the report and any failure message.

    Use float64 and small shapes: finite differences cost four to eight forward passes per element.
    Each entry is compared with its own tolerance, ``NUMERICAL_SAFETY`` times the error the
    differences estimate for themselves (``finite_differences``), at most the fixed bound; their step
    is chosen per input from the function's size, its gradient and float64 rounding. ``h`` (from
    older calls, for a function that is large against its gradient) is a smallest first step,
    relative to each input's root mean square.
    """
    for k, v in inputs.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float64:
            raise TypeError(f"gradient_check needs float64 inputs; {k!r} is {v.dtype}")
    wrt = list(hand)
    for k in wrt:
        if hand[k].shape != inputs[k].shape:
            raise ValueError(f"gradient d{k} has shape {tuple(hand[k].shape)}, "
                             f"but input {k!r} has shape {tuple(inputs[k].shape)}")
    auto = autograd_grads(f, inputs, wrt, dout)
    fds = finite_differences(f, inputs, wrt, dout, h) if numerical else None
    report = GradientReport(name=name)
    for k in wrt:
        if numerical:
            rel_n, abs_n = rel_error(hand[k], fds[k].value), abs_error(hand[k], fds[k].value)
            comparison = NumericalComparison.of(hand[k], fds[k])
        else:
            rel_n, abs_n, comparison = 0.0, 0.0, None
        report.rows.append(_row(k, tuple(hand[k].shape), rel_error(hand[k], auto[k]), abs_error(hand[k], auto[k]),
                                rel_n, abs_n, numerical=comparison))
    return report


def model_gradient_check(model, x: torch.Tensor, loss: Callable | None = None, *, dout: torch.Tensor | None = None,
                         forward: Callable | None = None, extra_loss: Callable | None = None,
                         input_grad: bool = True, skip=(), numerical: bool = True, h: float | None = None,
                         name: str = "") -> GradientReport:
    """Check a whole model's (or layer's) ``backward`` against autograd and finite differences: every
    parameter, named by its ``named_parameters`` path, and the input ``x`` (unless ``input_grad`` is
    False, when ``backward`` must return None).

    The objective is ``loss(out)[0]``, where ``loss(out) -> (L, dL/dout)`` (``lambda out:
    softmax_cross_entropy(out, y)``), or, given ``dout`` instead, ``sum(out * dout)``; plus
    ``extra_loss(model)`` where given (an auxiliary loss whose gradient ``backward`` adds, as the
    MoE's ``aux_loss``). ``forward(model, x)`` runs the forward pass (default ``model.forward(x)``;
    e.g. ``lambda m, x: m.forward(x, noise=noise)`` to fix a random draw: the oracle runs the forward
    pass many times and needs the same function each time). ``skip``: parameter paths left out of
    the comparison (one with no effect in the model's mode). Float64 and small shapes, as for
    ``gradient_check``.

    The hand side is one forward and one backward pass. For the oracle, copies of the parameters go
    into the layers' ``params`` so that autograd can follow them; afterwards the original tensors and
    buffers go back and a last forward pass leaves the caches as the hand side left them, also when
    the oracle fails.
    """
    if (loss is None) == (dout is None):
        raise ValueError("model_gradient_check needs exactly one of loss (out -> (L, dL/dout)) and dout")
    run = forward if forward is not None else (lambda m, inputs: m.forward(inputs))
    slots = [(path + key, layer, key) for path, layer in model.named_layers() for key in layer.params]
    start = {path: layer.params[key] for path, layer, key in slots}
    skip = set(skip)
    if skip - set(start):
        raise ValueError(f"skip names no parameter of the model: {sorted(skip - set(start))}; "
                         f"the model's are {list(start)}")
    if "x" in start:
        raise ValueError("a parameter path 'x' would shadow the input x")

    def objective(x, **params):
        for path, layer, key in slots:
            layer.params[key] = params[path]
        out = run(model, x)
        value = loss(out)[0] if loss is not None else (out * dout).sum()
        return value + extra_loss(model) if extra_loss is not None else value

    out = run(model, x)
    dx = model.backward(loss(out)[1] if loss is not None else dout, input_grad=input_grad)
    if not input_grad and dx is not None:
        raise AssertionError(f"{name or type(model).__name__}: backward(..., input_grad=False) returned a "
                             f"gradient; it must return None")
    grads = dict(zip(start, [g.clone() for g in model.gradients()]))   # fast layers reuse their buffers
    buffers = [(layer, key, value.clone()) for _, layer in model.named_layers() for key, value in layer.buffers.items()]
    hand = {**({"x": dx} if input_grad else {}), **{p: g for p, g in grads.items() if p not in skip}}
    try:
        return gradient_check(objective, {"x": x, **start}, hand, numerical=numerical, h=h, name=name)
    finally:
        for path, layer, key in slots:
            layer.params[key] = start[path]
        with torch.no_grad():
            run(model, x)                                    # the caches of the original parameters
        for layer, key, value in buffers:
            layer.buffers[key] = value


# ---- Mutation: do the checks catch a wrong derivation? ---------------------------------------------
# A check that never fails proves nothing. `mutants` rewrites one spot of a function's source at a
# time, the way a derivation goes wrong (a sign, a term dropped, a factor, a sum for a mean, a
# transpose forgotten), and yields the rewritten function; a good check fails on every mutant that
# changes what the function computes.

_SWAPPED_OPERATOR = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_SWAPPED_METHOD = {"sum": "mean", "mean": "sum"}


def _is_validation(stmt: ast.stmt) -> bool:
    """`raise ...` or `if ...: raise ...`: input checks, not the derivation."""
    return isinstance(stmt, ast.Raise) or (isinstance(stmt, ast.If) and any(isinstance(s, ast.Raise)
                                                                            for s in stmt.body))


def _mutation_sites(func: ast.FunctionDef) -> list[tuple[ast.stmt, ast.AST, str]]:
    """(statement, node, kind) for every spot of the function's body that a mutation rewrites."""
    sites = []
    body = func.body[1:] if (func.body and isinstance(func.body[0], ast.Expr)
                             and isinstance(func.body[0].value, ast.Constant)) else func.body
    for stmt in ast.walk(ast.Module(body=body, type_ignores=[])):
        if not isinstance(stmt, ast.stmt) or isinstance(stmt, (ast.If, ast.For, ast.While, ast.With)) \
                or _is_validation(stmt):
            continue
        for node in ast.walk(stmt):
            if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in _SWAPPED_OPERATOR:
                sites.append((stmt, node, "swap operator"))
            if isinstance(node, ast.BinOp) and type(node.op) in _SWAPPED_OPERATOR:
                sites.append((stmt, node, {ast.Add: "drop term", ast.Sub: "drop term", ast.Mult: "drop factor",
                                           ast.Div: "drop divisor"}[type(node.op)]))
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in _SWAPPED_METHOD:
                sites.append((stmt, node, "sum <-> mean"))
            elif isinstance(node, ast.Attribute) and node.attr == "T":
                sites.append((stmt, node, "drop transpose"))
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                sites.append((stmt, node, "drop minus"))
            elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
                sites.append((stmt, node, "double constant"))
    return sites


def _mutate(node: ast.AST, kind: str) -> ast.AST:
    """The replacement for ``node`` (a fresh node; the tree is a private copy)."""
    if kind == "swap operator":
        node.op = _SWAPPED_OPERATOR[type(node.op)]()
        return node
    if kind in ("drop term", "drop divisor"):
        return node.left
    if kind == "drop factor":
        return node.right
    if kind == "sum <-> mean":
        node.func.attr = _SWAPPED_METHOD[node.func.attr]
        return node
    if kind in ("drop transpose", "drop minus"):
        return node.value if kind == "drop transpose" else node.operand
    return ast.Constant(value=2 * node.value if node.value else 1)


class _Replace(ast.NodeTransformer):
    def __init__(self, target: ast.AST, kind: str):
        self.target, self.kind = target, kind

    def visit(self, node):
        if node is self.target:
            return _mutate(node, self.kind)
        return super().visit(node)


def mutants(fn: Callable):
    """Yield ``(description, mutant)`` for every single-point mutation of ``fn``'s source: each
    ``+``/``-`` and ``*``/``/`` swapped (``-=`` too), the second term of a sum or difference
    dropped, the first factor of a product dropped, a divisor dropped, ``sum`` and ``mean``
    swapped, a transpose or a minus sign dropped, a number doubled (0 becomes 1).
    Input validation (``raise``, ``if ...: raise``) and the docstring are left alone. A method
    (``Adam.adam_step``) yields plain functions taking ``self``: install one on a subclass."""
    import copy
    import inspect
    import textwrap

    source = textwrap.dedent(inspect.getsource(fn))
    original = ast.parse(source)
    count = len(_mutation_sites(original.body[0]))
    for i in range(count):
        tree = copy.deepcopy(original)
        stmt, node, kind = _mutation_sites(tree.body[0])[i]
        before = ast.unparse(stmt).splitlines()[0]
        _Replace(node, kind).visit(stmt)
        after = ast.unparse(stmt).splitlines()[0]
        if before == after:                   # e.g. 1.0 doubled inside an expression that prints alike
            continue
        tree = ast.fix_missing_locations(tree)
        namespace = dict(fn.__globals__)
        flags = __future__.annotations.compiler_flag             # the modules' annotations stay strings
        exec(compile(tree, f"<mutant {i} of {fn.__qualname__}>", "exec", flags=flags, dont_inherit=True),
             namespace)
        yield f"{kind}: {after}", namespace[fn.__name__]
