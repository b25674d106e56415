"""Build tiny random-init Hugging Face checkpoints + reference outputs as test fixtures.

What it makes
-------------
``tests/fixtures/pretrained/<name>/`` for seventeen models, each a real ``save_pretrained`` directory
(``config.json``, safetensors weights, ``generation_config.json`` for the decoder LMs, the tokenizer files
``tokenizer.json`` + ``tokenizer_config.json`` where the architecture has one) plus ``reference.npz`` with what
``transformers`` (torch, CPU, float32) computes, and ``tests/fixtures/pretrained/README.md``.

The first eight: d_model 24, 2 layers, 4 heads (head_dim 6), MLP width 48, max positions 64 (see ``HIDDEN``).
The five gemma fixtures: d_model 24, 4 query heads, MLP width 32 (``GEMMA_INTERMEDIATE``), max positions 64, RMS eps
1e-6, gelu_pytorch_tanh GeGLU MLPs, tied embeddings (the input embedding is multiplied by float32(sqrt(24)) =
4.8989797, the lm_head uses the unscaled table), ``pad_token_id`` 0, ``bos_token_id`` 2, ``eos_token_id`` None,
vocab 352 (one shared Gemma-style tokenizer, see below).

============  =================================  ===========================================================
name          class (``architectures[0]``)       what it exercises
============  =================================  ===========================================================
``gpt2``      ``GPT2LMHeadModel``                gelu_new, learned positions, tied embeddings, Conv1D
                                                 [in, out] weights; byte-level BPE tokenizer, vocab 300
``llama``     ``LlamaForCausalLM``               GQA (2 kv heads), untied lm_head, Llama-3 rope scaling
                                                 (``rope_parameters``: llama3, factor 8, low 1, high 4,
                                                 original_max_position_embeddings 16), rms eps 1e-5;
                                                 weights SHARDED (``model.safetensors.index.json``)
``mistral``   ``MistralForCausalLM``             GQA, untied, ``sliding_window=4``: query q sees keys k with
                                                 ``q - k < 4`` (itself + 3 before); logits at positions 0-3 equal
                                                 the full-attention ones, from position 4 on they differ
``qwen2``     ``Qwen2ForCausalLM``               q/k/v biases (no o bias), tied, rope_theta 1e6, no sliding
                                                 window; Qwen-style byte-level BPE tokenizer, vocab 272
``qwen3``     ``Qwen3ForCausalLM``               q/k RMS norm, explicit head_dim 16 != 24 / 4 heads, GQA, tied
``bert``      ``BertForMaskedLM``                exact gelu, post-LN, token types, padded ``attention_mask``;
                                                 uncased WordPiece tokenizer, vocab 96
``vit``       ``ViTForImageClassification``      32x32x3 images, patch 8 (16 patches + CLS), 10 labels
``vit_model`` ``ViTModel``                       the same shapes, no classifier, with its [CLS] pooler: its
                                                reference has ``hidden`` (last_hidden_state), ``pooled``
                                                (pooler_output) and ``logits`` = ``pooled`` (for the checks)
``gemma``     ``GemmaForCausalLM``               2 layers, MQA (1 kv head), explicit head_dim 12 != 24 / 4
                                                 (q_proj 24 -> 48, k/v 24 -> 12), ``hidden_act``
                                                 gelu_pytorch_tanh, rope_theta 1e4, RMSNorm scales by
                                                 ``1 + weight``
``gemma2``    ``Gemma2ForCausalLM``              3 layers ``layer_types`` [sliding, full, sliding],
                                                 ``sliding_window`` 4, GQA (2 kv heads), head_dim 8,
                                                 ``query_pre_attn_scalar`` 6 (scores * 6**-0.5, not 8**-0.5),
                                                 ``attn_logit_softcapping`` 3 (scores = 3 tanh(scores / 3),
                                                 before the mask), ``final_logit_softcapping`` 4, pre- AND
                                                 post-norms around attention and MLP (``(1 + weight)``), eager
                                                 attention (transformers' default for Gemma 2)
``gemma3``    ``Gemma3ForCausalLM``              text only (``Gemma3TextConfig``, model_type gemma3_text): 4
                                                 layers [sliding, sliding, sliding, full], window 4, GQA 2,
                                                 head_dim 8, q/k RMSNorm (``1 + weight``, before rope),
                                                 ``query_pre_attn_scalar`` 12, per-type ``rope_parameters``:
                                                 sliding default theta 1e4, full ``linear`` factor 8 theta 1e6;
                                                 ``final_logit_softcapping`` 4; ``attn_logit_softcapping`` None
                                                 (transformers' Gemma 3 ignores it, see check_config_effects)
``gemma4``    ``Gemma4ForCausalLM``              text only (``Gemma4TextConfig``, gemma4_text), like gemma-4-e2b:
                                                 6 layers [S, S, F, S, S, F], window 4, 1 kv head, head_dim 8 on
                                                 sliding layers and 16 on full ones (``global_head_dim``, saved
                                                 by transformers as ``per_layer_config`` {"2"/"5": head_dim 16}),
                                                 rope: sliding default 1e4, full ``proportional``
                                                 (partial_rotary_factor 0.25, theta 1e6); q/k RMSNorm, v RMSNorm
                                                 without scale, attention scale 1; per-layer inputs (PLE,
                                                 ``hidden_size_per_layer_input`` 4, table [352, 6 * 4]);
                                                 ``num_kv_shared_layers`` 2 (layers 4 and 5 have no k/v
                                                 projections or norms and reuse the K/V of layers 3 and 2, the
                                                 last earlier layers of their type); ``use_double_wide_mlp``
                                                 (MLP width 64 in those 2 layers only); ``layer_scalar`` buffers
                                                 U(0.5, 1.5); ``final_logit_softcapping`` 4; norms scale by
                                                 ``weight``
``gemma4_kv`` ``Gemma4ForCausalLM``              like the dense Gemma 4 models: 4 layers [S, F, S, F], no PLE
                                                 (``hidden_size_per_layer_input`` 0), no KV sharing,
                                                 ``attention_k_eq_v``: full layers have head_dim 16, 1 kv head
                                                 (``num_global_key_value_heads``; sliding layers 2) and NO
                                                 v_proj (values = v_norm(k_proj(x)), keys = rope(k_norm(k_proj
                                                 (x)))); config.json written in the Hub's spelling
                                                 (``global_head_dim`` 16, ``num_global_key_value_heads`` 1, no
                                                 ``per_layer_config``: see hub_style_gemma4_config)
``mixtral``   ``MixtralForCausalLM``             mixture of experts: 2 layers, 4 experts of width 16
                                                 (``intermediate_size``), top-2 renormalised, GQA 2, untied,
                                                 ``sliding_window`` null (as Mixtral-8x7B), rope_theta 1e6;
                                                 saved by transformers in the per-expert layout
                                                 (``block_sparse_moe.gate`` / ``experts.{e}.w1, w2, w3``)
``qwen2_moe`` ``Qwen2MoeForCausalLM``            2 sparse layers, 4 experts of width 16
                                                 (``moe_intermediate_size``), top-2 NOT renormalised
                                                 (``norm_topk_prob`` False), a shared expert of width 40 with
                                                 its sigmoid gate, q/k/v biases, untied, rope_theta 1e6
``qwen3_moe`` ``Qwen3MoeForCausalLM``            3 layers, ``mlp_only_layers`` [1] (layer 1 is a dense MLP of
                                                 width 48, layers 0 and 2 sparse), 4 experts of width 16,
                                                 top-2 renormalised (``norm_topk_prob`` True), q/k RMS norm,
                                                 explicit head_dim 8 != 24 / 4, GQA 2, untied
``gpt_oss``   ``GptOssForCausalLM``              GPT-OSS: d_model 32, 2 layers [sliding, full], window 4, 4
                                                 heads of head_dim 8, GQA 2, q/k/v/o biases, attention sinks
                                                 (``sinks`` [4] per layer, drawn N(0, 2)); 4 experts of width
                                                 16, top-2 (top-k logits, then softmax) with a router bias,
                                                 expert biases, the clamped SwiGLU with ``swiglu_limit`` 3 and
                                                 ``swiglu_alpha`` 1.5 (not 7 / 1.702), gate / up INTERLEAVED in
                                                 ``experts.gate_up_proj`` [E, D, 2F] (gate = [..., ::2]);
                                                 YaRN (factor 32, beta_fast 32, beta_slow 1, truncate False,
                                                 original 1024, max positions 32768, theta 1.5e5);
                                                 ``router_aux_loss_coef`` 0.9, untied; saved as transformers
                                                 holds it (stacked experts)
============  =================================  ===========================================================

llama, mistral, qwen3, mixtral, qwen3_moe and gpt_oss share one tokenizer: a sentencepiece-style BPE (Metaspace "▁"
pre-tokenizer and decoder, ``<unk>``=0 ``<s>``=1 ``</s>``=2, ``<s>`` prepended, no byte fallback), vocab 96. qwen2 and
qwen2_moe get a byte-level one laid out as Qwen's tokenizer.json (NFC, Qwen's split regex, ByteLevel), because
transformers 5's ``AutoTokenizer`` rebuilds any ``model_type == "qwen2"`` tokenizer as ``Qwen2Tokenizer`` with exactly
that pipeline, ignoring the one in tokenizer.json. The gemma fixtures share a Gemma-style BPE with byte fallback, vocab
352: ``<pad>``=0 ``<eos>``=1 ``<bos>``=2 ``<unk>``=3 ``<mask>``=4, ``<0x00>``..``<0xFF>`` = 5..260, then 44 characters
and 47 merges; normalizer ``Replace(" ", "▁")`` (no "▁" prepended), ``<bos>`` prepended by the post-processor, decoder
``Replace("▁", " ")`` + ``ByteFallback`` + ``Fuse``, exactly as transformers' ``GemmaTokenizer`` (named in
tokenizer_config.json, as Gemma checkpoints do; ``AutoTokenizer`` rebuilds that pipeline from the vocab / merges) builds
it (``train_gemma_tokenizer``). Their ``text`` is ``GEMMA_TEXT``, whose "\n", "C", "5", "é", "€" and emoji are not in
the vocab and encode as the byte tokens of their UTF-8 bytes (asserted, with decode round trips). Every model's vocab
size equals its tokenizer's exact size (asserted).

Every parameter is re-drawn after the default init so that mistakes show (``redraw_``): embedding tables
``N(0, 0.2)``, other matrices ``N(0, 0.35)``, 1-D norm weights ``1 + 0.3 N(0, 1)``, biases ``0.1 N(0, 1)``.  Gemma
1-3 norms multiply by ``1 + weight``, so their weights are drawn ``0.3 N(0, 1)`` (same effective scale); Gemma 2-4's
post-norms (``post_attention_layernorm`` / ``post_feedforward_layernorm`` on the block outputs) get effective scale
``3 + 0.3 N`` (else greedy decoding repeats the last token); Gemma 4's persistent ``layer_scalar`` buffers (saved in
the safetensors, multiplying each layer's whole output) ``U(0.5, 1.5)``.  The decoder LMs have ``eos_token_id =
None`` in config.json and generation_config.json, so generation never stops early.  The script asserts that the
saved directory loads back to the same logits and config, that AutoTokenizer / the generic fast tokenizer / plain
``tokenizers`` agree on ``text``, and (``check_config_effects``) that each knob a fixture is about moves the logits
by > 1e-2: the llama3 rope scaling; every sliding window (with logits at positions 0-3 unchanged and at 4
changed); each gemma soft-cap (attention and final, removed one at a time); ``query_pre_attn_scalar``; Gemma 3's
global linear rope scaling and local rope theta; Gemma 4's ``layer_scalar`` and partial rotary factor; gpt_oss's
YaRN (whole, its frequencies alone, its attention factor alone, ``truncate``), swiglu limit and alpha, sinks, router
and expert biases (``gpt_oss_variants``).

reference.npz
-------------
``input_ids``           int32 [2, 12]: fixed random ids in ``[0, vocab)``  (vit: ``pixel_values`` float32
                        [2, 3, 32, 32], standard normal, instead)
``logits``              float32: the model's output logits for ``input_ids``: [2, 12, vocab] (bert: the MLM
                        head's) or [2, 10] (vit)
``hidden``              float32: the base model's ``last_hidden_state``.  gpt2/llama/mistral/qwen2/qwen3/gemma*:
                        AFTER the final norm (``ln_f`` / ``model.norm``; gemma*: before the lm_head and its soft-cap);
                        transformers applies it to the last entry of
                        ``hidden_states`` too, so this equals ``hidden_states[-1]`` exactly (asserted).  bert: the
                        last layer's output (BERT has no final norm; each layer ends in LayerNorm) ==
                        ``hidden_states[-1]``.  vit: AFTER the final ``vit.layernorm``, [2, 17, 24]
``hidden_states_last``  float32 (vit only): ``hidden_states[-1]`` = the encoder output BEFORE ``vit.layernorm``
``aux_loss``            float32 [] (mixtral, qwen2_moe, qwen3_moe, gpt_oss): transformers' ``outputs.aux_loss`` for
                        ``input_ids`` with ``output_router_logits=True``: the UNSCALED load-balancing loss
                        ``load_balancing_loss_func(router_logits, num_experts, top_k, attention_mask)`` over the
                        sparse layers (not multiplied by ``router_aux_loss_coef``)
``aux_mask``            int32 [2, 12] (the MoE fixtures): row 1 padded after 9 tokens (right padding)
``aux_loss_masked``     float32 []: ``aux_loss`` with ``attention_mask=aux_mask`` (padding left out of f and P)
``greedy``              int32 [2, 20] (decoder LMs only): the 20 NEW tokens of ``model.generate(input_ids[:, :5],
                        max_new_tokens=20, do_sample=False, pad_token_id=0)`` (no eos; identical to 20 steps of
                        uncached argmax, asserted)
``attention_mask``      int32 [2, 12] (bert only): row 1 is padded after 9 tokens (``input_ids[1, 9:] = [PAD] = 0``)
``token_type_ids``      int32 [2, 12] zeros (bert only); both are passed to the model for ``logits`` / ``hidden``
``text``                0-d unicode array: ``TEXT`` (not vit; gemma*: ``GEMMA_TEXT``, with byte-fallback characters)
``text_ids``            int32: ``AutoTokenizer.from_pretrained(dir)(text)["input_ids"]`` (special tokens as the
                        fast tokenizer adds them: llama/mistral/qwen3/mixtral/qwen3_moe/gpt_oss ``<s>`` first, gemma*
                        ``<bos>`` (2) first, bert ``[CLS] ... [SEP]``, gpt2, qwen2 and qwen2_moe none)
``text_ids_plain``      int32: ``tokenizers.Tokenizer.from_file(tokenizer.json).encode(text,
                        add_special_tokens=False).ids``

Requirements / regenerating
---------------------------
Needs the optional extras ``pip install transformers torch==2.13.0`` (``tokenizers`` and ``safetensors`` come with
transformers); they are never needed by the default tests, which only read the files.  The first eight fixtures
were made with transformers 5.24.0, the gemma and MoE ones (gpt_oss too) with 5.25.0 (Gemma 4 needs it), torch
2.13.0.  Regenerate all (overwrites ``tests/fixtures/pretrained/``)::

    .venv/bin/python experiments/make_pretrained_fixtures.py

or only the named fixtures (their directories are replaced, the others left byte-for-byte as they are; README.md
always lists all of them)::

    .venv/bin/python experiments/make_pretrained_fixtures.py gemma gemma2 gemma3 gemma4 gemma4_kv
    .venv/bin/python experiments/make_pretrained_fixtures.py mixtral qwen2_moe qwen3_moe gpt_oss

The MoE fixtures assert that every token's k-th and (k+1)-th router probabilities (and logits) differ by more than
``MIN_ROUTER_MARGIN`` in every sparse layer (on ``input_ids`` and the greedy sequences), so that no float rounding
can flip an expert choice, and that ``norm_topk_prob`` (qwen2_moe, qwen3_moe) moves the logits.

The output is deterministic (fixed torch / numpy seeds, CPU float32; two runs give byte-identical files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import textwrap
from collections import Counter
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Gemma4ForCausalLM,
    Gemma4TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    GemmaTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GptOssConfig,
    GptOssForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2MoeConfig,
    Qwen2MoeForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "pretrained"

BATCH, SEQ = 2, 12
# size limit of tests/fixtures/pretrained: ~790 KiB for the first 8 fixtures, ~870 for the gemmas, ~330 for the MoEs,
# ~130 for gpt_oss
MAX_TOTAL_KIB = 2304
# tokenizer / model vocab sizes (trained tokenizers hit these exactly; the script asserts model == tokenizer)
GPT2_VOCAB = 300  # byte-level: 256 bytes + merges + <|endoftext|>
QWEN_VOCAB = 272  # byte-level: 256 bytes + merges + 3 specials
LLAMA_VOCAB = 96
BERT_VOCAB = 96
GEMMA_VOCAB = 352  # byte fallback: 5 specials + 256 <0xXX> + 44 corpus characters + 47 merges
# d_model of every model.  24 rather than 32 keeps the whole directory near 0.65 MiB (32 gives ~0.85 MiB: the
# byte-level vocabularies, 2 layers x 7 models and the float32 logits set a floor); 4 heads -> head_dim 6.
HIDDEN = 24
INTERMEDIATE = 48  # MLP width of every model (!= hidden, so transposed MLP weights fail)
GEMMA_INTERMEDIATE = 32  # the gemma fixtures' (smaller: they have 2-6 layers; gemma4's KV-shared layers have 64)
QWEN3_HEAD_DIM = 16  # explicit, != HIDDEN / 4 heads: q_proj is 24 -> 64, o_proj 64 -> 24
# mixture-of-experts fixtures: 4 experts, top-2, each expert 16 wide (qwen2_moe's shared expert 40)
NUM_EXPERTS, TOP_K, EXPERT_WIDTH, SHARED_EXPERT_WIDTH = 4, 2, 16, 40
MOE_NAMES = ("mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss")
MIN_ROUTER_MARGIN = 1e-4  # smallest gap allowed between a token's k-th and (k+1)-th router probability (and logit)
# gpt_oss: d_model 32, head_dim 8, attention sinks drawn N(0, SINK_STD), swiglu clamp / gain away from GPT-OSS's
# 7.0 / 1.702 (so that reading them matters), YaRN as GPT-OSS's (factor 32, beta 32 / 1, truncate False, theta 1.5e5)
# over an original context of 1024 (GPT-OSS: 4096), where the ramp is fractional on a pair that turns within the
# fixture's 25 positions (pair 1: 0.39 interpolated; 0.5 with truncate)
GPT_OSS_HIDDEN, GPT_OSS_HEAD_DIM, GPT_OSS_WINDOW, SINK_STD = 32, 8, 4, 2.0
GPT_OSS_SWIGLU_LIMIT, GPT_OSS_SWIGLU_ALPHA = 3.0, 1.5
GPT_OSS_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 150000.0,
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 1024,
}
EMBED_STD, MATRIX_STD = 0.2, 0.35  # see redraw_
PROMPT_LEN, NEW_TOKENS = 5, 20
TEXT = "To be, or not to be: that is the question."
# the gemma fixtures' text: "C", "5", "\n", "é", "€" and the emoji are not in CORPUS, so they tokenize to the
# <0xXX> byte tokens of their UTF-8 bytes (byte fallback; 1, 1, 1, 2, 3 and 4 bytes)
GEMMA_TEXT = "To be, or not to be: that is the question.\nCafé, 5 € 🙂"
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # ids 0-4, as in Gemma's vocab
# Qwen2Tokenizer's PRETOKENIZE_REGEX (transformers/models/qwen2/tokenization_qwen2.py)
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Public-domain training text for the tiny tokenizers (Hamlet, Act III, Scene 1).
CORPUS = """\
To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die: to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to, 'tis a consummation
Devoutly to be wish'd. To die, to sleep;
To sleep: perchance to dream: ay, there's the rub;
For in that sleep of death what dreams may come
When we have shuffled off this mortal coil,
Must give us pause: there's the respect
That makes calamity of so long life;
For who would bear the whips and scorns of time,
The oppressor's wrong, the proud man's contumely,
The pangs of despised love, the law's delay,
The insolence of office and the spurns
That patient merit of the unworthy takes,
When he himself might his quietus make
With a bare bodkin? who would fardels bear,
To grunt and sweat under a weary life,
But that the dread of something after death,
The undiscover'd country from whose bourn
No traveller returns, puzzles the will
And makes us rather bear those ills we have
Than fly to others that we know not of?
Thus conscience does make cowards of us all;
And thus the native hue of resolution
Is sicklied o'er with the pale cast of thought,
And enterprises of great pitch and moment
With this regard their currents turn awry,
And lose the name of action. Soft you now!
The fair Ophelia! Nymph, in thy orisons
Be all my sins remember'd.
"""


# ----------------------------------------------------------------------------------------------------------------------
# tokenizers


def _corpus_lines() -> list[str]:
    return [line for line in CORPUS.splitlines() if line.strip()]


def train_gpt2_tokenizer(vocab_size: int = GPT2_VOCAB) -> Tokenizer:
    """Byte-level BPE as GPT-2's: 256-byte alphabet + merges, ``<|endoftext|>`` added last (GPT-2 has it last)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    tok.add_special_tokens(["<|endoftext|>"])
    return tok


