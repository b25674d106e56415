"""`jaxformer memory`: per-device bytes from shapes alone, for device counts this machine does not have."""

import pytest

from jaxformer.configs import load_config
from jaxformer.training.memory import format_report, memory_report
from jaxformer.training.run import build_run

CONFIG = "shakespeare_char_cpu"  # a recipe of jaxformer.configs


def config_for(corpus, **mesh):
    config = load_config(CONFIG)
    config.data.update(source="text_file", path=str(corpus))
    config.update(batch_size=16)
    config.mesh.update(mesh)
    return config


def test_one_device_holds_everything(corpus):
    report = memory_report(config_for(corpus), num_devices=1)
    assert report["param_bytes"] == report["param_bytes_per_device"] == 4 * report["parameters"]  # float32
    # AdamW: two moments per parameter, plus scalar counters.
    assert 8 * report["parameters"] <= report["optimizer_bytes_per_device"] < 8 * report["parameters"] + 1024
    assert "parameters on 1 devices" in format_report(report)


def test_fsdp_divides_the_state_and_data_divides_the_activations(corpus):
    one = memory_report(config_for(corpus), num_devices=1)
    fsdp = memory_report(config_for(corpus, data=1, fsdp=-1), num_devices=8)
    assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1, "expert": 1, "context": 1}
    # Every matrix splits 8 ways along d_model=128; vectors without an embed axis (the feed-forward biases
    # [mlp]) stay whole, a few percent here.
    assert one["param_bytes"] / 8 < fsdp["param_bytes_per_device"] < one["param_bytes"] / 8 * 1.05
    assert one["optimizer_bytes"] / 8 < fsdp["optimizer_bytes_per_device"] < one["optimizer_bytes"] / 8 * 1.05
    data = memory_report(config_for(corpus, data=8), num_devices=8)
    assert data["param_bytes_per_device"] == one["param_bytes"]  # replicated
    assert data["activation_bytes_per_device"] == pytest.approx(one["activation_bytes_per_device"] / 8, rel=0.01)


