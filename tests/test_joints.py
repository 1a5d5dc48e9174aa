"""Where the features meet: every fast variant of the performance appendix against every model of
the book (containers included), and checkpoints written on one path and loaded on the other.

The matrix is derived from the code: the columns are the names in ``neuroforge_lit.fast.__all__``
(a new fast variant with no column fails ``test_every_fast_variant_has_a_column``), the rows are
the book's models, one per kind of layer and container. Each cell trains two steps in float64 on
the reference path and on the fast one and compares every parameter to 1e-12 relative.
"""

import copy
import inspect

import pytest
import torch

from neuroforge_lit import fast
from neuroforge_lit.attention import vision_transformer
from neuroforge_lit import optim
from neuroforge_lit.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from neuroforge_lit.conv import convnet
from neuroforge_lit.dropout import Dropout
from neuroforge_lit.layers import Layer, Linear, ReLU, Sequential, mlp
from neuroforge_lit.losses import softmax_cross_entropy
from neuroforge_lit.moe import MoE
from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.optim import Adam, AdamW, GradientDescent, Optimizer
from neuroforge_lit.testing import parity_gap

TOL = 1e-12
F64 = dict(dtype=torch.float64)
PIXELS = 64                                       # 8 x 8 images keep the convnet and the ViT small


def _moe(d_in, d_out, seed):
    return MoE(d_in, d_out, 4, 2, 6, generator=torch.Generator().manual_seed(seed),
               noise_generator=torch.Generator().manual_seed(seed + 1), **F64)


def _models():
    g = torch.Generator().manual_seed(1)
    return {
        "mlp": normalized_mlp([PIXELS, 12, 10, 5], None, generator=g, **F64),
        "mlp+batchnorm": normalized_mlp([PIXELS, 12, 10, 5], "batch", generator=g, **F64),
        "mlp+layernorm": normalized_mlp([PIXELS, 12, 10, 5], "layer", generator=g, **F64),
        "nested Sequential": Sequential(Sequential(Linear(PIXELS, 12, generator=g, **F64), ReLU()),
                                        Sequential(Linear(12, 5, generator=g, **F64))),
        "dropout": Sequential(Dropout(0.2, generator=torch.Generator().manual_seed(2)),
                              Linear(PIXELS, 12, generator=g, **F64), ReLU(),
                              Dropout(0.5, generator=torch.Generator().manual_seed(3)),
                              Linear(12, 5, generator=g, **F64)),
        "moe": Sequential(_moe(PIXELS, 8, 4), ReLU(), Linear(8, 5, generator=g, **F64)),
        "convnet": convnet((2, 3), hidden=8, classes=5, padding=2, image=(1, 8, 8), generator=g, **F64),
        "transformer": vision_transformer(8, 2, depth=2, d_hidden=12, image=(1, 8, 8), patch=4, classes=5,
                                          generator=g, **F64),
        "moe transformer": vision_transformer(8, 2, depth=1, d_hidden=12, image=(1, 8, 8), patch=4, classes=5,
                                              feed_forward=lambda: _moe(8, 8, 7), generator=g, **F64),
    }


def _model(name):
    """The model with every parameter moved away from its initial value (zero gates tie the MoE's
    experts; ones and zeros in the norms hide mistakes)."""
    model = _models()[name]
    g = torch.Generator().manual_seed(11)
    for p in model.parameters():
        p += 0.3 * torch.randn(p.shape, generator=g, **F64)
    return model


def _batch(seed=0, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, PIXELS, generator=g, **F64), torch.randint(0, 5, (n,), generator=g)


def _reference_step(model, optimizer, x, y):
    model.backward(softmax_cross_entropy(model.forward(x), y)[1], input_grad=False)
    optimizer.step(model.parameters(), model.gradients())


