"""`import jaxformer.ops` loads jax and NumPy only: no Flax, no training stack, nothing of jaxformer but `checks`.

People import the functional primitives into their own models (docs/architecture.md, "Layers"), so the ops layer
must stay importable without the libraries the layers above it use. Checked in a fresh interpreter: in this one,
other tests have imported everything already.
"""

import json
import subprocess
import sys

# Top-level packages the ops layer must not import (tfds is `tensorflow_datasets`).
FORBIDDEN = ("flax", "optax", "orbax", "grain", "tensorflow_datasets", "tensorflow", "ml_collections", "torch")
# The jaxformer modules it may load: the package itself, the shared input checks and the ops modules.
ALLOWED_JAXFORMER = ("jaxformer", "jaxformer.checks", "jaxformer.ops")


def modules_loaded_by(statement: str) -> list[str]:
    """The names in `sys.modules` after running `statement` in a fresh Python (the same interpreter as the tests)."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_jaxformer_ops_loads_no_framework_and_no_upper_layer():
    loaded = modules_loaded_by("import jaxformer.ops")
    assert "jaxformer.ops" in loaded and "jax" in loaded  # the check itself works
    forbidden = sorted(name for name in loaded if name.split(".")[0] in FORBIDDEN)
    assert not forbidden, f"`import jaxformer.ops` imports {forbidden}; keep jaxformer.ops free of them."
    upper = sorted(
        name
        for name in loaded
        if name.split(".")[0] == "jaxformer" and name not in ALLOWED_JAXFORMER and not name.startswith("jaxformer.ops.")
    )
    assert not upper, f"`import jaxformer.ops` imports {upper}; ops may import only jaxformer.checks."
