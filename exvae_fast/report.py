"""Evaluate a trained run folder and write its report: metrics JSON and pictures."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch

from .atomic_io import atomic_write_text
from .data import CLASS_NAMES
from .environment import environment_record
from .evaluation import (active_units, bits_per_dim, embed_2d, encode_means, evaluate_elbo, knn_classification_error,
                         log_likelihood, retrieval_gap, summarize_gap)
from .evaluation.embedding import METHOD_NAMES
from .generation import exemplar_conditioned_samples, sample_images
from .models import LatentVariableModel
from .plots import plot_embedding, plot_training_curves, read_jsonl, save_image_grid
from .priors import ExemplarPrior
from .priors.base import check_count
from .run_summary import summary_markdown
from .run_table.runs import KNN_KS
from .train.builder import build, load_data
from .train.checkpoint import load_checkpoint
from .train.config import RunConfig, apply_overrides
from .train.loop import check_device, differing_settings, load_run_config, refresh_exemplar_cache, seed_everything
from .train.run_files import RunFiles, write_json

CHECKPOINTS = ("best", "last")
SPLITS = ("test", "val")
EXEMPLAR_ROWS = 10  # exemplars shown in the exemplar-conditioned grid
EXEMPLAR_SAMPLES = 11  # samples beside each exemplar (the paper's Figure 2 plates: 1 + 11)
GAP_KS = (1, 5, 10, 50)  # neighbour counts of the retrieval gap (plus the prior's own k)
GAP_TRAIN_ROWS = 2000  # training rows (evenly spaced, each leaving itself out) it is measured on
LATENT_POINTS = 2000  # test points in the latent-space picture evaluation draws for labelled data


def load_trained(run_dir: str | Path, checkpoint: str = "best", device: str | None = None,
                 data_root: str | Path | None = None) -> tuple[RunConfig, LatentVariableModel, object, dict]:
    """(config, model with weights and a fresh exemplar cache, data splits, checkpoint dict).

    device: load onto this device instead of the run's; data_root: read the data set from
    here instead of the run's data.root (a run moved to another machine)."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint: expected one of {CHECKPOINTS}, got {checkpoint!r}")
    files = RunFiles(Path(run_dir))
    cfg = load_run_config(run_dir)
    if data_root is not None:
        cfg = apply_overrides(cfg, [f"data.root={data_root}"])
    if device is not None:
        cfg.train.device = device
    check_device(cfg.train.device, "device" if device is not None else
                 "train.device (the run's; load it with device='cpu', --device cpu on the command line)")
    try:
        data = load_data(cfg)
    except FileNotFoundError as err:
        if data_root is not None:
            raise
        raise FileNotFoundError(f"{err} (data.root {cfg.data.root!r} as the run was trained, relative to the "
                                "folder it was started in; give the data's location with data_root / "
                                "--data-root)") from err
    model = build(cfg, data)
    path = files.best_checkpoint if checkpoint == "best" else files.last_checkpoint
    ckpt = load_checkpoint(path, map_location=cfg.train.device)
    load_weights(model, ckpt, path, cfg)
    # Test-time exemplar set: the whole training set, encoded by the loaded weights.
    refresh_exemplar_cache(model, cfg.train.eval_batch_size)
    return cfg, model, data, ckpt


def load_weights(model: LatentVariableModel, ckpt: dict, path: Path, cfg: RunConfig) -> None:
    """Load the checkpoint's weights into `model` (built from the run's config.json); a
    checkpoint of another model (copied in from another run, say) raises a ValueError naming
    the settings that differ, or else torch's list of missing/unexpected/mismatched keys."""
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as err:
        differing = differing_settings(ckpt.get("config") or {}, cfg)
        if differing:
            why = "; ".join(f"{key} {before!r} there, {value!r} in config.json" for key, before, value in differing[:4])
        else:  # torch: a first line, then one tab-indented line per kind of mismatch
            why = "; ".join(line.strip() for line in str(err).splitlines()[1:] if line.strip())[:400] or str(err)
        raise ValueError(f"{path}: its weights do not fit the model of the run's config.json ({why})") from err


