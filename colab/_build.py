"""Writes the notebooks in colab/ from the cell sources below: `python colab/_build.py` (then `ruff format colab`).

Every notebook gets the same first code cell (install from GitHub in Colab, else use the local checkout) and a
cell tagged `parameters` with its size knobs. Notebooks are stored without outputs.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent
GITHUB = "jaxformer/jaxformer"  # owner/name on GitHub: change it here (and in README.md) if the repository moves
BADGE = (
    "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
    f"(https://colab.research.google.com/github/{GITHUB}/blob/main/colab/{{name}})"
)

SETUP = f"""import os
import shutil
import sys
from pathlib import Path

REPO_URL = "https://github.com/{GITHUB}"  # change this if the repository lives elsewhere
IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:  # a fresh Colab runtime: clone the repository (configs, experiments) and install jaxformer from it
    if not Path("jaxformer").exists():
        !git clone -q --depth 1 {{REPO_URL}}
    # jax for this runtime's accelerator first, so that pip does not pair a new jax with an old CUDA / TPU plugin
    ACCEL = "cuda12" if shutil.which("nvidia-smi") else "tpu" if Path("/dev/accel0").exists() else "cpu"
    !pip install -q -U "jax[{{ACCEL}}]"
    !pip install -q -e "./jaxformer[experiments]"
    ROOT = Path("jaxformer").resolve()
else:  # a local checkout: $JAXFORMER_ROOT, else the nearest folder above the working directory with pyproject.toml
    here = Path.cwd().resolve()
    found = next((p for p in [here, *here.parents] if (p / "pyproject.toml").exists()), here)
    ROOT = Path(os.environ.get("JAXFORMER_ROOT") or found)
sys.path.insert(0, str(ROOT))  # import jaxformer at once (no runtime restart after pip install -e)
print("repository:", ROOT)"""

DATA = """

# Tiny Shakespeare: jaxformer reads tfds datasets prepared as array_record and never downloads them itself.
if IN_COLAB:
    import tensorflow_datasets as tfds

    tfds.builder("tiny_shakespeare", file_format="array_record").download_and_prepare()
