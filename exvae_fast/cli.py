"""`exvae` command line: download | train | evaluate | sample | augment | retrieve | embed | table | bench.

Errors in the user's input are printed as one line (no traceback) and exit with 2;
a diverged training run exits with 3. Set EXVAE_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
from pathlib import Path

import torch

from .cli_parser import DATA_SPLITS, SAMPLE_KINDS, build_parser
from .train.config import RunConfig, apply_overrides, load_config, validate_config


RESUME_IGNORES = ("config", "name", "out_dir", "overwrite")
"""`exvae train` options that a --resume cannot honour: it continues RUN_DIR in place, with
the settings of its config.json (changed by --set where a resume may change them)."""


def _train_config(args: argparse.Namespace) -> RunConfig:
    if args.resume is not None:
        from .train.loop import load_run_config

        given = [f"--{name.replace('_', '-')}" for name in RESUME_IGNORES if getattr(args, name, None)]
        given += [f"--set {o.partition('=')[0]}" for o in args.overrides
                  if o.partition("=")[0].strip() in ("name", "out_dir")]
        if given:
            raise ValueError(f"--resume: continues {args.resume} in place with its own config.json, so "
                             f"{', '.join(given)} would be ignored; leave them out (a new run from a "
                             "config: --config without --resume)")
        cfg = load_run_config(args.resume)
    else:
        cfg = load_config(args.config) if args.config is not None else RunConfig()
    overrides = list(args.overrides)
    shortcuts = {"train.epochs": args.epochs, "train.device": args.device, "prior.backend": args.backend,
                 "train.seed": args.seed, "train.compile": args.compile, "name": args.name,
                 "out_dir": args.out_dir}
    overrides += [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    cfg = apply_overrides(cfg, overrides)
    if args.resume is not None and Path(cfg.out_dir) / cfg.name != args.resume:
        # A run folder can be moved: resume in place.
        cfg.out_dir, cfg.name = str(args.resume.parent), args.resume.name
    validate_config(cfg)
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    if args.seeds is not None:
        return _train_seeds(args)
    cfg = _train_config(args)
    _train_one(cfg, args, resume=args.resume is not None)
    return 0


def _train_one(cfg: RunConfig, args: argparse.Namespace, resume: bool) -> Path | None:
    """Train (and unless --no-eval evaluate) one run; its folder, or None on ranks other than 0."""
    from .report import evaluate_run
    from .train.loop import Trainer

    trainer = Trainer(cfg, progress=not args.no_progress)
    try:
        summary = trainer.fit(resume=resume, overwrite=args.overwrite)
    finally:
        trainer.leave_team()
    if not trainer.team.is_main:  # under torchrun, rank 0 reports and evaluates
        return None
    done = summary.epochs_completed
    if summary.epochs_trained == 0:
        held = [("it stopped early", "train.early_stopping_patience")] if summary.stopped_early else []
        if done >= cfg.train.epochs:
            held.append((f"train.epochs={cfg.train.epochs} counts all epochs", "train.epochs"))
        why, raise_ = (" and ".join(part) for part in zip(*held))
        print(f"nothing to train: the run holds {done} epochs and {why} (raise {raise_} to continue); "
              f"best validation ELBO {summary.best_val_elbo:.3f} at epoch {summary.best_epoch}; "
              f"run folder: {summary.run_dir}")
    else:
        first = done - summary.epochs_trained + 1
        print(f"trained epochs {first}-{done} ({summary.epochs_trained} in this session) in {summary.seconds:.1f} s; "
              f"best validation ELBO {summary.best_val_elbo:.3f} at epoch {summary.best_epoch}"
              f"{' (early stop)' if summary.stopped_early else ''}; run folder: {summary.run_dir}")
    if args.no_eval:
        return summary.run_dir
    if summary.epochs_trained > 0 or not _evaluated(summary.run_dir, summary.best_epoch):
        _print_metrics(evaluate_run(summary.run_dir, progress=not args.no_progress))
    else:  # an evaluation of the best checkpoint (perhaps with other settings) is kept
        print(f"metrics.json already evaluates the best checkpoint; kept (exvae evaluate {summary.run_dir} "
              "re-evaluates it)")
    return summary.run_dir


def _evaluated(run_dir: Path, best_epoch: int) -> bool:
    """Whether the run's metrics.json evaluates its current best checkpoint (of best_epoch),
    whatever its settings: an `exvae evaluate --iw-samples 5000` is never silently replaced."""
    import json

    from .train.run_files import RunFiles

    try:
        metrics = json.loads(RunFiles(run_dir).final_metrics.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(metrics, dict) and metrics.get("epoch") == best_epoch


def _train_seeds(args: argparse.Namespace) -> int:
    from .run_table import find_runs, markdown_report
    from .train.run_files import RunFiles

    if args.seed is not None or args.resume is not None:
        raise ValueError("--seeds: not with --seed or --resume (each seed's run is resumed when it exists)")
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise ValueError("--seeds: under torchrun launch one seed per run (--seed S --name NAME-sS)")
    base = _train_config(args)
    folders = []
    for seed in args.seeds:
        cfg = apply_overrides(base, [f"train.seed={seed}", f"name={base.name}-s{seed}"])
        files = RunFiles(Path(cfg.out_dir) / cfg.name)
        resume = not args.overwrite and files.last_checkpoint.is_file()
        print(f"seed {seed}: {'resuming' if resume else 'training'} {files.root}")
        folders.append(_train_one(cfg, args, resume=resume))
    if not args.no_eval:
        print(markdown_report(find_runs(folders)), end="")
    return 0


def _print_metrics(m: dict) -> None:
    line = (f"{m['split']} ELBO {m['elbo']:.3f} (KL {m['kl']:.3f}, neg. reconstruction {m['neg_recon']:.3f}); "
            f"log-likelihood ({m['iw_samples']} importance samples) {m['log_likelihood']:.3f}; "
            f"active units {m['active_units']}/{m['latent_dim']}")
    if "bits_per_dim" in m:
        line += f"; {m['bits_per_dim']:.4f} bits/dim"
    print(line)
    if "knn_error" in m:
        errors = sorted(m["knn_error"].items(), key=lambda item: int(item[0]))  # JSON keys: "1", "10", "3"
        print("kNN classification error of the posterior means: "
              + ", ".join(f"k={k} {100 * error:.2f}%" for k, error in errors))
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
    from .train.run_files import RunFiles

    _print_metrics(evaluate_run(args.run_dir, checkpoint=args.checkpoint, split=args.split,
                                iw_samples=args.iw_samples, device=args.device, data_root=args.data_root,
                                pictures=not args.no_pictures, progress=not args.no_progress))
    print(f"wrote {RunFiles(args.run_dir).metrics_for(args.split, args.checkpoint)}")
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from .generation import exemplar_conditioned_samples, iterative_generation, sample_images
    from .plots import save_image_grid
    from .report import load_trained

    if args.kind not in SAMPLE_KINDS:
        raise ValueError(f"--kind: expected one of {SAMPLE_KINDS}, got {args.kind!r}")
    if args.n < 1 or args.per_row < 1:
        raise ValueError("--n and --per-row: expected positive integers")
    if args.from_noise and args.kind != "iterative":
        raise ValueError(f"--from-noise: applies to --kind iterative only, not {args.kind}")
    _check_png(args.out)
    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    if args.kind == "exemplar" or (args.kind == "iterative" and not args.from_noise):
        _check_rows(args.n, data.train.shape[0], "train")  # rows start from distinct training images
    torch.manual_seed(args.seed)
    picks = torch.randperm(data.train.shape[0])[: args.n]
    batch = cfg.train.eval_batch_size
    # the generators move batches to the model's device and return images on the CPU
    if args.kind == "unconditional":
        images = sample_images(model, args.n * args.per_row, batch).reshape(args.n, args.per_row, -1)
    elif args.kind == "exemplar":
        exemplars = data.train[picks].cpu()
        samples = exemplar_conditioned_samples(model, exemplars, args.per_row, batch)
        images = torch.cat([exemplars.unsqueeze(1), samples], dim=1)
    else:
        start = torch.rand(args.n, model.input_dim) if args.from_noise else data.train[picks]
        images = iterative_generation(model, start, args.per_row, batch).transpose(0, 1)
    save_image_grid(images.cpu(), model.input_shape, args.out, lead_columns=int(args.kind != "unconditional"))
    print(f"wrote {args.out}")
    return 0


def _cmd_augment(args: argparse.Namespace) -> int:
    from .generation import augment_dataset, save_augmented
    from .report import load_trained

    if args.per_example < 1:
        raise ValueError(f"--per-example: expected a positive integer, got {args.per_example}")
    _check_suffix(args.out, ".npz", "an array data set")
    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    torch.manual_seed(args.seed)
    images, labels = augment_dataset(model, data.train.to(cfg.train.device), data.train_labels,
                                     args.per_example, batch_size=cfg.train.eval_batch_size,
                                     progress=not args.no_progress)
    save_augmented(args.out, images.cpu(), None if labels is None else labels.cpu(), model.input_shape)
    print(f"wrote {images.shape[0]} augmented images to {args.out}")
    return 0


def _check_split(split: str) -> None:
    if split not in DATA_SPLITS:
        raise ValueError(f"--split: expected one of {DATA_SPLITS}, got {split!r}")


def _check_suffix(path: Path, suffix: str, written_as: str, flag: str = "--out") -> None:
    """Refuse an output name whose suffix is not what is written (a .jpg name holding PNG bytes)."""
    if path.suffix.lower() != suffix:
        raise ValueError(f"{flag}: expected a file name ending in {suffix} ({written_as}), got '{path}'")


def _check_png(path: Path, flag: str = "--out") -> None:
    _check_suffix(path, ".png", "pictures are written as PNG", flag)


def _check_rows(n: int | None, available: int, split: str) -> None:
    """--n draws distinct rows of a split: refuse more than it has (rather than quietly fewer)."""
    if n is not None and n > available:
        raise ValueError(f"--n: expected at most {available} (the {split} split's rows), got {n}")


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from .evaluation import encode_means, nearest_neighbours
    from .plots import save_image_grid
    from .report import load_trained, pick_rows

    _check_split(args.split)
    if args.n < 1 or args.k < 1:
        raise ValueError("--n and --k: expected positive integers")
    _check_png(args.out)
    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    pool = getattr(data, args.split)
    _check_rows(args.n, pool.shape[0], args.split)
    candidates = data.train.shape[0] - int(args.split == "train")  # a training query skips itself
    if args.k > candidates:  # before encoding the training split
        raise ValueError(f"--k: expected at most {candidates} (the training split's rows"
                         f"{', less the query itself' if args.split == 'train' else ''}), got {args.k}")
    picks = pick_rows(pool.shape[0], args.n, args.seed)
    queries = pool[picks]
    exclude = picks if args.split == "train" else None
    keys = encode_means(model, data.train, cfg.train.eval_batch_size, progress=not args.no_progress)
    sq_dists, indices = nearest_neighbours(model, queries, keys, args.k, exclude=exclude,
                                           batch_size=cfg.train.eval_batch_size)
    images = torch.cat([queries.unsqueeze(1), data.train[indices.cpu()]], dim=1)  # query first
    save_image_grid(images.cpu(), model.input_shape, args.out, lead_columns=1)
    if args.json is not None:
        from .train.run_files import write_json

        write_json(args.json, {"run_dir": str(args.run_dir), "checkpoint": args.checkpoint, "split": args.split,
                               "queries": picks.tolist(), "neighbours": indices.cpu().tolist(),
                               "sq_dists": sq_dists.cpu().tolist()})
    print(f"wrote {args.out}: {picks.numel()} {args.split} images, each followed by its {args.k} nearest "
          f"training images (mean squared latent distance {float(sq_dists.mean()):.3g})")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from .evaluation.embedding import METHOD_NAMES, METHODS
    from .report import latent_picture, load_trained

    _check_split(args.split)
    if args.method not in METHODS:
        raise ValueError(f"--method: expected one of {METHODS}, got {args.method!r}")
    if args.n is not None and args.n < 2:
        raise ValueError(f"--n: expected at least 2 points, got {args.n}")
    _check_png(args.out)
    cfg, model, data, _ = load_trained(args.run_dir, args.checkpoint, args.device, args.data_root)
    pool, labels = getattr(data, args.split), getattr(data, f"{args.split}_labels")
    _check_rows(args.n, pool.shape[0], args.split)
    points = pool.shape[0] if args.n is None else args.n
    if args.method == "tsne" and not 0 < args.perplexity < points:
        raise ValueError(f"--perplexity: expected a number in (0, {points}) (below the number of points, --n), "
                         f"got {args.perplexity}")
    picks, coords = latent_picture(model, pool, labels, args.out, dataset=data.name, run_name=cfg.name,
                                   split=args.split, method=args.method, n=args.n, perplexity=args.perplexity,
                                   seed=args.seed, batch_size=cfg.train.eval_batch_size)
    if args.json is not None:
        from .train.run_files import write_json

        write_json(args.json, {"run_dir": str(args.run_dir), "checkpoint": args.checkpoint, "split": args.split,
                               "method": args.method, "perplexity": args.perplexity, "seed": args.seed,
                               "indices": picks.tolist(), "coords": coords.tolist(),
                               "labels": None if labels is None else labels[picks].tolist()})
    print(f"wrote {args.out}: {METHOD_NAMES[args.method]} of {picks.numel()} {args.split} posterior means"
          f"{'' if labels is None else ', coloured by label'}")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .atomic_io import atomic_write_text
    from .run_table import (DEFAULT_METRIC_KEYS, METRIC_KEYS, csv_text, find_runs, json_text, latex_report,
                            long_records, markdown_report, metric_chart)

    metrics = (DEFAULT_METRIC_KEYS if args.metrics is None
               else tuple(m.strip() for m in args.metrics.split(",") if m.strip()))
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown or not metrics:
        raise ValueError(f"--metrics: expected a comma-separated subset of {','.join(METRIC_KEYS)}, "
                         f"got {args.metrics!r}")
    if args.png is not None:
        _check_png(args.png, "--png")
    runs = find_runs(args.runs)
    report = markdown_report(runs, metrics)
    print(report, end="")
    if args.out is not None:
        atomic_write_text(args.out, report)
    if args.latex is not None:
        atomic_write_text(args.latex, latex_report(runs, metrics))
    if args.png is not None:
        metric_chart(runs, metrics[0], args.png)
    if args.csv is not None or args.json is not None:
        records = long_records(runs, metrics)
        if args.csv is not None:
            atomic_write_text(args.csv, csv_text(records))
        if args.json is not None:
            atomic_write_text(args.json, json_text(records))
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

    args = build_parser().parse_args(argv)
    threads_before = torch.get_num_threads()
    try:
        threads = getattr(args, "threads", None)
        if threads is not None:
            if threads < 1:
                raise ValueError(f"--threads: expected a positive integer, got {threads}")
            torch.set_num_threads(threads)
        return COMMANDS[args.command](args)
    except TrainingDiverged as err:
        print(f"exvae {args.command}: training diverged: {err}", file=sys.stderr)
        return 3
    # OSError: an output path that is a folder or not writable; UnpicklingError: a refused data pickle.
    except (ValueError, TypeError, OSError, pickle.UnpicklingError, RuntimeError, ImportError) as err:
        if os.environ.get("EXVAE_DEBUG"):
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"exvae {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"exvae {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:  # main() called from Python (a notebook, the tests) leaves torch as it found it
        torch.set_num_threads(threads_before)


if __name__ == "__main__":
    sys.exit(main())
