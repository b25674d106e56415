"""jaxformer.data sits below jaxformer.training and jaxformer.pretrained: importing it must not pull in Flax, training
code or tfds (which modules it may import is `make lint`'s layers contract, pyproject.toml)."""

import subprocess
import sys


def test_import_is_light():
    code = (
        "import sys, jaxformer.data; "
        "bad = [m for m in ('flax', 'jaxformer.training', 'tensorflow_datasets', 'tensorflow') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