def _train_both(name, fast_step, reference_step=None, steps=2):
    """The model trained `steps` steps by reference_step (default: backward + GradientDescent) and by
    fast_step on a copy; both results."""
    reference = _model(name)
    faster, initial = copy.deepcopy(reference), copy.deepcopy(reference)
    reference_step = reference_step or (lambda m, x, y: _reference_step(m, GradientDescent(0.1), x, y))
    for step in range(steps):
        x, y = _batch(step)
        reference_step(reference, x, y)
        fast_step(faster, x, y)
    return initial, reference, faster


def _zero_in_theory(model) -> list[torch.Tensor]:
    """Per parameter, where its gradient is zero in theory (a bias just before batch norm, the key
    bias of attention, to which softmax is blind): there the paths compute rounding noise, ~1e-17,
    which Adam divides by its eps (1e-8)."""
    model = copy.deepcopy(model)
    x, y = _batch(0)
    model.backward(softmax_cross_entropy(model.forward(x), y)[1], input_grad=False)
    return [g.abs() < 1e-13 for g in model.gradients()]


def assert_parity(initial, reference, faster, what):
    named = zip(initial.named_parameters(), reference.parameters(), faster.parameters(),
                _zero_in_theory(initial), strict=True)
    for (name, p0), r, f, noise in named:
        gap = parity_gap([(f[~noise], r[~noise])])
        assert gap <= TOL, f"{what}: parameter {name!r} differs from the reference by {gap:.1e} (relative)"
        # two steps of lr * noise / eps move such an entry by 2 * 0.01 * 1e-16 / 1e-8 = 2e-10 at most
        assert parity_gap([(f[noise], r[noise])], atol=1e-9) <= TOL, f"{what}: {name!r} where its gradient is 0"
        assert noise.all() or not torch.equal(p0, r), f"{what}: the reference never moved {name!r}"


# --- the columns -----------------------------------------------------------------------------

def _speed_up_step(model, x, y):
    """speed_up's layers with the fast loss, stepped by the reference optimizer."""
    fast.speed_up(model)
    model.backward(fast.softmax_cross_entropy_fast(model.forward(x), y)[1], input_grad=False)
    GradientDescent(0.1).step(model.parameters(), model.gradients())


def _fused_step(model, x, y):
    fast.sgd_step_fused(fast.speed_up(model), softmax_cross_entropy(model.forward(x), y)[1], lr=0.1)


# FusedAdamW compiles its update anew for every list of shapes (5-15 s here): it compiles for these
# models and runs the same update uncompiled (adamw_elementwise) for the others, which still tests
# how the class walks each model's parameter list and state.
COMPILED_FOR = {"mlp", "transformer"}


def _optimizer_column(fast_class, reference_class):
    """An optimizer variant against its reference, each keeping its state across the two steps."""
    def run(name):
        optimizers = {}

        def step_with(kind):
            def step(model, x, y):
                if kind not in optimizers:
                    cls = fast_class if kind == "fast" else reference_class
                    optimizers[kind] = cls(lr=0.01, weight_decay=0.1)
                    if cls is fast.FusedAdamW and name not in COMPILED_FOR:
                        optimizers[kind].compile_error = RuntimeError("not compiled in the joint matrix")
                _reference_step(model, optimizers[kind], x, y)
            return step
        return _train_both(name, step_with("fast"), step_with("reference"))
    return run


COLUMNS = {
    "speed_up + softmax_cross_entropy_fast": lambda name: _train_both(name, _speed_up_step),
    "sgd_step_fused": lambda name: _train_both(name, _fused_step),
    "ForeachAdam": _optimizer_column(fast.ForeachAdam, Adam),
    "ForeachAdamW": _optimizer_column(fast.ForeachAdamW, AdamW),
    "FusedAdamW": _optimizer_column(fast.FusedAdamW, AdamW),
}

