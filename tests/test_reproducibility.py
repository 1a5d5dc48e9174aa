"""The same seed gives bit-identical training on a CPU, for every chapter's model and optimizer."""

import pytest
import torch

from neuroforge_lit.dropout import Dropout
from neuroforge_lit.layers import Linear, ReLU, Sequential, mlp
from neuroforge_lit.moe import MoE
from neuroforge_lit.norm import normalized_mlp
from neuroforge_lit.optim import SGD, Adam, AdamW, GradientDescent
from neuroforge_lit.training import fit

from conftest import assert_tensors_equal


def models(seed):
    g = lambda k: torch.Generator().manual_seed(seed * 10 + k)   # noqa: E731 - one generator per role
    return {
        "mlp + gradient descent": (mlp([20, 16, 4], generator=g(0)), GradientDescent(0.1)),
        "batch norm + SGD momentum": (normalized_mlp([20, 16, 4], "batch", generator=g(0)),
                                      SGD(0.05, momentum=0.9, nesterov=True)),
        "layer norm + Adam": (normalized_mlp([20, 16, 4], "layer", generator=g(0)), Adam(1e-2)),
        "dropout + AdamW": (Sequential(Dropout(0.2, generator=g(1)), Linear(20, 16, generator=g(0)), ReLU(),
                                       Dropout(0.5, generator=g(1)), Linear(16, 4, generator=g(0))), AdamW(1e-2)),
        "mixture of experts + AdamW": (Sequential(MoE(20, 8, 4, 2, 6, generator=g(0), noise_generator=g(2)),
                                                  ReLU(), Linear(8, 4, generator=g(0))), AdamW(1e-2)),
    }


def run(name, seed):
    model, opt = models(seed)[name]
    data = torch.Generator().manual_seed(123)
    x, y = torch.randn(96, 20, generator=data), torch.randint(0, 4, (96,), generator=data)
    fit(model, opt, x, y, epochs=2, batch_size=16, seed=seed, log=None)
    return model.parameters()


@pytest.mark.parametrize("name", list(models(0)))
def test_same_seed_is_bit_identical_and_another_seed_is_not(name):
    a, b = run(name, 0), run(name, 0)
    assert_tensors_equal(a, b, "a vs b")
    c = run(name, 1)
    assert not all(torch.equal(p, q) for p, q in zip(a, c))
