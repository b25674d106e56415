"""Shared test settings. Tests compare float32 JAX results with float64 NumPy references written in the tests."""

import atexit
import os
import shutil
import tempfile

# Test programs are tiny, so XLA's compile time, not run time, dominates the suite: LLVM's optimisation passes
# cost ~0.3-2 s per program on a 2-core CPU (jax.random.normal of one [32, 4, 8] shape: 2.3 s, 0.3 s at O0).
# Set before jax creates its CPU backend; numerics are unchanged, only generated-code speed. Benchmarks run
# outside pytest with the default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

# One XLA compilation cache for the whole run, shared by the xdist workers and every subprocess the tests start
# (notebook kernels, multi-device runs), which inherit this environment: many tests compile the same programs (a
# tiny GPT's train step, eval step, initialiser), and each is then compiled once per run instead of once per test.
# A fresh directory per run, removed at the end, so a timing of the suite never profits from an earlier run; numerics
# are unchanged (the cache key covers the program, the XLA flags and the jax version). Set by the process pytest
# starts in; its workers find it set.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="jaxformer-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # at O0 most test programs compile in < 1 s
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import hypothesis

# jit compilation makes each example cost milliseconds to seconds: no deadline, few examples, reproducible.
hypothesis.settings.register_profile("jaxformer", deadline=None, max_examples=20, derandomize=True, print_blob=True)
hypothesis.settings.load_profile("jaxformer")
