"""Build tiny random-init Hugging Face checkpoints + reference outputs as test fixtures.

What it makes
-------------
``tests/fixtures/pretrained/<name>/`` for seven architectures, each a real ``save_pretrained`` directory
(``config.json``, safetensors weights, ``generation_config.json`` for the decoder LMs, the tokenizer files
``tokenizer.json`` + ``tokenizer_config.json`` where the architecture has one) plus ``reference.npz`` with what
``transformers`` (torch, CPU, float32) computes, and ``tests/fixtures/pretrained/README.md``.

All models: d_model 24, 2 layers, 4 heads (head_dim 6), MLP width 48, max positions 64 (see ``HIDDEN``).

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
============  =================================  ===========================================================

llama, mistral and qwen3 share one tokenizer: a sentencepiece-style BPE (Metaspace "▁" pre-tokenizer and decoder,
``<unk>``=0 ``<s>``=1 ``</s>``=2, ``<s>`` prepended, no byte fallback), vocab 96.  qwen2 gets a byte-level one laid
out as Qwen's tokenizer.json (NFC, Qwen's split regex, ByteLevel), because transformers 5's ``AutoTokenizer``
rebuilds any ``model_type == "qwen2"`` tokenizer as ``Qwen2Tokenizer`` with exactly that pipeline, ignoring the
one in tokenizer.json.  Every model's vocab size equals its tokenizer's exact size (asserted).

Every parameter is re-drawn after the default init so that mistakes show (``redraw_``): embedding tables
``N(0, 0.2)``, other matrices ``N(0, 0.35)``, 1-D norm weights ``1 + 0.3 N(0, 1)``, biases ``0.1 N(0, 1)``.  The
decoder LMs have ``eos_token_id = None`` in config.json and generation_config.json, so generation never stops
early.  The script asserts that the saved directory loads back to the same logits, that the llama3 rope scaling
and the mistral sliding window change the logits, and that AutoTokenizer / the generic fast tokenizer / plain
``tokenizers`` agree on ``text``.

reference.npz
-------------
``input_ids``           int32 [2, 12]: fixed random ids in ``[0, vocab)``  (vit: ``pixel_values`` float32
                        [2, 3, 32, 32], standard normal, instead)
``logits``              float32: the model's output logits for ``input_ids``: [2, 12, vocab] (bert: the MLM
                        head's) or [2, 10] (vit)
``hidden``              float32: the base model's ``last_hidden_state``.  gpt2/llama/mistral/qwen2/qwen3: AFTER
                        the final norm (``ln_f`` / ``model.norm``); transformers applies it to the last entry of
                        ``hidden_states`` too, so this equals ``hidden_states[-1]`` exactly (asserted).  bert: the
                        last layer's output (BERT has no final norm; each layer ends in LayerNorm) ==
                        ``hidden_states[-1]``.  vit: AFTER the final ``vit.layernorm``, [2, 17, 24]
``hidden_states_last``  float32 (vit only): ``hidden_states[-1]`` = the encoder output BEFORE ``vit.layernorm``
``greedy``              int32 [2, 20] (decoder LMs only): the 20 NEW tokens of ``model.generate(input_ids[:, :5],
                        max_new_tokens=20, do_sample=False, pad_token_id=0)`` (no eos; identical to 20 steps of
                        uncached argmax, asserted)
``attention_mask``      int32 [2, 12] (bert only): row 1 is padded after 9 tokens (``input_ids[1, 9:] = [PAD] = 0``)
``token_type_ids``      int32 [2, 12] zeros (bert only); both are passed to the model for ``logits`` / ``hidden``
``text``                0-d unicode array: ``TEXT`` (not vit)
``text_ids``            int32: ``AutoTokenizer.from_pretrained(dir)(text)["input_ids"]`` (special tokens as the
                        fast tokenizer adds them: llama/mistral/qwen3 ``<s>`` first, bert ``[CLS] ... [SEP]``,
                        gpt2 and qwen2 none)
``text_ids_plain``      int32: ``tokenizers.Tokenizer.from_file(tokenizer.json).encode(text,
                        add_special_tokens=False).ids``

Requirements / regenerating
---------------------------
Needs the optional extras ``pip install transformers torch==2.13.0`` (``tokenizers`` and ``safetensors`` come with
transformers); they are never needed by the default tests, which only read the files.  Made with transformers
5.24.0 and torch 2.13.0+cpu.  Regenerate (overwrites ``tests/fixtures/pretrained/``)::

    .venv/bin/python experiments/make_pretrained_fixtures.py

The output is deterministic (fixed torch / numpy seeds, CPU float32; two runs give byte-identical files).
"""

