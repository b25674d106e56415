"""Which Hugging Face tensor is which jaxformer parameter, both ways, for each supported family.

A `Rule` ties a group of jaxformer parameters (paths in the model's `nnx.Param` state) to a group of checkpoint
tensors, with the two conversions. Most are one to one; GPT-2's fused `c_attn` is one tensor for three of
jaxformer's (w_q, w_k, w_v). Layouts:

    torch Linear weight  [out, in]        jaxformer einsum weights  w_q [D, N, H], w_o [N, H, D], w_in [D, F]
    GPT-2 Conv1D weight  [in, out]        (x @ W, so no transpose: only the head split)

Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE, GPT-OSS) stack their experts in one parameter each, `w_gate` /
`w_up` `[E, D, F]`, `w_down` `[E, F, D]`, and the router `[D, E]`. transformers 5 holds them stacked in memory
(`mlp.experts.gate_up_proj` `[E, 2F, D]`, gate rows first, `mlp.experts.down_proj` `[E, D, F]`, `mlp.gate.weight`
`[E, D]`) but saves, and the hub's checkpoints hold, one Linear per expert: Mixtral's
`block_sparse_moe.experts.{e}.w1` (gate) / `w3` (up) / `w2` (down) and `block_sparse_moe.gate`, Qwen-MoE's
`mlp.experts.{e}.gate_proj` / `up_proj` / `down_proj` and `mlp.gate`. jaxformer writes the per-expert layout and
reads either (each layer as its tensors are named: `rules(..., stored=names)`).

GPT-OSS has one layout, stacked, in memory and in its files alike: `mlp.router.weight` `[E, D]` and `.bias` `[E]`,
`mlp.experts.gate_up_proj` `[E, D, 2F]` with gate and up INTERLEAVED along the last axis (gate = `[..., ::2]`,
up = `[..., 1::2]`), `gate_up_proj_bias` `[E, 2F]` interleaved likewise, `down_proj` `[E, F, D]` and
`down_proj_bias` `[E, D]` (x @ W: jaxformer's own orientation), and each attention's `self_attn.sinks` `[N]`.

The rules cover every parameter of the model and every tensor of a checkpoint saved by transformers;
`io.read_params` refuses a checkpoint with a tensor no rule reads, or a model parameter no rule writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

import jax.numpy as jnp

from jaxformer.models import ModelConfig

# Non-parameter buffers that some GPT-2 checkpoints carry (the causal mask, a masking constant); never weights.
GPT2_BUFFERS = ("attn.bias", "attn.masked_bias")


@dataclasses.dataclass(frozen=True)
class Rule:
    params: tuple[str, ...]  # jaxformer paths, "blocks/layers/0/self_attention/w_q"
    tensors: tuple[str, ...]  # checkpoint names, "transformer.h.0.attn.c_attn.weight"
    load: Callable  # (*tensors) -> tuple of params
    save: Callable  # (*params) -> tuple of tensors


def _one(param: str, tensor: str, load=lambda t: t, save=lambda p: p) -> Rule:
    return Rule((param,), (tensor,), lambda t: (load(t),), lambda p: (save(p),))


def _linear_in(param: str, tensor: str, *heads: int) -> Rule:
    """torch Linear [out = heads..., in = D] <-> jaxformer [D, heads...]."""
    return _one(param, tensor, lambda t: t.T.reshape(t.shape[1], *heads), lambda p: p.reshape(p.shape[0], -1).T)


def _linear_out(param: str, tensor: str, *heads: int) -> Rule:
    """torch Linear [out = D, in = heads...] <-> jaxformer [heads..., D] (the attention output projection)."""
    return _one(param, tensor, lambda t: t.T.reshape(*heads, t.shape[0]), lambda p: p.reshape(-1, p.shape[-1]).T)


def _transposed(param: str, tensor: str) -> Rule:
    """torch Linear [out, in] <-> jaxformer [in, out]."""
    return _one(param, tensor, lambda t: t.T, lambda p: p.T)


def _per_expert(param: str, tensors: tuple[str, ...]) -> Rule:
    """E torch Linears [out, in], one per expert <-> jaxformer's stacked [E, in, out]."""
    return Rule(
        (param,),
        tensors,
        lambda *ts: (jnp.stack([t.T for t in ts]),),
        lambda p: tuple(p[e].T for e in range(p.shape[0])),
    )


