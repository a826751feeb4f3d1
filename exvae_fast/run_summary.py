"""report.md: a run folder's evaluation at a glance (metrics, pictures, environment), written
beside metrics.json by `exvae evaluate` and the end of `exvae train`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .run_table import markdown_table, row_name
from .train.config import RunConfig, config_to_dict, flatten

PICTURES = (("loss_curve.png", "Training curves"), ("samples.png", "Samples"),
            ("exemplar_samples.png", "Exemplar-conditioned samples (each row: an exemplar, then its samples)"),
            ("latent_tsne.png", "t-SNE of test posterior means"), ("latent_pca.png", "PCA of test posterior means"))


def _metric_rows(m: dict[str, Any]) -> list[list[str]]:
    rows = [[f"log-likelihood ({m['iw_samples']} importance samples)", f"{m['log_likelihood']:.3f} nats"]]
    if "bits_per_dim" in m:
        rows.append(["bits per dimension", f"{m['bits_per_dim']:.4f}"])
    rows += [["ELBO", f"{m['elbo']:.3f} nats"], ["KL term", f"{m['kl']:.3f} nats"],
             ["negative reconstruction", f"{m['neg_recon']:.3f} nats"],
             ["active units", f"{m['active_units']} / {m['latent_dim']} (Var(mu) > {m['active_unit_threshold']})"]]
    if m.get("knn_error"):
        errors = ", ".join(f"k={k}: {100 * e:.2f}%" for k, e in sorted(m["knn_error"].items(), key=lambda i: int(i[0])))
        rows.append(["kNN classification error of the posterior means", errors])
    gap = m.get("retrieval_gap") or {}
    for split in (m["split"], "train"):
        if split in gap:
            shares = ", ".join(f"k={k}: {100 * row['mass']:.1f}%" for k, row in gap[split].items())
            rows.append([f"share of the exemplar prior the k nearest exemplars carry ({split} rows)", shares])
    return rows


def summary_markdown(cfg: RunConfig, metrics: dict[str, Any], folder: Path) -> str:
    """The Markdown of report.md for a run evaluated into `metrics` (pictures that exist in
    `folder` are shown)."""
    settings = flatten(config_to_dict(cfg))
    lines = [f"# Run `{cfg.name}`", "",
             f"{row_name(settings)} on `{cfg.data.name}`, latent dimension {cfg.model.latent_dim}; "
             f"{metrics['checkpoint']} checkpoint (epoch {metrics['epoch']}) evaluated on "
             f"{metrics['num_points']} {metrics['split']} points in {metrics.get('seconds', 0):.0f} s "
             f"(seed {cfg.train.seed}); the numbers are those of `metrics.json`.", "",
             markdown_table(["metric", "value"], _metric_rows(metrics)), ""]
    shown = [(name, title) for name, title in PICTURES if (folder / name).is_file()]
    if shown:
        lines += ["## Pictures", ""] + [f"**{title}**\n\n![{title}]({name})\n" for name, title in shown]
    env = metrics.get("environment") or {}
    if env:
        git = env.get("git") or {}
        lines += ["## Environment", "",
                  f"{(env.get('device') or {}).get('name')}; torch {env.get('torch')} (CUDA {env.get('torch_cuda') or 'none'}), "
                  f"triton {env.get('triton')}, exvae-fast {env.get('exvae_fast')}"
                  + (f", commit {str(git.get('commit'))[:10]}" if git.get("commit") else "")
                  + (" (with uncommitted changes)" if git.get("dirty") else "")
                  + '; backend="auto" resolves to: ' + ", ".join(f"{op} {b['auto']}" for op, b in (env.get("backends") or {}).items())
                  + f"; evaluated {env.get('time')}.", ""]
    return "\n".join(lines)
