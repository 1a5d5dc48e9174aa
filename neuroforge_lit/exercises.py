"""Coding exercises that the package checks: write a backward pass or an update yourself, and get a
diagnosis. Hand-written (not generated from the book).

    >>> from neuroforge_lit.exercises import check, list_exercises, skeleton, solution
    >>> print(skeleton("02.1"))                  # the function to write, with its signature
    >>> check("02.1", my_linear_backward)        # passed, or what is wrong and by how much

``check`` runs your function on random inputs (new ones at every call, so an answer that is
hard-coded fails), compares every output with the reference solution and, where the output is a
gradient, with central finite differences, and names the problem: a skeleton that still raises
``NotImplementedError``, an exception, a modified input, a missing or extra output, a wrong shape
(with the expected one) or dtype, a NaN, and a wrong value, recognised where it can be as one of the
typical mistakes: a sign, a factor (2, the batch size, T^2), a transpose, a sum forgotten over
the batch, a biased or unbiased variance, a missing bias correction, a mask not rescaled.

Your function is called with the inputs in the skeleton's order (its parameters may have other
names), on copies of them, in a child process of its own that is stopped after ``time_limit``
seconds: nothing it does there (an endless loop, an input changed in place, a package function
patched) reaches the checker, which computes the reference in its own process. Each exercise
declares the set of answers it accepts (``Exercise.answers``): most have exactly one, and where a
constant is free (the prior bias of 08.1), any value of it passes.

From a terminal: ``python -m neuroforge_lit.exercises check 02.1 answers.py:linear_backward``
(``list`` shows the exercises, ``skeleton 02.1`` prints one to start from, ``check all answers.py``
checks every function of the file named as an exercise's).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import inspect
import io
import math
import os
import select
import signal
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from neuroforge_lit import attention, conv, distill, layers, logistic, losses, moe, norm, recipe
from neuroforge_lit.testing import numerical_grads, rel_error

__all__ = ["Exercise", "Answers", "UNIQUE", "CheckResult", "list_exercises", "get", "skeleton", "solution", "check",
           "main"]

VALUE_TOL = 1e-8          # relative: float64 rounding is ~1e-15, a real mistake is far larger
NUMERICAL_TOL = 1e-5      # relative, against testing.numerical_grads (extrapolated central differences)
TIME_LIMIT = 10.0         # seconds an answer may run before it is stopped; the references take milliseconds


@dataclass(frozen=True)
class Answers:
    """The set of answers an exercise accepts: those whose outputs equal the reference's (to ``VALUE_TOL``)
    once ``canonical`` has taken out what the set leaves free; ``canonical=None``: only the reference's."""

    text: str                                 # the set in words, shown with the exercise
    canonical: Callable | None = None         # outputs -> the same outputs without their free part


UNIQUE = Answers("exactly the reference's values, to rounding: the answer is unique")


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function the reader writes and how it is checked."""

    id: str                                   # "02.1": chapter 02, exercise 1
    chapter: str                              # the chapter's file stem
    title: str
    signature: str                            # "linear_backward(dout, x, W) -> (dx, dW, db)"
    task: str                                 # what to compute, in a sentence or two
    inputs: Callable[[torch.Generator], dict]  # random float64 arguments, by name
    reference: Callable                       # the solution: the same signature as the reader's
    outputs: tuple[str, ...]                  # names of what it returns
    answers: Answers = field(kw_only=True)    # the answers it accepts: UNIQUE, or a set with a free part
    gradient_of: Callable | None = None       # inputs -> (scalar function, {output: argument name})
    mistakes: dict = field(default_factory=dict)  # name -> a wrong implementation, recognised by name
    scale: Callable | None = None             # inputs -> {factor name: value}, for "off by a factor"

    @property
    def function_name(self) -> str:
        return self.signature.split("(")[0]

    @property
    def parameters(self) -> tuple[str, ...]:
        """The skeleton's parameters, in order: every function is called with the inputs in this order."""
        return tuple(name.strip() for name in self.signature.split("(", 1)[1].split(")")[0].split(","))


@dataclass
class CheckResult:
    """What ``check`` found: ``passed`` and a readable ``diagnosis``."""

    exercise: str
    passed: bool
    diagnosis: str

    def __str__(self) -> str:
        return f"exercise {self.exercise}: {'passed' if self.passed else 'not yet'}. {self.diagnosis}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from html import escape
        colour = "#1a7f37" if self.passed else "#b42318"
        mark = "&#10003; passed" if self.passed else "&#10007; not yet"
        return (f'<div style="border-left: 4px solid {colour}; padding: 0.3em 0.8em">'
                f'<b>exercise {escape(self.exercise)}: <span class="nf-verdict-{"pass" if self.passed else "fail"}" '
                f'style="color: {colour}">{mark}</span></b>'
                f"<br>{escape(self.diagnosis)}</div>")


# ---- the exercises -----------------------------------------------------------------------------

def _f64(g, *shape, scale=1.0):
    return scale * torch.randn(*shape, dtype=torch.float64, generator=g)


def _sizes(g, low=3, high=7):
    return int(torch.randint(low, high + 1, (), generator=g))


def _labels(g, n, classes):
    return torch.randint(0, classes, (n,), generator=g)


def _sigmoid_bce_grad(z, y):
    return (logistic.bce_with_logits(z, y)[1],)


def _logistic_backward(dz, x):
    return logistic.logistic_backward(dz, x)


def _linear_backward(dout, x, W):
    return layers.linear_backward(dout, (x, W))


def _relu_backward(dout, a):
    return (layers.relu_backward(dout, a.clamp_min(0)),)


def _softmax_ce_grad(z, y):
    return (losses.softmax_cross_entropy(z, y)[1],)


def _batchnorm_backward(dout, x, gamma):
    return norm.normalize_backward(dout, norm.batchnorm_forward(x, gamma, torch.zeros_like(gamma))[1])


def _layernorm_backward(dout, x, gamma):
    return norm.normalize_backward(dout, norm.layernorm_forward(x, gamma, torch.zeros_like(gamma))[1])


def _rmsnorm_backward(dout, x, gamma, eps=1e-5):
    """y = gamma * x / r with r = sqrt(mean(x^2) + eps) over the features of each row."""
    r = torch.sqrt((x * x).mean(1, keepdim=True) + eps)
    xhat = x / r
    dgamma = (dout * xhat).sum(0)
    dxhat = gamma * dout
    dx = (dxhat - xhat * (dxhat * xhat).mean(1, keepdim=True)) / r
    return dx, dgamma


def _sgd_momentum_step(p, g, buf, lr, momentum):
    b = momentum * buf + g
    return p - lr * b, b


