"""The Colab notebooks in colab/: stored clean (badge, `parameters` cell, no outputs, no library code), and each one
executed end to end with tiny parameters, inserted as a cell right after its `parameters` cell."""

import ast
import glob
import os
import re
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colab", "*.ipynb")))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "tensorflow_datasets")  # as the Makefile's TFDS_DATA_DIR

nbformat = pytest.importorskip("nbformat")

# Tiny sizes for every knob the test overrides (the notebooks' defaults are sized for a Colab GPU / TPU).
TINY = {
    "01_attention_primitives": dict(LONG_T=64, BLOCK_SIZE=16, SPLASH_T=128),
    "02_train_gpt_shakespeare": dict(
        NUM_STEPS=20,
        BATCH_SIZE=8,
        SEQ_LEN=32,
        MODEL={"num_layers": 1, "num_heads": 2, "d_model": 32, "d_ff": 64},
        LOG_EVERY=5,
        EVAL_EVERY=20,
        SAMPLE_TOKENS=40,
    ),
    "03_seq2seq_beam_search": dict(NUM_STEPS=30, BATCH_SIZE=16, NUM_TRAIN=256, NUM_EVAL=32, NUM_SHOWN=2),
    "04_claims_tour": dict(CLAIMS=["01_scaling", "05_masks"], SIZE="tiny"),
    "05_scaling_laws": dict(SIZES=[(1, 16), (1, 32), (2, 32)], STEPS=30, BATCH_SIZE=8, SEQ_LEN=32),
    "06_sharding_and_checkpoints": dict(
        D_MODEL=32, NUM_LAYERS=1, NUM_HEADS=4, BATCH_SIZE=8, SEQ_LEN=16, STEPS=3, CONTINUE_STEPS=2, RING_T=256
    ),
    # The committed GPT-2-shaped fixture (made by transformers) instead of the hub's GPT-2.
    "07_pretrained_gpt2": dict(
        CHECKPOINT=os.path.join(ROOT, "tests", "fixtures", "pretrained", "gpt2"),
        FINETUNE_STEPS=4,
        BATCH_SIZE=4,
        SEQ_LEN=16,
        DTYPE="float32",
        NUM_TOKENS=8,
    ),
    # The committed Gemma-3-shaped fixture (local and global layers, window 4) instead of the hub's gated Gemma.
    "08_gemma": dict(
        CHECKPOINT=os.path.join(ROOT, "tests", "fixtures", "pretrained", "gemma3"),
        DTYPE="float32",
        NUM_TOKENS=8,
        NUM_SAMPLES=2,
        SCORE_LEN=32,
    ),
    # The committed Llama-shaped fixture (random weights, vocabulary 96) instead of the hub's Qwen3; a learning rate
    # that moves its loss within 20 steps.
    "09_lora": dict(
        CHECKPOINT=os.path.join(ROOT, "tests", "fixtures", "pretrained", "llama"),
        DTYPE="float32",
        NUM_STEPS=20,
        BATCH_SIZE=4,
        SEQ_LEN=32,
        LEARNING_RATE=1e-2,
        LOG_EVERY=5,
        NUM_TOKENS=8,
    ),
    # The committed ChatML fixture (Qwen2.5's real template over a small tokenizer) instead of the hub's.
    "10_chat": dict(
        TEMPLATE_CHECKPOINT=os.path.join(ROOT, "tests", "fixtures", "chat", "chatml"),
        SFT_STEPS=4,
        DPO_STEPS=4,
        NUM_TRAIN=64,
        MODEL={"num_layers": 1, "num_heads": 2, "d_model": 32, "d_ff": 64},
    ),
}
# Wall time of each notebook's run with TINY, kernel start included, one at a time (`pytest -p no:xdist`, jax 0.12.1,
# the 2-core dev machine with one other job running, session 9): 01 14 s, 02 20 s, 03 29 s, 04 19 s, 05 25 s, 06 15 s,
# 07 23 s; 146 s in all. 08 and 09 (added later, run alone the same way): 27 s and 24 s. Compilation, not computation,
# is nearly all of it. Every notebook runs in the default suite, so that no refactor breaks one unseen (03 once failed
# unseen, with only a slow test to notice).


def name_of(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def parameters_index(nb) -> int:
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged `parameters`, found {len(tagged)}"
    return tagged[0]


def python_source(cell_source: str) -> str:
    """The cell as plain Python: IPython `!shell` and `%magic` lines become `pass` (indentation kept)."""
    return "\n".join(re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in cell_source.splitlines())


def test_every_notebook_has_tiny_parameters():
    assert sorted(map(name_of, NOTEBOOKS)) == sorted(TINY)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=name_of)
def test_notebook_is_stored_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    badge = f"https://colab.research.google.com/github/jaxformer/jaxformer/blob/main/colab/{os.path.basename(path)}"
    assert nb.cells[0].cell_type == "markdown" and badge in nb.cells[0].source
    first_code = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert '"google.colab" in sys.modules' in first_code.source  # installs from GitHub in Colab only
    params = nb.cells[parameters_index(nb)]
    assert params.cell_type == "code"
    namespace = {}
    exec(params.source, namespace)  # plain assignments: the knobs the test overrides must be there
    assert set(TINY[name_of(path)]) <= set(namespace)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.outputs and cell.execution_count is None, "store the notebook without outputs"
        tree = ast.parse(python_source(cell.source))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 4, f"{node.name} ({length} lines): notebooks call jaxformer, they define no library"


# Running a notebook (a kernel, jax's imports, then its cells: 6-32 s each) is for `make test-all`; the default run
# checks every notebook's structure (the tests above), and the library code they call is tested on its own.
DEFAULT_RUN = ()


@pytest.mark.parametrize(
    "path",
    [p if name_of(p) in DEFAULT_RUN else pytest.param(p, marks=pytest.mark.slow) for p in NOTEBOOKS],
    ids=name_of,
)
def test_notebook_runs_with_tiny_parameters(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(path, as_version=4)
    overrides = "\n".join(f"{key} = {value!r}" for key, value in TINY[name_of(path)].items())
    nb.cells.insert(parameters_index(nb) + 1, nbformat.v4.new_code_cell("# test overrides\n" + overrides))
    # The kernel inherits this environment: the repository for the first cell, the prepared tfds data.
    monkeypatch.setenv("JAXFORMER_ROOT", ROOT)
    if os.path.isdir(SHARED_DATA):
        monkeypatch.setenv("TFDS_DATA_DIR", SHARED_DATA)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.chdir(tmp_path)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and the traceback, on any error
    print(f"{name_of(path)}: {time.perf_counter() - start:.1f} s")