def _bias(param: str, tensor: str, *heads: int) -> Rule:
    return _one(param, tensor, lambda t: t.reshape(*heads), lambda p: p.reshape(-1))


def _attention(att: str, linears: tuple[str, str, str, str], cfg: ModelConfig, *, qkv_bias: bool, out_bias: bool):
    """The rules of an attention layer whose q, k, v, o projections are torch Linears named `linears`."""
    N, K, H = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q, k, v, o = linears
    out = [
        _linear_in(f"{att}/w_q", f"{q}.weight", N, H),
        _linear_in(f"{att}/w_k", f"{k}.weight", K, H),
        _linear_in(f"{att}/w_v", f"{v}.weight", K, H),
        _linear_out(f"{att}/w_o", f"{o}.weight", N, H),
    ]
    if qkv_bias:
        out += [_bias(f"{att}/b_q", f"{q}.bias", N, H), _bias(f"{att}/b_k", f"{k}.bias", K, H)]
        out.append(_bias(f"{att}/b_v", f"{v}.bias", K, H))
    if out_bias:
        out.append(_one(f"{att}/b_o", f"{o}.bias"))
    return out


def _dense_ffn(ffn: str, fc_in: str, fc_out: str, cfg: ModelConfig) -> list[Rule]:
    """The rules of an ungated feed-forward made of two torch Linears with biases."""
    return [
        _linear_in(f"{ffn}/w_in", f"{fc_in}.weight", cfg.d_ff),
        _one(f"{ffn}/b_in", f"{fc_in}.bias"),
        _linear_in(f"{ffn}/w_out", f"{fc_out}.weight", cfg.d_model),
        _one(f"{ffn}/b_out", f"{fc_out}.bias"),
    ]


def _layer_norm(norm: str, tensor: str) -> list[Rule]:
    return [_one(f"{norm}/scale", f"{tensor}.weight"), _one(f"{norm}/bias", f"{tensor}.bias")]


def rules(family: str, cfg: ModelConfig, stored: Collection[str] | None = None) -> list[Rule]:
    """Every rule of a `family` model with config `cfg` (the checkpoint names as transformers saves them).
    `stored`: the names a checkpoint being read holds, where a family has more than one layout (a mixture of
    experts' stacked or per-expert tensors); None: the layout jaxformer writes."""
    if family == "gpt2":
        return _gpt2_rules(cfg)
    if family == "bert":
        return _bert_rules(cfg)
    if family == "gemma4_text":
        return _gemma4_rules(cfg)
    if family.startswith("gemma"):
        return _gemma_rules(cfg)
    return _vit_rules(cfg) if family == "vit" else _llama_rules(cfg, family, stored)


def _gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    N, H, D = cfg.num_heads, cfg.head_dim, cfg.d_model
    out = [
        _one("embed/tokens/embedding", "transformer.wte.weight"),
        _one("embed/positions/embedding", "transformer.wpe.weight"),
        _one("final_norm/scale", "transformer.ln_f.weight"),
        _one("final_norm/bias", "transformer.ln_f.bias"),
    ]
    if not cfg.tie_embeddings:
        out.append(_one("head/kernel", "lm_head.weight", lambda t: t.T, lambda p: p.T))

    def split_qkv(w):  # [..., 3D] -> three [..., N, H]
        return tuple(part.reshape(*part.shape[:-1], N, H) for part in jnp.split(w, 3, axis=-1))

    def join_qkv(*ws):
        return (jnp.concatenate([w.reshape(*w.shape[:-2], N * H) for w in ws], axis=-1),)

    for i in range(cfg.num_layers):
        h, layer = f"transformer.h.{i}", f"blocks/layers/{i}"
        att = f"{layer}/self_attention"
        out += [
            _one(f"{layer}/self_residual/norm/scale", f"{h}.ln_1.weight"),
            _one(f"{layer}/self_residual/norm/bias", f"{h}.ln_1.bias"),
            Rule((f"{att}/w_q", f"{att}/w_k", f"{att}/w_v"), (f"{h}.attn.c_attn.weight",), split_qkv, join_qkv),
            Rule((f"{att}/b_q", f"{att}/b_k", f"{att}/b_v"), (f"{h}.attn.c_attn.bias",), split_qkv, join_qkv),
            _one(f"{att}/w_o", f"{h}.attn.c_proj.weight", lambda t: t.reshape(N, H, D), lambda p: p.reshape(N * H, D)),
            _one(f"{att}/b_o", f"{h}.attn.c_proj.bias"),
            _one(f"{layer}/ffn_residual/norm/scale", f"{h}.ln_2.weight"),
            _one(f"{layer}/ffn_residual/norm/bias", f"{h}.ln_2.bias"),
            _one(f"{layer}/ffn/w_in", f"{h}.mlp.c_fc.weight"),
            _one(f"{layer}/ffn/b_in", f"{h}.mlp.c_fc.bias"),
            _one(f"{layer}/ffn/w_out", f"{h}.mlp.c_proj.weight"),
            _one(f"{layer}/ffn/b_out", f"{h}.mlp.c_proj.bias"),
        ]
    return out