def _nesterov_step(p, g, buf, lr, momentum):
    b = momentum * buf + g
    return p - lr * (g + momentum * b), b


def _adam_step(p, g, m, v, t, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    return p - lr * m_hat / (torch.sqrt(v_hat) + eps), m, v


def _adamw_step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    p = p * (1 - lr * weight_decay)
    return _adam_step(p, g, m, v, t, lr, beta1, beta2, eps)


def _dropout_backward(dout, keep, p):
    return (dout * keep / (1 - p),)


def _tanh_backward(dout, x):
    y = torch.tanh(x)
    return (dout * (1 - y * y),)


def _distillation_grad(z, v, y, T, alpha):
    return (distill.distillation_loss(z, v, y, T, alpha)[1],)


def _label_smoothing_grad(z, y, smoothing):
    """Cross-entropy against (1 - s) one_hot(y) + s / C: the gradient is (softmax - target) / B."""
    B, C = z.shape
    target = (1 - smoothing) * torch.nn.functional.one_hot(y, C).to(z.dtype) + smoothing / C
    return ((losses.softmax(z) - target) / B,)


def _softmax_gating_backward(dgates, x, W_g):
    return moe.softmax_gating_backward(dgates, moe.softmax_gating_forward(x, W_g)[1])


def _cv_squared_grad(v):
    return (moe.cv_squared(v)[1],)


def _prior_bias(y, n_classes):
    return (recipe.prior_bias(y, n_classes),)


def _gelu_backward(dout, x):
    """GELU(x) = x * Phi(x): its derivative is Phi(x) + x * phi(x)."""
    return (dout * (moe.normal_cdf(x) + x * moe.normal_pdf(x)),)


def _maxpool_backward(dout, x):
    return (conv.maxpool2d_backward(dout, conv.maxpool2d_forward(x, 2)[1]),)


def _conv_inputs(g):
    n, c, c_out, k = _sizes(g, 2, 3), _sizes(g, 1, 3), _sizes(g, 1, 3), _sizes(g, 2, 3)
    h, w = _sizes(g, k + 1, k + 4), _sizes(g, k + 1, k + 4)
    return dict(dout=_f64(g, n, c_out, h - k + 1, w - k + 1), x=_f64(g, n, c, h, w), W=_f64(g, c_out, c, k, k))


def _conv2d_param_grads(dout, x, W):
    cache = conv.conv2d_forward(x, W, torch.zeros(len(W), dtype=x.dtype))[1]
    _, dW, db = conv.conv2d_backward(dout, cache, input_grad=False)
    return dW, db


def _softmax_backward(dP, S):
    return (attention.softmax_backward(dP, torch.softmax(S, -1)),)


def _attention_backward(dout, q, k, v):
    return attention.attention_backward(dout, attention.attention_forward(q, k, v)[1])


_EXERCISES = [
    Exercise(
        "01.1", "01_logistic_regression", "The gradient of the sigmoid and binary cross-entropy",
        "bce_grad(z, y) -> (dz,)",
        "z (N,) logits and y (N,) targets in {0, 1}: return dL/dz of the mean binary cross-entropy "
        "of sigmoid(z) against y (eq-lr-dz).",
        lambda g: (lambda n: dict(z=_f64(g, n, scale=3), y=(torch.rand(n, generator=g) > 0.5).double()))(_sizes(g)),
        _sigmoid_bce_grad, ("dz",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda z: torch.nn.functional.binary_cross_entropy_with_logits(z, i["y"]),
                               {"dz": "z"}),
        mistakes={"the mean over the batch is missing (dz is N times too large)":
                  lambda z, y: (torch.sigmoid(z) - y,),
                  "the sign is flipped (y - sigmoid(z))": lambda z, y: ((y - torch.sigmoid(z)) / len(z),)},
        scale=lambda i: {"the batch size N": len(i["z"])}),
    Exercise(
        "01.2", "01_logistic_regression", "Logistic regression's weight and bias gradients",
        "logistic_backward(dz, x) -> (dw, db)",
        "Given dz = dL/dz (N,) and the inputs x (N, D) of z = x w + b, return dw (D,) and db (a scalar "
        "tensor) (eq-lr-dw, eq-lr-db).",
        lambda g: (lambda n, d: dict(dz=_f64(g, n), x=_f64(g, n, d)))(_sizes(g), _sizes(g, 2, 5)),
        _logistic_backward, ("dw", "db"),
        answers=UNIQUE,
        mistakes={"db is the mean of dz, not its sum (dz already carries the 1/N)":
                  lambda dz, x: (x.T @ dz, dz.mean())}),
    Exercise(
        "02.1", "02_mlp", "The linear layer's backward pass",
        "linear_backward(dout, x, W) -> (dx, dW, db)",
        "For out = x W + b with x (N, D_in), W (D_in, D_out): given dout (N, D_out), return dx, dW, db "
        "(eq-mlp-dx, eq-mlp-dw, eq-mlp-db).",
        lambda g: (lambda n, a, b: dict(dout=_f64(g, n, b), x=_f64(g, n, a), W=_f64(g, a, b)))(
            _sizes(g), _sizes(g, 2, 5), _sizes(g, 2, 5)),
        _linear_backward, ("dx", "dW", "db"),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda x, W: ((x @ W) * i["dout"]).sum(), {"dx": "x", "dW": "W"}),
        mistakes={"db is averaged over the batch instead of summed":
                  lambda dout, x, W: (dout @ W.T, x.T @ dout, dout.mean(0))}),
    Exercise(
        "02.2", "02_mlp", "ReLU's backward pass",
        "relu_backward(dout, a) -> (da,)",
        "For h = max(a, 0) elementwise, given dout = dL/dh, return dL/da (eq-mlp-drelu).",
        lambda g: (lambda n, d: (lambda a: dict(dout=_f64(g, n, d), a=a + 0.1 * a.sign()))(_f64(g, n, d)))(
            _sizes(g), _sizes(g)),
        _relu_backward, ("da",),
        answers=Answers("exactly the reference: the inputs keep a away from 0, the one point where da is not "
                        "unique"),
        gradient_of=lambda i: (lambda a: (torch.relu(a) * i["dout"]).sum(), {"da": "a"}),
        mistakes={"the gradient passes where a < 0 instead of where a > 0":
                  lambda dout, a: (dout * (a < 0),)}),
    Exercise(
        "02.3", "02_mlp", "Softmax and cross-entropy, fused",
        "softmax_ce_grad(z, y) -> (dz,)",
        "z (N, C) logits, y (N,) integer labels: return dL/dz of the mean cross-entropy of softmax(z) "
        "(eq-mlp-dlogits).",
        lambda g: (lambda n, c: dict(z=_f64(g, n, c, scale=2), y=_labels(g, n, c)))(_sizes(g), _sizes(g, 3, 6)),
        _softmax_ce_grad, ("dz",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda z: torch.nn.functional.cross_entropy(z, i["y"]), {"dz": "z"}),
        mistakes={"the one-hot target is not subtracted (softmax alone)":
                  lambda z, y: (losses.softmax(z) / len(z),),
                  "the mean over the batch is missing": lambda z, y: (losses.softmax_cross_entropy(z, y)[1] * len(z),)},
        scale=lambda i: {"the batch size N": len(i["z"])}),
    Exercise(
        "03.1", "03_normalization", "Batch norm's backward pass",
        "batchnorm_backward(dout, x, gamma) -> (dx, dgamma, dbeta)",
        "y = gamma * (x - mu) / sqrt(var + 1e-5) + beta with the batch mean mu and the biased batch "
        "variance var of x (N, D), per feature: given dout, return dx, dgamma, dbeta (eq-norm-dx).",
        lambda g: _norm_inputs(g, _sizes(g, 4, 8), _sizes(g, 2, 5)),
        _batchnorm_backward, ("dx", "dgamma", "dbeta"),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda x, gamma: (norm.batchnorm_forward(x, gamma, torch.zeros_like(gamma))[0]
                                                 * i["dout"]).sum(), {"dx": "x", "dgamma": "gamma"}),
        mistakes={"the mean term (the sum of dxhat over the batch) is missing":
                  lambda dout, x, gamma: _without_mean_term(dout, x, gamma, 0),
                  "the unbiased variance (divided by N - 1) is used":
                  lambda dout, x, gamma: _unbiased(dout, x, gamma)}),
    Exercise(
        "03.2", "03_normalization", "Layer norm's backward pass",
        "layernorm_backward(dout, x, gamma) -> (dx, dgamma, dbeta)",
        "As batch norm, but the statistics are taken over the features of each example (each row of "
        "x), and eps = 1e-5 (eq-norm-dx with the other axis).",
        lambda g: _norm_inputs(g, _sizes(g), _sizes(g, 3, 6)),
        _layernorm_backward, ("dx", "dgamma", "dbeta"),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda x, gamma: (norm.layernorm_forward(x, gamma, torch.zeros_like(gamma))[0]
                                                 * i["dout"]).sum(), {"dx": "x", "dgamma": "gamma"}),
        mistakes={"the mean term is missing": lambda dout, x, gamma: _without_mean_term(dout, x, gamma, 1),
                  "the statistics are taken over the batch axis (that is batch norm)":
                  lambda dout, x, gamma: _batchnorm_backward(dout, x, gamma)}),
    Exercise(
        "03.3", "03_normalization", "RMS norm's backward pass (new)",
        "rmsnorm_backward(dout, x, gamma) -> (dx, dgamma)",
        "y = gamma * x / sqrt(mean(x^2) + 1e-5), the mean over the features of each row (no centring, "
        "no shift): given dout, return dx and dgamma.",
        lambda g: (lambda n, d: dict(dout=_f64(g, n, d), x=_f64(g, n, d, scale=2), gamma=1 + _f64(g, d, scale=0.3)))(
            _sizes(g), _sizes(g, 3, 6)),
        _rmsnorm_backward, ("dx", "dgamma"),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda x, gamma: (gamma * x / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-5)
                                                 * i["dout"]).sum(), {"dx": "x", "dgamma": "gamma"}),
        mistakes={"the term through r (the normalisation's dependence on x) is missing":
                  lambda dout, x, gamma: (gamma * dout / torch.sqrt((x * x).mean(1, keepdim=True) + 1e-5),
                                          _rmsnorm_backward(dout, x, gamma)[1])}),
    Exercise(
        "04.1", "04_optimizers", "One step of gradient descent with momentum",
        "momentum_step(p, g, buf, lr, momentum) -> (p_new, buf_new)",
        "b = momentum * buf + g; p_new = p - lr * b (eq-opt-momentum). Return new tensors; do not "
        "change p or buf in place.",
        lambda g: (lambda s: dict(p=_f64(g, *s), g=_f64(g, *s), buf=_f64(g, *s), lr=0.1, momentum=0.9))(
            (_sizes(g), _sizes(g))),
        _sgd_momentum_step, ("p_new", "buf_new"),
        answers=UNIQUE,
        mistakes={"the velocity is not decayed by the momentum (b = buf + g)":
                  lambda p, g, buf, lr, momentum: (p - lr * (buf + g), buf + g),
                  "the step goes uphill (p + lr * b)":
                  lambda p, g, buf, lr, momentum: (p + lr * (momentum * buf + g), momentum * buf + g)}),
    Exercise(
        "04.2", "04_optimizers", "One step of Nesterov momentum",
        "nesterov_step(p, g, buf, lr, momentum) -> (p_new, buf_new)",
        "b = momentum * buf + g; p_new = p - lr * (g + momentum * b) (eq-opt-nesterov).",
        lambda g: (lambda s: dict(p=_f64(g, *s), g=_f64(g, *s), buf=_f64(g, *s), lr=0.1, momentum=0.9))(
            (_sizes(g), _sizes(g))),
        _nesterov_step, ("p_new", "buf_new"),
        answers=UNIQUE,
        mistakes={"plain momentum (p - lr * b), not Nesterov's": _sgd_momentum_step}),
    Exercise(
        "04.3", "04_optimizers", "One step of Adam",
        "adam_step(p, g, m, v, t, lr, beta1, beta2, eps) -> (p_new, m_new, v_new)",
        "Update the moments m and v, correct their bias with the step number t (1 for the first "
        "step), and take the step (eq-opt-adam-m to eq-opt-adam-update).",
        lambda g: (lambda s: dict(p=_f64(g, *s), g=_f64(g, *s), m=_f64(g, *s, scale=0.1),
                                  v=_f64(g, *s, scale=0.1).abs(), t=int(torch.randint(1, 6, (), generator=g)),
                                  lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-3))((_sizes(g), _sizes(g))),
        _adam_step, ("p_new", "m_new", "v_new"),
        answers=UNIQUE,
        mistakes={"the bias correction is missing (m and v used as they are)":
                  lambda p, g, m, v, t, lr, beta1, beta2, eps: _adam_step(p, g, m, v, math.inf, lr, beta1, beta2, eps),
                  "eps is inside the square root": lambda p, g, m, v, t, lr, beta1, beta2, eps: _adam_eps_inside(
                      p, g, m, v, t, lr, beta1, beta2, eps)}),
    Exercise(
        "04.4", "04_optimizers", "One step of AdamW",
        "adamw_step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay) -> (p_new, m_new, v_new)",
        "Adam's step on the loss gradient g alone, with the weights first decayed by "
        "(1 - lr * weight_decay) (eq-opt-adamw).",
        lambda g: (lambda s: dict(p=_f64(g, *s), g=_f64(g, *s), m=_f64(g, *s, scale=0.1),
                                  v=_f64(g, *s, scale=0.1).abs(), t=int(torch.randint(1, 6, (), generator=g)),
                                  lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-3, weight_decay=0.1))((_sizes(g), _sizes(g))),
        _adamw_step, ("p_new", "m_new", "v_new"),
        answers=UNIQUE,
        mistakes={"L2 in the gradient (Adam + L2), not decoupled decay":
                  lambda p, g, m, v, t, lr, beta1, beta2, eps, weight_decay:
                  _adam_step(p, g + weight_decay * p, m, v, t, lr, beta1, beta2, eps)}),
    Exercise(
        "05.1", "05_dropout", "Inverted dropout's backward pass",
        "dropout_backward(dout, keep, p) -> (dx,)",
        "The forward pass was y = x * keep / (1 - p), keep a 0/1 mask: given dout, return dx "
        "(eq-do-backward).",
        lambda g: (lambda n, d: dict(dout=_f64(g, n, d), keep=(torch.rand(n, d, generator=g) > 0.3).double(), p=0.3))(
            _sizes(g), _sizes(g)),
        _dropout_backward, ("dx",),
        answers=UNIQUE,
        mistakes={"the mask is not rescaled by 1 / (1 - p)": lambda dout, keep, p: (dout * keep,)},
        scale=lambda i: {"1 / (1 - p)": 1 / (1 - i["p"])}),
    Exercise(
        "05.2", "05_dropout", "The backward pass of tanh (new)",
        "tanh_backward(dout, x) -> (dx,)",
        "For y = tanh(x) elementwise, given dout, return dx, written with y (derive tanh' in terms "
        "of tanh).",
        lambda g: (lambda n, d: dict(dout=_f64(g, n, d), x=_f64(g, n, d)))(_sizes(g), _sizes(g)),
        _tanh_backward, ("dx",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda x: (torch.tanh(x) * i["dout"]).sum(), {"dx": "x"}),
        mistakes={"1 - y instead of 1 - y^2": lambda dout, x: (dout * (1 - torch.tanh(x)),),
                  "the sigmoid's derivative y (1 - y) instead": lambda dout, x: (
                      dout * torch.tanh(x) * (1 - torch.tanh(x)),)}),
    Exercise(
        "06.1", "06_distillation", "The gradient of the distillation loss",
        "distillation_grad(z, v, y, T, alpha) -> (dz,)",
        "The loss alpha T^2 CE(softmax(v/T), softmax(z/T)) + (1 - alpha) CE(y, softmax(z)), each a mean "
        "over the batch: return dL/dz (eq-kd-dz).",
        lambda g: _distillation_inputs(g, _sizes(g), _sizes(g, 3, 6)),
        _distillation_grad, ("dz",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda z: distill.distillation_loss(z, i["v"], i["y"], i["T"], i["alpha"])[0],
                               {"dz": "z"}),
        mistakes={"the T^2 factor on the soft term is missing":
                  lambda z, v, y, T, alpha: _soft_term_scaled(1.0, z, v, y, T, alpha),
                  "the soft term is differentiated at z, not at z / T (a missing 1/T)":
                  lambda z, v, y, T, alpha: _soft_term_scaled(T ** 3, z, v, y, T, alpha)}),
    Exercise(
        "06.2", "06_distillation", "Label smoothing's gradient (new)",
        "label_smoothing_grad(z, y, smoothing) -> (dz,)",
        "The target of each example is (1 - smoothing) on its label plus smoothing / C on every class "
        "(C classes); return dL/dz of the mean cross-entropy of softmax(z) against it.",
        lambda g: (lambda n, c: dict(z=_f64(g, n, c, scale=2), y=_labels(g, n, c), smoothing=0.1))(
            _sizes(g), _sizes(g, 3, 6)),
        _label_smoothing_grad, ("dz",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda z: torch.nn.functional.cross_entropy(z, i["y"], label_smoothing=i["smoothing"]),
                               {"dz": "z"}),
        mistakes={"smoothing / (C - 1) spread over the other classes, not / C":
                  lambda z, y, smoothing: _smoothing_other_classes(z, y, smoothing),
                  "the plain cross-entropy gradient (no smoothing)": lambda z, y, smoothing: _softmax_ce_grad(z, y)},
        scale=lambda i: {"the batch size N": len(i["z"])}),
    Exercise(
        "07.1", "07_mixture_of_experts", "The backward pass of softmax gating",
        "softmax_gating_backward(dgates, x, W_g) -> (dx, dW_g)",
        "gates = softmax(x W_g) row by row, x (B, D), W_g (D, E): given dgates, return dx and dW_g "
        "(eq-moe-dsoftmax).",
        lambda g: (lambda b, d, e: dict(dgates=_f64(g, b, e), x=_f64(g, b, d), W_g=_f64(g, d, e)))(
            _sizes(g), _sizes(g, 2, 5), _sizes(g, 3, 6)),
        _softmax_gating_backward, ("dx", "dW_g"),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda x, W_g: (losses.softmax(x @ W_g) * i["dgates"]).sum(),
                               {"dx": "x", "dW_g": "W_g"}),
        mistakes={"the softmax's Jacobian is taken as diagonal (gates * dgates)":
                  lambda dgates, x, W_g: _gating_diagonal(dgates, x, W_g)}),
    Exercise(
        "07.2", "07_mixture_of_experts", "The gradient of the squared coefficient of variation",
        "cv_squared_grad(v) -> (dv,)",
        "CV^2 = Var(v) / (mean(v)^2 + 1e-10), Var the biased variance over the n entries of v: return "
        "its gradient (eq-moe-dcv).",
        lambda g: dict(v=1 + torch.rand(_sizes(g, 4, 9), dtype=torch.float64, generator=g)),
        _cv_squared_grad, ("dv",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda v: moe.cv_squared(v)[0], {"dv": "v"}),
        mistakes={"the unbiased variance (n - 1) is used": lambda v: _cv_unbiased(v),
                  "the dependence of the mean in the denominator is missing":
                  lambda v: (2 * (v - v.mean()) / (len(v) * (v.mean() ** 2 + 1e-10)),)}),
    Exercise(
        "08.1", "08_recipe", "The output bias from the class prior",
        "prior_bias(y, n_classes) -> (bias,)",
        "Return the bias (n_classes,) that makes an untrained softmax output predict the class "
        "frequencies of the integer labels y: ln(prior), as float64.",
        lambda g: (lambda c: dict(y=_labels(g, 200, c), n_classes=c))(_sizes(g, 3, 6)),
        _prior_bias, ("bias",),
        answers=Answers("ln(prior) + c for any constant c: a softmax does not see a shift of every logit",
                        canonical=lambda bias: (bias - bias.mean(),)),
        mistakes={"the prior itself, not its logarithm": lambda y, n_classes: (
            torch.bincount(y, minlength=n_classes).double() / len(y),)}),
    Exercise(
        "08.2", "08_recipe", "The backward pass of GELU (new)",
        "gelu_backward(dout, x) -> (dx,)",
        "GELU(x) = x Phi(x), Phi the standard normal CDF, elementwise: given dout, return dx.",
        lambda g: (lambda n, d: dict(dout=_f64(g, n, d), x=_f64(g, n, d, scale=2)))(_sizes(g), _sizes(g)),
        _gelu_backward, ("dx",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda x: (torch.nn.functional.gelu(x) * i["dout"]).sum(), {"dx": "x"}),
        mistakes={"Phi(x) alone (the product rule's second term is missing)":
                  lambda dout, x: (dout * moe.normal_cdf(x),)}),
    Exercise(
        "10.1", "10_convolutions", "Max pooling's backward pass",
        "maxpool_backward(dout, x) -> (dx,)",
        "x (N, C, H, W) with H and W even went through 2 x 2 max pooling with stride 2; given dout "
        "(N, C, H/2, W/2), return dx: each window's gradient goes to its largest entry (eq-pool-backward).",
        lambda g: (lambda n, c, h, w: dict(dout=_f64(g, n, c, h, w), x=_f64(g, n, c, 2 * h, 2 * w)))(
            _sizes(g, 1, 3), _sizes(g, 1, 3), _sizes(g, 2, 4), _sizes(g, 2, 4)),
        _maxpool_backward, ("dx",),
        answers=Answers("exactly the reference: the random inputs have no ties, where either entry could take "
                        "the gradient"),
        gradient_of=lambda i: (lambda x: (conv.maxpool2d_forward(x, 2)[0] * i["dout"]).sum(), {"dx": "x"}),
        mistakes={"the gradient is spread evenly over each window, as for average pooling":
                  lambda dout, x: (dout.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) / 4,),
                  "every entry of a window gets the window's whole gradient":
                  lambda dout, x: (dout.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3),),
                  "the gradient goes to the smallest entry of each window":
                  lambda dout, x: (-_maxpool_backward(dout, -x)[0],)}),
    Exercise(
        "10.2", "10_convolutions", "A convolution's weight and bias gradients",
        "conv2d_param_grads(dout, x, W) -> (dW, db)",
        "y = conv2d(x, W, b) with stride 1 and no padding, x (N, C, H, W), W (C_out, C, K, K); given dout "
        "(N, C_out, H - K + 1, W - K + 1), return dW and db (eq-conv-dw, eq-conv-db).",
        lambda g: _conv_inputs(g),
        _conv2d_param_grads, ("dW", "db"),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda W: (torch.nn.functional.conv2d(i["x"], W) * i["dout"]).sum(), {"dW": "W"}),
        mistakes={"the sums run over one image only (the batch is forgotten)": lambda dout, x, W: (
                      _conv2d_param_grads(dout[:1], x[:1], W)[0], _conv2d_param_grads(dout, x, W)[1]),
                  "the filter is flipped (a true convolution instead of a correlation)": lambda dout, x, W: (
                      _conv2d_param_grads(dout, x, W)[0].flip(2, 3), _conv2d_param_grads(dout, x, W)[1])}),
    Exercise(
        "11.1", "11_attention", "The softmax's backward pass, row by row",
        "softmax_backward(dP, S) -> (dS,)",
        "P = softmax(S) over the last axis of S (..., T, T); given dP, return dS without forming a "
        "Jacobian (eq-att-dsoftmax).",
        lambda g: (lambda b, t: dict(dP=_f64(g, b, t, t), S=_f64(g, b, t, t, scale=2)))(_sizes(g, 1, 3), _sizes(g)),
        _softmax_backward, ("dS",),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda S: (torch.softmax(S, -1) * i["dP"]).sum(), {"dS": "S"}),
        mistakes={"only the diagonal of the Jacobian, P (1 - P), is used": lambda dP, S: (
                      dP * torch.softmax(S, -1) * (1 - torch.softmax(S, -1)),),
                  "the mean subtracted from dP is not weighted by P": lambda dP, S: (
                      torch.softmax(S, -1) * (dP - dP.mean(-1, keepdim=True)),)}),
    Exercise(
        "11.2", "11_attention", "Scaled dot-product attention's backward pass",
        "attention_backward(dout, q, k, v) -> (dq, dk, dv)",
        "out = softmax(q k^T / sqrt(d)) v for q, k, v (..., T, d): given dout, return dq, dk, dv "
        "(eq-att-dv, eq-att-dsoftmax, eq-att-dq).",
        lambda g: (lambda b, t, d: dict(dout=_f64(g, b, t, d), q=_f64(g, b, t, d), k=_f64(g, b, t, d),
                                        v=_f64(g, b, t, d)))(_sizes(g, 1, 3), _sizes(g), _sizes(g, 4, 8)),
        _attention_backward, ("dq", "dk", "dv"),
        answers=UNIQUE,
        gradient_of=lambda i: (lambda q, k, v: (attention.attention_forward(q, k, v)[0] * i["dout"]).sum(),
                               {"dq": "q", "dk": "k", "dv": "v"}),
        mistakes={"the 1/sqrt(d) scale is missing from dq and dk": lambda dout, q, k, v: tuple(
                      t * f for t, f in zip(_attention_backward(dout, q, k, v), (q.shape[-1] ** 0.5,) * 2 + (1,))),
                  "P is not transposed in dv (P dout instead of P^T dout)": lambda dout, q, k, v: (
                      *_attention_backward(dout, q, k, v)[:2],
                      torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5, -1) @ dout)}),
]


