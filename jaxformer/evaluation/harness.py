"""jaxformer inside lm-evaluation-harness: an `lm_eval.api.model.LM` registered as "jaxformer".

    import jaxformer.evaluation      # registers it (when lm_eval is installed: pip install 'jaxformer[eval]')
    lm_eval.simple_evaluate(model="jaxformer", model_args="pretrained=DIR_OR_ID,batch_size=8", tasks=[...])

model_args: `pretrained` (a checkpoint directory or hub id) or `workdir` (a jaxformer training run), `adapter`
(a LoRA adapter for `pretrained`), `dtype` ("bfloat16", ...), `batch_size`, `max_length`, `max_gen_toks`,
`prefix_token_id`, `add_bos_token`, `seed`, and `mesh` ("data=4,tensor=2" is written "data:4;tensor:2" inside
model_args, whose commas separate arguments). The requests themselves are answered by `scoring.Scorer`.
"""

from __future__ import annotations

import jax
import lm_eval.models  # noqa: F401  (its lazy registry of "hf" etc., which lm_eval fills only while empty)
from flax import nnx
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from jaxformer import checks, sharding
from jaxformer.evaluation.loading import load
from jaxformer.evaluation.scoring import Scorer

NAME = "jaxformer"
_DTYPES = ("float32", "bfloat16", "float16")


@register_model(NAME)
class JaxformerLM(LM):
    """lm_eval's three request kinds answered by a jaxformer `Scorer` (see jaxformer.evaluation.scoring)."""

    def __init__(
        self,
        pretrained: str | None = None,
        *,
        workdir: str | None = None,
        adapter: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        prefix_token_id: int | None = None,
        add_bos_token: bool | None = None,
        mesh: str | None = None,
        seed: int = 0,
        scorer: Scorer | None = None,
        device: str | None = None,  # lm_eval passes its --device; jax places the model itself (`mesh`)
        max_batch_size: int | None = None,  # for lm_eval's batch_size="auto", which jaxformer does not search
        **unknown,
    ):
        super().__init__()
        if unknown:
            raise ValueError(
                f"model_args {sorted(unknown)} are not jaxformer's; it takes pretrained, workdir, adapter, dtype, "
                "batch_size, max_length, max_gen_toks, prefix_token_id, add_bos_token, mesh, seed."
            )
        if isinstance(batch_size, str) and batch_size.isdigit():
            batch_size = int(batch_size)
        if not isinstance(batch_size, int):
            raise ValueError(
                f"batch_size must be a positive int (jaxformer compiles one shape per batch); got {batch_size!r}."
            )
        if scorer is not None:  # an already built Scorer (a model in memory)
            self.scorer = scorer
        else:
            if dtype is not None and dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {_DTYPES}; got {dtype!r}.")
            self.scorer = load(
                pretrained,
                workdir=workdir,
                adapter=adapter,
                dtype=dtype,
                mesh=_mesh(mesh),
                batch_size=batch_size,
                max_length=max_length,
                max_gen_toks=max_gen_toks,
                prefix_id=prefix_token_id,
                add_special_tokens=add_bos_token,
                seed=checks.check_int("seed", seed),
            )
        self.pretrained, self.workdir = pretrained, workdir
        self._chat = None  # the chat template, read when lm_eval applies one

    # -- the three request kinds --------------------------------------------------------------------------------

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        args = [request.args for request in requests]
        results = self.scorer.loglikelihood(args)
        for pair, result in zip(args, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        texts = [request.args[0] for request in requests]
        results = self.scorer.loglikelihood_rolling(texts)
        for text, result in zip(texts, results, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        args = [request.args for request in requests]
        results = self.scorer.generate_until(args)
        for request, result in zip(args, results, strict=True):
            self.cache_hook.add_partial("generate_until", request, result)
        return results

    # -- what lm_eval reads besides -----------------------------------------------------------------------------

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The checkpoint's (or chat run's) chat template source, when lm_eval is asked to apply one."""
        return self._template().source if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The few-shot conversation rendered by the model's chat template (`data.chat.ChatTemplate`); without
        `add_generation_prompt` the text ends with the last message's content (transformers'
        continue_final_message: an assistant reply being prefilled)."""
        template = self._template()
        if add_generation_prompt:
            return template.render(chat_history, add_generation_prompt=True)
        text = template.render(chat_history)
        final = chat_history[-1]["content"]
        end = text.rfind(final)
        if not final or end < 0:
            raise ValueError("The chat template does not write the final message's content as it is.")
        return text[: end + len(final)]

    def _template(self):
        if self._chat is None:
            from jaxformer.data.chat import ChatTemplate
            from jaxformer.training.trained import load_chat_template

            self._chat = (
                ChatTemplate.from_pretrained(self.pretrained) if self.pretrained else load_chat_template(self.workdir)
            )
        return self._chat

    @property
    def tokenizer_name(self) -> str:
        return str(self.pretrained or self.workdir or "jaxformer").replace("/", "__")

    def get_model_info(self) -> dict:
        cfg = self.scorer.model.config
        return {"model_num_parameters": _parameter_count(self.scorer.model), "model_dtype": str(cfg.dtype)}


def _parameter_count(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _mesh(spec: str | None):
    """ "data:2;tensor:4" -> a mesh of those axis sizes (the rest 1; data -1 takes the remaining devices)."""
    if spec is None:
        return None
    sizes = {}
    for part in str(spec).replace(";", ",").split(","):
        name, _, value = part.partition(":")
        if name.strip() not in sharding.MESH_AXES or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"mesh={spec!r}: write it as 'data:N;fsdp:N;tensor:N' (axes {sharding.MESH_AXES}).")
        sizes[name.strip()] = int(value)
    return sharding.make_mesh(**sizes)


def evaluate(
    *,
    tasks: list[str],
    include_path: str | None = None,
    include_defaults: bool = True,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    seed: int = 0,
    bootstrap_iters: int = 0,
    output_path: str | None = None,
    **model_args,
) -> tuple[str, JaxformerLM]:
    """`jaxformer eval`: lm_eval.simple_evaluate of `tasks` with a JaxformerLM of `model_args`; returns lm_eval's
    results table (as its CLI prints it) and the model (its `scorer.stats`). `output_path`: the results and every
    request's answers as JSON."""
    import json
    import os

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    if include_path is not None and not os.path.isdir(include_path):
        raise FileNotFoundError(f"--include_path {include_path!r} is not a directory of task YAMLs.")
    manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        where = f"{include_path!r}" + (" or lm_eval's built-in tasks" if include_defaults else "")
        raise KeyError(f"No task named {missing} in {where}.")
    lm = JaxformerLM(seed=seed, **model_args)
    results = simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        bootstrap_iters=bootstrap_iters,
        log_samples=output_path is not None,
        apply_chat_template=apply_chat_template,
        random_seed=seed,
        fewshot_random_seed=seed,
    )
    table = make_table(results)
    if "groups" in results:
        table += "\n" + make_table(results, "groups")
    if output_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
        with open(output_path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2, default=str)
    return table, lm
