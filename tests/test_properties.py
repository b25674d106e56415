"""Property-based tests of the public API (ops, models, decoding): every draw equals a reference or is refused.

Each test draws tiny shapes and arguments and, in some draws, one mutation that makes the call invalid: a wrong
dtype, a value out of its range, the wrong kind of object. A valid draw must equal its reference (the float64 NumPy
references of tests/ops, the dense attention path, or jit against eager) and be finite; an invalid draw must raise
a ValueError or TypeError from a `raise` statement of jaxformer, with a message. Anything else fails: another
exception type, an error from inside jax / flax / NumPy, a silently accepted bad input, NaN from finite inputs.

Shapes come from small sets so that the compilations they cost are shared between draws (compile time dominates:
see tests/conftest.py). `pytest tests/test_properties.py --hypothesis-show-statistics` counts the draws.
"""

import functools
import linecache
import os

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxformer
from jaxformer import decoding, ops
from jaxformer.models import BERT, GPT, ModelConfig, Transformer, ViT
from tests.ops import reference
from tests.ops.test_blockwise import dense_mask
from tests.ops.test_losses import np_cross_entropy
from tests.ops.test_masks import np_causal, np_sliding_window
from tests.ops.test_norms import np_layer_norm, np_rms_norm
from tests.ops.test_positions import np_alibi_bias, np_rope, np_sinusoidal

PACKAGE = os.path.dirname(os.path.abspath(jaxformer.__file__))
VALID = None  # the mutation of a valid draw
EITHER = "either"  # a draw whose validity this test does not predict: a result (checked) or a jaxformer error


def raised_by_jaxformer(err: BaseException) -> bool:
    """True when the innermost frame of `err` is a `raise` statement in a jaxformer source file (an error raised
    from inside jax, or a Python error on a line of jaxformer, is not)."""
    tb, frame = err.__traceback__, None
    while tb is not None:
        frame, tb = tb, tb.tb_next
    if frame is None:
        return False
    filename = frame.tb_frame.f_code.co_filename
    if not os.path.abspath(filename).startswith(PACKAGE + os.sep):
        return False
    return linecache.getline(filename, frame.tb_lineno).lstrip().startswith("raise")


def outcome(fn, mutation):
    """Runs `fn()`. A valid draw (`mutation` None) must return; an invalid one must raise a jaxformer ValueError /
    TypeError with a message. Returns the result, or None when it raised."""
    try:
        result = fn()
        jax.block_until_ready(result)
    except (ValueError, TypeError) as err:
        if not raised_by_jaxformer(err):
            raise AssertionError(f"{type(err).__name__} not raised by jaxformer (mutation {mutation!r})") from err
        assert str(err).strip(), "a jaxformer error without a message"
        if mutation is VALID:
            raise AssertionError(f"a valid draw raised: {err}") from err
        return None
    if mutation not in (VALID, EITHER):
        raise AssertionError(f"an invalid draw ({mutation}) was accepted without an error")
    return result


def assert_finite(*arrays):
    for a in arrays:
        a = np.asarray(a)
        assert np.isfinite(a).all(), "NaN or inf from finite inputs"


def mutations(*names):
    """Valid draws three times as often as each mutation."""
    return st.sampled_from([VALID, VALID, VALID, *names])


def normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# -- attention ------------------------------------------------------------------------------------------------------


