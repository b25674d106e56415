"""ModelConfig extends BlockConfig: one declaration and one check per field, resolved sizes, `replace`."""

import dataclasses

import pytest
from flax import nnx

from jaxformer import nn
from jaxformer.models import GPT, ModelConfig


def test_a_model_config_is_a_block_config_that_adds_only_model_fields():
    cfg = ModelConfig.variant("gpt2-tiny")
    assert isinstance(cfg, nn.BlockConfig)
    block_fields = {f.name for f in dataclasses.fields(nn.BlockConfig)}
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - block_fields
    assert model_fields == {
        "vocab_size",
        "num_layers",
        "max_len",
        "num_decoder_layers",
        "tie_embeddings",
        "head_bias",
        "final_logit_softcap",
        "layer_types",
        "local_rope_base",
        "local_rope_scaling",
        "global_head_dim",
        "global_num_kv_heads",
        "global_value_is_key",
        "num_kv_shared_layers",
        "kv_shared_d_ff",
        "per_layer_vocab_size",
        "dense_layers",
        "router_aux_loss_coef",
        "router_z_loss_coef",
        "embed_scale",
        "embed_norm",
        "pooler",
        "mlm_head",
        "type_vocab_size",
        "image_size",
        "patch_size",
        "num_channels",
        "num_classes",
        "scan_layers",
        "remat",
        "vocab_multiple",
        "init_std",
    }
    with pytest.raises(TypeError):
        nn.BlockConfig(64, 4, 256)  # keyword arguments only


def test_kv_heads_and_head_dim_are_stored_resolved():
    cfg = ModelConfig.variant("gpt2-tiny")  # d_model 64, 4 heads
    assert (cfg.num_kv_heads, cfg.head_dim) == (4, 16)
    assert ModelConfig.variant("gpt2-tiny", num_kv_heads=None) == cfg  # None means "derive"
    block = nn.BlockConfig(d_model=48, num_heads=4, d_ff=96, num_kv_heads=2)
    assert (block.num_kv_heads, block.head_dim) == (2, 12)


def test_replace_rederives_the_sizes_that_followed_the_old_widths():
    cfg = ModelConfig.variant("gpt2-tiny")
    wider = cfg.replace(d_model=128)
    assert (wider.d_model, wider.head_dim, wider.num_kv_heads) == (128, 32, 4)
    more_heads = cfg.replace(num_heads=8)
    assert (more_heads.head_dim, more_heads.num_kv_heads) == (8, 8)
    # Values that differ from what the old config derives are the caller's: they survive.
    explicit = ModelConfig.variant("gpt2-tiny", head_dim=8, num_kv_heads=2)
    assert explicit.replace(d_model=128).head_dim == 8
    assert explicit.replace(num_heads=8).num_kv_heads == 2
    # Named in the changes, a derived field is taken as given.
    assert cfg.replace(d_model=128, head_dim=16).head_dim == 16
    assert isinstance(wider, ModelConfig)
    block = nn.BlockConfig(d_model=64, num_heads=4, d_ff=256)
    assert block.replace(d_model=32).head_dim == 8


def test_ffn_dropout_rate_reaches_the_feed_forward():
    assert GPT(ModelConfig.variant("gpt2-tiny"), rngs=nnx.Rngs(0)).blocks.layers[0].ffn.dropout.rate == 0.0
    model = GPT(ModelConfig.variant("gpt2-tiny", ffn_dropout_rate=0.25), rngs=nnx.Rngs(0))
    assert model.blocks.layers[0].ffn.dropout.rate == 0.25
    with pytest.raises(
        ValueError, match=r"`ModelConfig\.ffn_dropout_rate` must be a finite number in \[0, 1\); got 1.0"
    ):
        ModelConfig.variant("gpt2-tiny", ffn_dropout_rate=1.0)