def train_qwen_tokenizer(vocab_size: int = QWEN_VOCAB) -> Tokenizer:
    """Byte-level BPE laid out as Qwen2/Qwen3 ``tokenizer.json`` files are (NFC, Qwen's split regex, ByteLevel).

    transformers 5's ``AutoTokenizer`` ignores the pipeline in tokenizer.json for ``model_type == "qwen2"`` and
    rebuilds it in ``Qwen2Tokenizer`` (this regex + ByteLevel, keeping only vocab and merges), so a qwen2 fixture
    must use exactly this pipeline for AutoTokenizer, TokenizersBackend and raw ``tokenizers`` to agree.
    ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` come after the BPE vocab, as in Qwen; no BOS is added.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    tok.add_special_tokens(specials)
    return tok


def train_llama_tokenizer(vocab_size: int = LLAMA_VOCAB) -> Tokenizer:
    """Sentencepiece-style BPE: Metaspace ("▁") pre-tokenizer / decoder, ``<unk>``=0, ``<s>``=1, ``</s>``=2.

    No byte fallback (it would need 256 ``<0xXX>`` tokens, too many for a 128-entry vocab); unknown characters
    map to ``<unk>``.  The post-processor prepends ``<s>`` as Llama's does.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def train_bert_tokenizer(vocab_size: int = BERT_VOCAB) -> Tokenizer:
    """WordPiece as BERT's (uncased): [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; ``[CLS] $A [SEP]``.

    ``tokenizers``' WordPieceTrainer is not deterministic (its ``##`` alphabet and merge ties follow hash order),
    so the vocab is built here instead: specials, every character, every ``##`` character, then the most frequent
    2-3 letter ``##`` word endings (1/3 of the rest) and the most frequent whole words (ties alphabetical).
    WordPiece needs no merges, only the vocab (greedy longest-match-first).
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for line in _corpus_lines():
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(line)))
    endings: Counter[str] = Counter()
    for word, n in counts.items():
        for k in (2, 3):
            if len(word) > k:
                endings["##" + word[-k:]] += n

    def by_count(counter: Counter[str]) -> list[str]:
        return [piece for piece, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))]

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted({c for word in counts for c in word})
    vocab += sorted({"##" + c for word in counts for c in word[1:]})
    n_endings = (vocab_size - len(vocab)) // 3
    vocab += by_count(endings)[:n_endings]
    vocab += [w for w in by_count(counts) if len(w) > 1][: vocab_size - len(vocab)]
    assert len(vocab) == len(set(vocab)) == vocab_size, (len(vocab), vocab_size)

    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(vocab[:5])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tok


def train_gemma_tokenizer(vocab_size: int = GEMMA_VOCAB) -> Tokenizer:
    """BPE with byte fallback laid out as Gemma's: ``<pad>``=0 ``<eos>``=1 ``<bos>``=2 ``<unk>``=3 ``<mask>``=4, then
    the 256 byte tokens ``<0x00>``..``<0xFF>`` (ids 5-260), then the corpus characters and merges.

    transformers 5's ``AutoTokenizer`` builds a Gemma tokenizer (``tokenizer_class: GemmaTokenizer``, which every
    Gemma checkpoint's tokenizer_config.json names) from tokenizer.json's vocab, merges and post-processor only, with
    its own pipeline: normalizer ``Replace(" ", "▁")``, pre-tokenizer ``Split(" ", merged_with_previous)`` (a no-op
    after that normalizer), ``BPE(byte_fallback=True, fuse_unk=True, unk_token="<unk>")``, decoder
    ``Sequence[Replace("▁", " "), ByteFallback, Fuse]``.  So the tokenizer returned here IS the one GemmaTokenizer
    builds (with ``<bos>`` prepended by a TemplateProcessing post-processor), and tokenizer.json, AutoTokenizer and
    raw ``tokenizers`` agree.  No "▁" is prepended to the text (Gemma has no dummy prefix).

    The merges are trained with a "▁"-splitting pre-tokenizer (merged_with_next, as sentencepiece pieces: "▁" only
    at a piece's start), so applying them to the whole unsplit text, as the final tokenizer does, gives the same
    pieces.
    """
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    n_fixed = len(GEMMA_SPECIALS) + 256
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed, special_tokens=[], show_progress=False)
    trainer_tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    vocab = {tok: i for i, tok in enumerate(GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)])}
    for tok, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]):
        assert tok not in vocab, tok
        vocab[tok] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    assert len(vocab) == vocab_size, (len(vocab), vocab_size)
    return gemma_tokenizer_from(vocab, merges).backend_tokenizer


def gemma_tokenizer_from(vocab: dict[str, int], merges: list[tuple[str, str]]) -> GemmaTokenizer:
    return GemmaTokenizer(vocab=dict(vocab), merges=list(merges), add_bos_token=True, model_max_length=64)


def wrap_fast(tok: Tokenizer, kind: str) -> PreTrainedTokenizerFast:
    if kind == "gemma":
        model = json.loads(tok.to_str())["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return gemma_tokenizer_from(model["vocab"], merges)
    if kind == "gpt2":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            model_max_length=64,
        )
    if kind == "llama":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=64
        )
    if kind == "qwen":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|endoftext|>",
            pad_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            model_max_length=64,
        )
    if kind == "bert":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=64,
        )
    raise ValueError(kind)


# ----------------------------------------------------------------------------------------------------------------------
# models


def redraw_(model: torch.nn.Module, seed: int, norm_offset: float = 1.0, post_norm_offset: float | None = None) -> None:
    """Re-draw every parameter (tied ones once) and persistent buffer at a scale where mistakes show.

    Embedding tables N(0, EMBED_STD), other matrices / convs N(0, MATRIX_STD), 1-D norm weights
    ``norm_offset + 0.3 N(0, 1)``, biases 0.1 N(0, 1).  ``norm_offset`` is 1 where a norm multiplies by its weight and
    0 for Gemma 1-3, whose RMSNorm multiplies by ``1 + weight`` (so the effective scale is 1 + 0.3 N either way).
    ``post_norm_offset`` (Gemma 2-4) replaces ``norm_offset`` for the norms on the attention / MLP OUTPUTS
    (``post_attention_layernorm``, ``post_feedforward_layernorm``), set so that their effective scale is 3 + 0.3 N:
    with unit-scale post-norms each block adds only an O(1) vector to the residual, the (tied, sqrt(d_model)-scaled)
    embedding of the current token stays the biggest part of the final hidden state, and greedy decoding repeats
    the last token.
    Matrices larger than the embeddings keep greedy decoding from collapsing onto repeating the last token (the
    tied-embedding self-logit otherwise wins), so ``greedy`` exercises the KV cache and positions.  The only
    persistent buffers (saved in the checkpoint) are Gemma 4's per-layer ``layer_scalar`` [1]: U(0.5, 1.5) (drawn
    after all parameters, so models without them draw exactly as before).  GPT-OSS's attention ``sinks`` [N] are drawn
    N(0, SINK_STD); its stacked expert tensors, biases included (``gate_up_proj_bias`` [E, 2F], ``down_proj_bias``
    [E, D]), are matrices here (N(0, MATRIX_STD)).  Any other parameter or persistent buffer is an error.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # deduplicated: tied weights appear once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                is_table = any(key in name for key in ("embed", "wte", "wpe", "cls_token"))
                p.copy_((EMBED_STD if is_table else MATRIX_STD) * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            elif name.endswith(".sinks"):  # GPT-OSS's attention sinks, one logit per head
                p.copy_(SINK_STD * noise)
            elif name.endswith("weight"):
                is_post = any(key in name for key in ("post_attention_layernorm", "post_feedforward_layernorm"))
                offset = post_norm_offset if post_norm_offset is not None and is_post else norm_offset
                p.copy_(offset + 0.3 * noise)
            else:
                raise ValueError(f"unhandled parameter {name} {tuple(p.shape)}")
        params = set(dict(model.named_parameters(remove_duplicate=False)))
        buffers = dict(model.named_buffers())
        for name in model.state_dict():
            if name in params:
                continue
            if name.endswith(".layer_scalar"):
                buf = buffers[name]
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen, dtype=torch.float32))
            else:
                raise ValueError(f"unhandled persistent buffer {name}")