@hypothesis.settings(max_examples=25)
@hypothesis.given(
    B=st.sampled_from([1, 2]),
    T=st.sampled_from([0, 1, 3]),
    S=st.sampled_from([0, 1, 4]),
    K=st.sampled_from([1, 2]),
    G=st.sampled_from([1, 2]),
    H=st.sampled_from([2, 4]),
    mask_layout=st.sampled_from(["none", "BNTS", "B1TS", "TS"]),
    with_bias=st.booleans(),
    is_causal=st.booleans(),
    scale=st.sampled_from([None, 0.5]),
    use_jit=st.booleans(),
    mutation=mutations(
        "int query", "float mask", "int bias", "scale 0", "scale nan", "transposed mask", "rng int", "lists"
    ),
    seed=st.integers(0, 2**16),
)
def test_dot_product_attention(B, T, S, K, G, H, mask_layout, with_bias, is_causal, scale, use_jit, mutation, seed):
    N = K * G
    q, k, v = normal(seed, (B, T, N, H)), normal(seed + 1, (B, S, K, H)), normal(seed + 2, (B, S, K, H))
    dims = {"B": B, "N": N, "T": T, "S": S, "1": 1}
    mask = None if mask_layout == "none" else np.random.default_rng(seed).random([dims[c] for c in mask_layout]) < 0.7
    bias = normal(seed + 3, (1, N, T, S)) if with_bias else None
    kwargs = dict(mask=mask, bias=bias, is_causal=is_causal, scale=scale)
    if mutation == "int query":
        q = q.astype(np.int32)
    elif mutation == "float mask":
        kwargs["mask"] = np.ones((T, S), np.float32)
    elif mutation == "int bias":
        kwargs["bias"] = np.ones((T, S), np.int32)
    elif mutation in ("scale 0", "scale nan"):
        kwargs["scale"] = 0.0 if mutation == "scale 0" else float("nan")
    elif mutation == "transposed mask":
        if T == S:
            hypothesis.assume(False)
        kwargs["mask"] = np.ones((S, T), bool)
    elif mutation == "rng int":
        kwargs.update(dropout_rate=0.5, dropout_rng=seed)
    elif mutation == "lists":  # valid: nested lists are arrays (an empty list has no shape to keep: arrays then)
        if T and S:
            q, k, v = q.tolist(), k.tolist(), v.tolist()
        mutation = VALID
    fn = functools.partial(ops.dot_product_attention, **kwargs)
    got = outcome(lambda: (jax.jit(fn) if use_jit else fn)(q, k, v), mutation)
    if got is None:
        return
    q, k, v = (np.asarray(x, np.float32) for x in (q, k, v))
    assert got.shape == (B, T, N, H) and got.dtype == jnp.float32
    assert_finite(got)
    if T == 0 or S == 0:  # nothing to attend to: zeros (the reference cannot reduce over an empty axis)
        np.testing.assert_array_equal(got, np.zeros((B, T, N, H)))
        return
    full = np.ones((1, 1, T, S), bool) if mask is None else mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    if is_causal:
        full = full & reference.causal(T, S)
    want = reference.attention(q, k, v, mask=full, bias=bias, scale=scale)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    probs = ops.attention_weights(q, k, mask=mask, bias=bias, scale=scale, is_causal=is_causal)
    np.testing.assert_allclose(probs, reference.attention_probs(q, k, mask=full, bias=bias, scale=scale), atol=1e-5)


@hypothesis.settings(max_examples=20)
@hypothesis.given(
    B=st.sampled_from([1, 2]),
    T=st.sampled_from([0, 1, 3, 5]),
    S=st.sampled_from([0, 2, 5]),
    K=st.sampled_from([1, 2]),
    G=st.sampled_from([1, 2]),
    is_causal=st.booleans(),
    window=st.sampled_from([None, 1, 2]),
    with_lengths=st.booleans(),
    block_size=st.sampled_from([1, 2, 4]),
    mutation=mutations("window 0", "block_size 0", "lengths > S", "int value", "float lengths"),
    seed=st.integers(0, 2**16),
)
def test_blockwise_attention_equals_the_dense_path(
    B, T, S, K, G, is_causal, window, with_lengths, block_size, mutation, seed
):
    N, H = K * G, 4
    q, k, v = normal(seed, (B, T, N, H)), normal(seed + 1, (B, S, K, H)), normal(seed + 2, (B, S, K, H))
    lengths = np.random.default_rng(seed).integers(0, S + 1, size=B).astype(np.int32) if with_lengths else None
    kwargs = dict(is_causal=is_causal, window=window, kv_lengths=lengths, block_size=block_size)
    if mutation == "window 0":
        kwargs["window"] = 0
    elif mutation == "block_size 0":
        kwargs["block_size"] = 0
    elif mutation == "lengths > S":
        kwargs["kv_lengths"] = np.full(B, S + 1, np.int32)
    elif mutation == "int value":
        v = v.astype(np.int32)
    elif mutation == "float lengths":
        kwargs["kv_lengths"] = np.ones(B, np.float32)
    got = outcome(lambda: ops.blockwise_attention(q, k, v, **kwargs), mutation)
    if got is None:
        return
    assert got.shape == (B, T, N, H)
    assert_finite(got)
    mask = dense_mask(B, T, S, is_causal=is_causal, kv_lengths=lengths, window=window)
    np.testing.assert_allclose(got, ops.dot_product_attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-5)