def _norm_inputs(g, n, d):
    return dict(dout=_f64(g, n, d), x=_f64(g, n, d, scale=2) + 1, gamma=1 + _f64(g, d, scale=0.3))


def _distillation_inputs(g, n, c):
    return dict(z=_f64(g, n, c, scale=2), v=_f64(g, n, c, scale=3), y=_labels(g, n, c),
                T=float(torch.randint(2, 9, (), generator=g)), alpha=0.7)


def _soft_term_scaled(factor, z, v, y, T, alpha):
    """The distillation gradient with the soft term scaled by `factor` instead of T^2."""
    dsoft = distill.distillation_loss(z, v, y, T, 1.0)[1] / (T * T)            # the soft term's own gradient
    return (alpha * factor * dsoft + (1 - alpha) * losses.softmax_cross_entropy(z, y)[1],)


def _without_mean_term(dout, x, gamma, dim):
    forward = norm.batchnorm_forward if dim == 0 else norm.layernorm_forward
    xhat, inv_std = forward(x, gamma, torch.zeros_like(gamma))[1][:2]
    dxhat = gamma * dout
    dx = inv_std * (dxhat - xhat * (dxhat * xhat).mean(dim, keepdim=True))
    return dx, (dout * xhat).sum(0), dout.sum(0)