def evaluate_run(run_dir: str | Path, *, checkpoint: str = "best", split: str = "test",
                 iw_samples: int | None = None, device: str | None = None, data_root: str | Path | None = None,
                 pictures: bool = True, progress: bool = True) -> dict:
    """Test ELBO (KL / reconstruction), importance-weighted log-likelihood, active units,
    bits/dim for discretised-logistic data, the kNN classification error of the posterior
    means for labelled data sets, the retrieval gap for an exemplar prior, and the
    environment it ran in; writes metrics.json (test split, best checkpoint; else
    metrics_<split>_<checkpoint>.json) and, for metrics.json with `pictures`,
    `write_pictures`'s PNGs and report.md, the evaluation at a glance. Returns the metrics."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if iw_samples is not None:  # before any work (the CLI's --iw-samples)
        check_count(iw_samples, "iw_samples (--iw-samples)")
    start = time.perf_counter()
    files = RunFiles(Path(run_dir))
    cfg, model, data, ckpt = load_trained(run_dir, checkpoint, device, data_root)
    seed_everything(cfg.train.seed)
    x = data.test if split == "test" else data.val
    samples = cfg.eval.iw_samples if iw_samples is None else iw_samples
    e = cfg.eval
    elbo = evaluate_elbo(model, x, batch_size=cfg.train.eval_batch_size, progress=progress)
    ll = log_likelihood(model, x, num_samples=samples, max_rows=e.max_rows, progress=progress)
    units, _ = active_units(model, x, threshold=e.active_unit_threshold, batch_size=cfg.train.eval_batch_size,
                            progress=progress)
    metrics = {
        "run": cfg.name, "dataset": cfg.data.name, "model": cfg.model.name, "prior": cfg.prior.name,
        "prior_mode": cfg.prior.mode if cfg.prior.name == "exemplar" else None,
        "checkpoint": checkpoint, "epoch": ckpt["epoch"], "split": split, "num_points": x.shape[0],
        "elbo": elbo["elbo"], "kl": elbo["kl"], "neg_recon": elbo["neg_recon"],
        "log_likelihood": float(ll.mean()), "nll": float(-ll.mean()), "iw_samples": samples,
        "active_units": units, "latent_dim": cfg.model.latent_dim,
        "active_unit_threshold": e.active_unit_threshold,
    }
    if model.likelihood == "logistic":
        metrics["bits_per_dim"] = bits_per_dim(ll, model.input_dim)
    labels = data.test_labels if split == "test" else data.val_labels
    if data.train_labels is not None and labels is not None:
        errors = knn_classification_error(model, data.train, data.train_labels, x, labels, KNN_KS,
                                          batch_size=cfg.train.eval_batch_size, progress=progress)
        metrics["knn_error"] = {str(k): error for k, error in errors.items()}
    if isinstance(model.prior, ExemplarPrior):
        metrics["retrieval_gap"] = retrieval_gap_metrics(model, x, data.train, split,
                                                         batch_size=cfg.train.eval_batch_size,
                                                         progress=progress)
    metrics["seconds"] = time.perf_counter() - start
    metrics["environment"] = environment_record(cfg.train.device)
    metrics_path = files.metrics_for(split, checkpoint)
    write_json(metrics_path, metrics)
    if metrics_path == files.final_metrics:  # report.md and its pictures are the best checkpoint's
        # test metrics: another split or checkpoint leaves them as they are
        if pictures:
            write_pictures(files, cfg, model, data)
        atomic_write_text(files.summary, summary_markdown(cfg, metrics, files.root))  # never stale
    return metrics


def retrieval_gap_metrics(model: LatentVariableModel, x: torch.Tensor, train: torch.Tensor, split: str, *,
                          batch_size: int = 500, progress: bool = True) -> dict:
    """`summarize_gap` of the k-nearest-exemplar truncation of the test-time exemplar prior, on
    the evaluated rows x and on up to GAP_TRAIN_ROWS training rows (leave-one-out), for the
    neighbour counts GAP_KS and the prior's k that it holds (exvae_fast.evaluation.retrieval_gap)."""
    prior = model.prior
    ks = sorted(k for k in {*GAP_KS, prior.k} if k < prior.num_items)
    if not ks:
        return {}
    rows = torch.linspace(0, train.shape[0] - 1, min(GAP_TRAIN_ROWS, train.shape[0])).round().long().unique()
    return {"ks": ks,
            split: summarize_gap(retrieval_gap(model, x, ks, batch_size=batch_size, progress=progress)),
            "train": summarize_gap(retrieval_gap(model, train[rows], ks, indices=rows, batch_size=batch_size,
                                                 progress=progress))}