# -- positions, norms, masks, loss ----------------------------------------------------------------------------------


@hypothesis.settings(max_examples=20)
@hypothesis.given(
    B=st.sampled_from([1, 2]),
    T=st.sampled_from([0, 1, 3]),
    H=st.sampled_from([2, 4]),
    batched=st.booleans(),
    interleaved=st.booleans(),
    base=st.sampled_from([100.0, 10000.0]),
    scale=st.sampled_from([1.0, 2.5]),
    mutation=mutations("int x", "float positions", "base 0", "scale -1", "odd H", "positions shape", "scale str"),
    seed=st.integers(0, 2**16),
)
def test_rope(B, T, H, batched, interleaved, base, scale, mutation, seed):
    x = normal(seed, (B, T, 2, H))
    pos = np.random.default_rng(seed).integers(0, 50, size=(B, T) if batched else (T,)).astype(np.int32)
    kwargs = dict(base=base, interleaved=interleaved, scale=scale)
    if mutation == "int x":
        x = x.astype(np.int32)
    elif mutation == "float positions":
        pos = pos.astype(np.float32)
    elif mutation in ("base 0", "scale -1", "scale str"):
        kwargs.update({"base 0": {"base": 0.0}, "scale -1": {"scale": -1.0}, "scale str": {"scale": "2"}}[mutation])
    elif mutation == "odd H":
        x = normal(seed, (B, T, 2, 3))
    elif mutation == "positions shape":
        pos = np.zeros((T + 1,), np.int32)
    got = outcome(lambda: ops.apply_rope(x, pos, **kwargs), mutation)
    if got is not None:
        assert_finite(got)
        np.testing.assert_allclose(got, np_rope(x, pos, **kwargs), rtol=1e-4, atol=1e-4)


