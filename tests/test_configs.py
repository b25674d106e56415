"""The recipes ship with the package (`jaxformer.configs`): by name, by path, `jaxformer configs`, `--config NAME`."""

import glob
import importlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest
import setuptools

from jaxformer import cli, configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = [
    "bert_mlm_tiny",
    "chat_dpo_cpu",
    "chat_sft_cpu",
    "gemma_chat_sft",
    "gemma_finetune_shakespeare",
    "gemma_lora_shakespeare",
    "gpt2_finetune_shakespeare",
    "lora_tiny_cpu",
    "moe_shakespeare_char_cpu",
    "seq2seq_toy",
    "shakespeare_char",
    "shakespeare_char_cpu",
    "vit_digits",
]


def test_names_are_the_package_modules_sorted():
    assert configs.names() == RECIPES
    files = glob.glob(os.path.join(os.path.dirname(configs.__file__), "[!_]*.py"))
    assert sorted(os.path.splitext(os.path.basename(f))[0] for f in files) == configs.names()


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_loads_the_same_by_name_and_by_path(name, monkeypatch):
    by_name = configs.load_config(name)
    assert by_name.name == name
    path = configs.path(name)
    assert path == os.path.join(ROOT, "jaxformer", "configs", f"{name}.py")
    assert configs.resolve(name) == path
    monkeypatch.chdir(os.path.dirname(path))  # a relative path too, as `--config x.py` in that folder
    for config in (configs.load_config(path), configs.load_config(f"{name}.py"), configs.get_config(name)):
        assert config == by_name
        assert config.to_dict() == by_name.to_dict()


@pytest.mark.parametrize("name", RECIPES)
def test_a_recipe_documents_its_by_name_command(name):
    doc = importlib.import_module(f"jaxformer.configs.{name}").__doc__
    assert configs.summary(name) == doc.splitlines()[0] != ""
    assert f"jaxformer train --config {name} " in doc
    assert "experiments/configs" not in doc


def test_an_unknown_name_is_named_and_the_recipes_listed():
    for call in (configs.load_config, configs.get_config, configs.resolve, configs.path):
        with pytest.raises(ValueError, match=r"Unknown config 'shakespeare_cpu'") as error:
            call("shakespeare_cpu")
        assert all(name in str(error.value) for name in RECIPES)
    with pytest.raises(FileNotFoundError, match=r"'no/such_recipe.py' does not exist") as error:
        configs.load_config("no/such_recipe.py")
    assert "shakespeare_char_cpu" in str(error.value)


