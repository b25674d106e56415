"""ViT on handwritten digits: tfds mnist when it is prepared, else scikit-learn's 8x8 digits (offline).

    jaxformer train --config vit_digits --workdir workdir/vit_digits

vit-tiny overridden to 4 layers, 4 heads, d=64 (pre-norm, learned positions, class token); each image is cut
into a 4 x 4 grid of patches (2x2 pixels for digits, 7x7 for mnist), so 17 tokens. Batch 64, AdamW lr 1e-3
(warmup 100, cosine to 1e-5), weight decay 0.05, no dropout. Validation: the test split (digits: 359 images held
out by a fixed stratified split; mnist: its 10,000 test images).
Expected on the 2-core CPU dev machine with digits: about 2 minutes (1:39 measured), val_accuracy 0.92-0.94
(two runs: 0.919, 0.936) and val_loss ~0.4 at step 1500; the model fits the training set exactly by step ~900.
"""

from jaxformer.training.defaults import default_config


def get_config():
    # config.data: mnist, else digits; train / test splits; a 4 x 4 patch grid (defaults.image_data)
    config = default_config("classification")
    config.name = "vit_digits"
    config.seed = 0

    config.model.variant = "vit-tiny"
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.d_model = 64
    config.model.d_ff = 256
    config.model.dropout_rate = 0.0

    config.num_steps = 1500
    config.batch_size = 64
    config.learning_rate = 1e-3
    config.end_learning_rate = 1e-5
    config.optimizer.weight_decay = 0.05
    config.eval_every = 500
    return config
