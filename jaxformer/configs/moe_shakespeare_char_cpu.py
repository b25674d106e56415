"""A mixture-of-experts character-level GPT on tiny Shakespeare: shakespeare_char_cpu with its feed-forwards
replaced by 8 SwiGLU experts, 2 per token (Mixtral's router: softmax, top 2, renormalised).

    jaxformer train --config moe_shakespeare_char_cpu --workdir workdir/moe_shakespeare_char_cpu

4 layers, 4 heads, d=128, context 64, batch 12; every layer routes each token to 2 of 8 experts 256 wide, so a
token meets as many FFN weights (2 x 3 x 128 x 256 per layer) as in a dense SwiGLU 512 wide, with 4x the FFN
parameters in all. Training adds 0.01 x the load-balancing loss (Switch / Mixtral) and 0.001 x the router z-loss;
the log reports train_moe_balance_loss (2.0 when balanced), train_moe_max_load (the busiest expert's share x E / k,
1.0 when balanced) and train_moe_z_loss. Optimiser and schedule as shakespeare_char_cpu (AdamW, lr 1e-3, cosine).
The claims lab compares it with the dense model of equal active parameters
(experiments/claims/16_moe_vs_dense.py).
Measured on the 2-core CPU dev machine (AMD EPYC, AVX2, jax 0.12.1, session 15): the claims lab's 1,500-step runs
of this model (looped layers, no remat) ended at validation loss 1.748 and 1.764 (two seeds; the dense SwiGLU model
1.768 and 1.774), with the busiest expert at 1.8x and 2.5x its fair share; their step times (506 / 581 ms, dense
245 / 530 ms) were taken while other jobs shared the 2 cores and are not this recipe's speed. The full 2,000-step
recipe was run only for 200 steps here (val 2.511 at step 200, 547 ms a step, also on a shared machine).
"""

import ml_collections

from jaxformer.configs.shakespeare_char_cpu import get_config as dense_config


def get_config() -> ml_collections.ConfigDict:
    config = dense_config()
    config.name = "moe_shakespeare_char_cpu"
    config.model.activation = "swiglu"  # the dense layers' FFN (none here) and the experts' form
    config.model.positional = "learned"
    config.model.num_experts = 8
    config.model.experts_per_token = 2
    config.model.expert_d_ff = 256
    config.model.router_aux_loss_coef = 0.01
    config.model.router_z_loss_coef = 0.001
    return config
