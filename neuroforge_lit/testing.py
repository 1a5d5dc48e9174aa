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
from typing import Callable, Mapping

import torch

__all__ = ["rel_error", "abs_error", "parity_gap", "autograd_grads", "numerical_grads", "gradient_check", "mutants",
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
class GradientReport:
    """One row per input: the hand-written gradient's relative and absolute error vs each oracle."""

    rows: list[tuple] = field(default_factory=list)  # (name, shape, rel_a, abs_a, rel_n, abs_n)
    name: str = ""                                     # what was checked: the backward, the layer

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
        lines = [f"{self.name}:"] if self.name else []
        lines += [f"{'gradient':<{w}}{'shape':<14}{'vs autograd: rel':>17}{'abs':>10}"
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

    def failures(self) -> list[str]:
        """One line per (gradient, oracle) that disagrees: the error, the tolerance it exceeds."""
        found = []
        for name, _, rel_a, abs_a, rel_n, abs_n in self.rows:
            if not (rel_a <= AUTOGRAD_TOL or abs_a <= AUTOGRAD_ATOL):
                found.append(f"d{name} vs autograd: relative error {rel_a:.1e} > {AUTOGRAD_TOL:.0e} "
                             f"(absolute {abs_a:.1e} > {AUTOGRAD_ATOL:.0e})")
            if not (rel_n <= NUMERICAL_TOL or abs_n <= NUMERICAL_ATOL):
                found.append(f"d{name} vs finite differences: relative error {rel_n:.1e} > {NUMERICAL_TOL:.0e} "
                             f"(absolute {abs_n:.1e} > {NUMERICAL_ATOL:.0e})")
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
                   dout: torch.Tensor | None = None, numerical: bool = True, h: float = 1e-6,
                   name: str = "") -> GradientReport:
    """Compare hand-written gradients ``hand`` with autograd and (optionally) finite differences.
    ``name`` (the backward or layer being checked) heads the report and any failure message.

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
    report = GradientReport(name=name)
    for k in wrt:
        if hand[k].shape != inputs[k].shape:
            raise ValueError(f"gradient d{k} has shape {tuple(hand[k].shape)}, "
                             f"but input {k!r} has shape {tuple(inputs[k].shape)}")
        rel_n, abs_n = (rel_error(hand[k], num[k]), abs_error(hand[k], num[k])) if numerical else (0.0, 0.0)
        report.rows.append((k, tuple(hand[k].shape), rel_error(hand[k], auto[k]),
                            abs_error(hand[k], auto[k]), rel_n, abs_n))
    return report


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