def _unbiased(dout, x, gamma):
    n = len(x)
    mu, var = x.mean(0), x.var(0, correction=1)
    inv_std = 1 / torch.sqrt(var + 1e-5)
    xhat = (x - mu) * inv_std
    dxhat = gamma * dout
    dx = inv_std * (dxhat - dxhat.mean(0) - xhat * (dxhat * xhat).sum(0) / (n - 1))
    return dx, (dout * xhat).sum(0), dout.sum(0)


def _adam_eps_inside(p, g, m, v, t, lr, beta1, beta2, eps):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    return p - lr * (m / (1 - beta1 ** t)) / torch.sqrt(v / (1 - beta2 ** t) + eps), m, v


def _smoothing_other_classes(z, y, smoothing):
    B, C = z.shape
    target = torch.full_like(z, smoothing / (C - 1)).scatter_(1, y[:, None], 1 - smoothing)
    return ((losses.softmax(z) - target) / B,)


def _gating_diagonal(dgates, x, W_g):
    gates = losses.softmax(x @ W_g)
    dh = gates * dgates
    return dh @ W_g.T, x.T @ dh


def _cv_unbiased(v):
    n, mean = len(v), v.mean()
    var = ((v - mean) ** 2).sum() / (n - 1)
    denom = mean * mean + 1e-10
    return (2 * (v - mean) / ((n - 1) * denom) - 2 * var * mean / (n * denom * denom),)