def pick_rows(num_rows: int, n: int | None, seed: int) -> torch.Tensor:
    """n distinct row indices drawn at random (seeded, global RNG untouched), or all rows in
    order when n is None."""
    if n is None:
        return torch.arange(num_rows)
    return torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))[:n]


def latent_picture(model: LatentVariableModel, images: torch.Tensor, labels: torch.Tensor | None,
                   path: str | Path, *, dataset: str, run_name: str, split: str, method: str = "tsne",
                   n: int | None = None, perplexity: float = 30.0, seed: int = 0,
                   batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the posterior means of n random rows of images [N, D] (all when n is None; rows of
    `split` of the run `run_name`, for the title) in 2-D (`embed_2d`), coloured by labels [N]
    when given, into a PNG; returns (row indices [n], coordinates [n, 2])."""
    picks = pick_rows(images.shape[0], n, seed)
    means = encode_means(model, images[picks], batch_size)
    coords = embed_2d(means, method, perplexity=perplexity, seed=seed)
    title = f"{METHOD_NAMES[method]} of {picks.numel()} {split} posterior means: {run_name}"
    plot_embedding(coords, path, None if labels is None else labels[picks], CLASS_NAMES.get(dataset), title)
    return picks, coords


def automatic_latent_method(points: int, perplexity: float = 30.0) -> str:
    """t-SNE where scikit-learn is installed and there are enough points for its perplexity,
    else PCA."""
    has_sklearn = importlib.util.find_spec("sklearn") is not None
    return "tsne" if has_sklearn and points > 3 * perplexity else "pca"


def write_pictures(files: RunFiles, cfg: RunConfig, model: LatentVariableModel, data) -> None:
    """loss_curve.png (if a metrics log exists), samples.png, exemplar_samples.png and, for
    labelled data, latent_tsne.png (or latent_pca.png without scikit-learn): LATENT_POINTS
    test points' posterior means coloured by label."""
    if files.metrics_log.exists():
        plot_training_curves(read_jsonl(files.metrics_log), files.loss_curve)
    shape = model.input_shape
    save_image_grid(sample_images(model, cfg.eval.num_sample_images).cpu(), shape, files.samples)
    rows = min(EXEMPLAR_ROWS, data.train.shape[0])
    picks = torch.linspace(0, data.train.shape[0] - 1, rows).long()
    exemplars = data.train[picks].cpu()  # batches go to the model's device; samples come back on the CPU
    conditioned = exemplar_conditioned_samples(model, exemplars, EXEMPLAR_SAMPLES)  # [E, n, D]
    grid = torch.cat([exemplars.unsqueeze(1), conditioned], dim=1)  # exemplar first in each row
    save_image_grid(grid.cpu(), shape, files.exemplar_samples, lead_columns=1)
    if data.test_labels is not None:
        points = min(LATENT_POINTS, data.test.shape[0])
        method = automatic_latent_method(points)
        latent_picture(model, data.test, data.test_labels, files.root / f"latent_{method}.png", dataset=data.name,
                       run_name=cfg.name, split="test", method=method, n=points,
                       batch_size=cfg.train.eval_batch_size)