def llama_family_common(vocab: int) -> dict:
    return dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=None,
    )


LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}


SLIDING, FULL = "sliding_attention", "full_attention"
GEMMA_WINDOW = 4  # sliding window of gemma2/3/4: query q sees keys k with q - k < 4 (< PROMPT_LEN < SEQ)


def gemma_common(vocab: int) -> dict:
    """Keys shared by the gemma fixtures: tied embeddings, Gemma's <pad>=0 / <bos>=2 ids, no eos, eps 1e-6."""
    return dict(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=GEMMA_INTERMEDIATE,
        num_attention_heads=4,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=None,
    )


# Gemma 3: local (sliding) layers rope_theta 1e4, global layers 1e6 with linear scaling 8 (as gemma-3-4b and up)
GEMMA3_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
    FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
}
# Gemma 4 (Gemma4TextConfig's defaults, spelled out): full-attention layers use "proportional" rope on a quarter of
# the (global) head dim
GEMMA4_ROPE = {
    SLIDING: {"rope_type": "default", "rope_theta": 10000.0},
    FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
}
# gemma4_kv's config.json is rewritten in the Hub's spelling (see ``hub_style_gemma4_config``)
GEMMA4_KV_GLOBAL = {"global_head_dim": 16, "num_global_key_value_heads": 1}


