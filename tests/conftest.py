"""Shared test settings. Tests compare float32 JAX results with float64 NumPy references written in the tests."""

import os

# Test programs are tiny, so XLA's compile time, not run time, dominates the suite: LLVM's optimisation passes
# cost ~0.3-2 s per program on a 2-core CPU (jax.random.normal of one [32, 4, 8] shape: 2.3 s, 0.3 s at O0).
# Set before jax creates its CPU backend; numerics are unchanged, only generated-code speed. Benchmarks run
# outside pytest with the default level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import hypothesis

# jit compilation makes each example cost milliseconds to seconds: no deadline, few examples, reproducible.
hypothesis.settings.register_profile("jaxformer", deadline=None, max_examples=20, derandomize=True, print_blob=True)
hypothesis.settings.load_profile("jaxformer")
