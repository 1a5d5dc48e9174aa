"""Misuse of every public layer, forward function and loss, as a matrix derived from the code.

The rows are found, not listed: every subclass of Layer named in a generated module's __all__ (fast
and parallel variants included), every public function named *_forward or *_forward_fast, and every
public loss (a name with "entropy", ending in "_loss" or starting with "bce_"). Each row needs a
recipe below (how to build it and what to feed it); test_every_row_has_a_recipe fails for a new
layer, forward function or loss that has none, so none can be forgotten.

Counts (`pytest tests/test_misuse.py -k counts -s` prints them): 176 cells in all.
  layers, 25 rows: backward before forward (25), backward twice (25), a float64 / uint8 / int64
      batch into a float32 layer (17 layers with parameters x 3 = 51; the 8 without have no dtype): 101
  forward functions, 19 rows: None for a parameter (23 parameters of 12 functions), a float64 /
      uint8 / int64 x (12 x 3 = 36; the other 7 take no parameters): 59
  losses, 5 rows: int64 / uint8 logits (6 logits arguments x 2 = 12), float labels (4; bce_with_logits
      takes float targets): 16
"""

import importlib
import inspect
import re

import pytest
import torch

import neuroforge_lit
from neuroforge_lit import attention, conv, distill, dropout, fast, layers, logistic, losses, moe, norm, parallel
from neuroforge_lit.layers import Layer

SEED = 1234


def g() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


def r(*shape) -> torch.Tensor:
    """Float32 normal draws, the same for every call with the same shape."""
    return torch.randn(*shape, generator=g())