_BY_ID = {e.id: e for e in _EXERCISES}


# ---- the checker -------------------------------------------------------------------------------

def list_exercises() -> list[Exercise]:
    """Every exercise, in the order of the book."""
    return list(_EXERCISES)


def get(exercise_id: str) -> Exercise:
    """The exercise with this id; ``"3.1"`` is read as ``"03.1"``."""
    chapter, _, number = str(exercise_id).strip().partition(".")
    key = f"{int(chapter):02d}.{int(number)}" if chapter.isdecimal() and number.isdecimal() else exercise_id
    try:
        return _BY_ID[key]
    except KeyError:
        raise KeyError(f"no exercise {exercise_id!r}; there are {', '.join(_BY_ID)}") from None


def solution(exercise_id: str) -> Callable:
    """The reference solution of an exercise (it passes its own check)."""
    return get(exercise_id).reference


def skeleton(exercise_id: str) -> str:
    """The function to write, as Python source to start from."""
    e = get(exercise_id)
    task = e.task if e.answers.canonical is None else f"{e.task} Accepted: {e.answers.text}."
    body = textwrap.fill(task, 92, initial_indent="    ", subsequent_indent="    ")
    return (f"def {e.function_name}({', '.join(e.parameters)}):\n    \"\"\"Exercise {e.id}: {e.title}.\n\n{body}\n\n"
            f"    Returns {e.signature.split('->')[1].strip()}.\n    \"\"\"\n    raise NotImplementedError\n")


