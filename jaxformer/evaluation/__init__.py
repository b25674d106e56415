"""jaxformer.evaluation: benchmark scores for jaxformer models, in lm-evaluation-harness or on their own.

    import jaxformer.evaluation      # registers the lm_eval model "jaxformer" (when lm_eval is installed)
    lm_eval.simple_evaluate(model="jaxformer", model_args="pretrained=DIR_OR_ID,batch_size=8", tasks=[...])

    from jaxformer import evaluation                        # without lm_eval, e.g. in a notebook:
    evaluation.loglikelihood(model, tokenizer, [("The sky is", " blue")])   # [(log p, is_greedy)]
    evaluation.perplexity(model, tokenizer, texts, stride=None)            # a Perplexity (token, word, byte)
    scorer = evaluation.load("DIR_OR_ID", adapter=None, batch_size=8)      # or load(workdir="runs/x")

`jaxformer eval` wraps `lm_eval.simple_evaluate`. Each request kind is computed as lm_eval's `hf` backend computes
it (scoring.py says how), batched by length buckets so that an evaluation compiles a few programs.
docs/evaluation.md has the commands, a local task, and the measured numbers.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from jaxformer.evaluation.loading import generation_stop_ids, load
from jaxformer.evaluation.scoring import Scorer, Stats, rolling_windows

__all__ = [
    "Perplexity",
    "Scorer",
    "Stats",
    "generation_stop_ids",
    "harness_available",
    "load",
    "loglikelihood",
    "perplexity",
    "rolling_windows",
]


def loglikelihood(model, tokenizer, pairs: Sequence[tuple[str, str]], **scorer_args) -> list[tuple[float, bool]]:
    """[(log p(continuation | context), is_greedy)] for (context, continuation) text pairs, as lm_eval's
    `loglikelihood` requests are scored (`Scorer.loglikelihood`; scorer_args are Scorer's: batch_size,
    max_length, bos_id, eos_id, ...)."""
    return Scorer(model, tokenizer, **scorer_args).loglikelihood(pairs)


@dataclasses.dataclass(frozen=True)
class Perplexity:
    """Perplexities of texts scored whole: `loglikelihood` (nats, summed over the texts), over their `tokens`
    (predicted tokens), `words` (whitespace-separated, as lm_eval's wikitext counts) and UTF-8 `bytes`."""

    loglikelihood: float
    tokens: int
    words: int
    bytes: int

    @property
    def token_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.tokens)

    @property
    def word_perplexity(self) -> float:
        return math.exp(-self.loglikelihood / self.words)

    @property
    def bits_per_byte(self) -> float:
        return -self.loglikelihood / (self.bytes * math.log(2))


def perplexity(model, tokenizer, texts: Sequence[str], *, stride: int | None = None, **scorer_args) -> Perplexity:
    """The perplexity of `texts`, each scored whole over windows of the model's context (`rolling_windows`: with
    the default stride, lm_eval's `loglikelihood_rolling`; a smaller `stride` gives each token more context).
    scorer_args are Scorer's (batch_size, max_length, bos_id, eos_id, prefix_id, ...)."""
    if isinstance(texts, str):
        raise TypeError("`texts` must be a sequence of str; got one str (wrap it in a list).")
    scorer = Scorer(model, tokenizer, **scorer_args)
    logprobs = scorer.loglikelihood_rolling(texts, stride=stride)
    return Perplexity(
        loglikelihood=sum(logprobs),
        tokens=sum(len(scorer.encode(text)) for text in texts),
        words=sum(len(re.split(r"\s+", text)) for text in texts),
        bytes=sum(len(text.encode("utf-8")) for text in texts),
    )


def harness_available() -> bool:
    """Whether lm_eval is installed (and the "jaxformer" model registered with it)."""
    return _harness is not None


try:  # lm_eval is an optional extra: pip install 'jaxformer[eval]'
    import lm_eval.api.model  # noqa: F401
except ImportError:
    _harness = None
else:
    from jaxformer.evaluation import harness as _harness