def test_each_check_names_the_class_that_was_built():
    with pytest.raises(ValueError, match=r"ModelConfig\.attention_impl='flash'; choose one of \('auto'"):
        ModelConfig.variant("gpt2-tiny", attention_impl="flash")
    with pytest.raises(ValueError, match=r"BlockConfig\.attention_impl='flash'; choose one of \('auto'"):
        nn.BlockConfig(d_model=64, num_heads=4, d_ff=256, attention_impl="flash")
    with pytest.raises(ValueError, match=r"`BlockConfig\.num_kv_heads` must be a positive int; got 0"):
        nn.BlockConfig(d_model=64, num_heads=4, d_ff=256, num_kv_heads=0)
    with pytest.raises(ValueError, match=r"`ModelConfig\.num_layers` must be a positive int; got 0"):
        ModelConfig.variant("gpt2-tiny", num_layers=0)
    with pytest.raises(ValueError, match=r"positional='rope' rotates pairs of features: head_dim=5 must be even"):
        nn.BlockConfig(d_model=20, num_heads=4, d_ff=40, positional="rope")


def test_bias_switches_default_to_use_bias_and_shape_the_parameters():
    cfg = ModelConfig.variant("gpt2-tiny", use_bias=False, qkv_bias=True)
    assert (cfg.qkv_bias, cfg.out_bias, cfg.mlp_bias) == (True, False, False)
    attention = GPT(cfg, rngs=nnx.Rngs(0)).blocks.layers[0].self_attention
    assert attention.b_q is not None and attention.b_o is None
    assert cfg.replace(use_bias=True).out_bias  # derived from use_bias again; qkv_bias was set explicitly
    head = GPT(ModelConfig.variant("gpt2-tiny", head_bias=True, tie_embeddings=False), rngs=nnx.Rngs(0)).head
    assert head.bias.get_value().shape == (256,)
    with pytest.raises(ValueError, match=r"`ModelConfig.qk_norm_epsilon` must be a finite number > 0; got 0.0"):
        ModelConfig.variant("gpt2-tiny", qk_norm_epsilon=0.0)


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("patch_size", 0, ValueError, r"`ModelConfig.patch_size` must be a positive int; got 0"),
        ("image_size", 0, ValueError, r"`ModelConfig.image_size` must be a positive int; got 0"),
        ("num_channels", 0, ValueError, r"`ModelConfig.num_channels` must be a positive int; got 0"),
        ("num_decoder_layers", 1.5, ValueError, r"`ModelConfig.num_decoder_layers` must be a positive int or None"),
        ("num_decoder_layers", "x", TypeError, r"`ModelConfig.num_decoder_layers` must be a positive int or None"),
        ("vocab_size", True, ValueError, r"`ModelConfig.vocab_size` must be an int >= 0; got True"),
        ("type_vocab_size", -1, ValueError, r"`ModelConfig.type_vocab_size` must be an int >= 0; got -1"),
        ("num_classes", "10", TypeError, r"`ModelConfig.num_classes` must be an int >= 0; got '10'"),
        ("init_std", -0.02, ValueError, r"`ModelConfig.init_std` must be a finite number >= 0"),
        ("init_std", float("nan"), ValueError, r"`ModelConfig.init_std` must be a finite number >= 0"),
        ("init_std", "x", TypeError, r"`ModelConfig.init_std` must be a real number"),
        ("scan_layers", "no", TypeError, r"`ModelConfig.scan_layers` must be True or False"),
        ("tie_embeddings", 0, TypeError, r"`ModelConfig.tie_embeddings` must be True or False"),
        ("remat", ["full"], TypeError, r"ModelConfig.remat=\['full'\]; choose one of"),
        ("dtype", "int8", TypeError, r"`ModelConfig.dtype` must be a floating dtype"),
    ],
)
def test_model_fields_refuse_bad_values(field, value, error, match):
    with pytest.raises(error, match=match):
        ModelConfig.variant("gpt2-tiny", **{field: value})


def test_variant_name_must_be_a_string():
    with pytest.raises(TypeError, match=r"Unknown ModelConfig variant \['gpt2-tiny'\]"):
        ModelConfig.variant(["gpt2-tiny"])