def build(name: str, vocab: int) -> torch.nn.Module:
    if name == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=HIDDEN,
            n_head=4,
            n_layer=2,
            n_positions=64,
            n_inner=INTERMEDIATE,
            activation_function="gelu_new",
            tie_word_embeddings=True,
            bos_token_id=vocab - 1,
            eos_token_id=None,
        )
        return GPT2LMHeadModel(cfg)
    if name == "llama":
        # transformers 5: the old `rope_scaling` + `rope_theta` became one `rope_parameters` dict
        cfg = LlamaConfig(**llama_family_common(vocab), tie_word_embeddings=False, rope_parameters=dict(LLAMA3_ROPE))
        return LlamaForCausalLM(cfg)
    if name == "mistral":
        cfg = MistralConfig(
            **llama_family_common(vocab),
            tie_word_embeddings=False,
            sliding_window=4,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        return MistralForCausalLM(cfg)
    if name == "qwen2":
        cfg = Qwen2Config(
            **llama_family_common(vocab) | dict(bos_token_id=vocab - 3),  # <|endoftext|>
            tie_word_embeddings=True,
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        return Qwen2ForCausalLM(cfg)
    if name == "qwen3":
        cfg = Qwen3Config(
            **llama_family_common(vocab),
            head_dim=QWEN3_HEAD_DIM,
            tie_word_embeddings=True,
            attention_bias=False,
            use_sliding_window=False,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        return Qwen3ForCausalLM(cfg)
    if name == "mixtral":
        cfg = MixtralConfig(
            **llama_family_common(vocab) | dict(intermediate_size=EXPERT_WIDTH),  # Mixtral's expert width
            tie_word_embeddings=False,
            sliding_window=None,
            num_local_experts=NUM_EXPERTS,
            num_experts_per_tok=TOP_K,
            router_jitter_noise=0.0,
            router_aux_loss_coef=0.02,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        return MixtralForCausalLM(cfg)
    if name == "qwen2_moe":
        cfg = Qwen2MoeConfig(
            **llama_family_common(vocab) | dict(bos_token_id=vocab - 3),
            moe_intermediate_size=EXPERT_WIDTH,
            shared_expert_intermediate_size=SHARED_EXPERT_WIDTH,
            num_experts=NUM_EXPERTS,
            num_experts_per_tok=TOP_K,
            norm_topk_prob=False,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            qkv_bias=True,
            tie_word_embeddings=False,  # tied, greedy decoding repeats the last token (see redraw_)
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        return Qwen2MoeForCausalLM(cfg)
    if name == "qwen3_moe":
        cfg = Qwen3MoeConfig(
            **llama_family_common(vocab) | dict(num_hidden_layers=3),  # intermediate_size: the dense layer's
            head_dim=8,  # != 24 / 4: q_proj 24 -> 32, o_proj 32 -> 24
            moe_intermediate_size=EXPERT_WIDTH,
            num_experts=NUM_EXPERTS,
            num_experts_per_tok=TOP_K,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[1],
            attention_bias=False,
            tie_word_embeddings=False,
            use_sliding_window=False,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        )
        return Qwen3MoeForCausalLM(cfg)
    if name == "gpt_oss":
        cfg = GptOssConfig(
            **llama_family_common(vocab)
            | dict(
                hidden_size=GPT_OSS_HIDDEN,
                intermediate_size=EXPERT_WIDTH,  # the experts' width
                # YaRN's context: max_position_embeddings = factor * original (else transformers warns)
                max_position_embeddings=int(GPT_OSS_ROPE["factor"]) * GPT_OSS_ROPE["original_max_position_embeddings"],
            ),
            head_dim=GPT_OSS_HEAD_DIM,  # q_proj 32 -> 32, k/v 32 -> 16
            num_local_experts=NUM_EXPERTS,
            num_experts_per_tok=TOP_K,
            layer_types=[SLIDING, FULL],
            sliding_window=GPT_OSS_WINDOW,
            attention_bias=True,
            swiglu_limit=GPT_OSS_SWIGLU_LIMIT,
            swiglu_alpha=GPT_OSS_SWIGLU_ALPHA,
            router_aux_loss_coef=0.9,  # gpt-oss-20b / 120b's
            tie_word_embeddings=False,
            rope_parameters=dict(GPT_OSS_ROPE),
        )
        return GptOssForCausalLM(cfg)
    if name == "bert":
        cfg = BertConfig(
            vocab_size=vocab,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=INTERMEDIATE,
            hidden_act="gelu",
            max_position_embeddings=64,
            type_vocab_size=2,
            pad_token_id=0,
        )
        return BertForMaskedLM(cfg)
    if name in ("vit", "vit_model"):
        cfg = ViTConfig(
            image_size=32,
            patch_size=8,
            num_channels=3,
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=INTERMEDIATE,
            hidden_act="gelu",
            num_labels=10,
        )
        return ViTForImageClassification(cfg) if name == "vit" else ViTModel(cfg, add_pooling_layer=True)
    if name == "gemma":
        cfg = GemmaConfig(
            **gemma_common(vocab),
            num_hidden_layers=2,
            num_key_value_heads=1,  # MQA, as gemma-2b
            head_dim=12,  # != 24 / 4: q_proj 24 -> 48, o_proj 48 -> 24
            hidden_act="gelu_pytorch_tanh",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        return GemmaForCausalLM(cfg)
    if name == "gemma2":
        cfg = Gemma2Config(
            **gemma_common(vocab),
            num_hidden_layers=3,
            num_key_value_heads=2,
            head_dim=8,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=6,  # scores * 6**-0.5, not head_dim**-0.5 (hidden / heads, as gemma-2-27b)
            sliding_window=GEMMA_WINDOW,
            layer_types=[SLIDING, FULL, SLIDING],
            attn_logit_softcapping=3.0,
            final_logit_softcapping=4.0,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        )
        return Gemma2ForCausalLM(cfg)
    if name == "gemma3":
        cfg = Gemma3TextConfig(
            **gemma_common(vocab),
            num_hidden_layers=4,
            num_key_value_heads=2,
            head_dim=8,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=12,
            sliding_window=GEMMA_WINDOW,
            layer_types=[SLIDING, SLIDING, SLIDING, FULL],
            rope_parameters={k: dict(v) for k, v in GEMMA3_ROPE.items()},
            attn_logit_softcapping=None,  # transformers' Gemma3Attention never applies it (see check_config_effects)
            final_logit_softcapping=4.0,
        )
        return Gemma3ForCausalLM(cfg)
    if name == "gemma4":
        cfg = Gemma4TextConfig(
            **gemma_common(vocab),
            num_hidden_layers=6,
            num_key_value_heads=1,
            head_dim=8,
            global_head_dim=16,  # full-attention layers' head dim; saved as per_layer_config {"2"/"5": head_dim 16}
            hidden_activation="gelu_pytorch_tanh",
            sliding_window=GEMMA_WINDOW,
            layer_types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL],
            rope_parameters={k: dict(v) for k, v in GEMMA4_ROPE.items()},
            final_logit_softcapping=4.0,
            hidden_size_per_layer_input=4,  # PLE table [352, 6 * 4]
            vocab_size_per_layer_input=vocab,
            num_kv_shared_layers=2,  # layers 4 (sliding) and 5 (full) reuse the K/V of layers 3 and 2
            use_double_wide_mlp=True,  # ... and have MLP width 2 * 32
            attention_k_eq_v=False,
            enable_moe_block=False,
        )
        return Gemma4ForCausalLM(cfg)
    if name == "gemma4_kv":
        cfg = Gemma4TextConfig(
            **gemma_common(vocab),
            num_hidden_layers=4,
            num_key_value_heads=2,  # sliding layers
            head_dim=8,
            **GEMMA4_KV_GLOBAL,  # full layers: head_dim 16, 1 kv head
            hidden_activation="gelu_pytorch_tanh",
            sliding_window=GEMMA_WINDOW,
            layer_types=[SLIDING, FULL, SLIDING, FULL],
            rope_parameters={k: dict(v) for k, v in GEMMA4_ROPE.items()},
            final_logit_softcapping=4.0,
            hidden_size_per_layer_input=0,  # no per-layer inputs
            vocab_size_per_layer_input=vocab,
            num_kv_shared_layers=0,
            use_double_wide_mlp=False,
            attention_k_eq_v=True,  # full layers: no v_proj, values = v_norm(k_proj(x))
            enable_moe_block=False,
        )
        return Gemma4ForCausalLM(cfg)
    raise ValueError(name)


def finalize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    # Gemma 1-3 RMSNorms scale by (1 + weight), Gemma 4's by weight; Gemma 2-4 have post-norms (in Gemma 1, as in
    # Llama, post_attention_layernorm is the norm BEFORE the MLP)
    model_type = model.config.model_type
    norm_offset = 0.0 if model_type in ("gemma", "gemma2", "gemma3_text") else 1.0
    post_norm_offset = {"gemma2": 2.0, "gemma3_text": 2.0, "gemma4_text": 3.0}.get(model_type)
    redraw_(model, seed, norm_offset=norm_offset, post_norm_offset=post_norm_offset)
    model = model.to(torch.float32).eval()
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = None
    return model


@torch.no_grad()
def logits_of(model: torch.nn.Module, ids: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(ids).long()).logits.numpy()


@torch.no_grad()
def forward_logits(model: torch.nn.Module, ref: dict[str, np.ndarray]) -> np.ndarray:
    """The logits for the inputs stored in ``ref`` (pixel_values, or input_ids + optional mask / token types)."""
    if "pixel_values" in ref:
        out = model(pixel_values=torch.from_numpy(ref["pixel_values"]))
        return (out.pooler_output if isinstance(model, ViTModel) else out.logits).numpy()
    extra = {k: torch.from_numpy(ref[k]).long() for k in ("attention_mask", "token_type_ids") if k in ref}
    return model(torch.from_numpy(ref["input_ids"]).long(), **extra).logits.numpy()


@torch.no_grad()
def reference(name: str, model: torch.nn.Module, vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref: dict[str, np.ndarray] = {}
    if name == "vit_model":
        pixels = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
        out = model(pixel_values=torch.from_numpy(pixels))
        ref["pixel_values"] = pixels
        ref["hidden"] = out.last_hidden_state.numpy()
        ref["pooled"] = ref["logits"] = out.pooler_output.numpy()
        return ref
    if name == "vit":
        pixels = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
        ref["pixel_values"] = pixels
        out = model(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
        ref["logits"] = out.logits.numpy()
        ref["hidden"] = model.vit(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
        ref["hidden_states_last"] = out.hidden_states[-1].numpy()
        assert not np.allclose(ref["hidden"], ref["hidden_states_last"])
        return ref

    ids = rng.integers(0, vocab, size=(BATCH, SEQ)).astype(np.int32)
    kwargs = {}
    if name == "bert":
        mask = np.ones((BATCH, SEQ), np.int32)
        mask[1, 9:] = 0
        ids[1, 9:] = 0  # [PAD]
        ref["attention_mask"] = mask
        ref["token_type_ids"] = np.zeros((BATCH, SEQ), np.int32)
        kwargs = dict(
            attention_mask=torch.from_numpy(mask).long(), token_type_ids=torch.from_numpy(ref["token_type_ids"]).long()
        )
    ref["input_ids"] = ids
    t_ids = torch.from_numpy(ids).long()
    out = model(t_ids, output_hidden_states=True, **kwargs)
    base = model.base_model(t_ids, **kwargs).last_hidden_state
    assert torch.equal(out.hidden_states[-1], base), f"{name}: hidden_states[-1] != last_hidden_state"
    ref["logits"] = out.logits.numpy()
    ref["hidden"] = base.numpy()

    if name in MOE_NAMES:
        check_router_margins(name, model, t_ids)
        ref["aux_loss"] = aux_loss_of(model, t_ids)
        mask = np.ones((BATCH, SEQ), np.int32)
        mask[1, 9:] = 0  # right padding: the padded tokens' routing is left out of the loss
        ref["aux_mask"] = mask
        ref["aux_loss_masked"] = aux_loss_of(model, t_ids, torch.from_numpy(mask).long())
        assert abs(ref["aux_loss_masked"] - ref["aux_loss"]) > 1e-4, f"{name}: the mask does not change aux_loss"

    if name != "bert":
        prompt = t_ids[:, :PROMPT_LEN]
        gen = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        assert gen.shape == (BATCH, PROMPT_LEN + NEW_TOKENS), f"{name}: generate returned {tuple(gen.shape)}"
        assert torch.equal(gen[:, :PROMPT_LEN], prompt)
        ref["greedy"] = gen[:, PROMPT_LEN:].numpy().astype(np.int32)
        assert all(len(set(row)) >= 5 for row in ref["greedy"].tolist()), f"{name}: greedy output too repetitive"
        # greedy must be reproducible from plain full forwards (no-cache argmax)
        seq = prompt
        for _ in range(NEW_TOKENS):
            nxt = model(seq).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
        assert torch.equal(seq[:, PROMPT_LEN:], gen[:, PROMPT_LEN:]), f"{name}: cached generate != full forwards"
        if name in MOE_NAMES:
            check_router_margins(name, model, gen)
    return ref


@torch.no_grad()
def check_router_margins(name: str, model: torch.nn.Module, ids: torch.Tensor) -> None:
    """Every token's k-th and (k+1)-th router probabilities (and logits: GPT-OSS takes the top k of its logits)
    differ by > MIN_ROUTER_MARGIN in every sparse layer, so the experts a token goes to cannot depend on float
    rounding (another implementation picks the same ones)."""
    logits = model(ids, output_router_logits=True).router_logits
    assert len(logits) == {"mixtral": 2, "qwen2_moe": 2, "qwen3_moe": 2, "gpt_oss": 2}[name], (name, len(logits))
    for layer in logits:
        for scores in (torch.softmax(layer.float(), dim=-1), layer.float()):
            top = scores.topk(TOP_K + 1, dim=-1).values
            margin = float((top[:, TOP_K - 1] - top[:, TOP_K]).min())
            assert margin > MIN_ROUTER_MARGIN, f"{name}: router margin {margin} (pick another seed)"


@torch.no_grad()
def aux_loss_of(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """transformers' unscaled load-balancing loss (``outputs.aux_loss``) for ``ids`` (and ``mask``)."""
    out = model(ids, attention_mask=mask, labels=ids, output_router_logits=True)
    return np.float32(out.aux_loss.item())


def _variant(model: torch.nn.Module, changes: dict, state_changes: dict | None = None, attn: str | None = None):
    """The same weights under a config with ``changes`` (and state-dict entries replaced by ``state_changes``)."""
    cfg = model.config.to_dict() | changes
    other = type(model)(type(model.config).from_dict(cfg)).eval()
    if attn is not None:
        other.set_attn_implementation(attn)
    other.load_state_dict(model.state_dict() | (state_changes or {}))
    return other


def gpt_oss_variants(model: torch.nn.Module) -> list[tuple[str, dict, dict | None]]:
    """gpt_oss's knobs, each removed alone: the sliding window, YaRN (whole; its frequencies alone, the attention
    factor pinned and factor 1; its attention factor alone; truncate), the swiglu clamp and gain, and the weights
    a loader might drop: sinks (-> -1e4, no sink), router and expert biases (-> 0)."""
    from transformers.modeling_rope_utils import yarn_get_mscale

    state = model.state_dict()
    zeros = lambda suffix: {k: torch.zeros_like(v) for k, v in state.items() if k.endswith(suffix)}
    yarn = dict(GPT_OSS_ROPE)
    return [
        ("sliding window", {"sliding_window": 64}, None),
        (
            "yarn (-> default rope)",
            {"rope_parameters": {"rope_type": "default", "rope_theta": yarn["rope_theta"]}},
            None,
        ),
        (
            "yarn frequencies (-> factor 1, same attention factor)",
            {"rope_parameters": yarn | {"factor": 1.0, "attention_factor": yarn_get_mscale(yarn["factor"])}},
            None,
        ),
        ("yarn attention factor (-> 1)", {"rope_parameters": yarn | {"attention_factor": 1.0}}, None),
        ("yarn truncate False (-> True)", {"rope_parameters": yarn | {"truncate": True}}, None),
        (f"swiglu_limit {GPT_OSS_SWIGLU_LIMIT} (-> 1e4)", {"swiglu_limit": 1e4}, None),
        (f"swiglu_alpha {GPT_OSS_SWIGLU_ALPHA} (-> 1.702)", {"swiglu_alpha": 1.702}, None),
        ("sinks (-> -1e4)", {}, {k: torch.full_like(v, -1e4) for k, v in state.items() if k.endswith(".sinks")}),
        ("router bias (-> 0)", {}, zeros(".router.bias")),
        ("gate_up_proj_bias (-> 0)", {}, zeros(".gate_up_proj_bias")),
        ("down_proj_bias (-> 0)", {}, zeros(".down_proj_bias")),
    ]


def check_config_effects(name: str, model: torch.nn.Module, ref: dict[str, np.ndarray]) -> str:
    """Verify that each config knob the fixture is about changes the outputs (else the fixture proves nothing).

    Each variant loads the same weights into a model whose config lacks the knob; the max |logits difference| over
    ``input_ids`` must exceed 1e-2.  Sliding windows are disabled by a window of 64 >= every sequence length (Gemma's
    layer types, and with them Gemma 3/4's per-type rope, stay); the logits at positions 0-3 (q - k < 4 for every key)
    must then be unchanged and those at position 4 changed.  Gemma 3's ``attn_logit_softcapping`` is checked to be
    INERT: transformers' Gemma3Attention never passes it to the attention function (eager or sdpa), so the fixture
    leaves it None (as every Gemma 3 checkpoint does) rather than store a value transformers ignores.
    """
    default_rope = {"rope_type": "default", "rope_theta": 10000.0}
    variants: list[tuple[str, dict, dict | None]] = []
    if name == "llama":
        variants.append(("llama3 rope", {"rope_parameters": default_rope}, None))
    if name == "mistral":
        variants.append(("sliding window", {"sliding_window": None}, None))
    if name in ("gemma2", "gemma3", "gemma4", "gemma4_kv"):
        variants.append(("sliding window", {"sliding_window": 64}, None))
        variants.append(("final softcap", {"final_logit_softcapping": None}, None))
    if name == "gemma2":
        variants.append(("attn softcap", {"attn_logit_softcapping": None}, None))
    if name in ("gemma2", "gemma3"):
        variants.append(("query_pre_attn_scalar (-> head_dim)", {"query_pre_attn_scalar": model.config.head_dim}, None))
    if name == "gemma3":
        rope = GEMMA3_ROPE | {FULL: {"rope_type": "default", "rope_theta": 1000000.0}}
        variants.append(("global linear rope scaling", {"rope_parameters": rope}, None))
        rope = GEMMA3_ROPE | {SLIDING: {"rope_type": "default", "rope_theta": 1000000.0}}
        variants.append(("local rope_theta 1e4 (-> 1e6)", {"rope_parameters": rope}, None))
    if name in ("qwen2_moe", "qwen3_moe"):
        flip = not model.config.norm_topk_prob
        variants.append((f"norm_topk_prob {not flip} (-> {flip})", {"norm_topk_prob": flip}, None))
    if name == "gpt_oss":
        variants += gpt_oss_variants(model)
    if name in ("gemma4", "gemma4_kv"):
        scalars = {k: torch.ones_like(v) for k, v in model.state_dict().items() if k.endswith(".layer_scalar")}
        variants.append(("layer_scalar (-> 1)", {}, scalars))
        rope = GEMMA4_ROPE | {FULL: GEMMA4_ROPE[FULL] | {"partial_rotary_factor": 1.0}}
        variants.append(("partial_rotary_factor 0.25 (-> 1)", {"rope_parameters": rope}, None))

    notes = []
    for label, changes, state_changes in variants:
        alt = logits_of(_variant(model, changes, state_changes), ref["input_ids"])
        per_pos = np.abs(alt - ref["logits"]).max(axis=(0, 2))
        diff = float(per_pos.max())
        assert diff > 1e-2, f"{name}: {label} does not change the logits ({diff})"
        if label == "sliding window":  # query q sees keys k with q - k < 4: positions 0-3 unaffected, 4 is not
            assert (per_pos[:4] < 1e-5).all() and per_pos[4] > 1e-2, (name, per_pos)
        notes.append(f"{label}: {diff:.3f}")
    if name == "gemma3":
        for attn in ("sdpa", "eager"):
            alt = logits_of(_variant(model, {"attn_logit_softcapping": 1.0}, attn=attn), ref["input_ids"])
            diff = float(np.abs(alt - ref["logits"]).max())
            assert diff < 1e-5, f"gemma3: attn_logit_softcapping=1 changes the {attn} logits ({diff})"
            notes.append(f"attn softcap 1.0 ({attn}, inert): {diff:.1e}")
    return f" (max |logits - logits without| {'; '.join(notes)})" if notes else ""


# ----------------------------------------------------------------------------------------------------------------------


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


NAMES = [
    "gpt2",
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "bert",
    "vit",
    "vit_model",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma4",
    "gemma4_kv",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "gpt_oss",
]  # fixture i gets seed 1000 + i, whichever fixtures a run rebuilds
TOK_KIND = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "qwen", "qwen3": "llama", "bert": "bert"}
TOK_KIND |= {"mixtral": "llama", "qwen2_moe": "qwen", "qwen3_moe": "llama", "gpt_oss": "llama"}
TOK_KIND |= {name: "gemma" for name in NAMES if name.startswith("gemma")}


def hub_style_gemma4_config(d: Path, model: torch.nn.Module) -> None:
    """Rewrite ``d/config.json`` of gemma4_kv in the spelling of Gemma 4 checkpoints on the Hub.

    transformers 5.25's Gemma4TextConfig turns the Hub's ``global_head_dim`` / ``num_global_key_value_heads`` keys
    into a ``per_layer_config`` ({layer index: overrides} for every full-attention layer) and saves only that.  The
    gemma4 fixture keeps what save_pretrained wrote; gemma4_kv gets the Hub's keys instead (and no
    ``per_layer_config``), so a loader must read both spellings.  The reload check in ``main`` proves transformers reads
    this file back to the same per-layer config and logits.
    """
    path = d / "config.json"
    text = path.read_text()
    cfg = json.loads(text)
    assert json.dumps(cfg, indent=2, sort_keys=True) + "\n" == text, "config.json layout changed"
    overrides = {"head_dim": GEMMA4_KV_GLOBAL["global_head_dim"]}
    overrides["num_key_value_heads"] = GEMMA4_KV_GLOBAL["num_global_key_value_heads"]
    expected = {str(i): overrides for i, kind in enumerate(model.config.layer_types) if kind == FULL}
    assert cfg.pop("per_layer_config") == expected, "unexpected per_layer_config"
    cfg |= GEMMA4_KV_GLOBAL
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def check_tokenizer(name: str, kind: str, d: Path, vocab: int, ref: dict[str, np.ndarray]) -> None:
    """Store ``text`` / ``text_ids`` / ``text_ids_plain`` and check every way of loading the tokenizer agrees."""
    text = GEMMA_TEXT if kind == "gemma" else TEXT
    loaded = AutoTokenizer.from_pretrained(d)
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    ref["text"] = np.array(text)
    ref["text_ids"] = np.asarray(loaded(text)["input_ids"], np.int32)
    ref["text_ids_plain"] = np.asarray(raw.encode(text, add_special_tokens=False).ids, np.int32)
    # AutoTokenizer (class picked from config.json's model_type / tokenizer_config.json), the generic fast class and
    # plain `tokenizers` must agree, else the fixture depends on how a reader loads it
    generic = PreTrainedTokenizerFast.from_pretrained(d)(text)["input_ids"]
    assert ref["text_ids"].tolist() == generic == raw.encode(text).ids, (name, type(loaded).__name__)
    assert len(loaded) == vocab, (name, len(loaded), vocab)
    assert loaded.unk_token_id not in ref["text_ids_plain"] or kind in ("gpt2", "qwen"), f"{name}: <unk>"
    if kind != "bert":  # bert lowercases and the WordPiece decoder spaces out punctuation
        assert loaded.decode(ref["text_ids_plain"]) == text, (name, loaded.decode(ref["text_ids_plain"]))
        assert raw.decode(ref["text_ids_plain"].tolist()) == text, (name, raw.decode(ref["text_ids_plain"].tolist()))
    if kind == "gemma":
        assert type(loaded).__name__ == "GemmaTokenizer", (name, type(loaded).__name__)
        assert ref["text_ids"][0] == loaded.bos_token_id == 2 and ref["text_ids"][1:].tolist() == generic[1:]
        # exactly the characters outside the training lines fall back to their UTF-8 bytes: <0xXX> has id 5 + XX
        known = set("".join(_corpus_lines()))
        byte_ids = [i for i in ref["text_ids_plain"].tolist() if 5 <= i < 5 + 256]
        assert bytes(i - 5 for i in byte_ids) == "".join(c for c in text if c not in known).encode(), (name, byte_ids)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"fixtures to (re)build (default: all): {NAMES}")
    selected = parser.parse_args(argv).names or NAMES
    if unknown := [name for name in selected if name not in NAMES]:
        parser.error(f"unknown fixtures {unknown}; choose from {NAMES}")
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)  # every model / input also gets its own fixed seed below
    OUT.mkdir(parents=True, exist_ok=True)
    for name in selected:  # only the fixtures being rebuilt; the others stay as they are
        if (OUT / name).exists():
            shutil.rmtree(OUT / name)

    toks = {
        "gpt2": train_gpt2_tokenizer(GPT2_VOCAB),
        "llama": train_llama_tokenizer(LLAMA_VOCAB),
        "qwen": train_qwen_tokenizer(QWEN_VOCAB),
        "bert": train_bert_tokenizer(BERT_VOCAB),
        "gemma": train_gemma_tokenizer(GEMMA_VOCAB),
    }

    for name in [n for n in NAMES if n in selected]:
        seed = 1000 + NAMES.index(name)
        torch.manual_seed(seed)
        kind = TOK_KIND.get(name)
        vocab = toks[kind].get_vocab_size(with_added_tokens=True) if kind else 0
        model = finalize(build(name, vocab), seed)
        ref = reference(name, model, vocab, seed)
        note = check_config_effects(name, model, ref)

        d = OUT / name
        d.mkdir(parents=True)
        if name == "llama":
            model.save_pretrained(d, max_shard_size="40KB")
            assert (d / "model.safetensors.index.json").exists(), "llama should be sharded"
        else:
            model.save_pretrained(d)
            assert (d / "model.safetensors").exists()
        if name == "gemma4_kv":
            hub_style_gemma4_config(d, model)

        reloaded = type(model).from_pretrained(d).eval()
        assert np.array_equal(forward_logits(reloaded, ref), ref["logits"]), f"{name}: reloaded checkpoint differs"
        skip = ("_name_or_path", "architectures", "dtype")  # set by saving / loading
        a, b = ({k: v for k, v in m.config.to_dict().items() if k not in skip} for m in (reloaded, model))
        assert a == b, f"{name}: config.json reads back differently: {a} != {b}"

        if kind:
            wrap_fast(toks[kind], kind).save_pretrained(d)
            check_tokenizer(name, kind, d, vocab, ref)

        for key, val in ref.items():
            assert val.dtype.kind == "U" or np.isfinite(val).all(), (name, key)
        assert (0.2 if name == "vit_model" else 0.5) < ref["logits"].std() < 5 and np.abs(ref["logits"]).max() < 30, (
            f"{name}: logits badly scaled"
        )
        np.savez(d / "reference.npz", **ref)
        for f in d.rglob("*"):
            if f.is_file():
                f.chmod(0o644)  # safetensors writes 0600

        lg = ref["logits"]
        greedy = ref.get("greedy")
        print(
            f"{name:8s} vocab={vocab:3d} logits{list(lg.shape)} std={lg.std():.2f} max|.|={np.abs(lg).max():.2f}"
            + (f" greedy distinct={len(np.unique(greedy))}" if greedy is not None else "")
            + note
            + f"  {dir_size(d) / 1024:.1f} KiB"
        )
        if kind:
            print(f"         text_ids={ref['text_ids'].tolist()}  plain={ref['text_ids_plain'].tolist()}")

    versions = {}  # transformers version -> fixtures it made (from each config.json)
    for name in NAMES:
        if (OUT / name / "config.json").exists():
            v = json.loads((OUT / name / "config.json").read_text())["transformers_version"]
            versions.setdefault(v, []).append(name)
    made_with = "".join(
        "\n" + textwrap.fill(f"- transformers {v}: {', '.join(ns)}", width=116, subsequent_indent="  ")
        for v, ns in sorted(versions.items())
    )
    (OUT / "README.md").write_text(README.format(made_with=made_with, tt=torch.__version__.split("+")[0]))
    (OUT / "README.md").chmod(0o644)
    total = dir_size(OUT)
    print(f"total size of {OUT.relative_to(ROOT)}: {total} bytes ({total / 1024:.1f} KiB)")
    if total > MAX_TOTAL_KIB * 1024:
        sys.exit("fixtures too large: shrink the models")


README = """\
# Tiny pretrained-checkpoint fixtures

Random-init (not trained) Hugging Face checkpoints of seventeen architectures / configurations: gpt2, llama,
mistral, qwen2, qwen3, bert, vit, vit_model (d_model 24, 2 layers, 4 heads), gemma, gemma2, gemma3, gemma4,
gemma4_kv (d_model 24, 2-6 layers, explicit head dims, sliding window 4, soft-capped logits; Gemma 4 text with
per-layer inputs, KV sharing, double-wide MLPs, or K = V full-attention layers with another head dim and kv-head
count) and the mixtures of experts mixtral, qwen2_moe, qwen3_moe (d_model 24, 2-3 layers, 4 experts of width 16,
top-2; Qwen2-MoE with a gated shared expert and unnormalised top-k weights, Qwen3-MoE with a dense layer from
`mlp_only_layers`; saved by transformers in the per-expert layout, `experts.{{e}}.w1` / `experts.{{e}}.gate_proj`, ...)
and gpt_oss (GPT-OSS: d_model 32, 2 layers [sliding, full] with window 4, attention sinks, q/k/v/o biases, YaRN,
4 experts of width 16, top-2 of the biased router logits, expert biases, the clamped SwiGLU with limit 3 / alpha
1.5, gate and up interleaved in the stacked `experts.gate_up_proj` as transformers saves it).
Each is saved with `save_pretrained` (safetensors; llama is sharded with a `model.safetensors.index.json`;
gemma4_kv's config.json spells the full-attention head dim / kv heads as the Hub's Gemma 4 configs do,
`global_head_dim` / `num_global_key_value_heads`, where gemma4 keeps transformers' `per_layer_config`) together with
its tokenizer (`tokenizer.json` + `tokenizer_config.json`, trained on a short Shakespeare passage; none for vit; the
gemma fixtures share a Gemma-style BPE with byte fallback) and `reference.npz` holding inputs and the outputs
transformers computes:
`input_ids` / `pixel_values`, `logits`, `hidden`, `greedy` (decoder LMs), `attention_mask` / `token_type_ids`
(bert), `hidden_states_last` (vit), `pooled` (vit_model), `aux_loss`, `aux_mask`, `aux_loss_masked` (the MoE
fixtures: transformers' unscaled load-balancing loss, without and with padding), `text`, `text_ids`,
`text_ids_plain` (the gemma fixtures' `text` has characters outside the tokenizer's vocabulary, which encode as
`<0xXX>` byte tokens).

Made by `experiments/make_pretrained_fixtures.py` (its docstring describes every array and config) with torch
{tt} on CPU in float32 and (each config.json's `transformers_version`):
{made_with}

Regenerate all with

    .venv/bin/python experiments/make_pretrained_fixtures.py

or only some (the others stay untouched), e.g.

    .venv/bin/python experiments/make_pretrained_fixtures.py mixtral qwen2_moe qwen3_moe gpt_oss

Loading these files needs neither transformers nor torch.
"""


if __name__ == "__main__":
    main()
