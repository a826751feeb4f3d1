"""The `exvae` argument parser: one sub-command per job (see cli.py for what each does)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Sequence

from .run_table.runs import DEFAULT_METRIC_KEYS, METRIC_KEYS

SAMPLE_KINDS = ("unconditional", "exemplar", "iterative")
DATA_SPLITS = ("test", "val", "train")
SEEDS_HELP = "seeds as a range, a list or both, e.g. 0-4, 0,2,7, 0 1 2 or 0-2,7"


def parse_seeds(spec: str | Sequence[str]) -> list[int]:
    """'0-4' -> [0, 1, 2, 3, 4]; '0,2,7' or ['0', '2', '7'] -> [0, 2, 7]; ranges and lists mix
    ('0-2,7'). Order kept; ValueError naming --seeds unless every seed is distinct and >= 0."""
    text = spec if isinstance(spec, str) else " ".join(spec)
    seeds: list[int] = []
    for part in (p for p in re.split(r"[,\s]+", text) if p):
        bounds = re.fullmatch(r"(\d+)-(\d+)", part)
        if bounds is not None and int(bounds[1]) <= int(bounds[2]):
            seeds.extend(range(int(bounds[1]), int(bounds[2]) + 1))
        elif part.isdigit():
            seeds.append(int(part))
        else:
            seeds = []
            break
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: expected distinct seeds >= 0 as FIRST-LAST, a list or both "
                         f"(0-4, 0,2,7, 0 1 2), got {text!r}")
    return seeds


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with usage errors in one line, as the commands report bad input (argparse
    prints the whole usage block first): "exvae train: error: MESSAGE (exvae train --help)",
    exit status 2. Sub-command parsers are of this class too (add_subparsers takes the type)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help)\n")


class SeedsAction(argparse.Action):
    """`--seeds` given as `parse_seeds` reads them (nargs="+"): stores list[int]; a bad list
    is argparse's usage error (exit status 2)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        try:
            setattr(namespace, self.dest, parse_seeds(values))  # type: ignore[arg-type]
        except ValueError as error:
            parser.error(str(error))


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """--threads N: torch's CPU threads for the command (default: torch's, about one per core)."""
    parser.add_argument("--threads", type=int, help="CPU threads torch may use (default: torch's, one per "
                        "core; fewer leaves room for other work on a shared machine)")