def _clone(args: list) -> list:
    return [a.clone() if torch.is_tensor(a) else a for a in args]


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _same(a, b, tol=VALUE_TOL) -> bool:
    return torch.is_tensor(a) and a.shape == b.shape and rel_error(a, b) <= tol


def _unchanged(before: torch.Tensor, after) -> bool:
    return (torch.is_tensor(after) and after.shape == before.shape and after.dtype == before.dtype
            and torch.equal(after, before))


def _free(e: Exercise, outputs: tuple) -> tuple:
    """The outputs without what the exercise's set of answers leaves free (a constant, for 08.1)."""
    return outputs if e.answers.canonical is None else _as_tuple(e.answers.canonical(*outputs))


def _factor(name_of: dict, out: torch.Tensor, ref: torch.Tensor) -> str | None:
    """If out = c * ref for a c worth naming, say which."""
    ref_sq = (ref * ref).sum()
    if ref_sq == 0:
        return None
    c = float((out * ref).sum() / ref_sq)
    if not _same(out, c * ref, 1e-6):
        return None
    named = {-1.0: "has the wrong sign", 2.0: "twice what it should be", 0.5: "half what it should be"}
    for name, value in name_of.items():
        named[float(value)] = f"too large by a factor of {name} ({value:g})"
        named[1 / float(value)] = f"too small by a factor of {name} (1/{value:g})"
        named[-float(value)] = f"has the wrong sign and is too large by a factor of {name}"
    for value, text in named.items():
        if math.isclose(c, value, rel_tol=1e-6):
            return text
    return f"proportional to the right answer, but {c:.6g} times it"


