"""Hugging Face hub resolution: a local directory, or a hub id downloaded into huggingface_hub's cache.

    directory = hub.resolve("path/to/dir" or "gpt2")     # a local directory holding what HUB_FILES matches

One home for the data layer (`hf:` tokenizers) and the pretrained layer (checkpoints) alike: it imports only the
standard library, and huggingface_hub on first use (only when `path_or_id` is not a local directory).
"""

from __future__ import annotations

import os

# What a download fetches of a hub repository: the architecture, the weights and the tokenizer.
HUB_FILES = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",  # transformers 5 writes a checkpoint's chat template here (data/chat.py)
    "generation_config.json",  # the eos ids that end generation (jaxformer.evaluation)
]
# What a tokenizer or a chat template needs: no weights downloaded for them.
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def resolve(path_or_id: str | os.PathLike, *, files: list[str] = HUB_FILES) -> str:
    """A local directory holding the checkpoint: `path_or_id` itself when it is a directory, else a hub id whose
    `files` (glob patterns; a model's by default, a peft adapter's for LoRA) are downloaded with `huggingface_hub`
    into its cache (offline: only the cache is looked at)."""
    path = os.fspath(path_or_id)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise ValueError(f"`path_or_id`={path!r} is a file; pass the directory that holds {files[0]}.")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id=path, allow_patterns=files)
    except HFValidationError as e:
        raise ValueError(f"`path_or_id`={path!r} is neither a local directory nor a valid hub id ({e}).") from e
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"{path!r} is not a local directory, and the hub could not be reached for it (offline, or "
            "HF_HUB_OFFLINE=1) and it is not in the huggingface_hub cache. Download it once with internet "
            f"(`huggingface-cli download {path}`), or pass a local directory with {' and '.join(files[:2])}."
        ) from e