def test_the_expert_axis_divides_the_experts_weights(corpus):
    """moe_shakespeare_char_cpu: 4 layers of 8 SwiGLU experts [8, 128, 256] x 3, split 4 ways over expert; the
    rest (attention, routers, embeddings) replicated over data x expert."""
    config = load_config("moe_shakespeare_char_cpu")
    config.data.update(source="text_file", path=str(corpus))
    config.update(batch_size=16)
    one = memory_report(config, num_devices=1)
    assert one["expert_param_bytes"] == one["expert_param_bytes_per_device"] == 4 * 4 * 8 * 3 * 128 * 256
    config.mesh.update(data=2, expert=4)
    split = memory_report(config, num_devices=8)
    assert split["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1, "expert": 4, "context": 1}
    assert split["expert_param_bytes_per_device"] == one["expert_param_bytes"] // 4
    others = one["param_bytes"] - one["expert_param_bytes"]
    assert split["param_bytes_per_device"] == others + one["expert_param_bytes"] // 4
    assert "of which experts" in format_report(split) and "of which experts" not in format_report(
        memory_report(config_for(corpus), num_devices=1)
    )


def test_a_batch_the_mesh_cannot_split_is_named(corpus):
    config = config_for(corpus, data=-1)
    config.batch_size = 12
    with pytest.raises(
        ValueError, match=r"config.batch_size=12 is not divisible by the data x fsdp x expert mesh axes \(8"
    ):
        memory_report(config, num_devices=8)


def test_remat_policies_keep_less_in_the_documented_amounts(corpus):
    """Per layer (units of T b D at 16 bits, a = N T / D): none 10 + 24 + 5a, dots 2 + 20 + 2a, dots_no_batch
    2 + 18, full 2; every policy but none adds one layer's full set for the recomputation."""
    reports = {}
    for remat in ("none", "dots", "dots_no_batch", "full"):
        config = config_for(corpus)
        config.model.remat = remat
        reports[remat] = report = memory_report(config, num_devices=1)
        assert f"remat={remat}" in format_report(report)
    B, T, D, N, L = 16, 64, 128, 4, 4
    V = build_run(config_for(corpus)).model_config.vocab_size  # the test corpus's characters
    unit, a, logits = T * B * D * 2, N * T / D, 2 * B * T * V * 4  # float32: 2x the 16-bit bytes
    everything = 34 + 5 * a
    want = {
        "none": L * everything,
        "dots": L * (22 + 2 * a) + everything,
        "dots_no_batch": L * 20 + everything,
        "full": L * 2 + everything,
    }
    for remat, units in want.items():
        assert reports[remat]["activation_bytes_per_device"] == int(units * unit + logits), remat
    assert reports["full"]["activation_bytes_per_device"] < reports["none"]["activation_bytes_per_device"] / 2


def test_kv_cache_of_a_gemma3_shape_holds_rings_for_local_layers():
    """Gemma 3 1B at 32k tokens: 22 local layers keep 512 entries, 4 global layers 32768 (one kv head of 256)."""
    from jaxformer.training.memory import format_kv_report, kv_cache_report

    report = kv_cache_report("gemma3-1b", 32768, batch_size=2, dtype="bfloat16")
    per_entry = 2 * 2 * 1 * 256 * 2  # key and value, batch 2, 1 kv head, head_dim 256, bfloat16
    assert [n for n, _ in report["layers"]] == [32768 if (i + 1) % 6 == 0 else 512 for i in range(26)]
    assert report["bytes"] == (22 * 512 + 4 * 32768) * per_entry + 26 * 4 * 2  # + the int32 index per layer
    assert report["full_bytes"] == 26 * (32768 * per_entry + 4 * 2)
    text = format_kv_report(report)
    assert "4 global, 22 local (window 512)" in text and "0.167" in text


def test_kv_cache_of_a_checkpoint_counts_shared_layers_as_empty():
    import pathlib

    from jaxformer.training.memory import kv_cache_report

    gemma4 = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretrained" / "gemma4"
    report = kv_cache_report(str(gemma4), 64, dtype="float32")
    # layers: local, local, global (head_dim 16), local, then two KV-shared layers with no cache
    assert [n for n, _ in report["layers"]] == [4, 4, 64, 4, 0, 0]
    assert report["shared_layers"] == 2 and report["bytes"] < report["full_bytes"]


def test_a_run_sized_with_a_published_architecture(corpus):
    """`jaxformer memory --config ... --model llama3.2-1b`: the run's data, mesh and execution settings with the
    variant's shape and vocabulary; at 131,072 tokens, ring attention over 8 devices holds an eighth of what one
    device with blockwise attention holds (no T x T scores either way), one device with XLA's attention the scores."""
    from jaxformer.training.memory import with_architecture

    def report(devices, attention_impl, **mesh):
        config = config_for(corpus, data=1, **mesh)
        config.data.seq_len = 131072
        config.batch_size = 1
        config.model.update(dtype="bfloat16", remat="full", attention_impl=attention_impl)
        sized = with_architecture(config, "llama3.2-1b")
        assert sized.model.to_dict() == dict(
            dtype="bfloat16",
            remat="full",
            scan_layers=True,
            attention_impl=attention_impl,
            variant="llama3.2-1b",
            vocab_size=128256,
            max_len=131072,
        )
        assert config.model.num_layers == 4  # the run's config is not changed
        return memory_report(sized, num_devices=devices)

    dense, blockwise, ring = report(1, "xla"), report(1, "blockwise"), report(8, "xla", context=8)
    assert dense["parameters"] == blockwise["parameters"] == ring["parameters"] == 1_235_814_400
    assert ring["param_bytes_per_device"] == blockwise["param_bytes_per_device"]  # replicated over context
    assert ring["activation_bytes_per_device"] == pytest.approx(blockwise["activation_bytes_per_device"] / 8)
    assert blockwise["attention_score_bytes_per_device"] == ring["attention_score_bytes_per_device"] == 0
    # XLA's attention: 5 N T / D units of T b D bytes (16-bit), with full remat for the one layer recomputed at a
    # time: 5 x 32 heads x 131072^2 bytes = 2.5 TiB.
    assert dense["attention_score_bytes_per_device"] == pytest.approx(5 * 32 * 131072**2, rel=1e-6)
    # a checkpoint directory or hub id becomes init_from
    assert with_architecture(config_for(corpus), "some/checkpoint").init_from == "some/checkpoint"
