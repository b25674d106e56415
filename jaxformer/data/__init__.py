"""jaxformer.data: sources, tokenizers, token stores, prepared corpora, the grain input pipeline and synthetic tasks.

    text = data.tfds_text("tiny_shakespeare", "train")     # prepared tfds dataset in $TFDS_DATA_DIR
    tok = data.CharTokenizer.from_text(text)
    train = data.pipeline.random_windows(data.ArrayTokens(tok.encode(text)), batch_size=64, seq_len=256, seed=0)
    batches = data.pipeline.iterator(train)                # grain: next(batches), batches.get_state()

    corpus = data.open_prepared("prepared/")               # written by `jaxformer prepare`, read a window at a time
    train = data.pipeline.random_windows(corpus.split("train"), batch_size=64, seq_len=256, seed=0)
    chats = data.open_prepared_chat("prepared/chats")      # `jaxformer prepare --source chat:...`: conversations
    examples = chats.examples("train")                     # a pipeline.Examples of memory-mapped arrays

Every training dataset is deterministic in (seed, step) and its iterator resumes from `get_state()`, which the
training loop stores in its orbax checkpoint. NumPy on the host; no TensorFlow.
"""

from jaxformer.data import pipeline
from jaxformer.data.chat_corpus import PreparedChat, open_prepared_chat, prepare_chat
from jaxformer.data.hf_tokenizer import HFTokenizer
from jaxformer.data.images import ImageDataset, digits, image_dataset, mnist
from jaxformer.data.prepared import PreparedCorpus, ShardedTokens, open_prepared
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
from jaxformer.data.token_store import ArrayTokens, TokenStore
from jaxformer.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    make_tokenizer,
    tokenizer_from_dict,
)
from jaxformer.data.writer import prepare

__all__ = [
    "BOS_ID",
    "DIGIT_OFFSET",
    "EOS_ID",
    "PAD_ID",
    "PLUS_ID",
    "SEQ2SEQ_TASKS",
    "SEQ2SEQ_VOCAB",
    "ArrayTokens",
    "ByteTokenizer",
    "CharTokenizer",
    "DatasetNotPreparedError",
    "HFTokenizer",
    "ImageDataset",
    "PreparedChat",
    "PreparedCorpus",
    "SentencePieceTokenizer",
    "ShardedTokens",
    "TokenStore",
    "Tokenizer",
    "default_data_dir",
    "digits",
    "image_dataset",
    "make_tokenizer",
    "mnist",
    "open_prepared",
    "open_prepared_chat",
    "pipeline",
    "prepare",
    "prepare_chat",
    "seq2seq_decode",
    "seq2seq_encode",
    "seq2seq_task",
    "seq2seq_vocab_size",
    "text_file",
    "tfds_source",
    "tfds_text",
    "tokenizer_from_dict",
]