elif not os.environ.get("TFDS_DATA_DIR") and (ROOT.parent / "shared" / "tensorflow_datasets").is_dir():
    os.environ["TFDS_DATA_DIR"] = str(ROOT.parent / "shared" / "tensorflow_datasets")  # as `make run` does"""


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, tags: tuple[str, ...] = ()):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def notebook(name: str, title: str, intro: str, params: str, cells: list, *, data: bool = False):
    head = [
        md(f"# {title}\n\n{BADGE.format(name=name)}\n\n{intro.strip()}"),
        code(SETUP + (DATA if data else "")),
        md("**Parameters.** Every size knob is here; the defaults take a few minutes on a free Colab GPU / TPU."),
        code(params, tags=("parameters",)),
    ]
    nb = new_notebook(cells=head + cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    stem = name.removesuffix(".ipynb")
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{stem[:2]}-{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, HERE / name)
    # Keep the stored notebooks as `ruff format` leaves them (the cell sources above are written loosely).
    subprocess.run([sys.executable, "-m", "ruff", "format", "--quiet", str(HERE / name)], check=False)


# ---------------------------------------------------------------------------------------------------------------
notebook(
    "01_attention_primitives.ipynb",
    "01 · Attention primitives: masks, weights, GQA, blockwise attention",
    """
`jaxformer.ops` is a set of pure `jax.numpy` functions (no Flax): masks, attention, positions, norms. Masks are
boolean, **True = may attend**, shaped to broadcast to `[B, N, T, S]` (batch, query heads, query length, key
length); attention tensors are laid out `[B, T, N, H]` (BTNH), as in `jax.nn.dot_product_attention`.
""",
    """
T = 12  # length of the sequences drawn below
WINDOW = 4  # sliding-window size
LENGTHS = [12, 8]  # real tokens of each example (the rest is padding)
N, K, H = 8, 2, 16  # query heads, key/value heads (GQA: 4 query heads share each key/value head), head dim
LONG_T = 1024  # length of the blockwise-vs-dense check
BLOCK_SIZE = 128  # blockwise attention's tile
SPLASH_T = 512  # length of the splash-vs-dense check (a multiple of 128)
""",
    [
        md("""
## Masks

Each mask function returns a boolean array with singleton axes where it does not depend on the batch or the head
(`[1, 1, T, S]`), or `[B, 1, T, S]` for padding. `combine_masks` ANDs them. Black = may attend.
"""),
        code("""
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from jaxformer import ops

valid = ops.lengths_to_valid(jnp.array(LENGTHS), T)  # [B, T], True = real token
padding = ops.padding_mask(valid)  # [B, 1, T, T]: both the query and the key must be real
masks = {
    "causal": ops.causal_mask(T),
    f"padding (length {LENGTHS[1]})": padding[1:],
    f"sliding window {WINDOW}": ops.sliding_window_mask(T, window=WINDOW),
    "no self": ops.no_self_mask(T),
    "causal & padding": ops.combine_masks(ops.causal_mask(T), padding)[1:],
}
fig, axes = plt.subplots(1, len(masks), figsize=(3.3 * len(masks), 3.6))
for ax, (name, mask) in zip(axes, masks.items(), strict=True):
    ax.imshow(np.asarray(mask[0, 0]), cmap="Greys", vmin=0, vmax=1)
    ax.set(title=f"{name}\\n{tuple(mask.shape)}", xlabel="key s", ylabel="query t")
plt.tight_layout()
plt.show()
"""),
        md("""
## Attention weights

`ops.attention_weights` returns the softmax probabilities `[B, N, T, S]` that `ops.dot_product_attention` averages
the values with. A query row whose mask allows no key (the padded rows of example 1) is all zeros, never NaN.
"""),
        code("""
B = len(LENGTHS)
kq, kk, kv = jax.random.split(jax.random.key(0), 3)
q = jax.random.normal(kq, (B, T, N, H))
k = jax.random.normal(kk, (B, T, K, H))
v = jax.random.normal(kv, (B, T, K, H))
mask = ops.combine_masks(ops.causal_mask(T), padding)
weights = ops.attention_weights(q, k, mask=mask)  # [B, N, T, S], float32
out = ops.dot_product_attention(q, k, v, mask=mask)  # [B, T, N, H]
print("weights", weights.shape, "out", out.shape)
print("row sums of example 1, head 0:", np.round(np.asarray(weights[1, 0].sum(-1)), 3))

# The output is the weights times the values (each key/value head serves N // K query heads):
by_hand = jnp.einsum("bnts,bsnh->btnh", weights, jnp.repeat(v, N // K, axis=2))
print("max |dot_product_attention - weights @ v| =", float(jnp.abs(out - by_hand).max()))

fig, axes = plt.subplots(B, 4, figsize=(13, 3.3 * B))
for b in range(B):
    for n in range(4):
        axes[b, n].imshow(np.asarray(weights[b, n]), cmap="viridis", vmin=0, vmax=1)
        axes[b, n].set(title=f"example {b}, head {n}", xlabel="key s", ylabel="query t")
plt.tight_layout()
plt.show()
"""),
        md("""
## Grouped-query attention (GQA)

The key/value tensors may have fewer heads `K` than the query's `N` (a multiple of `K`): query head `n` reads
key/value head `n // (N // K)`. `K == N` is multi-head attention, `K == 1` multi-query attention. The output
always has `N` heads; what shrinks is the key/value projection and the KV cache (by `N / K`). GQA equals
multi-head attention with each key/value head repeated `N // K` times.
"""),
        code("""
for kv_heads, name in ((N, "MHA"), (K, "GQA"), (1, "MQA")):
    k_ = jax.random.normal(kk, (B, T, kv_heads, H))
    v_ = jax.random.normal(kv, (B, T, kv_heads, H))
    o = ops.dot_product_attention(q, k_, v_, is_causal=True)
    print(f"{name}: q {q.shape}  k, v {k_.shape}  ->  out {o.shape};  KV cache per token: {2 * kv_heads * H} numbers")

gqa = ops.dot_product_attention(q, k, v, is_causal=True)
mha = ops.dot_product_attention(q, jnp.repeat(k, N // K, axis=2), jnp.repeat(v, N // K, axis=2), is_causal=True)
print("max |GQA - MHA with repeated k, v| =", float(jnp.abs(gqa - mha).max()))
"""),
        md("""
## Blockwise (flash-style) attention equals dense attention

`ops.blockwise_attention` visits the keys in tiles of `block_size` and accumulates the softmax online, so it never
holds the `[T, S]` matrix (forward or backward: a custom VJP). Its masks are described structurally (`is_causal`,
`kv_lengths`, `window`, `segment_ids`) so that fully masked tiles are skipped. Here it is checked against
`dot_product_attention` with the equivalent boolean mask, outputs and gradients.
"""),
        code("""
kq, kk, kv, kg = jax.random.split(jax.random.key(1), 4)
ql = jax.random.normal(kq, (2, LONG_T, N, H))
kl = jax.random.normal(kk, (2, LONG_T, K, H))
vl = jax.random.normal(kv, (2, LONG_T, K, H))
cotangent = jax.random.normal(kg, ql.shape)
kv_lengths = jnp.array([LONG_T, 3 * LONG_T // 4])
key_valid = ops.lengths_to_valid(kv_lengths, LONG_T)
# kv_lengths hides padded keys only, so the dense mask pads the keys (every query row stays real)
dense_mask = ops.combine_masks(
    ops.sliding_window_mask(LONG_T, window=LONG_T // 4),  # causal, the LONG_T // 4 latest keys
    ops.padding_mask(jnp.ones((2, LONG_T), bool), key_valid),
)
dense = lambda q: ops.dot_product_attention(q, kl, vl, mask=dense_mask)
blockwise = lambda q: ops.blockwise_attention(
    q, kl, vl, is_causal=True, window=LONG_T // 4, kv_lengths=kv_lengths, block_size=BLOCK_SIZE
)
print("max |blockwise - dense| (output):  ", float(jnp.abs(blockwise(ql) - dense(ql)).max()))
grad = lambda f: jax.grad(lambda q: jnp.sum(f(q) * cotangent))(ql)
print("max |blockwise - dense| (gradient):", float(jnp.abs(grad(blockwise) - grad(dense)).max()))
dense_bytes = 2 * N * LONG_T * LONG_T * 4
print(f"the dense path's float32 logits: {dense_bytes / 2**20:.1f} MiB; a blockwise tile: "
      f"{2 * N * BLOCK_SIZE * BLOCK_SIZE * 4 / 2**20:.2f} MiB")
"""),
        md("""
## The Pallas splash kernel (TPU)

`ops.splash_attention` is jax's own Pallas TPU kernel (the one MaxText trains with) behind the same BTNH signature:
causal, sliding-window and packed (`segment_ids`) masks, GQA, lengths in multiples of 128. On a TPU runtime it
compiles for the TPU; elsewhere `interpret=True` runs the very same kernel through the Pallas interpreter (slow,
but exact), which is how it is checked here and in the tests. In a model, `attention_impl="auto"` picks it on TPU.
"""),
        code("""
on_tpu = jax.default_backend() == "tpu"
kq, kk, kv, ks = jax.random.split(jax.random.key(2), 4)
qs = jax.random.normal(kq, (1, SPLASH_T, N, H))
ks_, vs = jax.random.normal(kk, (1, SPLASH_T, K, H)), jax.random.normal(kv, (1, SPLASH_T, K, H))
segments = jnp.cumsum(jax.random.bernoulli(ks, 0.02, (1, SPLASH_T)), axis=1).astype(jnp.int32)  # packed documents
splash = ops.splash_attention(qs, ks_, vs, is_causal=True, segment_ids=segments, interpret=not on_tpu)
dense = ops.dot_product_attention(qs, ks_, vs, is_causal=True, mask=ops.segment_mask(segments))
how = "compiled for the TPU" if on_tpu else "in the Pallas interpreter"
print(f"splash ({how}), {int(segments.max()) + 1} packed segments: max |splash - dense| =",
      float(jnp.abs(splash - dense).max()))
"""),
    ],
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "02_train_gpt_shakespeare.ipynb",
    "02 · Train a character-level GPT on tiny Shakespeare",
    """
The project's main job in a notebook: `jaxformer.training.loop.train_and_evaluate(config, workdir)` trains a GPT on
tfds `tiny_shakespeare`, with nanoGPT's recipe for the hardware jax finds: the `shakespeare_char` config
(6 layers, d=384, context 256) on a GPU / TPU, `shakespeare_char_cpu` (4 layers, d=128, context 64) on a CPU.
Then the loss curve from `metrics.jsonl`, the samples, and a prompt of our own.
""",
    """
NUM_STEPS = 2000  # training steps (the recipes' own: 5000 on an accelerator, 2000 on CPU)
BATCH_SIZE = None  # None: the recipe's (64 on an accelerator, 12 on CPU)
SEQ_LEN = None  # None: the recipe's context (256 / 64)
MODEL = {}  # overrides of config.model, e.g. {"num_layers": 4, "dropout_rate": 0.1}
LOG_EVERY, EVAL_EVERY = 50, 250  # metrics row / validation loss every so many steps
SAMPLE_TOKENS = 500  # characters written to samples.txt
PROMPT = "ROMEO:"
WORKDIR = "workdir/02_shakespeare"
FRESH_RUN = True  # delete WORKDIR first; False resumes from its newest checkpoint
""",
    [
        md("## Which hardware?"),
        code("""
import jax

print(f"backend: {jax.default_backend()}; {jax.device_count()} device(s): {jax.devices()}")
RECIPE = "shakespeare_char_cpu" if jax.default_backend() == "cpu" else "shakespeare_char"
print("recipe:", RECIPE)
"""),
        md("""
## The config

The recipes ship with the package, one module of `jaxformer.configs` each (a `get_config()` returning an
`ml_collections.ConfigDict`; `jaxformer configs` lists them). `load_config(name)` loads one exactly as
`jaxformer train --config NAME` does, so this notebook trains the very recipe that the README measures (rather
than rebuilding it here from `default_config()`, twenty settings that could silently drift from the recipe).
The parameters cell then overrides a few keys, as `--config.KEY=VALUE` would.
"""),
        code("""
from jaxformer.configs import load_config

config = load_config(RECIPE)
config.num_steps = NUM_STEPS
config.warmup_steps = min(config.warmup_steps, NUM_STEPS // 10)
config.batch_size = BATCH_SIZE or config.batch_size
config.data.seq_len = SEQ_LEN or config.data.seq_len
config.model.update(MODEL)
config.update(log_every=LOG_EVERY, eval_every=EVAL_EVERY)
config.sample.num_tokens = SAMPLE_TOKENS
print(config.model)
print(f"steps {config.num_steps}, batch {config.batch_size}, context {config.data.seq_len}")
"""),
        md("""
## The device mesh

`config.mesh` names the sizes of the `data`, `fsdp` and `tensor` axes (`-1` takes the devices left):
by default every device does data parallelism. `train_and_evaluate` builds the same mesh with
`jaxformer.sharding.mesh_from_config`; notebook 06 shows the other layouts.
"""),
        code("""
from jaxformer import sharding

mesh = sharding.mesh_from_config(config.mesh)
print("config.mesh:", config.mesh.to_dict(), "->", dict(mesh.shape), f"over {jax.device_count()} device(s)")
print("examples per device:", config.batch_size // (mesh.shape["data"] * mesh.shape["fsdp"]))
"""),
        md("""
## Train

Everything the run writes goes to `WORKDIR`: `metrics.jsonl`, TensorBoard files, checkpoints, `loss.png`,
`samples.txt`, `tokenizer.json`. Running the cell again with `FRESH_RUN = False` resumes from the newest checkpoint.
"""),
        code("""
from jaxformer.training.loop import train_and_evaluate

if FRESH_RUN:
    shutil.rmtree(WORKDIR, ignore_errors=True)
final = train_and_evaluate(config, WORKDIR)
print({key: round(value, 4) for key, value in final.items() if isinstance(value, float)})
"""),
        md("## The loss curve, from `metrics.jsonl`"),
        code("""
import json

import matplotlib.pyplot as plt

rows = [json.loads(line) for line in open(f"{WORKDIR}/metrics.jsonl")]
evals = [row for row in rows if "val_loss" in row]
plt.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], label="train")
plt.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
plt.xlabel("step")
plt.ylabel("loss (nats per character)")
plt.title(config.name)
plt.legend()
plt.show()
"""),
        md("## What the model writes (`samples.txt`, temperature 0.8)"),
        code("""
print(open(f"{WORKDIR}/samples.txt").read())
"""),
        md("""
## A prompt of our own

`load_trained` rebuilds the model from the newest checkpoint (as `jaxformer sample --workdir ...` does) and
`jaxformer.decoding.generate` continues the prompt over a KV cache, up to the model's context length.
"""),
        code("""
import numpy as np

from jaxformer.decoding import generate
from jaxformer.training.trained import load_trained

model, tokenizer, _ = load_trained(WORKDIR)
prompt = jax.numpy.asarray([tokenizer.encode(PROMPT)], jax.numpy.int32)
new = generate(model, prompt, model.config.max_len - prompt.shape[1], rng=jax.random.key(0), temperature=0.8)
print(PROMPT + tokenizer.decode(np.asarray(new[0])))
"""),
    ],
    data=True,
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "03_seq2seq_beam_search.ipynb",
    "03 · An encoder-decoder Transformer, greedy decoding and beam search",
    """
The `seq2seq_toy` config: the encoder-decoder `Transformer` (2 + 2 layers, d=64, post-norm,
sinusoidal positions) learns to reverse strings of 1-8 digits, generated offline. We train it with
`train_and_evaluate`, load it back from its checkpoint, and decode the validation set with
`jaxformer.decoding.beam_search`, with one beam (greedy) and with several.
""",
    """
TASK = "reverse"  # or "sort", "add"
NUM_STEPS = 1500
BATCH_SIZE = 64
NUM_TRAIN, NUM_EVAL = 20_000, 1_000  # generated examples
BEAM_SIZE = 4
NUM_SHOWN = 8  # examples printed
WORKDIR = "workdir/03_seq2seq"
FRESH_RUN = True  # delete WORKDIR first; False resumes from its newest checkpoint
""",
    [
        md("## Train"),
        code("""
from jaxformer.configs import load_config
from jaxformer.training.loop import train_and_evaluate

config = load_config("seq2seq_toy")
config.data.update(task=TASK, num_train=NUM_TRAIN, num_eval=NUM_EVAL)
config.update(num_steps=NUM_STEPS, batch_size=BATCH_SIZE, warmup_steps=min(config.warmup_steps, NUM_STEPS // 10))
if FRESH_RUN:
    shutil.rmtree(WORKDIR, ignore_errors=True)
final = train_and_evaluate(config, WORKDIR)
print({key: round(value, 4) for key, value in final.items() if isinstance(value, float)})
print(open(f"{WORKDIR}/samples.txt").read())
"""),
        md("""
## Load the trained model

`jaxformer.training.trained.load_trained` does this for language models; for another task the pieces are
public: `build_run(config)` gives the task, the model (`run.make_model()`) and the optimizer,
`create_train_state` a template for the checkpoint, and `merge` the model in eval mode.
"""),
        code("""
from jaxformer.training import build_run, create_train_state, merge
from jaxformer.training.checkpoints import Checkpointer

run = build_run(config)  # the same generated data, model fields and optimizer as the run
task = run.task
graphs, template = create_train_state(run.make_model(), run.optimizer)
with Checkpointer(f"{WORKDIR}/checkpoints") as checkpoints:
    state, _ = checkpoints.restore(template)
model = merge(graphs.eval, state)
print(type(model).__name__, model.config.num_layers, "+", model.config.decoder_layers, "layers, step", int(state.step))
"""),
        md("""
## Greedy and beam search

`beam_search(model, src, beam_size=W, max_len=..., bos_id=..., eos_id=..., src_valid=...)` returns the W best
outputs per input, best first, with their length-normalised log-probabilities (GNMT penalty, `length_penalty=0.6`).
One beam is greedy decoding, which is what the training loop's `val_exact_match` uses. An output is an exact match
when it equals the target and then stops (EOS).
"""),
        code("""
import numpy as np

from jaxformer import data
from jaxformer.decoding import beam_search
from jaxformer.training.tasks.seq2seq import exact_matches

ev = task.eval_set  # src, src_valid, tgt_in, tgt_out, tgt_valid
max_len = ev["tgt_out"].shape[1]
decode = lambda width: beam_search(
    model, ev["src"], beam_size=width, max_len=max_len, eos_id=data.EOS_ID, bos_id=data.BOS_ID,
    src_valid=ev["src_valid"],
)
greedy, _ = decode(1)
beams, scores = decode(BEAM_SIZE)
greedy, beams, scores = np.asarray(greedy[:, 0]), np.asarray(beams), np.asarray(scores)
for name, best in (("greedy", greedy), (f"beam search, {BEAM_SIZE} beams (best)", beams[:, 0])):
    print(f"{name:32s} exact match {exact_matches(best, ev['tgt_out'], ev['tgt_valid']).mean():.1%} "
          f"of {len(best)}")
"""),
        code("""
text = data.seq2seq_decode
for i in range(min(NUM_SHOWN, len(greedy))):
    print(f"{text(ev['src'][i]):>10s} -> greedy {text(greedy[i]):10s} target {text(ev['tgt_out'][i])}")
    for w in range(BEAM_SIZE):
        print(f"{'':>14s}beam {w}: {text(beams[i, w]):10s} log p / lp = {scores[i, w]:8.3f}")
"""),
    ],
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "04_claims_tour.ipynb",
    "04 · A tour of the claims lab",
    """
`experiments/claims/NN_*.py` each test one classic explanation of the Transformer (why scale by sqrt(d_k), what
masks guarantee, ...): `run(size)` does the experiment and returns an `Outcome` (result text, verdict, numbers),
`plot(numbers, path)` draws its figure. `make claims` runs them all and writes `experiments/REPORT.md`; here we
import a few and run them in the notebook, next to the record stored in `experiments/claims/results/`.
""",
    """
CLAIMS = ["01_scaling", "05_masks"]  # file names in experiments/claims/ (the default sizes take about a minute)
SIZE = "default"  # "tiny": seconds, a smoke test; "full": the accelerator-sized setting of each experiment
OUT = "claims_results"  # where the figures go
""",
    [
        code("""
import importlib.util
import json
import time

from IPython.display import Image, Markdown, display

CLAIMS_DIR = ROOT / "experiments" / "claims"
sys.path.insert(0, str(CLAIMS_DIR))
import lab  # noqa: E402  (the claims lab's shared machinery)

print("experiments:", sorted(p.stem for p in CLAIMS_DIR.glob("[0-9][0-9]_*.py")))
os.makedirs(OUT, exist_ok=True)
"""),
        md("""
Each experiment file is imported by path (`importlib`; its name starts with a digit), run, plotted and compared
with its stored record.
"""),
        code("""
for name in CLAIMS:
    spec = importlib.util.spec_from_file_location(f"claim_{name}", CLAIMS_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    display(Markdown(f"## {name}\\n\\n**Claim.** {module.CLAIM}\\n\\n**Setup.** {module.SETUP}"))
    start = time.perf_counter()
    outcome = module.run(SIZE)
    seconds = time.perf_counter() - start
    figure = os.path.join(OUT, f"{name}.png")
    module.plot(outcome.numbers, figure)
    display(Image(figure))
    stored_path = CLAIMS_DIR / "results" / f"{name}.json"
    stored = json.loads(stored_path.read_text()) if stored_path.exists() else None
    note = f"; stored record: {stored['verdict']}, {stored['seconds']} s on {stored['machine']}" if stored else ""
    display(Markdown(f"**Verdict: {lab.verdict(outcome.supported)}** ({seconds:.0f} s here{note}).\\n\\n"
                     f"{outcome.result}"))
"""),
    ],
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "05_scaling_laws.ipynb",
    "05 · A small scaling law on tiny Shakespeare",
    """
Kaplan et al. (2020) found that a language model's loss falls as a power of its size,
L(N) = a N^-b + c, with N the non-embedding parameters (about 12 L d² for L layers of width d). We train a
sweep of character-level GPTs for the same number of steps with the claims lab's helpers
(`lab.lm_config` / `lab.train_lm`: the library's `train_and_evaluate` on the `shakespeare_char_cpu` recipe, in a
temporary workdir), then fit the law with `scipy.optimize.curve_fit`. With a fixed step budget the larger models
are under-trained, so expect the curve to flatten early; more steps move it down.
""",
    """
SIZES = [(2, 32), (2, 64), (3, 96), (4, 128), (4, 192)]  # (layers, d_model); 32-wide heads, d_ff = 4 d_model
STEPS = 1500  # training steps per model
BATCH_SIZE = 32
SEQ_LEN = 64
""",
    [
        code("""
import warnings

import matplotlib.pyplot as plt
import numpy as np
import scipy.optimize

sys.path.insert(0, str(ROOT / "experiments" / "claims"))
import lab
"""),
        md("## The sweep"),
        code("""
results = []
for layers, d in SIZES:
    config = lab.lm_config(STEPS, **{
        "model.num_layers": layers, "model.d_model": d, "model.num_heads": max(1, d // 32), "model.d_ff": 4 * d,
        "batch_size": BATCH_SIZE, "data.seq_len": SEQ_LEN,
    })
    run = lab.train_lm(config)
    results.append(dict(layers=layers, d=d, N=12 * layers * d**2, val_loss=run["final"]["val_loss"],
                        history=run["history"]))
    print(f"L={layers} d={d:4d}  N={12 * layers * d**2:>9,}  val_loss {run['final']['val_loss']:.3f}")
"""),
        md("## Fit L(N) = a N^-b + c"),
        code("""
N = np.array([r["N"] for r in results], float)
loss = np.array([r["val_loss"] for r in results])
law = lambda n, a, b, c: a * (n / N[0]) ** -b + c  # N relative to the smallest model keeps a well scaled
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # as many points as parameters: no covariance estimate
    (a, b, c), _ = scipy.optimize.curve_fit(
        law, N, loss, p0=(max(loss[0] - loss.min(), 0.1), 0.3, 0.9 * loss.min()),
        bounds=([0, 0, 0], [np.inf, 3, np.inf]), maxfev=20_000,
    )
print(f"L(N) = {a * N[0] ** b:.3g} * N^-{b:.3f} + {c:.3f}")

fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
grid = np.geomspace(N.min() / 2, N.max() * 4, 100)
left.semilogx(N, loss, "o", label="validation loss")
left.semilogx(grid, law(grid, a, b, c), "-", label=f"fit: b = {b:.2f}, c = {c:.2f}")
left.axhline(c, ls=":", color="gray")
left.set(xlabel="non-embedding parameters N = 12 L d²", ylabel="validation loss", title="L(N)")
left.legend()
for r in results:
    right.plot([h["step"] for h in r["history"]], [h["train_loss"] for h in r["history"]], label=f"N={r['N']:,}")
right.set(xlabel="step", ylabel="train loss", title="learning curves")
right.legend()
plt.tight_layout()
plt.show()
"""),
    ],
    data=True,
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "06_sharding_and_checkpoints.ipynb",
    "06 · Meshes, parameter shardings and checkpoints that move between meshes",
    """
`jaxformer.sharding` lays a run out on a `data` x `fsdp` x `tensor` device mesh: one table maps each
parameter's logical axes (`embed`, `heads`, `mlp`, `vocab`, ...) to mesh axes. We build three meshes, look at
where the parameters go, train a few steps on one mesh, save an orbax checkpoint with
`jaxformer.training.checkpoints.Checkpointer`, restore it onto a different mesh, and size runs with
`jaxformer memory`. Last, long sequences: the `context` axis splits each sequence over the devices and attention
becomes ring attention.
""",
    """
FAKE_DEVICES = 8  # on a CPU runtime: how many devices XLA pretends to have
D_MODEL, NUM_LAYERS, NUM_HEADS = 128, 2, 4  # the GPT (heads and 4 * D_MODEL must divide by the tensor axis)
BATCH_SIZE = 16  # must divide by data x fsdp of every mesh
SEQ_LEN = 64
STEPS = 20  # training steps before the checkpoint
CONTINUE_STEPS = 5  # training steps after restoring on the other mesh
WORKDIR = "workdir/06_sharding"
RING_T = 4096  # the sequence ring attention splits over the devices (a multiple of 2 x the device count)
""",
    [
        md("""
## Devices

A TPU runtime (e.g. v2-8, v5e-8) has 8 real devices. A CPU runtime has one, but XLA can split the host into
several CPU devices: `--xla_force_host_platform_device_count` in `XLA_FLAGS`, read once, when jax creates its
CPU backend, so it must be set **before jax is imported** (restart the runtime if jax was already imported). The
shardings and collectives are then real, only slow. We set it only when no accelerator is present; on a
one-GPU runtime the meshes below have one device (use a CPU or TPU runtime to see them split).
"""),
        code("""
import glob

ON_ACCELERATOR = bool(shutil.which("nvidia-smi") or glob.glob("/dev/accel*") or os.environ.get("COLAB_TPU_ADDR"))
if not ON_ACCELERATOR:
    if "jax" in sys.modules:
        print("jax is already imported: restart the runtime for the fake devices to take effect")
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={FAKE_DEVICES}".strip()

import jax  # noqa: E402

print(f"backend {jax.default_backend()}: {jax.device_count()} devices")
"""),
        md("""
## Meshes

`sharding.make_mesh(data, fsdp, tensor)` (or `mesh_from_config(config.mesh)`, what the training loop calls) uses
every device; `-1` takes the devices left.
"""),
        code("""
import math

from jaxformer import sharding

n = jax.device_count()
shapes = {"data": (n, 1, 1), "fsdp": (1, n, 1), f"2x2x{n // 4}": (2, 2, n // 4)}
meshes = {name: sharding.make_mesh(*shape) for name, shape in shapes.items() if math.prod(shape) == n}
for name, mesh in meshes.items():
    print(f"{name:8s} {dict(mesh.shape)}")
print("mesh_from_config({'data': 1, 'fsdp': -1}) ->", dict(sharding.mesh_from_config({"data": 1, "fsdp": -1}).shape))
"""),
        md("""
## The rules table

Each parameter is created with logical axis names; `LOGICAL_AXIS_RULES` maps them to mesh axes (None =
replicated). A mesh axis of size 1 is dropped, and a dimension that the mesh axes do not divide is replicated
(an error for `heads` and `mlp`, which tensor parallelism exists to split).
"""),
        code("""
print(f"{'logical axis':14s}mesh axes")
for logical, mesh_axes in sharding.LOGICAL_AXIS_RULES:
    print(f"{logical:14s}{mesh_axes}")
"""),
        md("""
## A sharded train state on each mesh

`runner.init_state(make_model, optimizer, mesh)` builds the model abstractly, reads the logical axes and
initialises parameters and optimizer state straight into their shardings (no device ever holds a full copy).
"""),
        code("""
from jaxformer.configs import load_config
from jaxformer.training import build_run, runner

config = load_config("shakespeare_char_cpu")
# A Python loop of layers, so that each layer's weights are their own 2-D arrays below (the recipe scans its layers:
# one [L, ...] array per weight, whose layer axis is never sharded).
config.model.update(d_model=D_MODEL, num_layers=NUM_LAYERS, num_heads=NUM_HEADS, d_ff=4 * D_MODEL, scan_layers=False)
config.data.seq_len = SEQ_LEN
config.update(batch_size=BATCH_SIZE, num_steps=STEPS + CONTINUE_STEPS, warmup_steps=0)
run = build_run(config)  # tiny Shakespeare and the char tokenizer; run.task.train_data() is its grain input
task = run.task
states = {name: runner.init_state(run.make_model, run.optimizer, mesh) for name, mesh in meshes.items()}

first = next(iter(states.values()))[1]
print(f"{'parameter':44s}{'shape':14s}" + "".join(f"{name:22s}" for name in meshes))
for i, (path, leaf) in enumerate(jax.tree_util.tree_leaves_with_path(first.params)):
    specs = [jax.tree.leaves(s.params)[i].sharding.spec for _, s, _ in states.values()]
    print(f"{jax.tree_util.keystr(path, simple=True, separator='/').removesuffix('/value'):44s}{leaf.shape!s:14s}"
          + "".join(f"{spec!s:22s}" for spec in specs))
"""),
        md("`jax.debug.visualize_array_sharding` draws which device holds which block of a 2-D array:"),
        code("""
for name, (_, state, _) in states.items():
    w_in = state.params["blocks"]["layers"][0]["ffn"]["w_in"].get_value()  # [embed, mlp]
    print(f"{name}: ffn w_in {w_in.shape}, {w_in.sharding.spec}")
    jax.debug.visualize_array_sharding(w_in)
"""),
        md("""
## Train on one mesh, checkpoint, restore on another

`make_train_step` compiles the step for the state's shardings (and donates the old state); the batch is laid out
with `shard_batch` and the step runs with the mesh as jax's ambient mesh (`use_mesh`), as the training loop does.
"""),
        code("""
from jaxformer import data
from jaxformer.training import make_train_step

names = list(meshes)
source, target = names[1 % len(names)], names[-1]  # fsdp -> 2x2x2 on 8 devices
steps = {
    name: make_train_step(graphs, run.optimizer, run.schedule, task.loss, state_shardings=shardings,
                          batch_sharding=sharding.batch_sharding(meshes[name]))
    for name, (graphs, _, shardings) in states.items()
}
state = states[source][1]
batches = data.pipeline.iterator(task.train_data())  # grain: deterministic in (seed, step), checkpointable
losses = []
for _ in range(STEPS):
    with sharding.use_mesh(meshes[source]):
        state, metrics = steps[source](state, sharding.shard_batch(next(batches), meshes[source]))
    losses.append(float(metrics["loss"]))
print(f"trained on {source}: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
"""),
        code("""
import numpy as np

from jaxformer.training.checkpoints import Checkpointer

shutil.rmtree(WORKDIR, ignore_errors=True)
with Checkpointer(f"{WORKDIR}/checkpoints") as checkpoints:
    checkpoints.save(STEPS, state, data_iterator=batches, config=config.to_dict())
    print("saved step", checkpoints.latest_step(), "in", checkpoints.directory)
    # the template (a state built on the target mesh) gives shapes, dtypes and the shardings to restore into;
    # a fresh input iterator is moved to the saved position
    batches = data.pipeline.iterator(task.train_data())
    restored, _ = checkpoints.restore(states[target][1], STEPS, data_iterator=batches)

pairs = zip(jax.tree.leaves(state.params), jax.tree.leaves(restored.params), strict=True)
same = all(np.array_equal(a, b) for a, b in pairs)
w_in = restored.params["blocks"]["layers"][0]["ffn"]["w_in"].get_value()
print(f"restored on {target}: identical parameters: {same}; ffn w_in now {w_in.sharding.spec}")
for _ in range(CONTINUE_STEPS):
    with sharding.use_mesh(meshes[target]):
        restored, metrics = steps[target](restored, sharding.shard_batch(next(batches), meshes[target]))
print(f"continued on {target} to step {int(restored.step)}: loss {float(metrics['loss']):.3f}")
"""),
        md("""
## How much memory per device? `jaxformer memory`

From shapes alone (nothing is allocated), `memory_report(config, num_devices)` counts the parameters and
optimizer state each device holds under the rules table, and estimates the activations. The command line is

    jaxformer memory --config shakespeare_char --devices 8 \\
        --config.mesh.fsdp=-1 --config.mesh.data=1
"""),
        code("""
from jaxformer.training.memory import format_report, memory_report

big = load_config("shakespeare_char")
for mesh_sizes in ({"data": -1, "fsdp": 1, "tensor": 1}, {"data": 1, "fsdp": -1, "tensor": 1},
                   {"data": 2, "fsdp": 2, "tensor": 2}):
    big.mesh.update(mesh_sizes)
    print(format_report(memory_report(big, num_devices=8)), end="\\n\\n")
"""),
        md("""
## Long sequences: the `context` axis and ring attention

Past one device's memory the sequence itself must be split. `ops.ring_attention`, called inside `jax.shard_map`
over the axis that splits the sequence, keeps each device's queries and passes the key / value blocks around the
ring of devices, folding each into an online softmax: exact attention, and no device ever holds the whole
sequence's keys or a T x T score block. In the `"zigzag"` layout device i holds chunks i and 2n - 1 - i of the
sequence cut in 2n, so causal work is balanced; `ops.zigzag` lays a global array out that way.
"""),
        code("""
from jax.sharding import PartitionSpec as P

from jaxformer import ops

ring_mesh = sharding.make_mesh(1, context=n)  # the sequence over every device
split = P(None, "context")  # [B, T, N, H]: T over the context axis
ring = jax.jit(jax.shard_map(
    lambda q, k, v: ops.ring_attention(q, k, v, axis_name="context", causal=True, layout="zigzag"),
    mesh=ring_mesh, in_specs=(split, split, split), out_specs=split,
))
q, k, v = (jax.random.normal(key, (1, RING_T, NUM_HEADS, 32)) for key in jax.random.split(jax.random.key(0), 3))
out = ops.unzigzag(ring(*(ops.zigzag(x, n) for x in (q, k, v))), n)  # back in sequence order
exact = ops.blockwise_attention(q, k, v, is_causal=True)  # one device, O(T) memory
print(f"T={RING_T} over {n} devices: max |ring - one device| = {float(jax.numpy.abs(out - exact).max()):.1e}")
"""),
        md("""
In training, `config.mesh.context = c` does all of that by itself: batches are split on the sequence (in zigzag
order), every attention layer runs ring attention, and the losses equal one device's. `jaxformer memory` shows
what it buys; here the shape of Llama 3.2 1B (`--model llama3.2-1b`) at 131,072 tokens, bfloat16, full remat, on
one device and with the sequence over 8:

    jaxformer memory --config shakespeare_char_cpu --model llama3.2-1b --config.data.seq_len=131072 \\
        --config.batch_size=1 --config.model.dtype=bfloat16 --config.model.remat=full \\
        --config.mesh.data=1 --config.mesh.context=8 --devices 8
"""),
        code("""
from jaxformer.training.memory import with_architecture

long = load_config("shakespeare_char_cpu")
long.data.seq_len, long.batch_size = 131072, 1
long.model.update(dtype="bfloat16", remat="full", attention_impl="blockwise")
long = with_architecture(long, "llama3.2-1b")
for context in (1, 8):
    long.mesh.update(data=1, context=context)
    print(format_report(memory_report(long, num_devices=context)), end="\\n\\n")
"""),
    ],
    data=True,
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "07_pretrained_gpt2.ipynb",
    "07 · GPT-2 from the hub: generate, fine-tune on tiny Shakespeare, generate again",
    """
`jaxformer.pretrained` loads a Hugging Face checkpoint (config.json + safetensors) into jaxformer's own `GPT`,
with its tokenizer.json as a jaxformer tokenizer. Here GPT-2 small writes a few lines, is fine-tuned on tiny
Shakespeare with the `gpt2_finetune_shakespeare` recipe (`config.init_from`: the checkpoint's architecture and
weights), writes again, and is saved back in Hugging Face's layout, which `transformers` loads as it is.
""",
    """
CHECKPOINT = "openai-community/gpt2"  # a hub id (downloaded once into the huggingface_hub cache) or a directory
FINETUNE_STEPS = 300  # the recipe runs 1000
BATCH_SIZE, SEQ_LEN = 8, 256
DTYPE = "bfloat16"  # computation; the parameters train in float32
PROMPT = "ROMEO:"
NUM_TOKENS = 100
WORKDIR = "workdir/07_gpt2_shakespeare"
""",
    [
        md("## Load the checkpoint and its tokenizer"),
        code("""
import jax
from flax import nnx

from jaxformer import pretrained

model = pretrained.from_pretrained(CHECKPOINT)
tokenizer = pretrained.load_tokenizer(CHECKPOINT)
cfg = model.config
print(f"{cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} heads, vocabulary {cfg.vocab_size}, "
      f"context {cfg.max_len}; {sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))):,} parameters")
"""),
        md("## Generate before fine-tuning (KV cache, top-k sampling)"),
        code("""
from jaxformer.training.tasks.lm import sample_text

print(sample_text(model, tokenizer, PROMPT, NUM_TOKENS, seed=0, temperature=0.8, top_k=50))
"""),
        md("""
## Fine-tune

The recipe sets `config.init_from` (the architecture and the starting weights are the checkpoint's: a
`config.model` field that contradicts it is an error) and `config.data.tokenizer = "hf:..."` (GPT-2's BPE).
"""),
        code("""
from jaxformer.configs import load_config
from jaxformer.training.loop import train_and_evaluate

config = load_config("gpt2_finetune_shakespeare")
config.init_from = CHECKPOINT
config.data.tokenizer = f"hf:{CHECKPOINT}"
config.model.dtype = DTYPE
config.data.seq_len = SEQ_LEN
config.update(num_steps=FINETUNE_STEPS, batch_size=BATCH_SIZE, warmup_steps=min(100, FINETUNE_STEPS // 10))
config.update(log_every=max(1, FINETUNE_STEPS // 10), eval_every=FINETUNE_STEPS, checkpoint_every=FINETUNE_STEPS)
config.sample.num_tokens = NUM_TOKENS
shutil.rmtree(WORKDIR, ignore_errors=True)
final = train_and_evaluate(config, WORKDIR)
print({key: round(value, 4) for key, value in final.items() if isinstance(value, float)})
"""),
        md("## Generate again, from the fine-tuned checkpoint"),
        code("""
from jaxformer.training.trained import load_trained

tuned, tuned_tokenizer, _ = load_trained(WORKDIR)
print(sample_text(tuned, tuned_tokenizer, PROMPT, NUM_TOKENS, seed=0, temperature=0.8, top_k=50))
"""),
        md("""
## Save in Hugging Face's layout

`save_pretrained` writes config.json, the weights as safetensors and tokenizer.json;
`transformers.AutoModelForCausalLM.from_pretrained(directory)` loads them, and so does `from_pretrained`, bit-exactly.
"""),
        code("""
out = pretrained.save_pretrained(tuned, f"{WORKDIR}/hf", tokenizer=tokenizer)
print(sorted(os.listdir(out)))
again = pretrained.from_pretrained(out)
pairs = zip(jax.tree.leaves(nnx.state(tuned, nnx.Param)), jax.tree.leaves(nnx.state(again, nnx.Param)), strict=True)
same = all(bool((a == b).all()) for a, b in pairs)
print("reloaded bit-exactly:", same)
"""),
    ],
    data=True,
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "08_gemma.ipynb",
    "08 · Gemma: local and global layers, soft-caps, ring-buffer KV caches, splash attention",
    """
`jaxformer.pretrained` loads Gemma 1, 2, 3 and 4 text checkpoints from the hub into jaxformer's own `GPT`. Gemma
mixes two kinds of attention layer: **local** ones that see only the last `sliding_window` tokens and **global**
ones that see everything, each with its own RoPE base. This notebook prints that per-layer pattern, generates
greedily and by sampling, measures what the pattern saves in KV-cache memory (a local layer's cache is a ring
buffer of `sliding_window` entries), and on a TPU scores a passage with `attention_impl="auto"`, which runs the
Pallas splash-attention kernel there.

**Gemma checkpoints are gated.** Accept the licence on the model's hub page (e.g.
[google/gemma-3-270m](https://huggingface.co/google/gemma-3-270m)), then give the notebook a token: in Colab, a
secret named `HF_TOKEN` (the key icon; allow this notebook to read it); elsewhere `huggingface-cli login` or the
`HF_TOKEN` environment variable. Any Gemma 1-4 text checkpoint (hub id or local directory) works as `CHECKPOINT`.
""",
    """
CHECKPOINT = "google/gemma-3-270m"  # a hub id (gated: licence + HF_TOKEN) or a checkpoint directory
DTYPE = "bfloat16"  # parameters and computation
PROMPT = "The three primary colours are"
NUM_TOKENS = 48  # generated per sequence
NUM_SAMPLES = 3  # sampled continuations, decoded as one batch
TEMPERATURE, TOP_K, TOP_P = 1.0, 64, 0.95
ATTENTION = "auto"  # attention_impl for the scoring pass: auto runs splash attention on a TPU
SCORE_LEN = 512  # tokens scored in one forward pass (a multiple of 128, the splash kernel's tile)
CACHE_LEN = 32768  # context of the KV-cache comparison
BIG_MODEL = "gemma3-1b"  # a ModelConfig variant: Gemma 3 1B's shape (nothing is downloaded or allocated)
""",
    [
        md("## Load the checkpoint and its tokenizer"),
        code("""
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from jaxformer import pretrained

if not Path(CHECKPOINT).is_dir():  # a hub id: Gemma needs the licence accepted and a token
    from huggingface_hub import get_token

    print("hub token:", "found" if get_token() else "none (set HF_TOKEN or run `huggingface-cli login`)")
model = pretrained.from_pretrained(CHECKPOINT, dtype=DTYPE)
tokenizer = pretrained.load_tokenizer(CHECKPOINT)
cfg = model.config
n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
print(f"backend {jax.default_backend()}: {cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} query heads "
      f"and {cfg.num_kv_heads} key/value heads of {cfg.head_dim}, vocabulary {cfg.vocab_size:,}, "
      f"context {cfg.max_len:,}; {n_params:,} parameters in {DTYPE}")
"""),
        md("""
## The per-layer pattern

Gemma 1: every layer global. Gemma 2: local (window 4096) and global layers alternate, and attention and final
logits are soft-capped (`cap * tanh(z / cap)`). Gemma 3: five local layers (window 512 in the small models, RoPE
base 10k) per global one (RoPE base 1M, linearly scaled in the larger models), q/k norms instead of the attention
soft-cap. Gemma 4: wider global heads, and the last layers may share an earlier layer's keys and values.
`cfg.layer_config(kind)` is the config a layer of that kind is built from.
"""),
        code("""
print(f"attention logit soft-cap {cfg.attention_logit_softcap}, final logit soft-cap {cfg.final_logit_softcap}, "
      f"attention scale {cfg.attention_scale:.4g}; q/k norms {cfg.qk_norm}, sandwich norms {cfg.sandwich_norm}, "
      f"RMSNorm(1 + w) {cfg.norm_plus_one}, embeddings x sqrt(d_model) {cfg.embed_scale}, FFN {cfg.activation}\\n")
kinds = cfg.layer_kinds or [(None, False)] * cfg.num_layers
print("layer  kind    window  RoPE base  scaling        K x H    keys / values")
for i, ((kind, shared), source) in enumerate(zip(kinds, cfg.kv_sources, strict=True)):
    layer = cfg.layer_config(kind, shared)
    scaling = "-" if layer.rope_scaling is None else f"{layer.rope_scaling.kind} {layer.rope_scaling.factor:g}"
    print(f"{i:5d}  {kind or ('local' if cfg.sliding_window else 'global'):6s}  {layer.sliding_window or '-':>6}  "
          f"{layer.rope_base:9,.0f}  {scaling:13s}  {layer.num_kv_heads} x {layer.head_dim:<4d} "
          f"{'its own' if source is None else f'layer {source}'}")
"""),
        md("""
## Generate: greedy, then sampled

Gemma saw `<bos>` at the start of every training sequence, so the prompt starts with it here
(`tokenizer.encode` adds no special tokens). `generate` prefills the prompt and decodes with a KV cache; the local
layers decode through their ring buffers. `eos_id` stops a sequence at `<eos>` (the rest of its row is `<eos>`,
cut off before decoding).
"""),
        code("""
from jaxformer.decoding import generate

BOS, EOS = tokenizer.tokenizer.token_to_id("<bos>"), tokenizer.tokenizer.token_to_id("<eos>")
prompt = jnp.asarray([[BOS, *tokenizer.encode(PROMPT)]], jnp.int32)
start = time.perf_counter()
greedy = np.asarray(generate(model, prompt, NUM_TOKENS, rng=None, temperature=0.0, eos_id=EOS))[0]
print(f"greedy ({time.perf_counter() - start:.1f} s, compilation included):")
print(PROMPT + tokenizer.decode(greedy[np.cumsum(greedy == EOS) == 0]))
"""),
        code("""
prompts = jnp.tile(prompt, (NUM_SAMPLES, 1))
sampled = generate(
    model, prompts, NUM_TOKENS, rng=jax.random.key(0), temperature=TEMPERATURE, top_k=TOP_K, top_p=TOP_P, eos_id=EOS
)
print(f"sampled (temperature {TEMPERATURE}, top-k {TOP_K}, top-p {TOP_P}):")
for row in np.asarray(sampled):
    print("-", PROMPT + tokenizer.decode(row[np.cumsum(row == EOS) == 0]))
"""),
        md("""
## KV-cache memory: ring buffers for the local layers

A local layer never looks further back than `sliding_window` tokens, so `model.init_cache(batch, length)` gives
it a ring buffer of that many entries; a global layer keeps all `length`. `kv_cache_report` counts the bytes from
shapes alone (`nnx.eval_shape`: nothing is allocated), for this checkpoint and for a Gemma-3-1B-shaped model at a
long context, next to what full caches in every layer would take (`jaxformer memory --model gemma3-1b
--cache_len 32768` prints the same).
"""),
        code("""
from jaxformer.training.memory import format_kv_report, kv_cache_report

loaded = kv_cache_report(CHECKPOINT, min(CACHE_LEN, cfg.max_len), dtype=DTYPE)
print(format_kv_report(loaded))
print("  entries held per layer:", [entries for entries, _ in loaded["layers"]], "\\n")
big = kv_cache_report(BIG_MODEL, CACHE_LEN)
print(format_kv_report(big))
"""),
        code("""
lengths = [CACHE_LEN // 2**k for k in range(5, -1, -1)]
reports = [kv_cache_report(BIG_MODEL, n) for n in lengths]
plt.figure(figsize=(6, 3.5))
plt.plot(lengths, [r["full_bytes"] / 2**20 for r in reports], "o-", label="full cache in every layer")
plt.plot(lengths, [r["bytes"] / 2**20 for r in reports], "o-", label="ring buffers in the local layers")
plt.xscale("log", base=2)
plt.xlabel("context (tokens)")
plt.ylabel("KV cache, MiB (bfloat16, 1 sequence)")
plt.title(BIG_MODEL)
plt.legend()
plt.show()
"""),
        md("""
## Attention kernels: `attention_impl="auto"`

`from_pretrained` builds the model with `attention_impl="xla"` (dense attention, any backend). `"auto"` picks a
kernel per call: on a TPU the Pallas splash kernel when both lengths are multiples of 128 (it applies the sliding
window and any logit soft-cap, and skips the blocks the mask hides), on a GPU cuDNN's flash attention where it
applies (no window, no soft-cap, head_dim <= 128), on a CPU the blockwise kernel for long sequences, else `xla`.
Cached decoding steps always take the dense path. The same parameters are merged into a model built with
`ATTENTION`, and a passage is scored by both.
"""),
        code("""
from jaxformer.models import GPT
from jaxformer.nn.attention_dispatch import choose
from jaxformer.training.tasks.lm import lm_loss

for kind, shared in dict.fromkeys(kinds):
    layer = cfg.layer_config(kind, shared)
    picked = choose(ATTENTION, dtype=layer.dtype, head_dim=layer.head_dim, q_len=SCORE_LEN, kv_len=SCORE_LEN,
                    has_mask=False, has_bias=False, sliding_window=layer.sliding_window, dropout=False, decode=False,
                    softcap=layer.attention_logit_softcap)
    print(f"{kind or 'every'} layers, {SCORE_LEN} tokens on {jax.default_backend()}: {ATTENTION!r} runs {picked!r}")

fast_cfg = cfg.replace(attention_impl=ATTENTION)
fast = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: GPT(fast_cfg, rngs=nnx.Rngs(0)))), nnx.state(model))
PASSAGE = (
    "To be, or not to be, that is the question:\\nWhether 'tis nobler in the mind to suffer\\n"
    "The slings and arrows of outrageous fortune,\\nOr to take arms against a sea of troubles\\n"
)
row = np.concatenate([[BOS], np.resize(tokenizer.encode(PASSAGE), SCORE_LEN)])  # the passage, repeated
batch = {"inputs": jnp.asarray(row[None, :-1]), "targets": jnp.asarray(row[None, 1:])}
score = nnx.jit(lambda m, b: lm_loss(m, b)[0])
for name, m in ((cfg.attention_impl, model), (ATTENTION, fast)):
    times = [time.perf_counter()]
    for _ in range(4):  # the first call compiles
        loss = float(score(m, batch))
        times.append(time.perf_counter())
    ms = 1e3 * min(np.diff(times)[1:])
    print(f"attention_impl={name!r}: loss {loss:.4f} over {SCORE_LEN} tokens, {ms:.1f} ms a forward pass (best of 3)")
"""),
        md("""
## Next

* `jaxformer sample --pretrained google/gemma-3-270m --prompt "..."` writes from the command line (it adds no
  `<bos>`: prefer `generate` as above for Gemma).
* `jaxformer train --config gemma_finetune_shakespeare --workdir workdir/gemma` fine-tunes Gemma 3 270M on tiny
  Shakespeare (`config.init_from`, Gemma's tokenizer; notebook 07 does the same for GPT-2).
* `pretrained.save_pretrained(model, "out", tokenizer=tokenizer)` writes it back in Hugging Face's layout.
"""),
    ],
)

# ---------------------------------------------------------------------------------------------------------------
notebook(
    "09_lora.ipynb",
    "09 · LoRA: adapters on a pretrained decoder, fine-tuned, saved in peft's layout and merged",
    """
LoRA (Hu et al. 2021) freezes a pretrained model and trains a low-rank update `s · A B` beside each linear layer
instead: well under 1% of the parameters, so the gradients and the AdamW moments shrink to almost nothing while the
frozen weights are only read. `jaxformer.lora` adds the adapters (`nnx.LoRAParam` A and B, B = 0 so nothing changes
until they train) to a model `jaxformer.pretrained` loaded, the library's own training step trains only them (a
`LoRATrainState`: the base is frozen), and the adapter is written in Hugging Face `peft`'s layout. This notebook
loads a checkpoint, adds adapters, fine-tunes them on tiny Shakespeare, compares the memory with full fine-tuning
(this model, and a Gemma-2-2B shape against a 16 GiB TPU v5e chip), saves the adapter and the merged model and loads
both back. It runs on whatever jax finds: a Colab GPU or TPU when the runtime has one, else the CPU.

**The checkpoint.** `CHECKPOINT` is [Qwen/Qwen3-0.6B](https://huggingface.co/Qwen/Qwen3-0.6B) (not gated). Any
decoder `jaxformer.pretrained` loads works: a hub id or a local directory, e.g. `"Qwen/Qwen3-0.6B-Base"`,
`"openai-community/gpt2"` or `"google/gemma-3-270m"`. Gemma checkpoints are gated: accept the licence on the model's
hub page, then give the notebook a token (in Colab a secret named `HF_TOKEN`; elsewhere `huggingface-cli login`).
""",
    """
CHECKPOINT = "Qwen/Qwen3-0.6B"  # a hub id or a checkpoint directory (e.g. "google/gemma-3-270m": gated, HF_TOKEN)
DTYPE = "bfloat16"  # the frozen base weights and the computation; the adapters always train in float32
RANK, ALPHA, TARGETS = 8, 16, "all-linear"  # scale = ALPHA / RANK; every attention and feed-forward weight
NUM_STEPS = 200
BATCH_SIZE, SEQ_LEN = 8, 256
LEARNING_RATE = 3e-4  # peak of a warmup-cosine schedule (AdamW)
LOG_EVERY = 20
PROMPT = "ROMEO:"
NUM_TOKENS = 48  # generated greedily before and after fine-tuning
BIG_MODEL = "gemma2-2b"  # a ModelConfig variant for the memory table (nothing is downloaded or allocated)
HBM_GIB = 16  # one TPU v5e chip
WORKDIR = "workdir/09_lora"
""",
    [
        md("## Load the checkpoint and its tokenizer; generate before fine-tuning"),
        code("""
import json
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

from jaxformer import lora, pretrained
from jaxformer.decoding import generate

model = pretrained.from_pretrained(CHECKPOINT, dtype=DTYPE)
tokenizer = pretrained.load_tokenizer(CHECKPOINT)
cfg = model.config
n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
print(f"backend {jax.default_backend()}, devices {jax.devices()}")
print(f"{cfg.num_layers} layers, d_model {cfg.d_model}, {cfg.num_heads} query heads and {cfg.num_kv_heads} key/value "
      f"heads of {cfg.head_dim}, vocabulary {cfg.vocab_size:,}; {n_params:,} parameters in {DTYPE}")

# The prompt starts with the special tokens the tokenizer puts first (Gemma's <bos>; none for Qwen or GPT-2).
prompt = jnp.asarray([[*tokenizer.prefix_ids, *tokenizer.encode(PROMPT)]], jnp.int32)
before = np.asarray(generate(model, prompt, NUM_TOKENS, rng=None, temperature=0.0))[0]
print("greedy, before fine-tuning:\\n" + PROMPT + tokenizer.decode(before))
"""),
        md("""
## Add adapters

`lora.add_adapters` puts an adapter beside every targeted weight, in place: `A [*inputs, r]` (Kaiming-uniform) and
`B [r, *outputs]` (zeros), so `x W + s (x A) B` is still `x W` and the logits do not move at all. `"all-linear"`
adapts every attention and feed-forward weight (q, k, v, o, gate, up, down), not the embeddings or the output head,
as peft's `"all-linear"`.
"""),
        code("""
forward = nnx.jit(lambda m, tokens: m(tokens).astype(jnp.float32))  # logits [B, T, V]
PROBE = "First Citizen:\\nBefore we proceed any further, hear me speak."
probe = jnp.asarray([[*tokenizer.prefix_ids, *tokenizer.encode(PROBE)]], jnp.int32)[:, :SEQ_LEN]
logits_before = forward(model, probe)

lora.add_adapters(model, rank=RANK, alpha=ALPHA, targets=TARGETS, rngs=nnx.Rngs(0))
print("max |delta logits| after adding the adapters:", float(jnp.abs(forward(model, probe) - logits_before).max()))
n_adapter = lora.count(model)
print(f"adapter parameters {n_adapter:,} = {100 * n_adapter / n_params:.3f}% of the {n_params:,} base parameters\\n")
print("the adapters of layer 0:")
for path, *_, adapter in lora.adapters(model):
    if path.startswith("blocks/layers/0/"):
        print(f"  {path:38s} A {adapter.a.shape!s:16s} B {adapter.b.shape!s:16s} scale {adapter.scale:g}")
"""),
        md("""
## Fine-tune only the adapters

Tiny Shakespeare in the checkpoint's own tokens, random windows of `SEQ_LEN + 1` tokens (a short built-in passage
where the dataset is not available). The training pieces are the library's: `make_schedule`, `make_optimizer`
(AdamW, clipping), `create_train_state` and `make_train_step` (jitted, the state donated) with the language-model
loss `lm_loss`. Because the model holds `nnx.LoRAParam`s, `create_train_state` splits it three ways and returns a
`LoRATrainState`: `params` (the adapters: differentiated, updated, with AdamW moments), `frozen` (every other
weight: read, never differentiated) and `model_state` (RNG state). This is what `jaxformer train
--config.lora.rank=8` does (docs/training.md).
"""),
        code("""
from jaxformer import data

try:  # prepared by the set-up cell in Colab; else $TFDS_DATA_DIR
    text = data.tfds_text("tiny_shakespeare", "train")
except (OSError, ImportError) as error:  # not prepared and not downloadable here
    print(f"tiny Shakespeare is not available ({type(error).__name__}): a short built-in passage instead")
    text = (
        "Shall I compare thee to a summer's day?\\nThou art more lovely and more temperate:\\n"
        "Rough winds do shake the darling buds of May,\\nAnd summer's lease hath all too short a date.\\n"
    ) * 200
tokens = tokenizer.encode(text)
print(f"{len(text):,} characters -> {len(tokens):,} tokens ({len(text) / len(tokens):.2f} characters a token)")
windows = data.pipeline.random_windows(data.ArrayTokens(tokens), batch_size=BATCH_SIZE, seq_len=SEQ_LEN, seed=0)
batches = data.pipeline.iterator(windows)
"""),
        code("""
from jaxformer import training
from jaxformer.training.tasks.lm import lm_loss

schedule = training.make_schedule(
    "warmup_cosine", learning_rate=LEARNING_RATE, num_steps=NUM_STEPS, warmup_steps=max(1, NUM_STEPS // 10)
)
optimizer = training.make_optimizer(schedule, weight_decay=0.0, clip_norm=1.0)
graphs, state = training.create_train_state(model, optimizer)
train_step = training.make_train_step(graphs, optimizer, schedule, lm_loss)
del model  # its arrays are the state's, which the first step donates: use training.merge(graphs.eval, state)

variables = lambda tree: jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
kinds = lambda tree: f"{len(variables(tree))} arrays of {sorted({type(v).__name__ for v in variables(tree)})}"
print(f"{type(state).__name__}: params (trained) {kinds(state.params)}, frozen {kinds(state.frozen)}")
losses, start = [], time.perf_counter()
for step in range(1, NUM_STEPS + 1):
    state, metrics = train_step(state, next(batches))
    losses.append(float(metrics["loss"]))
    if step % LOG_EVERY == 0 or step in (1, NUM_STEPS):
        print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - start:.1f} s)")

plt.figure(figsize=(6, 3.5))
plt.plot(range(1, NUM_STEPS + 1), losses)
plt.xlabel("step")
plt.ylabel("training loss (nats / token)")
plt.title(f"LoRA rank {RANK} on {Path(CHECKPOINT).name}")
plt.show()
"""),
        md("""
Only the adapters changed: the frozen base in the state is still the checkpoint's weights, bit for bit (read
again from `CHECKPOINT` to compare).
"""),
        code("""
base = pretrained.from_pretrained(CHECKPOINT, dtype=DTYPE)
pairs = zip(jax.tree.leaves(nnx.state(base, nnx.Param)), jax.tree.leaves(state.frozen), strict=True)
print("frozen base == the checkpoint's weights, bit for bit:", all(bool((a == b).all()) for a, b in pairs))
del base
tuned = training.merge(graphs.eval, state)  # the model the state describes, in eval mode, adapters included
moved = max(float(jnp.abs(adapter.b[...]).max()) for *_, adapter in lora.adapters(tuned))
print(f"largest |B| entry after training: {moved:.3g} (every B started at 0)")
"""),
        md("## Generate after fine-tuning (greedy)"),
        code("""
after = np.asarray(generate(tuned, prompt, NUM_TOKENS, rng=None, temperature=0.0))[0]
print("before:\\n" + PROMPT + tokenizer.decode(before) + "\\n")
print("after:\\n" + PROMPT + tokenizer.decode(after))
"""),
        md("""
## Memory: LoRA against full fine-tuning

What a training step holds besides its activations, counted from shapes (`nnx.eval_shape`, `jax.eval_shape` of the
optimizer's init: nothing is allocated), with the split the training state makes (`state.split_model`):

* **full fine-tuning**: the weights, their gradients (as large as the weights) and AdamW's two moments (each as large
  as the weights, in their dtype: optax keeps the moments in the parameters' dtype);
* **LoRA**: the frozen base plus the float32 adapters, gradients and two moments of the adapters only.

Activations come on top of both (they grow with batch x length and are about the same with LoRA);
`jaxformer memory --config ... --config.lora.rank=8` estimates them for a whole run. The table covers the loaded
model in `DTYPE` and a Gemma-2-2B shape (`BIG_MODEL`, `ModelConfig.variant("gemma2-2b")`: 2.6B parameters, of which
0.6B are the embedding) with float32 and with bfloat16 weights (`config.lora.base_dtype = "bfloat16"` keeps a LoRA
run's base in bfloat16), against one 16 GiB TPU v5e chip (`HBM_GIB`).
"""),
        code("""
import functools

from jaxformer.models import GPT, ModelConfig
from jaxformer.training.state import split_model


def abstract_model(c, rank):  # a GPT with (rank > 0) or without adapters, built inside nnx.eval_shape
    model = GPT(c, rngs=nnx.Rngs(0))
    return lora.add_adapters(model, rank=rank, alpha=ALPHA, targets=TARGETS, rngs=nnx.Rngs(0)) if rank else model


nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
UNITS = ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "B"))
size = lambda n: next(f"{n / 2**k:.2f} {unit}" for k, unit in UNITS if n >= 2**k or not k)
print(f"{'model':16s} {'setting':24s} {'trained':>13s} {'weights':>11s} {'gradients':>11s} {'AdamW m, v':>11s} "
      f"{'total':>11s}  fits {HBM_GIB} GiB?")
table = {}
big = ModelConfig.variant(BIG_MODEL)
shapes = [(Path(CHECKPOINT).name, cfg, DTYPE), (BIG_MODEL, big, "float32"), (BIG_MODEL, big, "bfloat16")]
for label, shape, dtype in shapes:
    for rank in (0, RANK):
        c = shape.replace(dtype=dtype, param_dtype=dtype, scan_layers=True)  # stacked layers: same bytes, fast trace
        _, trained, frozen, _ = split_model(nnx.eval_shape(functools.partial(abstract_model, c, rank)))
        row = (nbytes(trained) + nbytes(frozen), nbytes(trained), nbytes(jax.eval_shape(optimizer.init, trained)))
        table[label, dtype, rank] = row
        setting = f"LoRA r{rank}, {dtype} base" if rank else f"full, {dtype}"
        n_trained = sum(x.size for x in jax.tree.leaves(trained))
        print(f"{label:16s} {setting:24s} {n_trained:13,d} {size(row[0]):>11s} {size(row[1]):>11s} {size(row[2]):>11s} "
              f"{size(sum(row)):>11s}  {'yes' if sum(row) < HBM_GIB * 2**30 else 'no'}")
print("(activations not included)")
"""),
        md("""
The LoRA row of the loaded model in `DTYPE` is the `LoRATrainState` trained above: its bytes, counted on the real
arrays, are the same.
"""),
        code("""
real = (nbytes(state.params) + nbytes(state.frozen), nbytes(state.params), nbytes(state.opt_state))
print("LoRATrainState: weights + adapters", real[0], "bytes, adapters", real[1], ", AdamW state", real[2])
print("the table's row:                  ", table[Path(CHECKPOINT).name, DTYPE, RANK])
full, low = (sum(table[BIG_MODEL, "bfloat16", r]) for r in (0, RANK))
print(f"{BIG_MODEL}, bfloat16 weights: full fine-tuning keeps {full / 2**30:.1f} GiB, LoRA {low / 2**30:.1f} GiB "
      f"({full / low:.1f}x less)")
"""),
        md("""
## Save the adapter, load it back

`lora.save_adapter` writes `adapter_config.json` and `adapter_model.safetensors` in peft's layout (each tensor named
after the Hugging Face module it adapts). `pretrained.from_pretrained(CHECKPOINT, adapter=directory)` reads the base
and adds the adapter in one call; in PyTorch, `peft.PeftModel.from_pretrained(hf_base, directory)` loads the same
directory onto a `transformers` model, and `jaxformer sample --pretrained CHECKPOINT --adapter directory` samples
from it.
"""),
        code("""
shutil.rmtree(WORKDIR, ignore_errors=True)
adapter_dir = lora.save_adapter(tuned, f"{WORKDIR}/adapter", base_model_name_or_path=CHECKPOINT)
files = {name: os.path.getsize(f"{adapter_dir}/{name}") for name in sorted(os.listdir(adapter_dir))}
print(adapter_dir, {name: size(n) for name, n in files.items()})
with open(f"{adapter_dir}/adapter_config.json") as f:
    adapter_config = json.load(f)
print({k: adapter_config[k] for k in ("peft_type", "base_model_name_or_path", "r", "lora_alpha")},
      f"{len(adapter_config['target_modules'])} target modules, e.g. {adapter_config['target_modules'][:2]}")

logits_tuned = forward(tuned, probe)
with_adapter = pretrained.from_pretrained(CHECKPOINT, dtype=DTYPE, adapter=adapter_dir)
print("max |logits(base + saved adapter) - logits(trained)|:",
      float(jnp.abs(forward(with_adapter, probe) - logits_tuned).max()))
print("max |logits(trained) - logits(base)|:", float(jnp.abs(logits_tuned - logits_before).max()), "(the training)")
"""),
        md("""
## Merge and save the merged model

`lora.merge` folds every adapter into its weight, `W <- W + s A B` (computed in float32, stored in the weight's
dtype), and removes the adapters: an ordinary model again, as fast as the base, which `pretrained.save_pretrained`
writes as a Hugging Face checkpoint (`transformers.AutoModelForCausalLM.from_pretrained(directory)` loads it). With
bfloat16 weights the merged logits differ from the adapter's by bfloat16 rounding of `W + s A B`; in float32 they
agree to float32 rounding.
"""),
        code("""
merged = lora.merge(with_adapter)  # in place
print("LoRAParams left after merging:", len(jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))))
logits_merged = forward(merged, probe)
print("max |logits(merged) - logits(trained with adapters)|:", float(jnp.abs(logits_merged - logits_tuned).max()))

merged_dir = pretrained.save_pretrained(merged, f"{WORKDIR}/merged", tokenizer=tokenizer)
print(merged_dir, sorted(os.listdir(merged_dir)))
again = pretrained.from_pretrained(merged_dir)
print("max |logits(reloaded merged) - logits(merged)|:", float(jnp.abs(forward(again, probe) - logits_merged).max()))
"""),
        md("""
## Next

* `jaxformer train --config gpt2_finetune_shakespeare --config.lora.rank=8 --config.lora.alpha=16` runs the same
  fine-tuning as a recipe: checkpoints of the adapters only (the base is read again from `init_from`), exact resume,
  `workdir/adapter/` at the end and, with `--config.lora.export_merged`, `workdir/merged/`.
* `lora.load_adapter(model, "someone/their-peft-adapter")` adds an adapter trained with peft (a directory or a hub id).
* docs/lora.md: the maths, the targets, `rank_pattern` / `alpha_pattern`, rsLoRA, and peft's layout.
"""),
    ],
    data=True,
)


# ---------------------------------------------------------------------------------------------------------------
notebook(
    "10_chat.ipynb",
    "10 · Chat: a checkpoint's template, the assistant-only mask, SFT on packed conversations, then DPO",
    """
Teaching a model to follow instructions stands on one data path that is easy to get silently wrong: the conversation
must be rendered exactly as the model was trained (the jinja2 chat template its checkpoint ships) and the loss must
fall on the assistant's tokens only. `jaxformer.data.chat` renders templates as `transformers` does and finds the
tokens a model learns from the template's structure; `task="sft"` packs whole conversations into rows and trains on
those tokens; `task="dpo"` teaches preferences between two replies. This notebook reads a real checkpoint's template
(tokenizer files only: no weights are downloaded), shows what is learned, then trains the two CPU recipes (a small
GPT from scratch on synthetic instructions) and talks to the result. It runs on whatever jax finds.

**On a TPU with a real model:** the recipe `gemma_chat_sft` fine-tunes Gemma 2 2B with LoRA on your JSONL
conversations in Gemma's template (docs/chat.md shows how to export a Hugging Face chat dataset to JSONL).
""",
    """
TEMPLATE_CHECKPOINT = "Qwen/Qwen2.5-0.5B-Instruct"  # a hub id or a directory: only its tokenizer files are read
SFT_STEPS = 1500  # chat_sft_cpu's: held-out exact match reaches 0.95 at step 900 and 1.0 at 1200 (docs/chat.md)
DPO_STEPS = 400  # chat_dpo_cpu's
NUM_TRAIN = 20_000  # synthetic conversations for SFT (DPO: 8,000 pairs)
MODEL = {}  # overrides of the recipes' small GPT, e.g. {"num_layers": 2}
WORKDIR = "workdir/10_chat"
""",
    [
        md("""
## A checkpoint's chat template, and the tokens a model learns

`encode` returns the tokenizer's ids of the rendered text and a mask: True exactly on each assistant reply and the
end-of-turn token that closes it (what transformers' `return_assistant_tokens_mask` marks when the template is
tagged with `{% generation %}`), never the role headers or the newline after the marker. Learned tokens are
printed between `[` and `]`.
"""),
        code("""
import json

import matplotlib.pyplot as plt

from jaxformer.configs import load_config
from jaxformer.data import chat
from jaxformer.training import trained
from jaxformer.training.loop import train_and_evaluate
from jaxformer.training.tasks.sft import chat_reply

template = chat.ChatTemplate.from_pretrained(TEMPLATE_CHECKPOINT)
messages = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say yes."},
    {"role": "assistant", "content": "yes"},
    {"role": "user", "content": "And in French? (yes)"},
    {"role": "assistant", "content": "oui"},
]
print(template.render(messages))
ids, mask = template.encode(messages)
pieces = [template.tokenizer.decode(ids[i : i + 1]) for i in range(len(ids))]
print("".join(f"[{p}]" if m else p for p, m in zip(pieces, mask, strict=True)))
print(f"{len(ids)} tokens, {int(mask.sum())} learned; the reply ends at {template.end_of_turn!r}")
"""),
        md("""
## Supervised fine-tuning on packed conversations

`chat_sft_cpu` trains a 4-layer GPT from scratch on synthetic instructions (uppercase, reverse or capitalise a
word, several phrasings, some with a system prompt or a second question) in ChatML over a byte-level tokenizer.
Conversations are packed whole into rows of 128 tokens (each its own segment, positions restarting at 0) and the
loss falls on the replies only. `val_exact_match` is the share of held-out conversations, about words training
never saw, whose reply greedy decoding reproduces exactly.
"""),
        code("""
config = load_config("chat_sft_cpu")
config.num_steps, config.data.num_train = SFT_STEPS, NUM_TRAIN
config.warmup_steps = min(config.warmup_steps, SFT_STEPS)
config.eval_every = config.checkpoint_every = max(SFT_STEPS // 4, 1)
config.model.update(MODEL)
final = train_and_evaluate(config, f"{WORKDIR}/sft")
print({k: final[k] for k in ("val_loss", "val_exact_match", "train_tokens", "train_prompt_tokens", "train_pad_tokens")})
rows = [json.loads(line) for line in open(f"{WORKDIR}/sft/metrics.jsonl")]
evals = [r for r in rows if "val_exact_match" in r]
plt.plot([r["step"] for r in evals], [r["val_exact_match"] for r in evals], marker="o")
plt.xlabel("step"), plt.ylabel("held-out exact match"), plt.title("chat_sft_cpu")
plt.show()
"""),
        md("Talk to it: the prompt goes through the run's template, and the reply stops at `<|im_end|>`."),
        code("""
model, _, _ = trained.load_trained(f"{WORKDIR}/sft")
run_template = trained.load_chat_template(f"{WORKDIR}/sft")
for question in ("Reverse: notebook", "Make colab uppercase.", "Capitalize the first letter of jax."):
    reply = chat_reply(model, run_template, [{"role": "user", "content": question}], 16, temperature=0.0)
    print(f"{question!r} -> {reply!r}")
"""),
        md("""
## Preference optimisation (DPO)

`chat_dpo_cpu` teaches the same small model, from scratch and by preferences alone, to follow a case instruction
(capitals, small letters, capitalised) rather than echo the word or answer another instruction. The loss is
`-log σ(β ((log π(c) - log π_ref(c)) - (log π(r) - log π_ref(r))))`; the reference is the starting model, whose
log-probabilities of every pair are computed once before the first step (no second model in memory), so the loss
starts at log 2.
"""),
        code("""
config = load_config("chat_dpo_cpu")
config.num_steps = DPO_STEPS
config.warmup_steps = min(config.warmup_steps, DPO_STEPS)
config.eval_every = config.checkpoint_every = max(DPO_STEPS // 4, 1)
config.model.update(MODEL)
final = train_and_evaluate(config, f"{WORKDIR}/dpo")
rows = [json.loads(line) for line in open(f"{WORKDIR}/dpo/metrics.jsonl")]
print({k: final[k] for k in ("val_loss", "val_reward_accuracy", "val_reward_margin")})
plt.plot([r["step"] for r in rows], [r["train_chosen_reward"] for r in rows], label="chosen")
plt.plot([r["step"] for r in rows], [r["train_rejected_reward"] for r in rows], label="rejected")
plt.xlabel("step"), plt.ylabel("reward = β (log π - log π_ref)"), plt.legend(), plt.title("chat_dpo_cpu")
plt.show()
"""),
        md("""
DPO moves probability between the two replies: the rejected replies' log-probability falls far more than the chosen
ones' rises, and a model taught by DPO alone does not write good replies. Preference tuning refines a model that can
already do the task; in practice it follows SFT.

## Next

* `jaxformer prepare --source chat:chats/*.jsonl --tokenizer template:DIR_OR_ID --out prepared/chats` encodes
  conversations once; `--config.data.prepared=prepared/chats` trains on them.
* `jaxformer sample --workdir workdir/10_chat/sft --chat --prompt "Reverse: jaxformer" --temperature 0`.
* docs/chat.md: the rendering rules, the mask, packing, truncation and DPO's reference.
"""),
    ],
)