from __future__ import annotations

import os
import shutil
import sys
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
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "pretrained"

BATCH, SEQ = 2, 12
# tokenizer / model vocab sizes (trained tokenizers hit these exactly; the script asserts model == tokenizer)
GPT2_VOCAB = 300  # byte-level: 256 bytes + merges + <|endoftext|>
QWEN_VOCAB = 272  # byte-level: 256 bytes + merges + 3 specials
LLAMA_VOCAB = 96
BERT_VOCAB = 96
# d_model of every model.  24 rather than 32 keeps the whole directory near 0.65 MiB (32 gives ~0.85 MiB: the
# byte-level vocabularies, 2 layers x 7 models and the float32 logits set a floor); 4 heads -> head_dim 6.
HIDDEN = 24
INTERMEDIATE = 48  # MLP width of every model (!= hidden, so transposed MLP weights fail)
QWEN3_HEAD_DIM = 16  # explicit, != HIDDEN / 4 heads: q_proj is 24 -> 64, o_proj 64 -> 24
EMBED_STD, MATRIX_STD = 0.2, 0.35  # see redraw_
PROMPT_LEN, NEW_TOKENS = 5, 20
TEXT = "To be, or not to be: that is the question."
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


def wrap_fast(tok: Tokenizer, kind: str) -> PreTrainedTokenizerFast:
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