# Names of fast.__all__ that are not a column of their own, and the column that runs them.
COVERED_BY = {
    "FastLinear": "speed_up", "FastReLU": "speed_up", "FastBatchNorm1d": "speed_up", "FastLayerNorm": "speed_up",
    "FAST_LAYERS": "speed_up", "speed_up": "speed_up + softmax_cross_entropy_fast",
    "softmax_cross_entropy_fast": "speed_up + softmax_cross_entropy_fast",
    "normalize_forward_fast": "FastBatchNorm1d", "batchnorm_backward_fast": "FastBatchNorm1d",
    "layernorm_forward_fast": "FastLayerNorm", "layernorm_backward_fast": "FastLayerNorm",
    "adamw_elementwise": "FusedAdamW",
    "FastConv2d": "speed_up", "FastMaxPool2d": "speed_up", "conv2d_backward_fast": "FastConv2d",
    "FastMultiHeadAttention": "speed_up",
}


def test_every_fast_variant_has_a_column():
    unplaced = [name for name in fast.__all__ if name not in COLUMNS and name not in COVERED_BY]
    assert not unplaced, f"fast variants with no column in the joint matrix: {unplaced}"
    fast_layers = {obj for obj in vars(fast).values() if inspect.isclass(obj) and issubclass(obj, Layer)
                   and obj.__module__ == fast.__name__}
    assert fast_layers == set(fast.FAST_LAYERS.values()), "a fast layer that speed_up does not install"
    fast_optimizers = {name for name in fast.__all__
                       if inspect.isclass(getattr(fast, name)) and issubclass(getattr(fast, name), Optimizer)}
    assert fast_optimizers <= set(COLUMNS), f"optimizers without a column: {fast_optimizers - set(COLUMNS)}"


def test_every_model_holds_layers_that_speed_up_converts():
    for name in _models():
        model = fast.speed_up(_model(name))
        left = [path for path, layer in model.named_layers() if type(layer) in fast.FAST_LAYERS]
        assert not left, f"{name}: speed_up left {left[:3]} on the reference path"


@pytest.mark.parametrize("column", list(COLUMNS))
@pytest.mark.parametrize("name", list(_models()))
def test_fast_variant_trains_like_the_reference(name, column):
    assert_parity(*COLUMNS[column](name), f"{column} on {name}")


# --- checkpoints across the two paths ----------------------------------------------------------

def _synchronized_fast(model):
    """speed_up, then chapter 9's batch norm across processes (alone here: a group of one)."""
    from neuroforge_lit.parallel import synchronize_batch_norm

    return synchronize_batch_norm(fast.speed_up(model))


@pytest.mark.parametrize("name,convert", [("mlp+batchnorm", fast.speed_up), ("dropout", fast.speed_up),
                                          ("moe transformer", fast.speed_up), ("mlp+batchnorm", _synchronized_fast)],
                         ids=["mlp+batchnorm", "dropout", "moe transformer", "mlp+batchnorm, synchronized"])
def test_a_checkpoint_of_the_fast_path_resumes_on_the_reference_path(tmp_path, name, convert):
    """Fast model + ForeachAdamW saved after one step, loaded into a reference model + AdamW: the
    next step equals the one the fast path takes, and the other way round."""
    x0, y0 = _batch(0)
    x1, y1 = _batch(1)
    for saver, loader in (("fast", "reference"), ("reference", "fast")):
        models = {"reference": _model(name), "fast": convert(_model(name))}
        optimizers = {"reference": AdamW(lr=0.01), "fast": fast.ForeachAdamW(lr=0.01)}
        _reference_step(models[saver], optimizers[saver], x0, y0)
        save_checkpoint(tmp_path / "ckpt", models[saver], optimizers[saver])
        load_checkpoint(tmp_path / "ckpt", models[loader], optimizers[loader])
        for kind in (saver, loader):
            _reference_step(models[kind], optimizers[kind], x1, y1)
        assert_parity(_model(name), models[saver], models[loader], f"{name}, saved on {saver}, resumed on {loader}")


# --- every optimizer x tied tensors, steps without a backward, a state of other parameters ----------

OPTIMIZERS = [obj for module in (optim, fast) for obj in (getattr(module, name) for name in module.__all__)
              if inspect.isclass(obj) and issubclass(obj, Optimizer) and obj is not Optimizer]


