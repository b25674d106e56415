"""The training recipes that ship with jaxformer, by name (as big_vision's configs do).

Each recipe is a module of this package: its docstring says how to run it, how long it takes and what it reaches
(the first line is its one-line summary), and its `get_config()` builds on
`jaxformer.training.defaults.default_config()`. A new module here is a new recipe: the names are found, not listed.

    from jaxformer import configs

    configs.names()                                  # ['bert_mlm_tiny', 'seq2seq_toy', 'shakespeare_char', ...]
    configs.describe()                               # {name: first line of its docstring}
    configs.summary("seq2seq_toy")                   # that first line, for one recipe
    config = configs.get_config("seq2seq_toy")       # a recipe, by name
    config = configs.load_config("seq2seq_toy")      # a name or a path, as `--config` takes them:
    config = configs.load_config("my_recipe.py")     #   any file with a get_config()
    config = configs.load_config("my_recipe.py:big") #   ...called as get_config("big")

On the command line `--config` accepts the same values, and `--config.KEY=VALUE` overrides any of them:

    jaxformer train --config shakespeare_char_cpu --workdir workdir/shakespeare_char_cpu --config.num_steps=500
    jaxformer configs                                # every recipe with its one-line summary
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil

import ml_collections

__all__ = ["describe", "get_config", "load_config", "names", "path", "resolve", "summary"]


def names() -> list[str]:
    """The recipes' names, sorted: every module of this package whose name does not start with an underscore."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and not m.name.startswith("_"))


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"Unknown config {name!r}: not a recipe name and not a .py file. Recipes: {', '.join(names())} "
        "(`jaxformer configs` describes them); or pass the path of a file with a get_config()."
    )


def path(name: str) -> str:
    """The file of recipe `name` (what `--config NAME` loads)."""
    if name not in names():
        raise _unknown(name)
    return importlib.util.find_spec(f"{__name__}.{name}").origin


def _docstring(name: str) -> str:
    """Recipe `name`'s docstring, read from its source without importing it (no jax to load for a listing)."""
    with open(path(name), encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read())) or ""


def summary(name: str) -> str:
    """The first line of recipe `name`'s docstring."""
    return next(iter(_docstring(name).splitlines()), "")


def describe() -> dict[str, str]:
    """{name: first line of its docstring} for every recipe, in name order (what `jaxformer configs` prints)."""
    return {name: summary(name) for name in names()}


def get_config(name: str) -> ml_collections.ConfigDict:
    """`get_config()` of recipe `name` (`name:arg` calls `get_config(arg)`)."""
    name, sep, arg = name.partition(":")
    if name not in names():
        raise _unknown(name)
    module = importlib.import_module(f"{__name__}.{name}")
    return module.get_config(arg) if sep else module.get_config()


def _is_path(value: str) -> bool:
    return value.endswith(".py") or "/" in value or os.sep in value


def resolve(value: str | os.PathLike) -> str:
    """What to hand ml_collections' `config_flags.DEFINE_config_file` for `--config value`: a recipe's name becomes
    its file's path; a path stays as it is. Either may end in `:arg`, passed on to `get_config(arg)`.

    Raises ValueError for a value that is neither a recipe's name nor a path, FileNotFoundError for a missing file;
    both say which value it was and list the recipes.
    """
    value = os.fspath(value)
    target, sep, arg = value.partition(":")
    if os.path.isfile(target):  # a file in the working directory wins over a recipe of the same name
        return value
    if _is_path(target):
        raise FileNotFoundError(
            f"Config file {target!r} does not exist. Recipes: {', '.join(names())} (or pass the path of a file "
            "with a get_config())."
        )
    if target not in names():
        raise _unknown(value)
    return path(target) + sep + arg


def load_config(value: str | os.PathLike) -> ml_collections.ConfigDict:
    """The config `--config value` loads: a recipe's name (`shakespeare_char_cpu`) or the path of a file with a
    `get_config()`, either optionally followed by `:arg` (then `get_config(arg)`)."""
    value = os.fspath(value)
    if resolve(value) != value:  # a recipe's name: import it as part of the package
        return get_config(value)
    target, sep, arg = value.partition(":")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(target))[0], target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if sep else module.get_config()
