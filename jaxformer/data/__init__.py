"""jaxformer.data: sources, tokenizers, batching, packing and synthetic tasks (NumPy on the host, no TensorFlow).

    text = data.tfds_text("tiny_shakespeare", "train")     # prepared tfds dataset in $TFDS_DATA_DIR
    tok = data.CharTokenizer.from_text(text)
    batches = data.LMBatcher(tok.encode(text), batch_size=64, seq_len=256, seed=0)

Every iterator is deterministic given its seed and resumable from its `state()`, a small dict of ints that the
training loop stores in its checkpoint.
"""

from jaxformer.data.hf_tokenizer import HFTokenizer
from jaxformer.data.images import ImageDataset, digits, image_dataset, mnist
from jaxformer.data.lm import LMBatcher, eval_batches, num_eval_batches
from jaxformer.data.packing import ShuffledBatches, pack_sequences
from jaxformer.data.sources import DatasetNotPreparedError, default_data_dir, text_file, tfds_source, tfds_text
from jaxformer.data.synthetic import (
    BOS_ID,
    DIGIT_OFFSET,
    EOS_ID,
    PAD_ID,
    PLUS_ID,
    SEQ2SEQ_TASKS,
    SEQ2SEQ_VOCAB,
    seq2seq_decode,
    seq2seq_encode,
    seq2seq_task,
    seq2seq_vocab_size,
)
from jaxformer.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    tokenizer_from_dict,
)

__all__ = [
    "BOS_ID",
    "DIGIT_OFFSET",
    "EOS_ID",
    "PAD_ID",
    "PLUS_ID",
    "SEQ2SEQ_TASKS",
    "SEQ2SEQ_VOCAB",
    "ByteTokenizer",
    "CharTokenizer",
    "DatasetNotPreparedError",
    "HFTokenizer",
    "ImageDataset",
    "LMBatcher",
    "SentencePieceTokenizer",
    "ShuffledBatches",
    "Tokenizer",
    "default_data_dir",
    "digits",
    "eval_batches",
    "image_dataset",
    "mnist",
    "num_eval_batches",
    "pack_sequences",
    "seq2seq_decode",
    "seq2seq_encode",
    "seq2seq_task",
    "seq2seq_vocab_size",
    "text_file",
    "tfds_source",
    "tfds_text",
    "tokenizer_from_dict",
]
