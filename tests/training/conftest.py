"""Fixtures shared by the training tests."""

import numpy as np
import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small deterministic text (not a real corpus: the tests are about the machinery)."""
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "mind"]
    lines = [" ".join(rng.choice(words, size=8)) for _ in range(600)]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(lines))
    return path