def trained_run_parser(sub, name: str, help: str, seeded: bool = True) -> argparse.ArgumentParser:
    """A command that reads a trained run folder: RUN_DIR, --checkpoint, --device, --data-root
    (and --seed)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", default="best", help="best or last")
    p.add_argument("--device", help="use this device instead of the run's (cpu, cuda, cuda:1)")
    p.add_argument("--data-root", help="where the data set's raw files are now, when not where the run "
                   "was trained (config data.root)")
    if seeded:
        p.add_argument("--seed", type=int, default=0, help="seed of the random picks and samples (default: 0)")
    add_threads_option(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="exvae", description="Fast Exemplar VAE: download data, train, evaluate, "
                                     "sample, augment, retrieve, embed, tabulate, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="fetch a data set's raw files (checked) into a folder")
    dl.add_argument("dataset", help="mnist, fashion-mnist, omniglot or frey-faces")
    dl.add_argument("root", type=Path, nargs="?", help="destination folder (default: data/DATASET, "
                    "where the configs look)")
    dl.add_argument("--force", action="store_true", help="fetch again even when valid files are there")
    dl.add_argument("--no-progress", action="store_true", help="no progress bars")

    tr = sub.add_parser("train", help="train a model (then evaluate it and draw pictures); "
                        "data-parallel when launched by torchrun")
    tr.add_argument("--config", type=Path, help="TOML run config (see configs/); default: built-in defaults")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set train.epochs=3 (repeatable)")
    tr.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    tr.add_argument("--device", help="shortcut for --set train.device=D (cpu, cuda, cuda:1)")
    tr.add_argument("--backend", help="ops backend for the whole run: auto, torch, triton, cpp")
    tr.add_argument("--seed", type=int, help="shortcut for --set train.seed=S")
    tr.add_argument("--compile", action="store_const", const=True,
                    help="shortcut for --set train.compile=true (torch.compile each training step's forward)")
    tr.add_argument("--seeds", nargs="+", action=SeedsAction,
                    help=f"train one run per seed ({SEEDS_HELP}), named NAME-s<seed> (a run "
                    "already there is resumed, so the same command continues an interrupted sweep), "
                    "then print their table; not under torchrun")
    tr.add_argument("--name", help="run name (folder under out_dir)")
    tr.add_argument("--out-dir", help="parent folder of the run folder")
    tr.add_argument("--resume", type=Path, metavar="RUN_DIR",
                    help="continue the run in RUN_DIR exactly from its last checkpoint")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace a run already in the run folder (default: refuse, to keep it)")
    tr.add_argument("--no-eval", action="store_true", help="skip the final test evaluation and pictures")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_option(tr)

    ev = trained_run_parser(sub, "evaluate", seeded=False,
                             help="evaluate a run folder: ELBO, KL/reconstruction, IWAE log-likelihood")
    ev.add_argument("--split", default="test", help="test or val")
    ev.add_argument("--iw-samples", type=int, help="importance samples per point (default: the run's config)")
    ev.add_argument("--no-pictures", action="store_true", help="write only the metrics JSON (default: for the test "
                    "split of the best checkpoint, also redraw the run's PNGs and report.md)")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")

    sa = trained_run_parser(sub, "sample", help="draw samples from a trained run into a PNG grid")
    sa.add_argument("--kind", default="unconditional", help=f"one of {', '.join(SAMPLE_KINDS)}")
    sa.add_argument("--n", type=int, default=10,
                    help="rows: exemplars, chains, or (unconditional) rows of --per-row samples")
    sa.add_argument("--per-row", type=int, default=10,
                    help="samples per row (per exemplar), or steps of iterative generation")
    sa.add_argument("--from-noise", action="store_true", help="iterative generation starting from uniform noise")
    sa.add_argument("--out", type=Path, required=True, help="output PNG")

    au = trained_run_parser(sub, "augment", help="write exemplar-conditioned samples of the training set (.npz)")
    au.add_argument("--per-example", type=int, default=1, help="samples per training image")
    au.add_argument("--out", type=Path, required=True,
                    help="output .npz in the array reader's layout (train uint8, train_labels)")
    au.add_argument("--no-progress", action="store_true", help="no progress bars")

    re_ = trained_run_parser(sub, "retrieve",
                              help="draw images next to their nearest training images in the latent space")
    re_.add_argument("--split", default="test", help="where the query images come from: test, val or train "
                     "(a training image never retrieves itself)")
    re_.add_argument("--n", type=int, default=10, help="query images (rows), drawn at random")
    re_.add_argument("--k", type=int, default=10, help="neighbours per query")
    re_.add_argument("--out", type=Path, required=True, help="output PNG: each row a query and its k neighbours")
    re_.add_argument("--json", type=Path, help="also write the query indices, neighbour indices (into the "
                     "training split) and squared latent distances to this JSON file")
    re_.add_argument("--no-progress", action="store_true", help="no progress bar (encoding the training split)")

    em = trained_run_parser(sub, "embed", help="2-D picture of the latent space (t-SNE or PCA of the posterior "
                             "means), coloured by label (paper Figure 5)")
    em.add_argument("--split", default="test", help="test, val or train")
    em.add_argument("--n", type=int, help="points drawn at random from the split (default: all of it; t-SNE of "
                    "tens of thousands of points takes minutes)")
    em.add_argument("--method", default="tsne", help="tsne (needs scikit-learn: pip install 'exvae-fast[viz]') or pca")
    em.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity")
    em.add_argument("--out", type=Path, required=True, help="output PNG")
    em.add_argument("--json", type=Path, help="also write the point indices, labels and 2-D coordinates")

    ta = sub.add_parser("table", help="paper-style tables (mean ± std over seeds) of evaluated run folders")
    ta.add_argument("runs", type=Path, nargs="+", help="run folders, or folders searched for run folders")
    ta.add_argument("--metrics", help="comma-separated metrics.json keys to tabulate, any of "
                    f"{', '.join(METRIC_KEYS)} (default: {', '.join(DEFAULT_METRIC_KEYS)})")
    ta.add_argument("--out", type=Path, help="also write the Markdown tables to this file")
    ta.add_argument("--csv", type=Path, help="write one row per (experiment, metric): mean, std, n, seeds, runs")
    ta.add_argument("--json", type=Path, help="the same records as JSON, with each experiment's settings")
    ta.add_argument("--latex", type=Path, help="the tables as LaTeX (booktabs), for a paper")
    ta.add_argument("--png", type=Path, help="a chart (points with error bars: sample std) of the first metric of "
                    "--metrics (default: the test log-likelihood), one panel per data set")

    be = sub.add_parser("bench", help="benchmarks of the source checkout's bench/ (see bench/README.md)")
    be.add_argument("target", help="epoch (s/epoch), ops (op micro-benchmarks), priors (test log-likelihood "
                    "of each prior on the embedded digits), augment (classifier error with generated "
                    "samples) or plot (PNGs and README tables)")
    be.add_argument("args", nargs=argparse.REMAINDER, help="passed to the target; `exvae bench TARGET --help`")
    return parser
