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
    assert fsdp["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    # Every matrix splits 8 ways along d_model=128; vectors without an embed axis (the feed-forward biases
    # [mlp]) stay whole, a few percent here.
    assert one["param_bytes"] / 8 < fsdp["param_bytes_per_device"] < one["param_bytes"] / 8 * 1.05
    assert one["optimizer_bytes"] / 8 < fsdp["optimizer_bytes_per_device"] < one["optimizer_bytes"] / 8 * 1.05
    data = memory_report(config_for(corpus, data=8), num_devices=8)
    assert data["param_bytes_per_device"] == one["param_bytes"]  # replicated
    assert data["activation_bytes_per_device"] == pytest.approx(one["activation_bytes_per_device"] / 8, rel=0.01)


def test_a_batch_the_mesh_cannot_split_is_named(corpus):
    config = config_for(corpus, data=-1)
    config.batch_size = 12
    with pytest.raises(ValueError, match=r"config.batch_size=12 is not divisible by the data x fsdp mesh axes \(8"):
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
