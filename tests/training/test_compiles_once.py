"""Compile-once guards (chex.assert_max_traces): the loop's train and eval steps trace exactly once (`generate`'s
guard is in tests/decoding/test_generate.py).

A second trace means a second XLA compile: on a real model that is minutes lost, and it happens silently (a
Python scalar where an array was, a weak type, a shape that drifts between evaluation batches).
"""

import chex
import pytest

from jaxformer.configs import load_config
from jaxformer.training import steps
from jaxformer.training.loop import train_and_evaluate


def guarded(make_fn, traces: list):
    """`make_fn` whose returned step is guarded to trace at most once, and records each trace in `traces`."""

    def make(*args, **kwargs):
        fn = make_fn(*args, **kwargs)

        def counted(*a):
            traces.append(1)
            return fn(*a)

        return chex.assert_max_traces(counted, n=1)

    return make


@pytest.mark.parametrize("parallel", ["jit", "pmap"])
def test_the_loop_compiles_its_train_and_eval_steps_once(tmp_path, corpus, monkeypatch, parallel):
    chex.clear_trace_counter()  # chex counts per definition site, across tests
    train_traces, eval_traces = [], []
    monkeypatch.setattr(steps, "train_step_fn", guarded(steps.train_step_fn, train_traces))
    monkeypatch.setattr(steps, "eval_step_fn", guarded(steps.eval_step_fn, eval_traces))
    config = load_config("shakespeare_char_cpu")
    config.data.update(source="text_file", path=str(corpus), seq_len=16)
    config.model.update(num_layers=1, num_heads=2, d_model=32, d_ff=64, scan_layers=False, remat="none")
    # 3 evaluations, each over several batches (the last one padded to the full shape).
    config.update(num_steps=6, eval_every=2, log_every=2, checkpoint_every=6, warmup_steps=2, batch_size=4)
    config.parallel = parallel
    config.sample.num_tokens = 4
    train_and_evaluate(config, str(tmp_path))
    assert len(train_traces) == 1 and len(eval_traces) == 1
