"""The package never uses autograd: every backward pass is hand-written (testing.py is the oracle).

Found by parsing each module, not by searching for strings: imports of torch.autograd or
torch.func, any use of them, switching gradients on, requires_grad in any form, tensors' .grad,
and autograd's Tensor.backward (a call with no positional argument or with autograd's keywords;
the package's own layer.backward(dout) always passes the upstream gradient).
"""

import ast
from pathlib import Path

import pytest

import neuroforge_lit

PKG = Path(neuroforge_lit.__file__).parent
ALLOWED = {"testing.py"}  # the oracle used by the book's check cells and by the tests
AUTOGRAD_MODULES = ("torch.autograd", "torch.func", "functorch")
SWITCHES = {"enable_grad", "set_grad_enabled"}
BACKWARD_KEYWORDS = {"gradient", "retain_graph", "create_graph", "inputs"}


def _dotted(node) -> str:
    """'torch.autograd.grad' for the expression torch.autograd.grad; '' if it is not a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def _is_autograd_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in AUTOGRAD_MODULES)


def autograd_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for every use of autograd in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _is_autograd_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [(node.lineno, f"from {node.module} import {n.rsplit('.', 1)[1]}")
                      for n in names if _is_autograd_module(n) or _is_autograd_module(node.module)
                      or n.rsplit(".", 1)[1] in SWITCHES]
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if _is_autograd_module(dotted) and not _is_autograd_module(_dotted(node.value)):
                found.append((node.lineno, dotted))               # the outermost torch.autograd... once
            elif node.attr in SWITCHES:
                found.append((node.lineno, f".{node.attr}"))
            elif node.attr in {"requires_grad", "requires_grad_", "grad"}:
                found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.keyword) and node.arg == "requires_grad":
            found.append((node.lineno, "requires_grad="))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "backward":
            keywords = {k.arg for k in node.keywords}
            if not node.args or keywords & BACKWARD_KEYWORDS:
                found.append((node.lineno, f"{_dotted(node.func) or '(...).backward'}() of autograd"))
    return sorted(found)


def test_package_modules_never_use_autograd():
    offenders = {}
    for path in sorted(PKG.glob("*.py")):
        if path.name in ALLOWED:
            continue
        uses = autograd_uses(path.read_text())
        if uses:
            offenders[path.name] = uses
    assert not offenders, f"autograd used outside testing.py: {offenders}"


@pytest.mark.parametrize("source", [
    "import torch\nx = torch.ones(2, requires_grad=True)",
    "loss.backward()",
    "loss.sum().backward()",
    "loss.backward(retain_graph=True)",
    "x.requires_grad_()",
    "x.requires_grad = True",
    "print(w.grad)",
    "g = torch.autograd.grad(y, x)",
    "import torch.autograd",
    "import torch.autograd as ag",
    "from torch import autograd",
    "from torch.autograd import grad",
    "from torch.autograd.functional import jacobian",
    "from torch.func import vjp",
    "j = torch.func.jacrev(f)(x)",
    "with torch.enable_grad():\n    pass",
    "torch.set_grad_enabled(True)",
    "class F(torch.autograd.Function):\n    pass",
])
def test_the_scan_finds_autograd(source):
    assert autograd_uses(source), source


def test_the_scan_lets_the_package_own_backward_pass_and_no_grad_through():
    ours = ("dx = layer.backward(dout)\nself.grads['W'] = dW\ndx = self.layers[i].backward(dout, input_grad=False)\n"
            "with torch.no_grad():\n    out = model.forward(x)\n")
    assert autograd_uses(ours) == []
