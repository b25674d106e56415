"""A GPT whose feed-forwards are mixtures of experts: config fields, dense layers among sparse ones (scanned as a
pattern), the auxiliary losses from the recorded routing, gradients through them, cached decoding, and the LM
loss with its `moe_*` metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import ops
from jaxformer.models import GPT, ModelConfig
from jaxformer.training.tasks.lm import lm_loss
from tests.models.helpers import grouped_scanned_copy

E, K = 4, 2
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 32, size=(2, 9)), jnp.int32)


def moe_config(**overrides):
    fields = dict(
        vocab_size=32,
        num_layers=4,
        max_len=16,
        d_model=16,
        num_heads=2,
        d_ff=24,
        positional="rope",
        norm="rmsnorm",
        activation="swiglu",
        use_bias=False,
        num_experts=E,
        experts_per_token=K,
        expert_d_ff=8,
        dense_layers=(0, 2),
        router_aux_loss_coef=0.02,
        router_z_loss_coef=0.001,
    )
    return ModelConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model():
    return GPT(moe_config(), rngs=nnx.Rngs(0))


def test_dense_layers_keep_the_dense_ffn_and_the_others_route(model):
    kinds = [type(block.ffn).__name__ for block in model.blocks.layers]
    assert kinds == ["FeedForward", "MoEFeedForward", "FeedForward", "MoEFeedForward"]
    assert model.blocks.layers[0].ffn.w_gate.shape == (16, 24)  # d_ff
    assert model.blocks.layers[1].ffn.w_gate.shape == (E, 16, 8)  # expert_d_ff
    assert moe_config().layer_kinds == ((None, False, False), (None, False, True)) * 2


def test_router_losses_are_the_recorded_statistics_of_every_sparse_layer(model):
    """After a forward pass: the layers' router logits, recomputed from each sparse layer's input, give the
    balance loss of all their tokens taken together (transformers' concatenation over layers)."""
    inputs = {}
    for i in (1, 3):  # capture each sparse layer's FFN input by wrapping its residual sublayer's norm
        block = model.blocks.layers[i]
        norm = block.ffn_residual.norm
        original = type(norm).__call__
        block.ffn_residual.norm = _Recorder(norm, original, inputs, i)
    try:
        model(TOKENS)
    finally:
        for i in (1, 3):
            model.blocks.layers[i].ffn_residual.norm = model.blocks.layers[i].ffn_residual.norm.norm
    logits = jnp.stack([inputs[i].reshape(-1, 16) @ model.blocks.layers[i].ffn.router[...] for i in (1, 3)])
    aux, metrics = model.router_losses()
    balance = ops.load_balancing_loss(logits, K)
    z = ops.router_z_loss(logits)
    np.testing.assert_allclose(metrics["moe_balance_loss"], balance, rtol=1e-5)
    np.testing.assert_allclose(metrics["moe_z_loss"], z, rtol=1e-5)
    np.testing.assert_allclose(aux, 0.02 * balance + 0.001 * z, rtol=1e-5)
    assert 1.0 <= float(metrics["moe_max_load"]) <= E / K and float(metrics["moe_dropped"]) == 0.0


class _Recorder(nnx.Module):
    def __init__(self, norm, call, store, index):
        self.norm, self.call, self.store, self.index = norm, call, store, index

    def __call__(self, x, *args):
        y = self.call(self.norm, x, *args)
        self.store[self.index] = y
        return y


def test_a_dense_model_has_no_router_losses():
    aux, metrics = GPT(moe_config(num_experts=0, dense_layers=(), expert_d_ff=None), rngs=nnx.Rngs(0)).router_losses()
    assert float(aux) == 0.0 and metrics == {}


def test_the_auxiliary_loss_trains_the_router(model):
    """Its gradient reaches the routers alone through the routing probabilities (the counts are constant)."""

    def aux(model):
        model(TOKENS)
        return model.router_losses()[0]

    grads = nnx.grad(aux)(model)
    assert float(jnp.abs(grads.blocks.layers[1].ffn.router[...]).max()) > 0
    assert float(jnp.abs(grads.blocks.layers[3].ffn.w_up[...]).max()) == 0  # the experts' outputs do not enter


def test_the_scanned_pattern_equals_the_loop_logits_and_losses(model):
    scanned = grouped_scanned_copy(model)
    assert scanned.blocks.period == 2
    np.testing.assert_allclose(scanned(TOKENS), model(TOKENS), rtol=1e-5, atol=1e-5)
    (aux_scan, m_scan), (aux_loop, m_loop) = scanned.router_losses(), model.router_losses()
    np.testing.assert_allclose(aux_scan, aux_loop, rtol=1e-5)
    np.testing.assert_allclose(m_scan["moe_max_load"], m_loop["moe_max_load"], rtol=1e-5)


def test_cached_decoding_equals_the_full_forward(model):
    model.init_cache(2, 16)
    step = nnx.jit(lambda m, x: m(x, decode=True))
    pieces = [step(model, TOKENS[:, :5])] + [step(model, TOKENS[:, t : t + 1]) for t in range(5, TOKENS.shape[1])]
    full = GPT(moe_config(), rngs=nnx.Rngs(0))(TOKENS)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_the_lm_loss_adds_the_auxiliary_loss_and_reports_the_routing():
    model = GPT(moe_config(), rngs=nnx.Rngs(0))
    batch = {"inputs": TOKENS[:, :-1], "targets": TOKENS[:, 1:]}
    graphdef, state = nnx.split(model)
    loss, metrics = jax.jit(lambda state: lm_loss(nnx.merge(graphdef, state), batch))(state)
    aux = 0.02 * metrics["moe_balance_loss"] + 0.001 * metrics["moe_z_loss"]
    np.testing.assert_allclose(loss, metrics["nll"] + aux, rtol=1e-6)


def test_capacity_routing_reports_the_dropped_share():
    model = GPT(moe_config(capacity_factor=0.25), rngs=nnx.Rngs(0))
    model(TOKENS)
    assert 0.0 < float(model.router_losses()[1]["moe_dropped"]) < 1.0


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(experts_per_token=5), r"experts_per_token.*\[1, 4\]"),
        (dict(router="sigmoid"), "router"),
        (dict(dense_layers=(4,)), r"dense_layers\[0\].*\[0, 4\)"),
        (dict(dense_layers=(1, 1)), "twice"),
        (dict(num_experts=0, dense_layers=(1,), expert_d_ff=None), "num_experts=0"),
        (dict(num_experts=0, dense_layers=(), expert_d_ff=8), "num_experts > 0"),
        (dict(capacity_factor=0.0), "capacity_factor"),
        (dict(router_aux_loss_coef=-1.0), "router_aux_loss_coef"),
        (dict(moe_impl="megablox"), "moe_impl"),
        (dict(expert_activation="geglu"), "expert_activation"),
        (dict(swiglu_limit=0.0), "swiglu_limit"),
        (dict(attention_sinks=True, attention_impl="cudnn"), "sinks"),
    ],
)
def test_bad_moe_fields_are_named(overrides, match):
    with pytest.raises((ValueError, TypeError), match=match):
        moe_config(**overrides)
