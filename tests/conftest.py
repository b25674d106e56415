"""Shared test settings. Tests compare float32 JAX results with float64 NumPy references written in the tests."""

import hypothesis

# jit compilation makes each example cost milliseconds to seconds: no deadline, few examples, reproducible.
hypothesis.settings.register_profile("jaxformer", deadline=None, max_examples=20, derandomize=True, print_blob=True)
hypothesis.settings.load_profile("jaxformer")