def redraw_(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter (tied ones once) at a scale where mistakes show.

    Embedding tables N(0, EMBED_STD), other matrices / convs N(0, MATRIX_STD), 1-D norm weights 1 + 0.3 N(0, 1),
    biases 0.1 N(0, 1).  Matrices larger than the embeddings keep greedy decoding from collapsing onto repeating the
    last token (the tied-embedding self-logit otherwise wins), so ``greedy`` exercises the KV cache and positions.
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
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            else:
                raise ValueError(f"unhandled parameter {name} {tuple(p.shape)}")


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
    raise ValueError(name)


def finalize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    redraw_(model, seed)
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
    return ref


def check_config_effects(name: str, model: torch.nn.Module, ref: dict[str, np.ndarray]) -> str:
    """Verify that the config knob the fixture is about changes the outputs (else the fixture proves nothing)."""
    if name == "llama":
        cfg = model.config.to_dict()
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        other = LlamaForCausalLM(LlamaConfig.from_dict(cfg)).eval()
    elif name == "mistral":
        cfg = model.config.to_dict()
        cfg["sliding_window"] = None
        other = MistralForCausalLM(MistralConfig.from_dict(cfg)).eval()
    else:
        return ""
    other.load_state_dict(model.state_dict())
    alt = logits_of(other, ref["input_ids"])
    diff = float(np.abs(alt - ref["logits"]).max())
    assert diff > 1e-2, f"{name}: the rope scaling / sliding window does not change the logits ({diff})"
    if name == "mistral":  # query q sees keys k with q - k < 4: positions 0-3 unaffected, 4 is not
        per_pos = np.abs(alt - ref["logits"]).max(axis=(0, 2))
        assert (per_pos[:4] < 1e-5).all() and per_pos[4] > 1e-2, per_pos
    return f" (max |logits - logits without {'llama3 rope' if name == 'llama' else 'sliding window'}| = {diff:.3f})"


# ----------------------------------------------------------------------------------------------------------------------


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)  # every model / input also gets its own fixed seed below
    if OUT.exists():
        for child in OUT.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
    OUT.mkdir(parents=True, exist_ok=True)

    toks = {
        "gpt2": train_gpt2_tokenizer(GPT2_VOCAB),
        "llama": train_llama_tokenizer(LLAMA_VOCAB),
        "qwen": train_qwen_tokenizer(QWEN_VOCAB),
        "bert": train_bert_tokenizer(BERT_VOCAB),
    }
    tok_kind = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "qwen", "qwen3": "llama", "bert": "bert"}

    names = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "bert", "vit", "vit_model"]
    for i, name in enumerate(names):
        seed = 1000 + i
        torch.manual_seed(seed)
        kind = tok_kind.get(name)
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

        reloaded = type(model).from_pretrained(d).eval()
        assert np.array_equal(forward_logits(reloaded, ref), ref["logits"]), f"{name}: reloaded checkpoint differs"

        if kind:
            fast = wrap_fast(toks[kind], kind)
            fast.save_pretrained(d)
            loaded = AutoTokenizer.from_pretrained(d)
            raw = Tokenizer.from_file(str(d / "tokenizer.json"))
            ref["text"] = np.array(TEXT)
            ref["text_ids"] = np.asarray(loaded(TEXT)["input_ids"], np.int32)
            ref["text_ids_plain"] = np.asarray(raw.encode(TEXT, add_special_tokens=False).ids, np.int32)
            # AutoTokenizer (class picked from config.json's model_type), the generic fast class and plain
            # `tokenizers` must agree, else the fixture depends on how a reader loads it
            generic = PreTrainedTokenizerFast.from_pretrained(d)(TEXT)["input_ids"]
            assert ref["text_ids"].tolist() == generic == raw.encode(TEXT).ids, (name, type(loaded).__name__)
            assert len(loaded) == vocab, (name, len(loaded), vocab)
            assert loaded.unk_token_id not in ref["text_ids_plain"] or kind in ("gpt2", "qwen"), f"{name}: <unk>"
            if kind != "bert":  # bert lowercases and the WordPiece decoder spaces out punctuation
                assert loaded.decode(ref["text_ids_plain"]) == TEXT, (name, loaded.decode(ref["text_ids_plain"]))

        for key, val in ref.items():
            assert val.dtype.kind == "U" or np.isfinite(val).all(), (name, key)
        assert (0.2 if name == "vit_model" else 0.5) < ref["logits"].std() < 5 and np.abs(ref["logits"]).max() < 30, (
            f"{name}: logits badly scaled"
        )
        np.savez(d / "reference.npz", **ref)

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

    (OUT / "README.md").write_text(README.format(tv=transformers.__version__, tt=torch.__version__))
    for f in OUT.rglob("*"):
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600
    total = dir_size(OUT)
    print(f"total size of {OUT.relative_to(ROOT)}: {total} bytes ({total / 1024:.1f} KiB)")
    if total > 800 * 1024:
        sys.exit("fixtures too large: shrink the models")


README = """\
# Tiny pretrained-checkpoint fixtures

Random-init (not trained) Hugging Face checkpoints of eight architectures (gpt2, llama, mistral, qwen2,
qwen3, bert, vit, vit_model; d_model 24, 2 layers, 4 heads), each saved with `save_pretrained` (safetensors; llama is
sharded with a `model.safetensors.index.json`) together with its tokenizer (`tokenizer.json` +
`tokenizer_config.json`, trained on a short Shakespeare passage; none for vit) and `reference.npz` holding
inputs and the outputs transformers computes:
`input_ids` / `pixel_values`, `logits`, `hidden`, `greedy` (decoder LMs), `attention_mask` / `token_type_ids`
(bert), `hidden_states_last` (vit), `pooled` (vit_model), `text`, `text_ids`, `text_ids_plain`.

Made by `experiments/make_pretrained_fixtures.py` (its docstring describes every array) with
transformers {tv} and torch {tt} on CPU in float32. Regenerate with

    .venv/bin/python experiments/make_pretrained_fixtures.py

which overwrites this directory. Loading these files needs neither transformers nor torch.
"""


if __name__ == "__main__":
    main()