def test_a_suffix_after_a_colon_is_passed_to_get_config(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(
        "from jaxformer.configs import shakespeare_char_cpu\n\n\n"
        "def get_config(size='small'):\n"
        "    config = shakespeare_char_cpu.get_config()\n"
        "    config.model.d_model = {'small': 64, 'big': 256}[size]\n"
        "    return config\n"
    )
    assert configs.load_config(path).model.d_model == 64
    assert configs.load_config(f"{path}:big").model.d_model == 256
    assert configs.resolve(f"{path}:big") == f"{path}:big"
    assert configs.resolve("seq2seq_toy:big") == configs.path("seq2seq_toy") + ":big"  # as config_flags reads it


def test_the_cli_resolves_config_names_before_absl_parses_them():
    path = configs.path("seq2seq_toy")
    argv = ["p", "--config", "seq2seq_toy", "--config.num_steps=3", "--workdir", "w"]
    assert cli._resolve_config(argv) == ["p", f"--config={path}", "--config.num_steps=3", "--workdir", "w"]
    argv = ["p", "-config=seq2seq_toy:x", "--", "--config", "zz"]  # absl reads nothing after `--` as a flag
    assert cli._resolve_config(argv) == ["p", f"-config={path}:x", "--", "--config", "zz"]
    assert cli._resolve_config(["p", f"--config={path}"]) == ["p", f"--config={path}"]


def test_the_cli_names_an_unknown_config_and_lists_the_recipes(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["jaxformer", "train", "--config", "nanogpt", "--workdir", "w"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Unknown config 'nanogpt'" in err and all(name in err for name in RECIPES)


def test_jaxformer_configs_lists_every_recipe_with_its_summary(capsys):
    assert cli.main(["jaxformer", "configs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == RECIPES
    for line, name in zip(lines, RECIPES, strict=True):
        assert line.endswith(configs.summary(name)) and line.split(maxsplit=1)[1] == configs.summary(name)
    assert configs.describe() == {name: configs.summary(name) for name in RECIPES}


def test_jaxformer_memory_by_name_with_overrides(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200)
    args = ["--config", "shakespeare_char_cpu", "--devices", "8", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
    args += ["--config.data.source=text_file", f"--config.data.path={corpus}", "--config.batch_size=16"]
    out = subprocess.run(
        [sys.executable, "-m", "jaxformer.cli", "memory", *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "parameters on 8 devices (data=1 x fsdp=8 x tensor=1 x expert=1 x context=1)" in out.stdout
    # --model with --config: the run with a published architecture; with neither --config nor --cache_len: an error
    args = ["--config", "shakespeare_char_cpu", "--model", "llama3.2-1b", "--devices", "8", "--config.mesh.data=1"]
    args += ["--config.mesh.context=8", "--config.data.source=text_file", f"--config.data.path={corpus}"]
    args += ["--config.batch_size=1", "--config.data.seq_len=4096"]
    for extra, expected in [
        ([], "1,235,814,400 parameters on 8 devices (data=1 x fsdp=1 x tensor=1 x expert=1 x context=8)"),
        (["--cache_len", "64"], "pass --config (a training run, optionally with --model"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "jaxformer.cli", "memory", *args, *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert expected in out.stdout + out.stderr, out.stderr[-3000:]
    out = subprocess.run(
        [sys.executable, "-m", "jaxformer.cli", "memory", "--model", "gpt2-tiny"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "--model without --config needs --cache_len N > 0" in out.stderr


def test_every_documented_config_name_is_a_recipe():
    files = ["README.md", "BENCHMARKS.md", "Makefile", "colab/_build.py", *glob.glob("docs/*.md", root_dir=ROOT)]
    files += [os.path.relpath(configs.path(name), ROOT) for name in RECIPES]
    seen = set()
    for file in files:
        with open(os.path.join(ROOT, file)) as f:
            text = f.read()
        assert "experiments/configs" not in text, file
        for name in re.findall(r"--config[ =]([a-z][a-z0-9_]*)\b(?![./:])", text):
            assert name in RECIPES, f"{file}: --config {name}"
            seen.add(name)
    assert seen == set(RECIPES)


def test_the_recipes_import_outside_the_repository(tmp_path):
    """From a working directory outside the repository (the editable install's jaxformer, no experiments/)."""
    code = "from jaxformer import configs; print(configs.names()); print(configs.load_config('seq2seq_toy').name)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == [str(RECIPES), "seq2seq_toy"]


def test_the_recipes_ship_with_the_packages_pyproject_installs(tmp_path):
    """A copy of exactly the packages pyproject.toml's package discovery ships, run with `python -S` (no .pth files,
    so not the editable install) from outside the repository: `jaxformer configs` and a recipe by name work."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
    packages = setuptools.find_packages(ROOT, include=find["include"], exclude=find.get("exclude", ()))
    assert "jaxformer.configs" in packages
    site = tmp_path / "site"
    for package in packages:
        source = os.path.join(ROOT, *package.split("."))
        target = site.joinpath(*package.split("."))
        target.mkdir(parents=True)
        for file in glob.glob("*.py", root_dir=source):
            shutil.copy(os.path.join(source, file), target / file)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])}
    work = tmp_path / "work"
    work.mkdir()

    def python(*args):
        out = subprocess.run(
            [sys.executable, "-S", *args], cwd=work, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    listing = python("-m", "jaxformer.cli", "configs")
    assert [line.split()[0] for line in listing.splitlines()] == RECIPES
    code = "from jaxformer import configs; print(configs.__file__); print(configs.load_config('shakespeare_char').name)"
    file, name = python("-c", code).splitlines()
    assert file == str(site / "jaxformer" / "configs" / "__init__.py") and name == "shakespeare_char"
