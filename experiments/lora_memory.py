"""`jaxformer memory` for a Gemma-2-2B LoRA run and the same run as a full fine-tuning, on one 16 GiB chip.

    python experiments/lora_memory.py [--json experiments/results/lora_memory.json]     # seconds, shapes only

The recipe `gemma_lora_shakespeare` starts from google/gemma-2-2b, which cannot be downloaded here: the script
writes a stand-in checkpoint directory holding only what `jaxformer memory` reads, the config.json of Gemma 2 2B's
published shape (`ModelConfig.variant("gemma2-2b")` written by `hf_config.from_model_config`) and a tokenizer (the
Gemma 2 test fixture's, whose 352 tokens fit the 256,000-token vocabulary), then runs the memory report of the
recipe (`training.memory.memory_report`, what `jaxformer memory --config gemma_lora_shakespeare` prints) twice:

  - LoRA: the recipe as it is (rank 8 on every linear layer, the frozen base in bfloat16);
  - full: the same with `lora.rank = 0` (every parameter trains, float32 as a fine-tuning keeps them).

Nothing is allocated: parameters and optimizer state are counted from shapes, the activations estimated
(training/memory.py). The data (tiny Shakespeare) is read from $TFDS_DATA_DIR as for any run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import tempfile

from jaxformer.configs import get_config
from jaxformer.models import ModelConfig
from jaxformer.pretrained import hf_config
from jaxformer.training.memory import format_report, memory_report

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pretrained" / "gemma2"
CHIP_BYTES = 16 * 2**30  # a TPU v5e chip's HBM


def stand_in(directory: str) -> str:
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(hf_config.from_model_config(ModelConfig.variant("gemma2-2b")), f, indent=2)
    shutil.copy(FIXTURE / "tokenizer.json", directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = stand_in(tmp)
        for name, rank in (("lora", 8), ("full", 0)):
            config = get_config("gemma_lora_shakespeare")
            config.init_from = checkpoint
            config.data.tokenizer = f"hf:{checkpoint}"
            config.lora.rank = rank
            if not rank:  # a full fine-tuning: the recipe's other LoRA keys back to their defaults
                config.lora.base_dtype = ""
            report = memory_report(config, num_devices=1)
            fits = report["total_bytes_per_device"] <= CHIP_BYTES
            print(f"\n{name}: {'FITS' if fits else 'DOES NOT FIT'} one 16 GiB chip")
            print(format_report(report))
            results[name] = {**report, "fits_16_gib": fits}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
