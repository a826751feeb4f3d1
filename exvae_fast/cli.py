"""`exvae` command line: download | train | evaluate | sample | augment | retrieve | embed | table | bench.

Errors in the user's input are printed as one line (no traceback) and exit with 2;
a diverged training run exits with 3. Set EXVAE_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .train.config import RunConfig, apply_overrides, load_config, validate_config

SAMPLE_KINDS = ("unconditional", "exemplar", "iterative")
DATA_SPLITS = ("test", "val", "train")


def _trained_run_parser(sub, name: str, help: str, seeded: bool = True) -> argparse.ArgumentParser:
    """A command that reads a trained run folder: RUN_DIR, --checkpoint, --device, --data-root
    (and --seed)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--checkpoint", default="best", help="best or last")
    p.add_argument("--device", help="use this device instead of the run's (cpu, cuda, cuda:1)")
    p.add_argument("--data-root", help="where the data set's raw files are now, when not where the run "
                   "was trained (config data.root)")
    if seeded:
        p.add_argument("--seed", type=int, default=0)
    return p


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exvae", description="Fast Exemplar VAE: download data, train, evaluate, "
                                     "sample, augment, retrieve, embed, tabulate, benchmark.")
    sub = parser.add_subparsers(dest="command", required=True)

    dl = sub.add_parser("download", help="fetch a data set's raw files (checked) into a folder")
    dl.add_argument("dataset", help="mnist, fashion-mnist, omniglot or frey-faces")
    dl.add_argument("root", type=Path, nargs="?", help="destination folder (default: data/DATASET, "
                    "where the configs look)")
    dl.add_argument("--force", action="store_true", help="fetch again even when valid files are there")
    dl.add_argument("--no-progress", action="store_true")

    tr = sub.add_parser("train", help="train a model (then evaluate it and draw pictures); "
                        "data-parallel when launched by torchrun")
    tr.add_argument("--config", type=Path, help="TOML run config (see configs/); default: built-in defaults")
    tr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config field, e.g. --set train.epochs=3 (repeatable)")
    tr.add_argument("--epochs", type=int, help="shortcut for --set train.epochs=N")
    tr.add_argument("--device", help="shortcut for --set train.device=D (cpu, cuda, cuda:1)")
    tr.add_argument("--backend", help="ops backend for the whole run: auto, torch, triton, cpp")
    tr.add_argument("--seed", type=int, help="shortcut for --set train.seed=S")
    tr.add_argument("--name", help="run name (folder under out_dir)")
    tr.add_argument("--out-dir", help="parent folder of the run folder")
    tr.add_argument("--resume", type=Path, metavar="RUN_DIR",
                    help="continue the run in RUN_DIR exactly from its last checkpoint")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace a run already in the run folder (default: refuse, to keep it)")
    tr.add_argument("--no-eval", action="store_true", help="skip the final test evaluation and pictures")
    tr.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = _trained_run_parser(sub, "evaluate", seeded=False,
                             help="evaluate a run folder: ELBO, KL/reconstruction, IWAE log-likelihood")
    ev.add_argument("--split", default="test", help="test or val")
    ev.add_argument("--iw-samples", type=int, help="importance samples per point (default: the run's config)")
    ev.add_argument("--no-pictures", action="store_true")
    ev.add_argument("--no-progress", action="store_true")

    sa = _trained_run_parser(sub, "sample", help="draw samples from a trained run into a PNG grid")
    sa.add_argument("--kind", default="unconditional", help=f"one of {', '.join(SAMPLE_KINDS)}")
    sa.add_argument("--n", type=int, default=10, help="rows (exemplars / chains); 100 images for unconditional")
    sa.add_argument("--per-row", type=int, default=10, help="samples per exemplar, or steps of iterative generation")
    sa.add_argument("--from-noise", action="store_true", help="iterative generation starting from uniform noise")
    sa.add_argument("--out", type=Path, required=True, help="output PNG")

    au = _trained_run_parser(sub, "augment", help="write exemplar-conditioned samples of the training set (.npz)")
    au.add_argument("--per-example", type=int, default=1, help="samples per training image")
    au.add_argument("--out", type=Path, required=True, help="output .npz (images uint8, labels)")

    re_ = _trained_run_parser(sub, "retrieve",
                              help="draw images next to their nearest training images in the latent space")
    re_.add_argument("--split", default="test", help="where the query images come from: test, val or train "
                     "(a training image never retrieves itself)")
    re_.add_argument("--n", type=int, default=10, help="query images (rows), drawn at random")
    re_.add_argument("--k", type=int, default=10, help="neighbours per query")
    re_.add_argument("--out", type=Path, required=True, help="output PNG: each row a query and its k neighbours")
    re_.add_argument("--json", type=Path, help="also write the query indices, neighbour indices (into the "
                     "training split) and squared latent distances to this JSON file")

    em = _trained_run_parser(sub, "embed", help="2-D picture of the latent space (t-SNE or PCA of the posterior "
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
    ta.add_argument("--metrics", help="comma-separated metrics.json keys to tabulate (default: all of "
                    "log_likelihood, bits_per_dim, elbo, kl, neg_recon, active_units, knn_error.1, knn_error.10)")
    ta.add_argument("--out", type=Path, help="also write the Markdown tables to this file")
    ta.add_argument("--csv", type=Path, help="write one row per (experiment, metric): mean, std, n, seeds, runs")
    ta.add_argument("--json", type=Path, help="the same records as JSON, with each experiment's settings")
    ta.add_argument("--latex", type=Path, help="the tables as LaTeX (booktabs), for a paper")

    be = sub.add_parser("bench", help="benchmarks of the source checkout's bench/ (see bench/README.md)")
    be.add_argument("target", help="epoch (s/epoch), ops (op micro-benchmarks), priors (test log-likelihood "
                    "of each prior on the embedded digits), augment (classifier error with generated "
                    "samples) or plot (PNGs and README tables)")
    be.add_argument("args", nargs=argparse.REMAINDER, help="passed to the target; `exvae bench TARGET --help`")
    return parser


def _train_config(args: argparse.Namespace) -> RunConfig:
    if args.resume is not None:
        from .train.loop import load_run_config

        cfg = load_run_config(args.resume)
    else:
        cfg = load_config(args.config) if args.config is not None else RunConfig()
    overrides = list(args.overrides)
    shortcuts = {"train.epochs": args.epochs, "train.device": args.device, "prior.backend": args.backend,
                 "train.seed": args.seed, "name": args.name, "out_dir": args.out_dir}
    overrides += [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    cfg = apply_overrides(cfg, overrides)
    if args.resume is not None and Path(cfg.out_dir) / cfg.name != args.resume:
        # A run folder can be moved: resume in place.
        cfg.out_dir, cfg.name = str(args.resume.parent), args.resume.name
    validate_config(cfg)
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    from .report import evaluate_run
    from .train.ddp import leave
    from .train.loop import Trainer

    cfg = _train_config(args)
    trainer = Trainer(cfg, progress=not args.no_progress)
    try:
        summary = trainer.fit(resume=args.resume is not None, overwrite=args.overwrite)
    finally:
        leave(trainer.team)
    if not trainer.team.is_main:  # under torchrun, rank 0 reports and evaluates
        return 0
    print(f"trained {summary.epochs_completed} epochs in {summary.seconds:.1f} s; best validation ELBO "
          f"{summary.best_val_elbo:.3f} at epoch {summary.best_epoch}"
          f"{' (early stop)' if summary.stopped_early else ''}; run folder: {summary.run_dir}")
    if not args.no_eval:
        _print_metrics(evaluate_run(summary.run_dir, progress=not args.no_progress))
    return 0


def _print_metrics(m: dict) -> None:
    line = (f"{m['split']} ELBO {m['elbo']:.3f} (KL {m['kl']:.3f}, neg. reconstruction {m['neg_recon']:.3f}); "
            f"log-likelihood ({m['iw_samples']} importance samples) {m['log_likelihood']:.3f}; "
            f"active units {m['active_units']}/{m['latent_dim']}")
    if "bits_per_dim" in m:
        line += f"; {m['bits_per_dim']:.4f} bits/dim"
    print(line)
    if "knn_error" in m:
        print("kNN classification error of the posterior means: "
              + ", ".join(f"k={k} {100 * error:.2f}%" for k, error in m["knn_error"].items()))
    gap = m.get("retrieval_gap") or {}
    for split in (m["split"], "train"):
        if split in gap:
            shares = ", ".join(f"k={k} {100 * row['mass']:.1f}% ({row['mean']:.3g} nats)"
                               for k, row in gap[split].items())
            print(f"share of the exemplar prior carried by the k nearest exemplars ({split} rows; "
                  f"mean gap): {shares}")


def _cmd_download(args: argparse.Namespace) -> int:
    from .data.download import download_dataset

    root = args.root if args.root is not None else Path("data") / args.dataset
    paths = download_dataset(args.dataset, root, force=args.force, progress=not args.no_progress)
    print(f"{args.dataset}: {len(paths)} file(s) in {root} ({', '.join(p.name for p in paths)}); "
          f"train with --set data.root={root}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .report import evaluate_run

    _print_metrics(evaluate_run(args.run_dir, checkpoint=args.checkpoint, split=args.split,
                                iw_samples=args.iw_samples, device=args.device, data_root=args.data_root,
                                pictures=not args.no_pictures, progress=not args.no_progress))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .generation import exemplar_conditioned_samples, iterative_generation, sample_images
    from .plots import save_image_grid
    from .report import load_trained

    if args.kind not in SAMPLE_KINDS:
        raise ValueError(f"--kind: expected one of {SAMPLE_KINDS}, got {args.kind!r}")
    if args.n < 1 or args.per_row < 1:
        raise ValueError("--n and --per-row: expected positive integers")
    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    torch.manual_seed(args.seed)
    device = cfg.train.device
    picks = torch.randperm(data.train.shape[0])[: args.n]
    if args.kind == "unconditional":
        images = sample_images(model, args.n * args.per_row).reshape(args.n, args.per_row, -1)
    elif args.kind == "exemplar":
        exemplars = data.train[picks].to(device)
        samples = exemplar_conditioned_samples(model, exemplars, args.per_row)
        images = torch.cat([exemplars.unsqueeze(1), samples], dim=1)
    else:
        start = torch.rand(args.n, model.input_dim) if args.from_noise else data.train[picks]
        images = iterative_generation(model, start.to(device), args.per_row).transpose(0, 1)
    save_image_grid(images.cpu(), model.input_shape, args.out)
    print(f"wrote {args.out}")
    return 0


def _cmd_augment(args: argparse.Namespace) -> int:
    from .generation import augment_dataset, save_augmented
    from .report import load_trained

    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    torch.manual_seed(args.seed)
    images, labels = augment_dataset(model, data.train.to(cfg.train.device), data.train_labels,
                                     args.per_example, batch_size=cfg.train.eval_batch_size)
    save_augmented(args.out, images.cpu(), None if labels is None else labels.cpu())
    print(f"wrote {images.shape[0]} augmented images to {args.out}")
    return 0


def _check_split(split: str) -> None:
    if split not in DATA_SPLITS:
        raise ValueError(f"--split: expected one of {DATA_SPLITS}, got {split!r}")


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from .evaluation import encode_means, nearest_neighbours
    from .plots import save_image_grid
    from .report import load_trained, pick_rows

    _check_split(args.split)
    if args.n < 1 or args.k < 1:
        raise ValueError("--n and --k: expected positive integers")
    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    pool = getattr(data, args.split)
    picks = pick_rows(pool.shape[0], args.n, args.seed)
    queries = pool[picks]
    exclude = picks if args.split == "train" else None
    keys = encode_means(model, data.train, cfg.train.eval_batch_size)
    sq_dists, indices = nearest_neighbours(model, queries, keys, args.k, exclude=exclude,
                                           batch_size=cfg.train.eval_batch_size)
    images = torch.cat([queries.unsqueeze(1), data.train[indices.cpu()]], dim=1)  # query first
    save_image_grid(images.cpu(), model.input_shape, args.out)
    if args.json is not None:
        from .train.run_files import write_json

        write_json(args.json, {"run_dir": str(args.run_dir), "checkpoint": args.checkpoint, "split": args.split,
                               "queries": picks.tolist(), "neighbours": indices.cpu().tolist(),
                               "sq_dists": sq_dists.cpu().tolist()})
    print(f"wrote {args.out}: {picks.numel()} {args.split} images, each followed by its {args.k} nearest "
          f"training images (mean squared latent distance {float(sq_dists.mean()):.3g})")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .evaluation.embedding import METHODS
    from .report import latent_picture, load_trained

    _check_split(args.split)
    if args.method not in METHODS:
        raise ValueError(f"--method: expected one of {METHODS}, got {args.method!r}")
    if args.n is not None and args.n < 2:
        raise ValueError(f"--n: expected at least 2 points, got {args.n}")
    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    pool, labels = getattr(data, args.split), getattr(data, f"{args.split}_labels")
    method = "t-SNE" if args.method == "tsne" else "PCA"
    count = pool.shape[0] if args.n is None else min(args.n, pool.shape[0])
    picks, coords = latent_picture(model, pool, labels, args.out, dataset=data.name, method=args.method, n=args.n,
                                   perplexity=args.perplexity, seed=args.seed, batch_size=cfg.train.eval_batch_size,
                                   title=f"{method} of the posterior means: {cfg.name}, {count} {args.split} points")
    if args.json is not None:
        from .train.run_files import write_json

        write_json(args.json, {"run_dir": str(args.run_dir), "checkpoint": args.checkpoint, "split": args.split,
                               "method": args.method, "perplexity": args.perplexity, "seed": args.seed,
                               "indices": picks.tolist(), "coords": coords.tolist(),
                               "labels": None if labels is None else labels[picks].tolist()})
    print(f"wrote {args.out}: {method} of {picks.numel()} {args.split} posterior means"
          f"{'' if labels is None else ', coloured by label'}")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .atomic_io import atomic_write_text
    from .run_table import METRIC_KEYS, csv_text, find_runs, latex_report, long_records, markdown_report

    metrics = METRIC_KEYS if args.metrics is None else tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown or not metrics:
        raise ValueError(f"--metrics: expected a comma-separated subset of {','.join(METRIC_KEYS)}, "
                         f"got {args.metrics!r}")
    runs = find_runs(args.runs)
    report = markdown_report(runs, metrics)
    print(report, end="")
    if args.out is not None:
        atomic_write_text(args.out, report)
    if args.latex is not None:
        atomic_write_text(args.latex, latex_report(runs, metrics))
    if args.csv is not None or args.json is not None:
        records = long_records(runs, metrics)
        if args.csv is not None:
            atomic_write_text(args.csv, csv_text(records))
        if args.json is not None:
            atomic_write_text(args.json, json.dumps(records, indent=2) + "\n")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench_cli import run

    return run(args.target, args.args)


COMMANDS = {"download": _cmd_download, "train": _cmd_train, "evaluate": _cmd_evaluate, "sample": _cmd_sample,
            "augment": _cmd_augment, "retrieve": _cmd_retrieve, "embed": _cmd_embed, "table": _cmd_table,
            "bench": _cmd_bench}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `exvae` and `python -m exvae_fast`; returns the exit status."""
    from .train.loop import TrainingDiverged

    args = _build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TrainingDiverged as err:
        print(f"exvae {args.command}: training diverged: {err}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, ImportError) as err:
        if os.environ.get("EXVAE_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"exvae {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"exvae {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