def _decoder_ends(cfg: ModelConfig) -> list[Rule]:
    """The token embedding, the final norm and an untied head, as the Llama and Gemma families name them."""
    out = [
        _one("embed/tokens/embedding", "model.embed_tokens.weight"),
        _one("final_norm/scale", "model.norm.weight"),
    ]
    if not cfg.tie_embeddings:
        out.append(_one("head/kernel", "lm_head.weight", lambda t: t.T, lambda p: p.T))
    return out


def _llama_rules(cfg: ModelConfig, family: str, stored: Collection[str] | None = None) -> list[Rule]:
    """The Llama family's, with the sparse layers of its mixtures of experts (`_moe_rules`) and GPT-OSS's attention
    sinks."""
    out = _decoder_ends(cfg)
    for i in range(cfg.num_layers):
        m, layer = f"model.layers.{i}", f"blocks/layers/{i}"
        att, a = f"{layer}/self_attention", f"{m}.self_attn"
        linears = (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.o_proj")
        out += _attention(att, linears, cfg, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias)
        out += [
            _one(f"{layer}/self_residual/norm/scale", f"{m}.input_layernorm.weight"),
            _one(f"{layer}/ffn_residual/norm/scale", f"{m}.post_attention_layernorm.weight"),
        ]
        if cfg.is_sparse(i):
            out += _moe_rules(f"{layer}/ffn", m, family, cfg, stored)
        else:
            out += [
                _linear_in(f"{layer}/ffn/w_gate", f"{m}.mlp.gate_proj.weight", cfg.d_ff),
                _linear_in(f"{layer}/ffn/w_up", f"{m}.mlp.up_proj.weight", cfg.d_ff),
                _linear_in(f"{layer}/ffn/w_out", f"{m}.mlp.down_proj.weight", cfg.d_model),
            ]
        if cfg.qk_norm:
            out += [
                _one(f"{att}/q_norm/scale", f"{a}.q_norm.weight"),
                _one(f"{att}/k_norm/scale", f"{a}.k_norm.weight"),
            ]
        if cfg.attention_sinks:
            out.append(_one(f"{att}/sinks", f"{a}.sinks"))
    return out


def _deinterleave(t):
    """GPT-OSS's gate_up [..., 2F], gate and up interleaved -> (gate, up) [..., F]."""
    return t[..., ::2], t[..., 1::2]


def _interleave(gate, up):
    return (jnp.stack([gate, up], axis=-1).reshape(*gate.shape[:-1], 2 * gate.shape[-1]),)


def _gpt_oss_rules(ffn: str, m: str) -> list[Rule]:
    """GPT-OSS's router and stacked experts, with their biases (see the module docstring)."""
    e = f"{m}.mlp.experts"
    return [
        _transposed(f"{ffn}/router", f"{m}.mlp.router.weight"),
        _one(f"{ffn}/router_bias", f"{m}.mlp.router.bias"),
        Rule((f"{ffn}/w_gate", f"{ffn}/w_up"), (f"{e}.gate_up_proj",), _deinterleave, _interleave),
        Rule((f"{ffn}/b_gate", f"{ffn}/b_up"), (f"{e}.gate_up_proj_bias",), _deinterleave, _interleave),
        _one(f"{ffn}/w_down", f"{e}.down_proj"),
        _one(f"{ffn}/b_down", f"{e}.down_proj_bias"),
    ]


def _moe_rules(ffn: str, m: str, family: str, cfg: ModelConfig, stored: Collection[str] | None) -> list[Rule]:
    """The router, experts and shared expert of the sparse layer `m` ("model.layers.3") as jaxformer's `ffn`
    (a MoEFeedForward): per expert as transformers saves them, or stacked as it holds them in memory when
    `stored` has the stacked names. GPT-OSS: `_gpt_oss_rules`."""
    if family == "gpt_oss":
        return _gpt_oss_rules(ffn, m)
    if stored is not None and f"{m}.mlp.experts.gate_up_proj" in stored:

        def split(gate_up):  # [E, 2F, D], gate rows first -> w_gate, w_up [E, D, F]
            gate, up = jnp.split(gate_up, 2, axis=1)
            return gate.transpose(0, 2, 1), up.transpose(0, 2, 1)

        def join(w_gate, w_up):
            return (jnp.concatenate([w_gate, w_up], axis=-1).transpose(0, 2, 1),)

        swap = lambda t: t.transpose(0, 2, 1)  # [E, D, F] <-> [E, F, D]
        out = [
            _transposed(f"{ffn}/router", f"{m}.mlp.gate.weight"),
            Rule((f"{ffn}/w_gate", f"{ffn}/w_up"), (f"{m}.mlp.experts.gate_up_proj",), split, join),
            _one(f"{ffn}/w_down", f"{m}.mlp.experts.down_proj", swap, swap),
        ]
    else:
        moe, (gate, up, down) = (
            (f"{m}.block_sparse_moe", ("w1", "w3", "w2"))
            if family == "mixtral"
            else (f"{m}.mlp", ("gate_proj", "up_proj", "down_proj"))
        )
        experts = lambda name: tuple(f"{moe}.experts.{e}.{name}.weight" for e in range(cfg.num_experts))
        out = [
            _transposed(f"{ffn}/router", f"{moe}.gate.weight"),
            _per_expert(f"{ffn}/w_gate", experts(gate)),
            _per_expert(f"{ffn}/w_up", experts(up)),
            _per_expert(f"{ffn}/w_down", experts(down)),
        ]
    if cfg.shared_expert_d_ff is not None:  # Qwen2-MoE
        shared = f"{m}.mlp.shared_expert"
        out += [
            _linear_in(f"{ffn}/shared/w_gate", f"{shared}.gate_proj.weight", cfg.shared_expert_d_ff),
            _linear_in(f"{ffn}/shared/w_up", f"{shared}.up_proj.weight", cfg.shared_expert_d_ff),
            _linear_in(f"{ffn}/shared/w_out", f"{shared}.down_proj.weight", cfg.d_model),
            _transposed(f"{ffn}/shared_gate", f"{m}.mlp.shared_expert_gate.weight"),
        ]
    return out


def _gemma_rules(cfg: ModelConfig) -> list[Rule]:
    """Gemma 1-3: Llama's names, with (1 + w) norms stored as w (as jaxformer stores them), Gemma 2 / 3's sandwich
    norms (`post_attention_layernorm` is then the attention output's norm, `pre_feedforward_layernorm` the FFN's
    input norm) and Gemma 3's q / k norms."""
    out = _decoder_ends(cfg)
    for i in range(cfg.num_layers):
        m, layer = f"model.layers.{i}", f"blocks/layers/{i}"
        att, a = f"{layer}/self_attention", f"{m}.self_attn"
        linears = (f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj", f"{a}.o_proj")
        out += _attention(att, linears, cfg, qkv_bias=cfg.qkv_bias, out_bias=cfg.out_bias)
        out += [
            _one(f"{layer}/self_residual/norm/scale", f"{m}.input_layernorm.weight"),
            _linear_in(f"{layer}/ffn/w_gate", f"{m}.mlp.gate_proj.weight", cfg.d_ff),
            _linear_in(f"{layer}/ffn/w_up", f"{m}.mlp.up_proj.weight", cfg.d_ff),
            _linear_in(f"{layer}/ffn/w_out", f"{m}.mlp.down_proj.weight", cfg.d_model),
        ]
        if cfg.sandwich_norm:
            out += [
                _one(f"{layer}/self_residual/output_norm/scale", f"{m}.post_attention_layernorm.weight"),
                _one(f"{layer}/ffn_residual/norm/scale", f"{m}.pre_feedforward_layernorm.weight"),
                _one(f"{layer}/ffn_residual/output_norm/scale", f"{m}.post_feedforward_layernorm.weight"),
            ]
        else:
            out.append(_one(f"{layer}/ffn_residual/norm/scale", f"{m}.post_attention_layernorm.weight"))
        if cfg.qk_norm:
            out += [
                _one(f"{att}/q_norm/scale", f"{a}.q_norm.weight"),
                _one(f"{att}/k_norm/scale", f"{a}.k_norm.weight"),
            ]
    return out


def _gemma4_rules(cfg: ModelConfig) -> list[Rule]:
    """Gemma 4 text: Gemma 3's names with plain-w norms, each layer's attention in its own kind's shapes (no
    `v_proj` where values are keys, no k / v at all in KV-shared layers), `layer_scalar`, and the per-layer inputs:
    `embed_tokens_per_layer`, `per_layer_model_projection`, `per_layer_projection_norm`, and per layer
    `per_layer_input_gate`, `per_layer_projection`, `post_per_layer_input_norm`."""
    out = _decoder_ends(cfg)
    if cfg.per_layer_input_dim:
        out += [
            _one("per_layer_embed/embedding", "model.embed_tokens_per_layer.weight"),
            _one("per_layer_projection", "model.per_layer_model_projection.weight", lambda t: t.T, lambda p: p.T),
            _one("per_layer_norm/scale", "model.per_layer_projection_norm.weight"),
        ]
    kinds = cfg.layer_kinds or ((None, False),) * cfg.num_layers
    for i, kind in enumerate(kinds):
        lc = cfg.layer_config(*kind)
        N, K, H = lc.num_heads, lc.num_kv_heads, lc.head_dim
        m, layer = f"model.layers.{i}", f"blocks/layers/{i}"
        att, a = f"{layer}/self_attention", f"{m}.self_attn"
        out += [
            _linear_in(f"{att}/w_q", f"{a}.q_proj.weight", N, H),
            _linear_out(f"{att}/w_o", f"{a}.o_proj.weight", N, H),
            _one(f"{att}/q_norm/scale", f"{a}.q_norm.weight"),
            _one(f"{layer}/self_residual/norm/scale", f"{m}.input_layernorm.weight"),
            _one(f"{layer}/self_residual/output_norm/scale", f"{m}.post_attention_layernorm.weight"),
            _one(f"{layer}/ffn_residual/norm/scale", f"{m}.pre_feedforward_layernorm.weight"),
            _one(f"{layer}/ffn_residual/output_norm/scale", f"{m}.post_feedforward_layernorm.weight"),
            _linear_in(f"{layer}/ffn/w_gate", f"{m}.mlp.gate_proj.weight", lc.d_ff),
            _linear_in(f"{layer}/ffn/w_up", f"{m}.mlp.up_proj.weight", lc.d_ff),
            _linear_in(f"{layer}/ffn/w_out", f"{m}.mlp.down_proj.weight", lc.d_model),
            _one(f"{layer}/layer_scale", f"{m}.layer_scalar"),
        ]
        if not lc.shared_kv:
            out += [
                _linear_in(f"{att}/w_k", f"{a}.k_proj.weight", K, H),
                _one(f"{att}/k_norm/scale", f"{a}.k_norm.weight"),
            ]
            if not lc.value_is_key:
                out.append(_linear_in(f"{att}/w_v", f"{a}.v_proj.weight", K, H))
        if cfg.per_layer_input_dim:
            out += [
                _one(f"{layer}/per_layer_gate", f"{m}.per_layer_input_gate.weight", lambda t: t.T, lambda p: p.T),
                _one(f"{layer}/per_layer_projection", f"{m}.per_layer_projection.weight", lambda t: t.T, lambda p: p.T),
                _one(f"{layer}/per_layer_norm/scale", f"{m}.post_per_layer_input_norm.weight"),
            ]
    return out


def _bert_rules(cfg: ModelConfig) -> list[Rule]:
    e = "bert.embeddings"
    out = [
        _one("embed/tokens/embedding", f"{e}.word_embeddings.weight"),
        _one("embed/positions/embedding", f"{e}.position_embeddings.weight"),
        _one("embed/token_types/embedding", f"{e}.token_type_embeddings.weight"),
        _one("embed/norm/scale", f"{e}.LayerNorm.weight"),
        _one("embed/norm/bias", f"{e}.LayerNorm.bias"),
    ]
    if cfg.pooler:
        out += [
            _one("pooler/kernel", "bert.pooler.dense.weight", lambda t: t.T, lambda p: p.T),
            _one("pooler/bias", "bert.pooler.dense.bias"),
        ]
    if cfg.mlm_head:
        c = "cls.predictions"
        out += [
            _one("mlm_head/kernel", f"{c}.transform.dense.weight", lambda t: t.T, lambda p: p.T),
            _one("mlm_head/bias", f"{c}.transform.dense.bias"),
            _one("mlm_head/norm/scale", f"{c}.transform.LayerNorm.weight"),
            _one("mlm_head/norm/bias", f"{c}.transform.LayerNorm.bias"),
            _one("mlm_head/output_bias", f"{c}.bias"),
        ]
        if not cfg.tie_embeddings:
            out.append(_one("mlm_head/decoder", f"{c}.decoder.weight", lambda t: t.T, lambda p: p.T))
    for i in range(cfg.num_layers):
        b, layer = f"bert.encoder.layer.{i}", f"blocks/layers/{i}"
        att, a = f"{layer}/attention", f"{b}.attention"
        linears = (f"{a}.self.query", f"{a}.self.key", f"{a}.self.value", f"{a}.output.dense")
        out += _attention(att, linears, cfg, qkv_bias=True, out_bias=True)
        out += _dense_ffn(f"{layer}/ffn", f"{b}.intermediate.dense", f"{b}.output.dense", cfg)
        out += _layer_norm(f"{layer}/attention_residual/norm", f"{a}.output.LayerNorm")
        out += _layer_norm(f"{layer}/ffn_residual/norm", f"{b}.output.LayerNorm")
    return out


def _vit_rules(cfg: ModelConfig) -> list[Rule]:
    D, P, C = cfg.d_model, cfg.patch_size, cfg.num_channels
    e = "vit.embeddings"
    out = [
        _one("cls_token", f"{e}.cls_token", lambda t: t.reshape(D), lambda p: p.reshape(1, 1, D)),
        _one("positions/embedding", f"{e}.position_embeddings", lambda t: t[0], lambda p: p[None]),
        # torch's conv weight [D, C, P, P] <-> the flattened HWIO kernel [P P C, D] of patchify's order
        _one(
            "patch_embed/kernel",
            f"{e}.patch_embeddings.projection.weight",
            lambda t: t.transpose(2, 3, 1, 0).reshape(P * P * C, D),
            lambda p: p.reshape(P, P, C, D).transpose(3, 2, 0, 1),
        ),
        _one("patch_embed/bias", f"{e}.patch_embeddings.projection.bias"),
        _one("final_norm/scale", "vit.layernorm.weight"),
        _one("final_norm/bias", "vit.layernorm.bias"),
    ]
    if cfg.num_classes:
        out += [
            _one("head_kernel", "classifier.weight", lambda t: t.T, lambda p: p.T),
            _one("head_bias", "classifier.bias"),
        ]
    elif cfg.pooler:
        out += [
            _one("pooler/kernel", "vit.pooler.dense.weight", lambda t: t.T, lambda p: p.T),
            _one("pooler/bias", "vit.pooler.dense.bias"),
        ]
    for i in range(cfg.num_layers):
        v, layer = f"vit.encoder.layer.{i}", f"blocks/layers/{i}"
        att, a = f"{layer}/attention", f"{v}.attention"
        linears = (f"{a}.attention.query", f"{a}.attention.key", f"{a}.attention.value", f"{a}.output.dense")
        out += _attention(att, linears, cfg, qkv_bias=cfg.qkv_bias, out_bias=True)
        out += _dense_ffn(f"{layer}/ffn", f"{v}.intermediate.dense", f"{v}.output.dense", cfg)
        out += _layer_norm(f"{layer}/attention_residual/norm", f"{v}.layernorm_before")
        out += _layer_norm(f"{layer}/ffn_residual/norm", f"{v}.layernorm_after")
    return out


def is_buffer(family: str, name: str) -> bool:
    """Whether checkpoint tensor `name` is a known non-parameter buffer (never a weight) of `family`."""
    return family == "gpt2" and name.endswith(GPT2_BUFFERS)


def canonical(family: str, name: str) -> str:
    """A checkpoint name as transformers saves it inside its task model (the original GPT-2 files have no
    `transformer.` prefix, a BertModel's no `bert.`, a ViTModel's no `vit.`)."""
    if family == "gpt2" and not name.startswith(("transformer.", "lm_head.")):
        return "transformer." + name
    if family == "bert" and not name.startswith(("bert.", "cls.")):  # a BertModel's own files have no prefix
        return "bert." + name
    if family == "vit" and not name.startswith(("vit.", "classifier.")):  # nor a ViTModel's
        return "vit." + name
    return name