def check(exercise_id: str, fn: Callable, seed: int | None = None,
          time_limit: float | None = TIME_LIMIT) -> CheckResult:
    """Run ``fn`` on fresh random inputs and compare with the reference and finite differences.

    ``fn`` gets copies of the inputs, positionally in the skeleton's order, in a child process of its
    own that is stopped after ``time_limit`` seconds. ``time_limit=None`` runs it in this process
    instead, with no limit and no protection: faster, for functions you trust (and what happens
    where there is no ``os.fork``, as on Windows).
    """
    e = get(exercise_id)
    if not callable(fn):
        raise TypeError(f"fn must be the function to check, got a {type(fn).__name__}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, or None; got {time_limit!r}")
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    inputs = e.inputs(torch.Generator().manual_seed(seed))
    args = [inputs[name] for name in e.parameters]

    def fail(text: str) -> CheckResult:
        return CheckResult(e.id, False, text)

    with _Answer(fn, _clone(args), time_limit) as answer:      # the answer starts in its own process
        ref = _as_tuple(e.reference(*_clone(args)))              # meanwhile, here, out of its reach
        numerical = _finite_differences(e, inputs, ref)
        report = answer.report()
    if report is None:
        return fail(f"{e.function_name} ran longer than {time_limit:g} s, the time limit, and was stopped "
                    f"(an endless loop?).")
    if report[0] == "not implemented":
        return fail(f"not implemented yet: {e.function_name} still raises NotImplementedError.")
    if report[0] == "failed":
        return fail(f"{e.function_name} {report[1]}.")
    _, out, after = report
    changed = [name for name, a, b in zip(e.parameters, args, after) if torch.is_tensor(a) and not _unchanged(a, b)]
    if changed:
        return fail(f"{e.function_name} changed its input {', '.join(changed)} in place; return new tensors instead.")
    if len(out) != len(ref):
        return fail(f"returned {len(out)} value(s), expected {len(ref)}: {', '.join(e.outputs)}.")
    shapes = {k: tuple(v.shape) for k, v in inputs.items() if torch.is_tensor(v)}
    for name, o, r in zip(e.outputs, out, ref):
        if not torch.is_tensor(o):                               # what it is, in words (see _plain)
            return fail(f"{name} is {o}; expected a dense tensor of shape {tuple(r.shape)} on the CPU, "
                        f"like the inputs.")
        if o.shape != r.shape:
            hint = " (transposed?)" if o.ndim == 2 and r.ndim == 2 and o.shape == r.T.shape else \
                   " (the sum over the batch is missing?)" if o.ndim == r.ndim + 1 and o.shape[1:] == r.shape else ""
            return fail(f"{name} has shape {tuple(o.shape)}, expected {tuple(r.shape)}{hint}; the inputs' shapes "
                        f"were {shapes}.")
        if o.dtype != r.dtype:
            return fail(f"{name} has dtype {o.dtype}, expected {r.dtype}.")
        if not torch.isfinite(o).all():
            return fail(f"{name} contains NaN or inf.")
    out, ref = _free(e, tuple(out)), _free(e, ref)
    wrong = [(name, o, r) for name, o, r in zip(e.outputs, out, ref) if not _same(o, r)]
    if not wrong:
        oracle = f" and with finite differences ({', '.join(numerical)})" if numerical else ""
        accepted = "" if e.answers.canonical is None else f" (accepted: {e.answers.text})"
        return CheckResult(e.id, True, f"every output agrees with the reference{accepted}{oracle} on random "
                                       f"inputs of shapes {shapes}.")
    return fail(_diagnose(e, inputs, args, out, ref, wrong, numerical))


def _diagnose(e, inputs, args, out, ref, wrong, numerical) -> str:
    for mistake, wrong_fn in e.mistakes.items():
        expected_wrong = _free(e, _as_tuple(wrong_fn(*_clone(args))))
        if all(_same(o, w, 1e-6) for o, w in zip(out, expected_wrong)):
            names = ", ".join(name for name, _, _ in wrong)
            return f"{names} wrong: a typical mistake, {mistake}."
    notes = []
    for name, o, r in wrong:
        factor = _factor(e.scale(inputs) if e.scale else {}, o, r)
        if factor:
            notes.append(f"{name} {factor}" if factor.startswith("has") else f"{name} is {factor}")
        elif o.ndim == 2 and o.shape[0] == o.shape[1] and _same(o, r.T, 1e-6):
            notes.append(f"{name} is transposed")
        else:
            error = rel_error(o, r)
            where = tuple(int(i) for i in torch.unravel_index((o - r).abs().argmax(), o.shape))
            oracle = ""
            if name in numerical:
                oracle = (f"; finite differences agree with the reference to {rel_error(r, numerical[name]):.0e}"
                          f" and differ from yours by {rel_error(o, numerical[name]):.1e}")
            notes.append(f"{name} is off by {error:.1e} relative (the largest difference at index {where}){oracle}")
    right = [name for name in e.outputs if name not in {w[0] for w in wrong}]
    return "; ".join(notes) + (f". Right: {', '.join(right)}." if right else ".")


def _finite_differences(e: Exercise, inputs: dict, ref: tuple) -> dict:
    """Central differences of the gradients an exercise returns, checked against its reference."""
    if e.gradient_of is None:
        return {}
    f, wrt = e.gradient_of(inputs)
    names = list(dict.fromkeys(wrt.values()))
    argnames = list(inspect.signature(f).parameters)
    grads = numerical_grads(f, {k: inputs[k] for k in argnames}, names)
    numerical = {out: grads[arg] for out, arg in wrt.items()}
    for name, estimate in numerical.items():
        error = rel_error(ref[e.outputs.index(name)], estimate)
        if error > NUMERICAL_TOL:
            raise AssertionError(f"exercise {e.id}: the reference {name} differs from finite "
                                 f"differences by {error:.1e}; please report this")
    return numerical


# ---- running an answer on its own ---------------------------------------------------------------

def _plain(value):
    """A dense CPU tensor, copied; anything else in a few words that say what it is. The report of an
    answer holds only these, so that the checker can read it back without running any code."""
    if not torch.is_tensor(value):
        return f"a {type(value).__name__}, not a tensor"
    if value.is_meta:
        return "a meta tensor, which has a shape but no values"
    if value.layout != torch.strided:
        return f"a tensor of layout {value.layout}"
    if value.device.type != "cpu":
        return f"a tensor on {value.device}"
    return value.detach().clone()


def _run(fn: Callable, args: list) -> tuple:
    """Call the answer and report: ("returned", its outputs, its inputs after the call), ("not implemented",)
    or ("failed", what happened)."""
    try:
        out = fn(*args)
    except NotImplementedError:
        return ("not implemented",)
    except (Exception, SystemExit) as error:  # noqa: BLE001 -- any exception is the reader's to see
        return ("failed", f"raised {type(error).__name__}: {error}")
    return ("returned", [_plain(o) for o in _as_tuple(out)], [_plain(a) for a in args])


_REPORTS = {"returned": (list, list), "not implemented": (), "failed": (str,)}   # kind -> the types that follow


def _decode(data: bytes) -> tuple:
    """A report sent by the child, read with ``weights_only``: tensors and plain values, no code."""
    try:
        report = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # noqa: BLE001 -- whatever it sent, the check says so and goes on
        return ("failed", f"returned something the checker cannot read back ({type(error).__name__}: {error})")
    kinds = _REPORTS.get(report[0]) if isinstance(report, tuple) and report and isinstance(report[0], str) else None
    if kinds is None or len(report) != 1 + len(kinds) or not all(map(isinstance, report[1:], kinds)):
        return ("failed", "sent back something that is not a report")
    return report


def _read(fd: int, deadline: float, finish: float = 10.0) -> bytes | None:
    """All that is written to the pipe ``fd`` until it closes, or None if nothing came by ``deadline``
    (a report sent in time counts, however late the checker comes to read it). The child writes its
    report only once the answer has returned, so after the first byte the rest may take ``finish``
    more seconds from the last one: a large report is not cut off by the answer's time limit."""
    poller, chunks, until = select.poll(), [], deadline
    poller.register(fd, select.POLLIN)
    while poller.poll(max(until - time.monotonic(), 0) * 1000):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        until = max(deadline, time.monotonic() + finish)
    return None