@hypothesis.settings(max_examples=15)
@hypothesis.given(
    num_heads=st.integers(1, 5),
    T=st.integers(1, 4),
    S=st.integers(1, 4),
    offset=st.sampled_from([0, 2]),
    length=st.integers(1, 5),
    dim=st.sampled_from([2, 4, 6]),
    mutation=mutations("heads 0", "offset -1", "offset float", "dim odd", "base 0"),
)
def test_alibi_and_sinusoidal_positions(num_heads, T, S, offset, length, dim, mutation):
    alibi = dict(num_heads=num_heads, q_len=T, kv_len=S, offset=offset)
    sinus = dict(length=length, dim=dim)
    if mutation == "heads 0":
        alibi["num_heads"] = 0
    elif mutation == "offset -1":
        alibi["offset"] = -1
    elif mutation == "offset float":
        alibi["offset"] = 1.5
    elif mutation == "dim odd":
        sinus["dim"] = 3
    elif mutation == "base 0":
        sinus["base"] = 0.0
    result = outcome(lambda: (ops.alibi_bias(**alibi), ops.sinusoidal_positions(**sinus)), mutation)
    if result is not None:
        bias, table = result
        np.testing.assert_allclose(bias, np_alibi_bias(num_heads, T, S, offset), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(table, np_sinusoidal(length, dim), atol=1e-6)


@hypothesis.settings(max_examples=20)
@hypothesis.given(
    shape=st.sampled_from([(1,), (3,), (2, 4), (2, 1, 5)]),
    which=st.sampled_from(["layer", "rms"]),
    epsilon=st.sampled_from([1e-5, 1e-2]),
    with_scale=st.booleans(),
    constant=st.booleans(),
    mutation=mutations("epsilon 0", "epsilon -1", "epsilon nan", "int x", "0-d x", "scale shape"),
    seed=st.integers(0, 2**16),
)
def test_norms(shape, which, epsilon, with_scale, constant, mutation, seed):
    x = np.full(shape, 3.0, np.float32) if constant else normal(seed, shape)
    scale = normal(seed + 1, shape[-1:]) if with_scale else None
    if mutation in ("epsilon 0", "epsilon -1", "epsilon nan"):
        epsilon = {"epsilon 0": 0.0, "epsilon -1": -1.0, "epsilon nan": float("nan")}[mutation]
    elif mutation == "int x":
        x = x.astype(np.int32)
    elif mutation == "0-d x":
        x = np.float32(1.0)
    elif mutation == "scale shape":
        scale = np.ones(shape[-1] + 1, np.float32)
    fn, ref = (ops.layer_norm, np_layer_norm) if which == "layer" else (ops.rms_norm, np_rms_norm)
    got = outcome(lambda: fn(x, scale, epsilon=epsilon), mutation)
    if got is not None:
        assert_finite(got)  # also for a constant row: epsilon > 0
        np.testing.assert_allclose(got, ref(x, scale, epsilon=epsilon), rtol=1e-4, atol=1e-4)


@hypothesis.settings(max_examples=25)
@hypothesis.given(
    B=st.sampled_from([1, 2]),
    T=st.sampled_from([1, 3]),
    V=st.sampled_from([1, 2, 5]),
    weighting=st.sampled_from(["none", "bool", "float"]),
    label_smoothing=st.sampled_from([0.0, 0.2]),
    use_jit=st.booleans(),
    mutation=mutations("V 0", "smoothing 1", "float labels", "negative weights", "label shape"),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy(B, T, V, weighting, label_smoothing, use_jit, mutation, seed):
    rng = np.random.default_rng(seed)
    logits = normal(seed, (B, T, V))
    labels = rng.integers(-1, V + 1, size=(B, T)).astype(np.int32)  # sometimes out of range
    weights = {"none": None, "bool": rng.random((B, T)) < 0.6, "float": rng.random((B, T)).astype(np.float32)}
    weights = weights[weighting]
    counted = np.ones((B, T), bool) if weights is None else weights != 0
    out_of_range = ((labels < 0) | (labels >= V)) & counted
    kwargs = dict(weights=weights, label_smoothing=label_smoothing)
    if mutation == "V 0":
        logits = np.zeros((B, T, 0), np.float32)
    elif mutation == "smoothing 1":
        kwargs["label_smoothing"] = 1.0
    elif mutation == "float labels":
        labels = labels.astype(np.float32)
    elif mutation == "negative weights":
        kwargs["weights"] = -np.ones((B, T), np.float32)
    elif mutation == "label shape":
        labels = labels[:, :-1] if T > 1 else labels[:, None]
    elif out_of_range.any():
        mutation = "a counted label out of [0, V)"
    got = outcome(lambda: ops.cross_entropy(logits, labels, **kwargs), mutation)
    if got is None:
        return
    mean, count = got
    assert_finite(mean, count)
    safe = np.where(counted, labels, 0)
    want_mean, want_count, _ = np_cross_entropy(logits, safe, weights, label_smoothing)
    np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(count, want_count, rtol=1e-6)
    if use_jit:  # label_smoothing is a Python float (static), the rest is traced
        jitted = jax.jit(functools.partial(ops.cross_entropy, label_smoothing=label_smoothing))
        np.testing.assert_allclose(jitted(logits, labels, weights=weights), got, rtol=1e-6)


@hypothesis.settings(max_examples=20)
@hypothesis.given(
    B=st.sampled_from([1, 2]),
    T=st.integers(0, 4),
    S=st.integers(0, 4),
    offset=st.integers(0, 3),
    window=st.integers(1, 3),
    causal=st.booleans(),
    mutation=mutations("T -1", "window 0", "offset -1", "offset float", "int valid", "lengths > T"),
    seed=st.integers(0, 2**16),
)
def test_masks(B, T, S, offset, window, causal, mutation, seed):
    lengths = np.random.default_rng(seed).integers(0, T + 1, size=B).astype(np.int32)
    args = dict(T=T, S=S, offset=offset, window=window, lengths=lengths)
    if mutation == "T -1":
        args["T"] = -1
    elif mutation == "window 0":
        args["window"] = 0
    elif mutation in ("offset -1", "offset float"):
        args["offset"] = -1 if mutation == "offset -1" else 1.5
    elif mutation == "lengths > T":
        args["lengths"] = lengths + T + 1

    def build():
        valid = ops.lengths_to_valid(args["lengths"], max(args["T"], 0))
        if mutation == "int valid":
            valid = valid.astype(jnp.int32)
        return (
            ops.causal_mask(args["T"], args["S"], offset=args["offset"]),
            ops.sliding_window_mask(args["T"], args["S"], window=args["window"], causal=causal, offset=args["offset"]),
            ops.padding_mask(valid),
        )

    got = outcome(build, mutation)
    if got is None:
        return
    causal_got, window_got, padding_got = got
    np.testing.assert_array_equal(causal_got, np_causal(T, S, offset))
    np.testing.assert_array_equal(window_got, np_sliding_window(T, S, window, causal, offset))
    valid = np.arange(T)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(padding_got, valid[:, None, :, None] & valid[:, None, None, :])


# -- ModelConfig ----------------------------------------------------------------------------------------------------

# Each field: values that are valid on their own, and values that are not (whatever the other fields).
FIELDS = {
    "d_model": ([8, 12, 16], [0, -8, True, 8.0, "8"]),
    "num_heads": ([1, 2, 4], [0, -1, 2.0]),
    "d_ff": ([1, 16], [0, -4]),
    "num_kv_heads": ([None, 1, 2], [0, -2]),
    "head_dim": ([None, 2, 3], [0, -1, 2.5]),
    "norm_epsilon": ([1e-6, 1e-5], [0.0, -1e-5, float("nan"), "x"]),
    "dropout_rate": ([0.0, 0.1], [1.0, -0.1, float("inf"), "0.1"]),
    "rope_base": ([10000.0, 500], [0.0, -1.0, float("inf")]),
    "positional": (["learned", "rope", "alibi", "sinusoidal", "none"], ["relative", None]),
    "sliding_window": ([None, 2], [0, True, 1.5]),
    "attention_impl": (["xla", "blockwise", "auto"], ["flash", 3]),
    "dtype": (["float32", "bfloat16"], ["int32", "foo"]),
    "use_bias": ([True, False], ["yes", 1]),
    "vocab_size": ([0, 11], [-1, 1.5]),
    "num_layers": ([1, 2], [0, -1]),
    "max_len": ([4, 17], [0, -3]),
    "num_decoder_layers": ([None, 1], [0, 1.5]),
    "patch_size": ([4, 8], [0, -8]),
    "init_std": ([0.02, 0.0], [-0.02, float("nan")]),
    "remat": (["none", "full"], ["all", None]),
    "scan_layers": ([True, False], ["no"]),
}


@st.composite
def model_fields(draw):
    fields, invalid = {}, []
    for name, (good, bad) in FIELDS.items():
        if draw(st.integers(0, 9)) == 0:  # about two of the 21 fields invalid per draw, often none
            fields[name] = draw(st.sampled_from(bad))
            invalid.append(name)
        else:
            fields[name] = draw(st.sampled_from(good))
    return fields, invalid


@hypothesis.settings(max_examples=60)
@hypothesis.given(drawn=model_fields())
def test_model_config(drawn):
    """Any invalid field raises; otherwise the config is built (or refused for an inconsistent combination, such as
    d_model not divisible by num_heads) and its sizes are resolved, positive ints."""
    fields, invalid = drawn
    cfg = outcome(lambda: ModelConfig(image_size=16, **fields), invalid[0] if invalid else EITHER)
    if cfg is None:
        return
    for name in ("d_model", "num_heads", "d_ff", "num_kv_heads", "head_dim", "num_layers", "max_len"):
        assert type(getattr(cfg, name)) is int and getattr(cfg, name) >= 1, name
    assert cfg.num_heads % cfg.num_kv_heads == 0
    assert jnp.issubdtype(cfg.dtype, jnp.floating) and isinstance(cfg.use_bias, bool)
    assert hash(cfg) == hash(cfg.replace()) and cfg.replace() == cfg


# -- models ---------------------------------------------------------------------------------------------------------

BASE = dict(vocab_size=11, num_layers=1, d_model=8, num_heads=2, num_kv_heads=1, d_ff=16, max_len=6)


@functools.cache
def tiny_model(kind: str, positional: str):
    if kind == "vit":
        cfg = ModelConfig(**{**BASE, "vocab_size": 0, "max_len": 5}, image_size=4, patch_size=2, num_channels=1)
        model = ViT(cfg.replace(num_classes=3), rngs=nnx.Rngs(0))
    else:
        cls = {"gpt": GPT, "bert": BERT, "transformer": Transformer}[kind]
        model = cls(ModelConfig(**BASE, positional=positional), rngs=nnx.Rngs(0))
    model.eval()
    return model


@functools.cache
def jitted_call(kind: str):
    return nnx.jit(lambda model, *args, **kwargs: model(*args, **kwargs))


@hypothesis.settings(max_examples=25)
@hypothesis.given(
    kind=st.sampled_from(["gpt", "bert", "transformer", "vit"]),
    positional=st.sampled_from(["learned", "rope", "alibi"]),
    B=st.sampled_from([1, 2]),
    T=st.sampled_from([0, 1, 3]),
    with_valid=st.booleans(),
    mutation=mutations("float tokens", "id = V", "id -1", "too long", "int valid", "valid shape", "list tokens"),
    seed=st.integers(0, 2**16),
)
def test_models(kind, positional, B, T, with_valid, mutation, seed):
    """Eager and jitted calls agree and are finite on valid inputs; bad ones raise before anything runs."""
    model = tiny_model(kind, positional if kind == "gpt" else "learned")
    rng = np.random.default_rng(seed)
    if kind == "vit":
        images = normal(seed, (B, 4, 4, 1))
        if mutation in ("float tokens", "id = V", "id -1", "list tokens"):
            images = images.astype(np.int32) if mutation != "list tokens" else images.tolist()
            mutation = VALID if mutation == "list tokens" else mutation
        elif mutation is not VALID:
            images = normal(seed, (B, 5, 5, 1))  # the wrong size
        args, kwargs = (images,), {}
    else:
        tokens = rng.integers(0, 11, size=(B, T)).astype(np.int32)
        valid = np.arange(T)[None, :] < rng.integers(1, T + 1, size=(B, 1)) if with_valid and T else None
        if mutation == "float tokens":
            tokens = tokens.astype(np.float32)
        elif mutation in ("id = V", "id -1"):
            tokens = np.concatenate([tokens, np.full((B, 1), 11 if mutation == "id = V" else -1, np.int32)], 1)
        elif mutation == "too long":
            if positional != "learned" and kind == "gpt":
                hypothesis.assume(False)  # RoPE / ALiBi have no position table to run past
            tokens = np.zeros((B, 7), np.int32)
        elif mutation == "int valid":
            valid = np.ones(tokens.shape, np.int32)
        elif mutation == "valid shape":
            valid = np.ones((B, T + 1), bool)
        elif mutation == "list tokens":  # (an empty list has no shape to keep: an array then)
            tokens, mutation = (tokens.tolist() if T else tokens), VALID
        if kind == "bert" and T == 0 and mutation is VALID:
            mutation = "no [CLS] token for the pooler"
        name = {"gpt": "valid", "bert": "valid", "transformer": "tgt_valid"}[kind]
        kwargs = {} if valid is None else {name: valid}
        args = (tokens,) if kind != "transformer" else (np.asarray(tokens)[:, ::-1].copy(), tokens)
        if kind == "transformer" and valid is not None:
            kwargs["src_valid"] = valid
    eager = outcome(lambda: model(*args, **kwargs), mutation)
    if eager is None:
        return
    jitted = jitted_call(kind)(model, *(jnp.asarray(a) for a in args), **kwargs)
    for got, want in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        assert_finite(got)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# -- decoding -------------------------------------------------------------------------------------------------------


@functools.cache
def greedy_forward():
    return nnx.jit(lambda model, tokens: jnp.argmax(model(tokens), axis=-1))


def greedy_reference(model, prompt, lengths, steps):
    """Greedy decoding by full forwards (no cache): the argmax after each sequence's last token, step by step."""
    buffer = np.zeros((prompt.shape[0], model.config.max_len), np.int32)
    buffer[:, : prompt.shape[1]] = prompt
    out = []
    n = np.asarray(lengths).copy()
    for _ in range(steps):
        nxt = np.asarray(greedy_forward()(model, buffer))[np.arange(len(n)), n - 1]
        buffer[np.arange(len(n)), n] = nxt
        out.append(nxt)
        n += 1
    return np.stack(out, 1)


@hypothesis.settings(max_examples=20)
@hypothesis.given(
    shape=st.sampled_from([(1, 2), (2, 3)]),
    ragged=st.booleans(),
    mutation=mutations(
        "eos = V", "rng int", "temperature -1", "top_p 0", "too long", "float prompt", "id = V", "beam 0", "bos float"
    ),
    seed=st.integers(0, 2**16),
)
def test_generate_and_beam_search(shape, ragged, mutation, seed):
    """Greedy generation equals greedy decoding by full forwards, and beam search of width 1 equals both."""
    model = tiny_model("gpt", "learned")
    B, P = shape
    rng = np.random.default_rng(seed)
    prompt = rng.integers(0, 11, size=shape).astype(np.int32)
    lengths = rng.integers(1, P + 1, size=B).astype(np.int32) if ragged else np.full(B, P, np.int32)
    steps = 2
    gen = dict(rng=jax.random.key(seed), temperature=0.0, prompt_lengths=lengths)
    beam = dict(beam_size=1, max_len=steps, src_valid=np.arange(P)[None, :] < lengths[:, None])
    if mutation == "eos = V":
        gen["eos_id"] = beam["eos_id"] = 11
    elif mutation == "rng int":
        gen.update(rng=seed, temperature=1.0)
    elif mutation == "temperature -1":
        gen["temperature"] = -1.0
    elif mutation == "top_p 0":
        gen["top_p"] = 0.0
    elif mutation == "too long":
        steps = beam["max_len"] = 8 - P  # P + steps > max_len = 6
    elif mutation == "float prompt":
        prompt = prompt.astype(np.float32)
    elif mutation == "id = V":
        prompt[0, 0] = 11
    elif mutation == "beam 0":
        beam["beam_size"] = 0
    elif mutation == "bos float":
        beam["bos_id"] = 1.5  # (a decoder-only model ignores it, but it is still an id to check)

    def run():
        return decoding.generate(model, prompt, steps, **gen), decoding.beam_search(model, prompt, **beam)

    got = outcome(run, mutation)
    if got is None:
        return
    tokens, (sequences, scores) = got
    assert tokens.shape == (B, steps) and sequences.shape == (B, 1, steps)
    assert_finite(scores)
    want = greedy_reference(model, prompt, lengths, steps)
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(sequences[:, 0], want)


@pytest.mark.slow
@hypothesis.settings(max_examples=10)
@hypothesis.given(
    temperature=st.sampled_from([0.5, 1.0]),
    top_k=st.sampled_from([None, 1, 3]),
    top_p=st.sampled_from([None, 0.5, 1.0]),
    eos_id=st.sampled_from([None, 2]),
    seed=st.integers(0, 2**16),
)
def test_sampling_gives_ids_in_range_and_top_k_1_is_greedy(temperature, top_k, top_p, eos_id, seed):
    model = tiny_model("gpt", "rope")
    prompt = np.random.default_rng(seed).integers(0, 11, size=(2, 3)).astype(np.int32)
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, eos_id=eos_id)
    tokens = np.asarray(decoding.generate(model, prompt, 3, rng=jax.random.key(seed), **kwargs))
    assert tokens.shape == (2, 3) and ((tokens >= 0) & (tokens < 11)).all()
    if top_k == 1:
        greedy = decoding.generate(model, prompt, 3, rng=None, temperature=0.0, eos_id=eos_id)
        np.testing.assert_array_equal(tokens, greedy)
