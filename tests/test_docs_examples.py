"""The documentation's examples stay true: README.md's command lines parse, its Python
snippets of "Using the library" run (on small data), the run-folder files it lists are the
ones RunFiles writes, and the names CONTRIBUTING.md points at exist. Cheap checks only: the
commands are parsed, never run (tests/test_cli.py runs them end to end)."""
from __future__ import annotations

import argparse
import inspect
import math
import re
import shlex
import warnings
from pathlib import Path

import pytest
import torch

import exvae_fast as ex
from exvae_fast.bench_cli import TARGETS, load_script
from exvae_fast.cli import _train_config
from exvae_fast.cli_parser import DATA_SPLITS, SAMPLE_KINDS, build_parser
from exvae_fast.evaluation.embedding import METHODS
from exvae_fast.train.config import RunConfig, apply_overrides
from exvae_fast.train.loop import RESUME_MAY_CHANGE
from exvae_fast.train.run_files import RunFiles

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of `language` in `text`, in order."""
    return [body for lang, body in FENCE.findall(text) if lang == language]


def section(text: str, heading: str) -> str:
    """The text under the `## heading` line, up to the next `## ` heading."""
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else None]


def exvae_commands(text: str) -> list[list[str]]:
    """argv (without the program) of every `exvae ...` / `python -m exvae_fast ...` /
    `torchrun ... -m exvae_fast ...` command in the bash blocks of `text`."""
    commands = []
    for block in code_blocks(text, "bash"):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["exvae"]:
                    commands.append(words[1:])
                elif "exvae_fast" in words and words[words.index("exvae_fast") - 1] == "-m":
                    commands.append(words[words.index("exvae_fast") + 1:])
    return commands


def subcommand_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """{sub-command: its option strings}."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(p._option_string_actions) for name, p in sub.choices.items()}


README_COMMANDS = exvae_commands(README)


def test_readme_lists_the_commands():
    names = {argv[0] for argv in README_COMMANDS}
    assert names >= {"download", "train", "evaluate", "sample", "augment", "retrieve", "embed", "table", "bench"}


@pytest.mark.parametrize("argv", README_COMMANDS, ids=lambda argv: " ".join(argv)[:70])
def test_readme_command_parses(argv, monkeypatch):
    """Each command line of README.md's bash blocks is accepted by `exvae`'s parser, with the
    values its command checks itself (kinds, splits, methods, bench targets, --set keys)."""
    monkeypatch.chdir(ROOT)  # configs/... are relative to the checkout, as in the README
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as err:
        pytest.fail(f"exvae {' '.join(argv)}: the parser refused it (exit {err.code})")
    if args.command == "train":
        if args.resume is None:
            _train_config(args)  # the config file, every --set key and shortcut, validated
        else:
            apply_overrides(RunConfig(), list(args.overrides))
    if args.command == "sample":
        assert args.kind in SAMPLE_KINDS
    if args.command in ("evaluate",):
        assert args.split in ("test", "val")
    if args.command in ("retrieve", "embed"):
        assert args.split in DATA_SPLITS
    if args.command == "embed":
        assert args.method in METHODS
    if args.command == "bench":
        assert args.target in TARGETS


def test_readme_inline_options_exist():
    """`exvae SUB ... --flag` written inline in README.md's prose names options SUB has."""
    options = subcommand_options(build_parser())
    spans = re.findall(r"`exvae (\w+)([^`]*)`", README.replace("\n", " "))
    assert spans
    for name, rest in spans:
        assert name in options, f"exvae {name}: no such sub-command"
        known = options[name]
        if name == "bench":  # the target's script parses the rest
            target = rest.split()[0]
            assert target in TARGETS, f"exvae bench {target}: no such target"
            known = set(load_script(TARGETS[target]).build_parser()._option_string_actions)
        for flag in re.findall(r"(?<!\S)(--[\w-]+)", rest):
            assert flag in known, f"exvae {name} {flag}: no such option"


def test_readme_resume_keys_are_the_codes():
    """The keys README.md says a resume may change are RESUME_MAY_CHANGE."""
    prose = " ".join(section(README, "Command line").split())
    listed = re.search(r"how it evaluates \(([^)]*)\)", prose).group(1)
    keys = {key.replace("*", "") for key in re.findall(r"`([^`]+)`", listed)}
    assert keys == set(RESUME_MAY_CHANGE)


def test_readme_ops_signatures():
    """The op signatures README.md shows are the public ops' (plus `backend=`)."""
    block = code_blocks(section(README, "The ops and their backends"), "python")[0]
    calls = re.findall(r"ex\.ops\.(\w+)\(([^)]*)\)", block)
    assert [name for name, _ in calls] == ["mixture_log_density", "knn_search", "cache_update_"]
    for name, arguments in calls:
        params = inspect.signature(getattr(ex.ops, name)).parameters
        for argument in (a.strip() for a in arguments.split(",")):
            key, _, default = argument.partition("=")
            assert key in params, f"{name}: no argument {key}"
            if default:
                assert repr(params[key].default) == default, f"{name}: {key} defaults to {params[key].default!r}"
        assert "backend" in params