def _trained_step(model, optimizer, seed=0):
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed), **F64)
    model.backward(softmax_cross_entropy(model.forward(x), torch.tensor([0, 1, 2, 0, 1, 2]))[1])
    optimizer.step(model.parameters(), model.gradients())


def _small_mlp():
    return mlp([4, 5, 3], generator=torch.Generator().manual_seed(0), **F64)


def test_the_optimizer_list_is_complete():
    names = {cls.__name__ for cls in OPTIMIZERS}
    assert {"GradientDescent", "SGD", "Adam", "AdamW", "ForeachAdam", "ForeachAdamW", "FusedAdamW"} <= names


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_one_tensor_passed_twice_is_refused_with_nothing_changed(cls):
    w = torch.randn(3, 2, **F64)
    before = w.clone()
    optimizer = cls(0.1)
    with pytest.raises(ValueError, match="parameters 0 and 2 are the same tensor"):
        optimizer.step([w, torch.zeros(2, **F64), w], [torch.ones(3, 2, **F64), torch.ones(2, **F64),
                                                        torch.ones(3, 2, **F64)])
    assert torch.equal(w, before) and optimizer.t == 0 and optimizer.state == []


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_a_step_without_a_backward_is_refused(cls):
    model, optimizer = _small_mlp(), cls(0.1)
    _trained_step(model, optimizer)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="gradients of the previous step again"):
        optimizer.step(model.parameters(), model.gradients())
    assert optimizer.t == 1
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a, b)
    _trained_step(model, optimizer, seed=1)                # with a backward in between, it steps
    assert optimizer.t == 2
    grads = model.gradients()
    for g in grads:
        g.mul_(0.5)                                        # changed in place (clipping): a new gradient
    optimizer.step(model.parameters(), grads)
    assert optimizer.t == 3


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_a_checkpoint_of_other_parameters_is_refused_before_anything_changes(cls, tmp_path):
    """As when fine-tuning a head: the saved optimizer stepped the whole model; the new one steps
    only the head. load_checkpoint refuses it, naming the counts, and changes neither."""
    model, optimizer = _small_mlp(), cls(0.1)
    _trained_step(model, optimizer)
    save_checkpoint(tmp_path / "whole.ckpt", model, optimizer)
    fresh = mlp([4, 5, 3], generator=torch.Generator().manual_seed(9), **F64)
    head = fresh.layers[-1].parameters()
    head_optimizer = cls(0.1)
    before = [p.clone() for p in fresh.parameters()]
    with pytest.raises(CheckpointError, match="holds state for 4 parameters, but the optimizer steps 2"):
        load_checkpoint(tmp_path / "whole.ckpt", fresh, head_optimizer, params=head)
    assert head_optimizer.state_dict() == cls(0.1).state_dict()
    for a, b in zip(fresh.parameters(), before):
        assert torch.equal(a, b)
    load_checkpoint(tmp_path / "whole.ckpt", fresh, cls(0.1))         # the whole model: it fits
    _trained_step(model, optimizer, seed=1)
    resumed = cls(0.1)
    load_checkpoint(tmp_path / "whole.ckpt", fresh, resumed)
    _trained_step(fresh, resumed, seed=1)
    for a, b in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", OPTIMIZERS, ids=lambda c: c.__name__)
def test_steps_under_inference_mode_and_views_of_one_tensor_are_fine(cls):
    """Gradients made under torch.inference_mode have no version counter: the stale-gradient check
    must not read one (it did, after the parameters had moved). Two views of one storage at other
    offsets or shapes are different parameters, not one tensor passed twice."""
    w = torch.randn(6, **F64)
    params, optimizer = [w[:3], w[3:], w], cls(0.1)
    with torch.inference_mode():
        grads = [torch.ones(3, **F64), torch.ones(3, **F64), torch.ones(6, **F64)]
    optimizer.step(params, grads)
    optimizer.step(params, grads)        # no version to compare: cannot tell, so it steps
    assert optimizer.t == 2