class _Answer:
    """``fn(*args)`` in a child process (fork), in a process group of its own: ``report()`` waits for its
    report until ``time_limit`` seconds have passed, then kills the group, so that neither the answer nor
    anything it started outlives the check. With ``time_limit=None`` (or no ``os.fork``, on Windows),
    ``report()`` runs it here instead."""

    def __init__(self, fn: Callable, args: list, time_limit: float | None):
        self.fn, self.args, self.pid = fn, args, None
        self.here = time_limit is None or not hasattr(os, "fork")
        if self.here:
            return
        self.deadline = time.monotonic() + time_limit
        self.pipe, write_end = os.pipe()
        with warnings.catch_warnings():                   # Python 3.12+ warns of a fork beside threads: the
            warnings.simplefilter("ignore", DeprecationWarning)    # child runs the answer alone and exits
            self.pid = os.fork()
        if self.pid == 0:
            self._child(write_end)
        os.close(write_end)
        with contextlib.suppress(OSError):
            os.setpgid(self.pid, self.pid)                # as the child does: whichever comes first

    def _child(self, write_end: int) -> None:
        """Run the answer, send its report, and exit: the child never returns into the checker's code."""
        try:
            os.close(self.pipe)
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
            torch.set_num_threads(1)                      # the parent's OpenMP threads did not come along
            buffer = io.BytesIO()
            torch.save(_run(self.fn, self.args), buffer)
            for stream in (sys.stdout, sys.stderr):       # what the answer printed, before the report
                with contextlib.suppress(Exception):
                    stream.flush()
            with open(write_end, "wb") as pipe:
                pipe.write(buffer.getvalue())
        finally:
            os._exit(0)

    def report(self) -> tuple | None:
        """What ``_run`` returned in the child, or None if it was still running at the time limit."""
        if self.here:
            return _run(self.fn, self.args)
        data = _read(self.pipe, self.deadline)
        status = self._stop()
        if data is None:
            return None
        if not data:
            code = os.waitstatus_to_exitcode(status)
            ended = f"killed by signal {-code}, {signal.strsignal(-code)}" if code < 0 else f"exit status {code}"
            return ("failed", f"ended its process without returning ({ended})")
        return _decode(data)

    def _stop(self) -> int:
        """Kill the child's process group (the answer and all it started), reap it; its wait status."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:                                   # the group was never set up: the child alone
            os.kill(self.pid, signal.SIGKILL)
        status = os.waitpid(self.pid, 0)[1]
        os.close(self.pipe)
        self.pid = None
        return status

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc) -> None:
        if self.pid is not None:                          # the check stopped before it read the report
            self._stop()


# ---- the command line --------------------------------------------------------------------------

class _UsageError(Exception):
    """A mistake on the command line: one line on stderr, exit status 2."""


def _exercise(exercise_id: str) -> Exercise:
    try:
        return get(exercise_id)
    except KeyError as error:
        raise _UsageError(error.args[0]) from None


def _functions(file: Path) -> set[str]:
    """The names a file binds at its top level to a ``def`` or an assignment, read without running it."""
    if not file.is_file():
        raise _UsageError(f"no such file: {file}")
    try:
        tree = ast.parse(file.read_bytes(), filename=str(file))
    except (SyntaxError, ValueError) as error:
        raise _UsageError(f"{file}:{getattr(error, 'lineno', '?')}: cannot be read as Python: "
                          f"{getattr(error, 'msg', error)}") from None
    names = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return names | {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                    if isinstance(t, ast.Name)}


def _from_file(file: Path, name: str) -> Callable:
    """The function ``name`` of ``file``, loaded when it is called: in the child process that runs the
    answer, so that the file's own code (its imports, anything it patches) runs there too."""
    def answer(*args):
        spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return getattr(module, name)(*args)
    return answer


def _check_repeatedly(e: Exercise, fn: Callable, repeat: int, time_limit: float) -> CheckResult:
    """``check`` on ``repeat`` fresh sets of inputs: the first failure, or the last pass."""
    for _ in range(repeat):
        result = check(e.id, fn, time_limit=time_limit)
        if not result.passed:
            break
    return result


def _check_all(file: Path, repeat: int, time_limit: float) -> int:
    """Check every function of ``file`` named as an exercise's, printing a row as each is done."""
    names = _functions(file)
    todo = [e for e in _EXERCISES if e.function_name in names]
    if not todo:
        raise _UsageError(f"{file} defines none of the exercises' functions "
                          f"({', '.join(e.function_name for e in _EXERCISES)})")
    print(f"{'id':<6} {'function':<24} verdict", flush=True)
    passed = 0
    for e in todo:
        result = _check_repeatedly(e, _from_file(file, e.function_name), repeat, time_limit)
        passed += result.passed
        verdict = "passed" if result.passed else result.diagnosis
        if not result.passed and not verdict.startswith("not implemented yet"):
            verdict = f"not yet: {verdict}"
        print(f"{e.id:<6} {e.function_name:<24} {verdict}", flush=True)
    print(f"{passed} of {len(todo)} passed")
    return 0 if passed == len(todo) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuroforge_lit.exercises",
                                     description="list, show or check the book's coding exercises")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every exercise: id, chapter, the function to write")
    s = sub.add_parser("skeleton", help="print the function to write")
    s.add_argument("exercise")
    c = sub.add_parser("check", help="check your function: check 02.1 answers.py:linear_backward, "
                                     "or every one in a file: check all answers.py")
    c.add_argument("exercise", help="an exercise id, or all")
    c.add_argument("target", help="FILE.py:FUNCTION (with all: FILE.py)")
    c.add_argument("--repeat", type=int, default=3, help="random inputs to try (default 3)")
    c.add_argument("--time-limit", type=float, default=TIME_LIMIT,
                   help=f"seconds an answer may run (default {TIME_LIMIT:g})")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for e in _EXERCISES:
                print(f"{e.id}  {e.chapter:<24} {e.signature}")
            return 0
        if args.command == "skeleton":
            print(skeleton(_exercise(args.exercise).id))
            return 0
        if args.repeat < 1 or not args.time_limit > 0:
            raise _UsageError("--repeat must be at least 1 and --time-limit positive")
        if args.exercise == "all":
            return _check_all(Path(args.target), args.repeat, args.time_limit)
        e = _exercise(args.exercise)
        path, _, name = args.target.rpartition(":")
        if not path or not name:
            raise _UsageError(f"expected FILE.py:FUNCTION, got {args.target!r}")
        if name not in _functions(Path(path)):
            raise _UsageError(f"{path} defines no function {name!r} (at its top level)")
        result = _check_repeatedly(e, _from_file(Path(path), name), args.repeat, args.time_limit)
        print(result)
        return 0 if result.passed else 1
    except _UsageError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
