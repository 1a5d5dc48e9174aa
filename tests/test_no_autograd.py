"""The package never uses autograd: every backward pass is hand-written (testing.py is the oracle)."""

import ast
from pathlib import Path

import neuroforge_lit

PKG = Path(neuroforge_lit.__file__).parent
ALLOWED = {"testing.py"}  # the oracle used by the book's check cells and by the tests
FORBIDDEN_ATTRS = {"backward", "requires_grad", "requires_grad_", "grad", "autograd", "enable_grad"}


def autograd_uses(source: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
            # `.grad`/`.backward` as *attributes of our own layers* (self.grads, layer.backward) are
            # fine; autograd's are reached through tensors or the torch module.
            if node.attr in {"backward"} and not (isinstance(node.value, ast.Call) or
                                                  _is_torch(node.value)):
                continue
            if node.attr == "grad" and not _is_torch(node.value):
                continue
            found.append((node.lineno, node.attr))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any("autograd" in n for n in names):
                found.append((node.lineno, "import of autograd"))
        elif isinstance(node, ast.keyword) and node.arg == "requires_grad":
            found.append((node.lineno, "requires_grad="))
    return found


def _is_torch(node) -> bool:
    return isinstance(node, ast.Name) and node.id == "torch" or (
        isinstance(node, ast.Attribute) and _is_torch(node.value))


def test_package_modules_never_use_autograd():
    offenders = {}
    for path in sorted(PKG.glob("*.py")):
        if path.name in ALLOWED:
            continue
        uses = autograd_uses(path.read_text())
        if uses:
            offenders[path.name] = uses
    assert not offenders, f"autograd used outside testing.py: {offenders}"


def test_the_scan_finds_autograd_when_it_is_there():
    assert autograd_uses("import torch\nx = torch.ones(2, requires_grad=True)")
    assert autograd_uses("loss.sum().backward()")
    assert autograd_uses("x.requires_grad_()")
    assert autograd_uses("g = torch.autograd.grad(y, x)")
    assert autograd_uses("from torch import autograd")
    assert not autograd_uses("dx = layer.backward(dout)\nself.grads['W'] = dW")
