"""The bad-input matrix: every public function, wrong shapes, dtypes, empty batches, labels out of
range, bad hyper-parameters. Each row expects an exception type and a message that names the
problem. Documented decisions (tested at the bottom): NaN and inf in *inputs* propagate through
layers and losses, as in PyTorch (checking every tensor would cost a synchronisation per layer);
the optimizers refuse non-finite *gradients* before touching anything (tests/test_optim.py)."""

import pytest
import torch

import neuroforge_lit
from neuroforge_lit import (attention, conv, data, distill, dropout, layers, logistic, losses, moe, norm, optim,
                            training)

Z = torch.zeros
I64 = dict(dtype=torch.long)

MATRIX = [
    # logistic regression
    ("logistic_forward x 1-D", lambda: logistic.logistic_forward(Z(5), Z(5), Z(())), ValueError,
     r"x of shape \(N, D\)"),
    ("logistic_forward w mismatch", lambda: logistic.logistic_forward(Z(3, 5), Z(4), Z(())), ValueError,
     r"w of shape \(D,\).*\(4,\)"),
    ("bce shapes differ", lambda: logistic.bce_with_logits(Z(3), Z(4)), ValueError, r"z \(3,\) and y \(4,\)"),
    ("bce 2-D", lambda: logistic.bce_with_logits(Z(3, 1), Z(3, 1)), ValueError, "same shape"),
    ("bce empty batch", lambda: logistic.bce_with_logits(Z(0), Z(0)), ValueError, "empty batch"),
    ("binary_metrics shapes", lambda: logistic.binary_metrics(Z(3), Z(4)), ValueError, "differ in shape"),
    # layers
    ("linear x 1-D", lambda: layers.linear_forward(Z(4), Z(4, 3), Z(3)), ValueError, r"got x \(4,\)"),
    ("linear W mismatch", lambda: layers.linear_forward(Z(2, 4), Z(5, 3), Z(3)), ValueError, r"W \(5, 3\)"),
    ("linear b mismatch", lambda: layers.linear_forward(Z(2, 4), Z(4, 3), Z(4)), ValueError, r"b \(4,\)"),
    ("Linear layer input", lambda: layers.Linear(4, 3).forward(Z(2, 5)), ValueError, r"x \(2, 5\)"),
    # losses
    ("ce logits 1-D", lambda: losses.softmax_cross_entropy(Z(10), Z(1, **I64)), ValueError, r"shape \(N, C\)"),
    ("ce labels length", lambda: losses.softmax_cross_entropy(Z(3, 10), Z(4, **I64)), ValueError,
     r"shape \(3,\) to match"),
    ("ce labels 2-D", lambda: losses.cross_entropy(Z(3, 10), Z(3, 1, **I64)), ValueError, r"got \(3, 1\)"),
    ("ce float labels", lambda: losses.softmax_cross_entropy(Z(3, 10), Z(3)), TypeError, "int64 class indices"),
    ("ce int32 labels", lambda: losses.cross_entropy(Z(3, 10), Z(3, dtype=torch.int32)), TypeError, "int32"),
    ("ce label too big", lambda: losses.softmax_cross_entropy(Z(2, 10), torch.tensor([3, 10])), ValueError,
     r"\[0, 10\), got values in \[3, 10\]"),
    ("ce negative label", lambda: losses.cross_entropy(Z(2, 10), torch.tensor([-1, 0])), ValueError,
     r"got values in \[-1, 0\]"),
    ("ce empty batch", lambda: losses.softmax_cross_entropy(Z(0, 10), Z(0, **I64)), ValueError, "empty batch"),
    # normalisation
    ("batchnorm one example", lambda: norm.batchnorm_forward(Z(1, 4), Z(4), Z(4)), ValueError, "at least 2"),
    ("batchnorm empty", lambda: norm.batchnorm_forward(Z(0, 4), Z(4), Z(4)), ValueError, "at least 2"),
    ("batchnorm gamma", lambda: norm.batchnorm_forward(Z(3, 4), Z(5), Z(4)), ValueError, r"gamma \(5,\)"),
    ("batchnorm 3-D", lambda: norm.batchnorm_forward(Z(3, 4, 2), Z(4), Z(4)), ValueError, r"\(N, D\)"),
    ("eval batchnorm beta", lambda: norm.batchnorm_eval_forward(Z(3, 4), Z(4), Z(3), Z(4), Z(4)), ValueError,
     r"beta \(3,\)"),
    ("layernorm gamma", lambda: norm.layernorm_forward(Z(3, 4), Z(3), Z(4)), ValueError, r"gamma \(3,\)"),
    ("normalized_mlp kind", lambda: norm.normalized_mlp([4, 2], "instance"), ValueError, "'instance'"),
    # dropout
    ("dropout p = 1", lambda: dropout.dropout_forward(Z(2, 2), 1.0), ValueError, r"\[0, 1\), got 1.0"),
    ("dropout p < 0", lambda: dropout.Dropout(-0.5), ValueError, "got -0.5"),
    ("dropout mask shape", lambda: dropout.dropout_forward(Z(2, 2), 0.5, mask=Z(2, 3)), ValueError, r"\(2, 3\)"),
    # optimizers
    ("sgd lr", lambda: optim.SGD(-1.0), ValueError, "lr must be"),
    ("adam betas", lambda: optim.Adam(betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
    ("adam betas not a pair", lambda: optim.Adam(betas=0.9), ValueError, r"betas must be a pair"),
    ("adamw weight decay", lambda: optim.AdamW(weight_decay=-1.0), ValueError, "weight_decay"),
    ("step count mismatch", lambda: optim.Adam().step([Z(2)], []), ValueError, "1 parameters but 0 gradients"),
    ("step shape mismatch", lambda: optim.SGD(0.1).step([Z(2)], [Z(3)]), ValueError, r"parameter 0 has shape \(2,\)"),
    ("gradient descent lr", lambda: optim.GradientDescent(-0.1), ValueError, "got -0.1"),
    ("gradient descent shape", lambda: optim.GradientDescent(0.1).step([Z(2), Z(3, 2)], [Z(2), Z(2)]), ValueError,
     r"parameter 1 has shape \(3, 2\) but its gradient has shape \(2,\)"),
    # training loop
    ("fit lengths", lambda: training.fit(layers.mlp([2, 2]), optim.GradientDescent(0.1), Z(4, 2), Z(3, **I64),
                                         epochs=1, batch_size=2, log=None), ValueError, r"4 examples.*\[3\]"),
    # distillation
    ("distill T", lambda: distill.distillation_loss(Z(2, 3), Z(2, 3), Z(2, **I64), 0.0, 0.5), ValueError,
     "T must be > 0"),
    ("distill alpha", lambda: distill.distillation_loss(Z(2, 3), Z(2, 3), Z(2, **I64), 2.0, 1.1), ValueError, "alpha"),
    ("distill shapes", lambda: distill.distillation_loss(Z(2, 3), Z(3, 3), Z(2, **I64), 2.0, 0.5), ValueError,
     r"\(2, 3\).*\(3, 3\)"),
    ("translate shift", lambda: distill.random_translate(Z(2, 784), -1), ValueError, "max_shift"),
    # mixture of experts
    ("moe k = 0", lambda: moe.MoE(4, 2, 3, 0, 5), ValueError, "got 0"),
    ("moe k > experts", lambda: moe.MoE(4, 2, 3, 4, 5), ValueError, "got 4"),
    ("gating dims", lambda: moe.noisy_top_k_gating_forward(Z(2, 4), Z(5, 3), Z(5, 3), 1, None), ValueError,
     r"x \(2, 4\)"),
    ("softmax gating dims", lambda: moe.softmax_gating_forward(Z(2, 4), Z(3, 3)), ValueError, r"W_g \(3, 3\)"),
    # convolutions
    ("conv x 3-D", lambda: conv.conv2d_forward(Z(3, 5, 5), Z(2, 3, 3, 3), Z(2)), ValueError, r"x \(N, C, H, W\)"),
    ("conv channels", lambda: conv.conv2d_forward(Z(1, 3, 5, 5), Z(2, 4, 3, 3), Z(2)), ValueError,
     r"W \(2, 4, 3, 3\)"),
    ("conv bias", lambda: conv.conv2d_forward(Z(1, 3, 5, 5), Z(2, 3, 3, 3), Z(3)), ValueError, r"b \(3,\)"),
    ("conv kernel too big", lambda: conv.Conv2d(1, 2, 7).forward(Z(1, 1, 5, 5)), ValueError, "does not fit"),
    ("conv stride 0", lambda: conv.Conv2d(1, 2, 3, stride=0).forward(Z(1, 1, 5, 5)), ValueError, "stride"),
    ("conv stride float", lambda: conv.conv2d_forward(Z(1, 1, 5, 5), Z(1, 1, 3, 3), Z(1), 1.5), ValueError, "stride"),
    ("pool x 2-D", lambda: conv.MaxPool2d(2).forward(Z(4, 4)), ValueError, r"\(N, C, H, W\)"),
    ("pool window too big", lambda: conv.maxpool2d_forward(Z(1, 1, 3, 3), 4), ValueError, "does not fit"),
    ("convnet input size", lambda: conv.convnet().forward(Z(2, 100)), ValueError,
     r"Reshape\(1, 28, 28\) needs examples of 784 numbers, got x of shape \(2, 100\)"),
    # attention
    ("attention shapes", lambda: attention.attention_forward(Z(2, 3, 4), Z(2, 3, 4), Z(2, 3, 5)), ValueError,
     r"same shape \(\.\.\., T, d\)"),
    ("attention 1-D", lambda: attention.attention_forward(Z(4), Z(4), Z(4)), ValueError, "same shape"),
    ("mha heads", lambda: attention.MultiHeadAttention(10, 4), ValueError, r"multiple of n_heads \(4\)"),
    ("mha tokens", lambda: attention.MultiHeadAttention(8, 2).forward(Z(2, 8)), ValueError, r"\(B, T, 8\)"),
    ("block width", lambda: attention.TransformerBlock(8, 2, 16).forward(Z(2, 3, 6)), ValueError, r"\(B, T, 8\)"),
    ("patches size", lambda: attention.Patches((1, 28, 28), 5), ValueError, "does not divide"),
    ("patches input", lambda: attention.vision_transformer().forward(Z(2, 28, 28)), ValueError, r"\(B, 784\)"),
    # data
    ("data split", lambda: data.load_mnist("validation"), ValueError, "'validation'"),
    ("data name", lambda: data.load_dataset("imagenet"), ValueError, "unknown dataset 'imagenet'"),
    ("val split size", lambda: data.train_val_split(Z(10, 2), Z(10), 10), ValueError, r"n_val must be in \(0, 10\)"),
]


@pytest.mark.parametrize("case", [row[0] for row in MATRIX])
def test_bad_input_is_a_clear_error(case):
    _, call, exc, match = next(row for row in MATRIX if row[0] == case)
    with pytest.raises(exc, match=match):
        call()


def test_the_matrix_covers_every_public_module():
    covered = {row[1].__code__.co_names[0] for row in MATRIX}
    assert {"logistic", "layers", "losses", "norm", "dropout", "optim", "training", "distill", "moe",
            "data", "conv", "attention"} <= covered   # (the recipe's checks: see WHY_NO_ROW)


# Public names that need no row of their own, and why. A new public function or class of a generated
# module must get a row in MATRIX above or an entry here: the test below finds it either way.
WHY_NO_ROW = {
    "a backward pass: it takes the cache of its forward pass, which validated the inputs": [
        "logistic_backward", "linear_backward", "relu_backward", "normalize_backward", "batchnorm_eval_backward",
        "dropout_backward", "softmax_gating_backward", "noisy_top_k_gating_backward", "moe_dispatch_backward",
        "conv2d_backward", "maxpool2d_backward", "attention_backward", "softmax_backward",
        "batchnorm_backward_fast", "layernorm_backward_fast", "conv2d_backward_fast"],
    "elementwise or shape-preserving: any tensor is a valid input, as for torch's own": [
        "sigmoid", "relu_forward", "log_softmax", "softmax", "normal_cdf", "normal_pdf", "dropout_mask",
        "cv_squared", "Reshape", "Tokenwise", "MeanOverTokens", "ReLU", "FastReLU"],
    "validated through the functions it calls (their rows are above)": [
        "normalize_forward", "BatchNorm1d", "LayerNorm", "Sequential", "Layer", "moe_dispatch_forward",
        "im2col", "col2im", "conv_output_size", "Conv2d", "MaxPool2d", "TransformerBlock", "PositionEmbedding",
        "vision_transformer",
        "running_stats_update", "evaluate", "batch_bounds", "cosine_lr", "check_gradients", "Optimizer",
        "FastLinear", "FastBatchNorm1d", "FastLayerNorm", "normalize_forward_fast", "layernorm_forward_fast",
        "softmax_cross_entropy_fast", "speed_up", "sgd_step_fused", "ForeachAdam", "ForeachAdamW",
        "FusedAdamW", "adamw_elementwise", "read_idx", "default_dataset", "search_dirs",
        "FastConv2d", "FastMaxPool2d", "FastMultiHeadAttention"],
    "a map from dtype to dtype: every torch.dtype is a valid input": ["statistics_dtype"],
    "data, not code (a named tuple, a table, a constant, an exception)": [
        "NormCache", "GatingCache", "AttentionCache", "History", "Position", "FAST_LAYERS", "SMALL_GAIN",
        "DataError"],
    "tested with every optimizer in tests/test_joints.py (one tensor passed twice)": ["check_distinct"],
    "chapter 8's recipe checks: they take models and data that the layers above validate": [
        "image_hashes", "exact_duplicates", "duplicates_between", "bit_identical", "loss_at_init",
        "small_last_layer", "prior_bias", "overfit_one_batch", "input_dependencies", "fit_with_early_stopping",
        "ensemble_logits"],
}
# neuroforge_lit.parallel is left out below: its bad inputs are tested across processes in
# tests/test_parallel.py, where a process group exists.


def test_every_public_name_has_a_row_or_a_reason():
    import importlib

    in_matrix = {name for row in MATRIX for name in row[1].__code__.co_names}
    explained = {name for names in WHY_NO_ROW.values() for name in names}
    missing = []
    for module_name in neuroforge_lit.GENERATED_MODULES + ("data",):
        if module_name == "parallel":
            continue
        module = importlib.import_module(f"neuroforge_lit.{module_name}")
        missing += [f"{module_name}.{name}" for name in module.__all__ if name not in in_matrix | explained]
    assert not missing, f"public names with no bad-input row and no reason in WHY_NO_ROW: {missing}"


def test_nan_in_inputs_propagates_through_layers_and_losses_by_design():
    x = torch.tensor([[float("nan"), 1.0]])
    out, _ = layers.linear_forward(x, torch.ones(2, 3), torch.zeros(3))
    assert torch.isnan(out).all()
    loss, dz = losses.softmax_cross_entropy(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    assert torch.isnan(loss) and torch.isnan(dz).all()
    with pytest.raises(FloatingPointError):       # ...and the optimizer refuses to apply it
        optim.SGD(0.1).step([torch.zeros(1, 2)], [dz])