def _public(predicate) -> dict[str, object]:
    found = {}
    for module_name in neuroforge_lit.GENERATED_MODULES:       # the hand-written ones hold no layers
        module = importlib.import_module(f"neuroforge_lit.{module_name}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if predicate(name, obj):
                found[name] = obj
    return found


PUBLIC_LAYERS = _public(lambda name, obj: inspect.isclass(obj) and issubclass(obj, Layer) and obj is not Layer)
PUBLIC_FORWARDS = _public(lambda name, obj: inspect.isfunction(obj) and re.search(r"_forward(_fast)?$", name))
PUBLIC_LOSSES = _public(lambda name, obj: inspect.isfunction(obj) and re.search(r"entropy|_loss$|^bce_", name))


def _moe() -> moe.MoE:
    return moe.MoE(4, 3, 4, 2, 5, generator=g(), noise_generator=g())


# class -> () -> (layer, a batch it accepts); the layers are float32
LAYER_RECIPES = {
    layers.Linear: lambda: (layers.Linear(4, 3, generator=g()), r(5, 4)),
    layers.ReLU: lambda: (layers.ReLU(), r(5, 4)),
    layers.Sequential: lambda: (layers.mlp([4, 6, 3], generator=g()), r(5, 4)),
    norm.BatchNorm1d: lambda: (norm.BatchNorm1d(4), r(5, 4)),
    norm.LayerNorm: lambda: (norm.LayerNorm(4), r(5, 4)),
    dropout.Dropout: lambda: (dropout.Dropout(0.5, generator=g()), r(5, 4)),
    moe.MoE: lambda: (_moe(), r(6, 4)),
    parallel.SyncBatchNorm1d: lambda: (parallel.SyncBatchNorm1d(4), r(5, 4)),
    parallel.ExpertParallelMoE: lambda: (parallel.ExpertParallelMoE(_moe()), r(6, 4)),
    conv.Conv2d: lambda: (conv.Conv2d(2, 3, 3, padding=1, generator=g()), r(2, 2, 5, 5)),
    conv.MaxPool2d: lambda: (conv.MaxPool2d(2), r(2, 2, 4, 4)),
    conv.Reshape: lambda: (conv.Reshape(2, 8), r(3, 16)),
    attention.MultiHeadAttention: lambda: (attention.MultiHeadAttention(8, 2, generator=g()), r(2, 3, 8)),
    attention.Tokenwise: lambda: (attention.Tokenwise(layers.Linear(8, 5, generator=g())), r(2, 3, 8)),
    attention.TransformerBlock: lambda: (attention.TransformerBlock(8, 2, 16, generator=g()), r(2, 3, 8)),
    attention.Patches: lambda: (attention.Patches((1, 4, 4), 2), r(2, 16)),
    attention.PositionEmbedding: lambda: (attention.PositionEmbedding(3, 8, generator=g()), r(2, 3, 8)),
    attention.MeanOverTokens: lambda: (attention.MeanOverTokens(), r(2, 3, 8)),
    fast.FastLinear: lambda: (fast.FastLinear(4, 3, generator=g()), r(5, 4)),
    fast.FastReLU: lambda: (fast.FastReLU(), r(5, 4)),
    fast.FastBatchNorm1d: lambda: (fast.FastBatchNorm1d(4), r(5, 4)),
    fast.FastLayerNorm: lambda: (fast.FastLayerNorm(4), r(5, 4)),
    fast.FastConv2d: lambda: (fast.FastConv2d(2, 3, 3, padding=1, generator=g()), r(2, 2, 5, 5)),
    fast.FastMultiHeadAttention: lambda: (fast.FastMultiHeadAttention(8, 2, generator=g()), r(2, 3, 8)),
    fast.FastMaxPool2d: lambda: (fast.FastMaxPool2d(2), r(2, 2, 4, 4)),
}


def _experts(n: int) -> list:
    return [layers.mlp([4, 5, 3], generator=g()) for _ in range(n)]


# name -> (() -> keyword arguments, the arguments that are a layer's parameters); float32 throughout
FORWARD_RECIPES = {
    "logistic_forward": (lambda: dict(x=r(5, 4), w=r(4), b=r(())), ("w", "b")),
    "linear_forward": (lambda: dict(x=r(5, 4), W=r(4, 3), b=r(3)), ("W", "b")),
    "relu_forward": (lambda: dict(x=r(5, 4)), ()),
    "normalize_forward": (lambda: dict(x=r(5, 4), gamma=r(4), beta=r(4), dim=0), ("gamma", "beta")),
    "batchnorm_forward": (lambda: dict(x=r(5, 4), gamma=r(4), beta=r(4)), ("gamma", "beta")),
    "batchnorm_eval_forward": (lambda: dict(x=r(5, 4), gamma=r(4), beta=r(4), running_mean=r(4),
                                            running_var=r(4).abs()), ("gamma", "beta")),
    "layernorm_forward": (lambda: dict(x=r(5, 4), gamma=r(4), beta=r(4)), ("gamma", "beta")),
    "dropout_forward": (lambda: dict(x=r(5, 4), p=0.5, generator=g()), ()),
    "softmax_gating_forward": (lambda: dict(x=r(5, 4), W_g=r(4, 3)), ("W_g",)),
    "noisy_top_k_gating_forward": (lambda: dict(x=r(5, 4), W_g=r(4, 3), W_noise=r(4, 3), k=2, noise=r(5, 3)),
                                   ("W_g", "W_noise")),
    "moe_dispatch_forward": (lambda: dict(x=r(5, 4), gates=r(5, 2).relu(), experts=_experts(2)), ()),
    "all_to_all_forward": (lambda: dict(x=r(5, 4), send_counts=[5], recv_counts=[5]), ()),
    "sync_batchnorm_forward": (lambda: dict(x=r(5, 4), gamma=r(4), beta=r(4)), ("gamma", "beta")),
    "expert_parallel_forward": (lambda: dict(x=r(5, 4), gates=r(5, 2).relu(), experts=_experts(2), owners=[0, 0],
                                             first_expert=0, d_out=3), ()),
    "conv2d_forward": (lambda: dict(x=r(2, 2, 5, 5), W=r(3, 2, 3, 3), b=r(3)), ("W", "b")),
    "maxpool2d_forward": (lambda: dict(x=r(2, 2, 4, 4)), ()),
    "attention_forward": (lambda: dict(q=r(2, 3, 4), k=r(2, 3, 4), v=r(2, 3, 4)), ()),
    "normalize_forward_fast": (lambda: dict(x=r(5, 4), gamma=r(4), beta=r(4), dim=0), ("gamma", "beta")),
    "layernorm_forward_fast": (lambda: dict(x=r(5, 4), gamma=r(4), beta=r(4)), ("gamma", "beta")),
}

# name -> (() -> keyword arguments, its logits arguments, its integer-labels argument or None)
LOSS_RECIPES = {
    "cross_entropy": (lambda: dict(logits=r(5, 3), y=torch.tensor([0, 2, 1, 1, 0])), ("logits",), "y"),
    "softmax_cross_entropy": (lambda: dict(logits=r(5, 3), y=torch.tensor([0, 2, 1, 1, 0])), ("logits",), "y"),
    "softmax_cross_entropy_fast": (lambda: dict(logits=r(5, 3), y=torch.tensor([0, 2, 1, 1, 0])), ("logits",), "y"),
    "distillation_loss": (lambda: dict(student_logits=r(5, 3), teacher_logits=r(5, 3) + 1,
                                       labels=torch.tensor([0, 2, 1, 1, 0]), T=2.0, alpha=0.5),
                          ("student_logits", "teacher_logits"), "labels"),
    "bce_with_logits": (lambda: dict(z=r(5), y=torch.tensor([1.0, 0, 1, 1, 0])), ("z",), None),  # float targets
}

BAD_DTYPES = (torch.float64, torch.uint8, torch.int64)


def _as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (x.abs() * 10).to(dtype)


def _snapshot(layer: Layer, dx) -> list[torch.Tensor]:
    return [dx.clone() if dx is not None else torch.zeros(0)] + [grad.clone() for grad in layer.gradients()]


# --- the rows ---------------------------------------------------------------------------------------------------


def test_every_row_has_a_recipe():
    """A public layer, forward function or loss without a recipe fails here: give it one above."""
    names = {cls.__name__ for cls in LAYER_RECIPES}
    assert set(PUBLIC_LAYERS) - names == set(), "public layers with no recipe in LAYER_RECIPES"
    assert set(PUBLIC_FORWARDS) - set(FORWARD_RECIPES) == set(), "forward functions with no recipe"
    assert set(PUBLIC_LOSSES) - set(LOSS_RECIPES) == set(), "losses with no recipe in LOSS_RECIPES"
    stale = (names - set(PUBLIC_LAYERS)) | (set(FORWARD_RECIPES) - set(PUBLIC_FORWARDS)) \
        | (set(LOSS_RECIPES) - set(PUBLIC_LOSSES))
    assert not stale, f"recipes for names that are not public (any more): {sorted(stale)}"
    for name, (make, params) in FORWARD_RECIPES.items():
        signature = inspect.signature(PUBLIC_FORWARDS[name])
        assert set(params) <= set(make()) <= set(signature.parameters), name


def _layer_cells():
    cells = []
    for cls in LAYER_RECIPES:
        cells += [pytest.param(cls, "before", id=f"{cls.__name__}-backward-before-forward"),
                  pytest.param(cls, "twice", id=f"{cls.__name__}-backward-twice")]
        if LAYER_RECIPES[cls]()[0].parameters():                   # a parameterless layer has no dtype
            for dtype in BAD_DTYPES:
                cells.append(pytest.param(cls, dtype, id=f"{cls.__name__}-{dtype}"))
    return cells


def _forward_cells():
    cells = []
    for name, (_, params) in FORWARD_RECIPES.items():
        cells += [pytest.param(name, param, id=f"{name}-{param}-None") for param in params]
        if params:
            cells += [pytest.param(name, dtype, id=f"{name}-{dtype}") for dtype in BAD_DTYPES]
    return cells


def _loss_cells():
    cells = []
    for name, (_, logits, labels) in LOSS_RECIPES.items():
        cells += [pytest.param(name, arg, dtype, id=f"{name}-{arg}-{dtype}")
                  for arg in logits for dtype in (torch.int64, torch.uint8)]
        if labels is not None:
            cells.append(pytest.param(name, labels, torch.float32, id=f"{name}-{labels}-float32"))
    return cells


LAYER_CELLS, FORWARD_CELLS, LOSS_CELLS = _layer_cells(), _forward_cells(), _loss_cells()


def test_matrix_counts():
    """The counts in the module docstring: rows found in the package, cells that run."""
    rows = {"layers": len(PUBLIC_LAYERS), "forward functions": len(PUBLIC_FORWARDS), "losses": len(PUBLIC_LOSSES)}
    cells = {"layers": len(LAYER_CELLS), "forward functions": len(FORWARD_CELLS), "losses": len(LOSS_CELLS)}
    for what in rows:
        print(f"{what}: {rows[what]} rows, {cells[what]} cells")
    print(f"in all: {sum(cells.values())} cells")
    stated = {what: (int(n_rows), int(n_cells)) for what, n_rows, n_cells in
              re.findall(r"^  ([a-z ]+), (\d+) rows:.*?: (\d+)$", __doc__, re.M | re.S)}
    assert stated == {what: (rows[what], cells[what]) for what in rows}, "the docstring's counts are out of date"
    assert f"{sum(cells.values())} cells in all" in __doc__, "the docstring's total is out of date"


# --- layers -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, column", LAYER_CELLS)
def test_layer_misuse(cls, column):
    layer, x = LAYER_RECIPES[cls]()
    if column == "before":
        _backward_before_forward(cls, layer)
    elif column == "twice":
        _backward_twice(layer, x)
    else:
        with pytest.raises(TypeError, match=rf"x is {column} but the layer's \w+ is torch\.float32"):
            layer.forward(_as(x, column))


def _backward_before_forward(cls, layer):
    """A clear AttributeError naming the layer (or, for a container, the layer inside it that was reached
    first) and the mistake; a layer whose backward needs nothing from its forward pass may answer, but then
    as after one."""
    reference, x_ref = LAYER_RECIPES[cls]()
    dout = torch.randn(reference.forward(x_ref).shape, generator=g())
    try:
        dx = layer.backward(dout)
    except AttributeError as error:
        names = {type(inner).__name__ for _, inner in layer.named_layers()}
        match = re.fullmatch(r"'(\w+)' object has no attribute '\w*cache' yet: backward was called before forward",
                             str(error))
        assert match and match[1] in names, f"{cls.__name__}: {error}"
        return
    expected = reference.backward(dout)
    assert torch.equal(dx, expected), f"{cls.__name__}.backward before forward answered, but not as after one"
    assert all(torch.equal(a, b) for a, b in zip(layer.gradients(), reference.gradients()))


def _backward_twice(layer, x):
    """The second backward pass from the same cache gives the same input gradient and gradients
    (it overwrites, never accumulates), and leaves what the first one returned unchanged."""
    out = layer.forward(x)
    dout = torch.randn(out.shape, generator=g())
    dx_first = layer.backward(dout)
    first = _snapshot(layer, dx_first)
    second = _snapshot(layer, layer.backward(dout))
    for i, (a, b) in enumerate(zip(first, second)):
        assert torch.equal(a, b), f"{type(layer).__name__}: entry {i} (0 = dx) differs on the second backward"
    if dx_first is not None:
        assert torch.equal(dx_first, first[0]), "the second backward overwrote the first one's dx"


# --- forward functions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, column", FORWARD_CELLS)
def test_forward_function_misuse(name, column):
    make, _ = FORWARD_RECIPES[name]
    kwargs = make()
    if isinstance(column, str):                                # a parameter passed as None
        kwargs[column] = None
        with pytest.raises(TypeError, match=rf"^{column} must be a tensor, got None$"):
            PUBLIC_FORWARDS[name](**kwargs)
    else:
        kwargs["x"] = _as(kwargs["x"], column)
        with pytest.raises(TypeError, match=rf"^x is {column} but the layer's \w+ is torch\.float32$"):
            PUBLIC_FORWARDS[name](**kwargs)


# --- losses -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, arg, dtype", LOSS_CELLS)
def test_loss_misuse(name, arg, dtype):
    """Integer logits used to give an all-zero gradient (dlogits cast back to an integer dtype)."""
    make, logits, _ = LOSS_RECIPES[name]
    kwargs = make()
    result = PUBLIC_LOSSES[name](**kwargs)                     # the recipe itself is valid
    assert not isinstance(result, tuple) or result[1].abs().sum() > 0      # (loss, dlogits) or the loss
    kwargs[arg] = _as(kwargs[arg], dtype) if arg in logits else kwargs[arg].to(dtype)
    pattern = rf"\b{arg} must be floating point, got {dtype}" if arg in logits else rf"int64 class indices, got {dtype}"
    with pytest.raises(TypeError, match=pattern):
        PUBLIC_LOSSES[name](**kwargs)


# --- beside the matrix ------------------------------------------------------------------------------------------


def test_the_message_names_the_class_and_other_attributes_stay_attribute_errors():
    import copy

    with pytest.raises(AttributeError, match=r"^'Linear' object has no attribute 'cache' yet: backward was called "
                                             r"before forward$"):
        layers.Linear(2, 3).backward(torch.ones(4, 3))
    with pytest.raises(AttributeError, match=r"^'MoE' object has no attribute 'dispatch_cache' yet: backward was "
                                             r"called before forward$"):
        _moe().backward(torch.ones(6, 3))
    assert getattr(layers.Linear(2, 3), "cache", None) is None      # getattr's default still works
    layer = layers.Linear(2, 3)
    assert layer.process_local is False and getattr(layer, "anything", 7) == 7
    with pytest.raises(AttributeError, match="'Linear' object has no attribute 'nothing'"):
        _ = layer.nothing
    copy.deepcopy(layer).forward(torch.ones(1, 2))             # copies before a forward pass work


def test_attention_refuses_q_k_v_of_different_dtypes():
    q = r(2, 3, 4)
    with pytest.raises(TypeError, match=r"one dtype; got q torch\.float32, k torch\.float64, v torch\.float32"):
        attention.attention_forward(q, q.double(), q)


def test_a_bias_that_is_not_a_tensor_is_named():
    with pytest.raises(TypeError, match=r"^b must be a tensor, got float$"):
        layers.linear_forward(r(5, 4), r(4, 3), 0.0)
    with pytest.raises(TypeError, match=r"^x must be a tensor, got list$"):
        layers.linear_forward([[1.0] * 4], r(4, 3), r(3))


def test_consistent_dtypes_still_pass():
    """The checks compare dtypes only: a float64 or float16 model takes its own dtype."""
    for dtype in (torch.float64, torch.float16):
        model = layers.mlp([4, 6, 3], dtype=dtype)
        assert model.forward(r(5, 4).to(dtype)).dtype == dtype
        out, _ = norm.batchnorm_forward(r(5, 4).to(dtype), torch.ones(4, dtype=dtype), torch.zeros(4, dtype=dtype))
        assert out.dtype == dtype
    distill.distillation_loss(r(5, 3).half(), r(5, 3).half(), torch.tensor([0, 2, 1, 1, 0]), 2.0, 1.0)
    logistic.logistic_forward(r(5, 4).double(), r(4).double(), r(()).double())
    losses.softmax_cross_entropy(r(5, 3).bfloat16(), torch.tensor([0, 2, 1, 1, 0]))
