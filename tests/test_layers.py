"""The Layer protocol (book/02_mlp.md, "Layers that remember"): what a layer declares, and what the
base derives from it: paths, modes, gradients, and a complete state that loads all or nothing."""

import pytest
import torch

from neuroforge_lit.dropout import Dropout
from neuroforge_lit.layers import Linear, ReLU, Sequential, mlp
from neuroforge_lit.moe import MoE
from neuroforge_lit.norm import BatchNorm1d

from conftest import assert_tensors_equal


def model(seed=0):
    g = torch.Generator().manual_seed(seed)
    return Sequential(Linear(5, 6, generator=g), BatchNorm1d(6), ReLU(),
                      Dropout(0.3, generator=torch.Generator().manual_seed(seed + 1)),
                      MoE(6, 4, 3, 2, 5, generator=g, noise_generator=torch.Generator().manual_seed(seed + 2)))


def test_paths_name_every_layer_and_every_parameter():
    m = model()
    paths = [path for path, _ in m.named_layers()]
    assert paths[:5] == ["", "0.", "1.", "2.", "3."]
    assert "4.expert2.2." in paths
    names = [name for name, _ in m.named_parameters()]
    assert names[:4] == ["0.W", "0.b", "1.gamma", "1.beta"] and "4.expert1.0.W" in names
    assert len(names) == len(m.parameters()) == len(m.gradients()) == 4 + 2 + 3 * 4
    declared = m.declared()
    assert set(declared["buffers"]) == {"1.running_mean", "1.running_var"}
    assert set(declared["generators"]) == {"3.mask", "4.noise"}


def test_train_eval_and_evaluating_reach_every_layer():
    m = model()
    m.eval()
    assert not any(layer.training for _, layer in m.named_layers())
    m.train()
    m.layers[1].eval()
    with m.evaluating():
        assert not any(layer.training for _, layer in m.named_layers())
    assert [layer.training for layer in m.layers] == [True, False, True, True, True]
    with pytest.raises(RuntimeError, match="inside"):
        with m.evaluating():
            raise RuntimeError("inside")
    assert m.layers[0].training and not m.layers[1].training      # restored on an error too


def test_calling_a_layer_is_its_forward():
    m = mlp([3, 4, 2], generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 3)
    assert torch.equal(m(x), m.forward(x))


def test_zero_gradients_and_gradients_before_backward():
    m = mlp([3, 4, 2], generator=torch.Generator().manual_seed(0))
    assert_tensors_equal(m.gradients(), [torch.zeros_like(g) for g in m.gradients()], "gradients before backward")
    m.backward(torch.ones_like(m.forward(torch.randn(5, 3))))
    assert any(g.any() for g in m.gradients())
    m.zero_gradients()
    assert len(m.gradients()) == 4, f"{len(m.gradients())} gradients, expected 4"
    assert_tensors_equal(m.gradients(), [torch.zeros_like(g) for g in m.gradients()], "gradients before backward")


def test_state_round_trip_restores_everything():
    a, b = model(0), model(7)
    x = torch.randn(8, 5)
    a.forward(x)                                                   # running stats and generators move
    b.load_state_dict(a.state_dict())
    assert_tensors_equal(a.parameters(), b.parameters(), "a.parameters() vs b.parameters()")
    assert torch.equal(a.layers[1].buffers["running_mean"], b.layers[1].buffers["running_mean"])
    assert torch.equal(a.forward(x), b.forward(x))                 # same masks, same noise


def test_state_dict_is_a_copy():
    m = model()
    state = m.state_dict()
    m.parameters()[0].add_(1.0)
    assert not torch.equal(state["params"]["0.W"], m.parameters()[0])


@pytest.mark.parametrize("edit,message", [
    (lambda s: s["params"].pop("0.W"), r"parameter '0.W' is missing from the state"),
    (lambda s: s["buffers"].update({"9.extra": torch.zeros(1)}), r"buffer '9.extra' is in the state but not"),
    (lambda s: s["params"].update({"1.gamma": torch.ones(7)}), r"parameter '1.gamma': the model has \(6,\)"),
    (lambda s: s["params"].update({"0.b": torch.zeros(6, dtype=torch.float64)}),
     r"torch.float32, the state \(6,\) torch.float64"),
    (lambda s: s["generators"].update({"3.mask": torch.zeros(3, dtype=torch.uint8)}),
     r"generator '3.mask': not a state of a cpu generator"),
    (lambda s: s["params"].update({"0.b": [0.0] * 6}), r"parameter '0.b' is a list, not a tensor"),
])
def test_a_state_that_does_not_fit_is_refused_and_changes_nothing(edit, message):
    source, target = model(0), model(5)
    source.forward(torch.randn(8, 5))
    state = source.state_dict()
    edit(state)
    before = target.state_dict()
    with pytest.raises(ValueError, match=message):
        target.load_state_dict(state)
    after = target.state_dict()
    for kind in before:
        assert_tensors_equal({k: after[kind][k] for k in before[kind]}, before[kind], f"state_dict {kind}")


def test_a_state_that_is_not_a_state_is_refused():
    with pytest.raises(ValueError, match="a dict of three dicts"):
        model().load_state_dict({"params": {}})
    with pytest.raises(ValueError, match="a dict of three dicts"):
        model().load_state_dict([1, 2])