def test_readme_run_files_are_runfiles():
    """The files README.md's run-folder table lists are the ones RunFiles names."""
    table = README[README.index("| file | what |"):]
    table = table[: table.index("\n\n")]
    listed = set()
    for row in table.splitlines()[2:]:
        listed |= set(re.findall(r"`([^`]+\.\w+)`", row.split("|")[1]))
    files = RunFiles(Path("run"))
    named = {files.config, files.best_checkpoint, files.last_checkpoint, files.environment, files.metrics_log,
             files.final_metrics, files.summary, files.loss_curve, files.samples, files.exemplar_samples}
    assert listed == {p.name for p in named} | {"latent_tsne.png"}
    assert files.metrics_for("val", "best").name == "metrics_val_best.json"
    assert "`metrics_<split>_<checkpoint>.json`" in table and "`latent_pca.png`" in table


def using_the_library() -> list[str]:
    return code_blocks(section(README, "Using the library"), "python")


def test_first_snippet_runs():
    """'Using the library', first snippet, as written (it brings its own imports)."""
    torch.manual_seed(0)
    namespace: dict = {}
    exec(compile(using_the_library()[0], "README.md", "exec"), namespace)
    loss = namespace["loss"]
    assert loss.dim() == 0 and math.isfinite(float(loss.detach()))
    assert namespace["prior"].cache.is_complete


class _TinyVAE(torch.nn.Module):
    def __init__(self, dim: int, latent: int) -> None:
        super().__init__()
        self.enc, self.dec = torch.nn.Linear(dim, 2 * latent), torch.nn.Linear(latent, dim)

    def encode(self, x):
        mu, log_var = self.enc(x).chunk(2, dim=1)
        return mu, log_var.clamp(-6, 2)


def test_own_model_recipe_runs():
    """'With your own model': the recipe with its placeholders filled in (a tiny VAE)."""
    torch.manual_seed(0)
    my_vae = _TinyVAE(12, 3)

    def my_log_px(x, z):
        return -torch.nn.functional.binary_cross_entropy_with_logits(my_vae.dec(z), x, reduction="none").sum(1)

    def my_log_q(z, mu, log_var):
        return (-0.5 * (math.log(2 * math.pi) + log_var + (z - mu) ** 2 / log_var.exp())).sum(1)

    namespace = {"torch": torch, "ex": ex, "train_x": torch.rand(40, 12), "d": 3, "my_vae": my_vae, "epochs": 2,
                 "batches": [torch.arange(0, 20), torch.arange(20, 40)], "my_log_px": my_log_px,
                 "my_log_q": my_log_q, "test_x": torch.rand(5, 12)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the recipe refreshes the cache before scoring: no staleness warning
        exec(compile(using_the_library()[1], "README.md", "exec"), namespace)
    prior = namespace["prior"]
    assert prior.cache.step == 4 and not prior.training and math.isfinite(float(namespace["loss"].detach()))
    assert namespace["log_r_test"].shape == (5,) and torch.isfinite(namespace["log_r_test"]).all()


def test_trained_run_snippet_runs(tmp_path, monkeypatch):
    """'From a trained run folder': on a one-step run of the demo config, with 10 importance
    samples instead of 1,000 (speed); checks the shapes its comments promise."""
    from exvae_fast.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(ROOT / "configs" / "mnist-5k-demo.toml"), "--set", "train.epochs=1",
                 "--set", "train.steps_per_epoch=1", "--no-eval", "--no-progress"]) == 0
    snippet = using_the_library()[2]
    assert "num_samples=1000" in snippet and '"runs/mnist-5k-demo"' in snippet
    namespace: dict = {}
    exec(compile(snippet.replace("num_samples=1000", "num_samples=10"), "README.md", "exec"), namespace)
    data, d = namespace["data"], namespace["cfg"].model.latent_dim
    assert namespace["keys"].shape == (data.train.shape[0], d)
    assert namespace["sq_dists"].shape == namespace["idx"].shape == (10, 5)
    assert namespace["new"].shape == (8, 10, data.train.shape[1])
    assert namespace["ll"].shape == (100,) and torch.isfinite(namespace["ll"]).all()


def test_documented_paths_exist():
    """Files and folders the README and CONTRIBUTING.md name in backticks are in the checkout."""
    text = README + CONTRIBUTING
    paths = set(re.findall(r"`((?:\.ci|bench|configs|csrc|exvae_fast|kernels|tests|tools)/[\w./-]*)`", text))
    paths = {p for p in paths if "<" not in p and "*" not in p}
    assert len(paths) > 10
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_contributing_names_exist():
    """The registries and helpers CONTRIBUTING.md tells a contributor to edit exist."""
    from exvae_fast.data import CLASS_NAMES, download, registry
    from exvae_fast.models import base
    from exvae_fast.models import registry as models
    from exvae_fast.ops import dispatch
    from exvae_fast.train import config

    assert {"devices", "priority"} <= set(inspect.signature(dispatch.register).parameters)
    assert dispatch.OP_BACKENDS and dispatch.KNOWN_BACKENDS
    assert {"encode", "posterior_sample", "decode", "configure"} <= set(dir(base.LatentVariableModel))
    assert models.build_model and models.MODEL_NAMES and config.MODELS and config.DATASETS
    assert registry._READERS and download.SOURCES and CLASS_NAMES
    assert "PROVIDERS = " in (ROOT / "bench" / "common.py").read_text(encoding="utf-8")
    for command in code_blocks(CONTRIBUTING, "bash"):
        for path in re.findall(r"tests/\S+\.py", command):
            assert (ROOT / path).is_file(), path
