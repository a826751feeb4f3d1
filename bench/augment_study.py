"""Generative data augmentation on the embedded digits: does a classifier trained with
exemplar-conditioned samples of a trained Exemplar VAE make fewer test errors (the paper's
section 5 application, where it took permutation-invariant MNIST from 1.17% to 0.69%)?
A miniature sized for a CPU (4,000 training digits), run against the prior study's models:

    python bench/augment_study.py                 # after bench/prior_study.py; CPU: ~10 min
    python bench/augment_study.py --run exemplar=runs/prior-study/exemplar-retrieval-s0 --seeds 0 1

Conditions: `real` (the training digits only) and, for each trained run given by --run
LABEL=PATH, `LABEL`: each training digit has `--per-example` generated images, the
decoder's means at z ~ N(mu_phi(x_n), sigma^2 I) (`generation.augment_dataset`; the posterior
q(z | x_n) for non-exemplar priors), drawn once, labelled like their exemplar; in every
minibatch each digit is replaced by one of its images with probability `--replace-prob`. The classifier is an
MLP (784-H-H-10, ReLU) trained with Adam and cross-entropy for a fixed number of epochs;
the test error is read at the epoch of the lowest validation error (500 validation digits),
so no condition sees the test digits before its report. Same seeds, steps and architecture
for every condition. On the binarised digit sets every image the classifier sees is binary,
like the test digits (binarised once by the data set): real digits are binarised in every
minibatch as the VAE's own training does, and a generated digit becomes a draw of p(x | z),
Bernoulli with the decoder's means.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from exvae_fast.cli_parser import SEEDS_HELP, SeedsAction

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import tables  # noqa: E402

STUDY_RUNS = Path("runs/prior-study")
DEFAULT_RUNS = {"exemplar": STUDY_RUNS / "exemplar-retrieval-s0", "standard-vae": STUDY_RUNS / "standard-s0"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exvae bench augment", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], metavar="LABEL=PATH",
                   help="a trained run folder whose samples augment the data (repeatable); default: "
                        + ", ".join(f"{k}={v}" for k, v in DEFAULT_RUNS.items()) + " where present")
    p.add_argument("--seeds", nargs="+", action=SeedsAction,
                   default=[0, 1, 2],
                   help=f"{SEEDS_HELP} (default 0 1 2)")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--hidden", type=int, default=512, help="units of each of the two hidden layers")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--per-example", type=int, default=10, help="samples drawn per training digit")
    p.add_argument("--replace-prob", type=float, default=0.5, help="chance a digit is replaced by a sample")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<device>/augment_study-<time>.json)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    return p


def parse_runs(items: list[str]) -> dict[str, Path]:
    """{label: run folder} from LABEL=PATH items, or the prior study's runs that exist."""
    if not items:
        return {label: path for label, path in DEFAULT_RUNS.items() if (path / "checkpoint_best.pt").is_file()}
    runs = {}
    for item in items:
        label, sep, path = item.partition("=")
        if not sep or not label or not path or label == "real":
            raise ValueError(f"--run: expected LABEL=PATH with a label other than 'real', got {item!r}")
        if not (Path(path) / "checkpoint_best.pt").is_file():
            raise FileNotFoundError(f"--run {label}: no checkpoint_best.pt in {path}")
        runs[label] = Path(path)
    return runs


def sample_pool(run_dir: Path, per_example: int, seed: int = 0) -> tuple[Tensor, dict[str, Any], Any]:
    """(samples [N, per_example, D] of every training digit of the run's data set, a short
    description of the run, the data splits)."""
    from exvae_fast.generation import augment_dataset
    from exvae_fast.report import load_trained

    cfg, model, data, ckpt = load_trained(run_dir, "best", "cpu")
    torch.manual_seed(seed)
    images, _ = augment_dataset(model, data.train, None, per_example, progress=False)
    about = {"run_dir": str(run_dir), "prior": cfg.prior.name, "prior_mode": cfg.prior.mode,
             "model": cfg.model.name, "epoch": ckpt["epoch"], "dataset": cfg.data.name}
    return images.view(data.train.shape[0], per_example, -1), about, data


def classifier(input_dim: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))


def error_rate(net: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) != y).float().mean())


def train_classifier(data, pool: Tensor | None, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one classifier; the test error at the epoch of the lowest validation error."""
    torch.manual_seed(seed)
    x, y = data.train, data.train_labels
    classes = int(y.max()) + 1
    net = classifier(x.shape[1], args.hidden, classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    best = {"val_error": float("inf")}
    curve = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        for rows in torch.randperm(x.shape[0]).split(args.batch_size):
            batch = x[rows]
            if pool is not None:
                replace = torch.rand(rows.shape[0]) < args.replace_prob
                picks = pool[rows, torch.randint(pool.shape[1], (rows.shape[0],))]
                batch = torch.where(replace[:, None], picks, batch)
            if data.dynamic_binarization:  # binary like the test digits; a sample is then a draw of p(x | z)
                batch = torch.bernoulli(batch)
            optimizer.zero_grad()
            loss_fn(net(batch), y[rows]).backward()
            optimizer.step()
        net.eval()
        val_error = error_rate(net, data.val, data.val_labels)
        curve.append(val_error)
        if val_error < best["val_error"]:
            best = {"val_error": val_error, "best_epoch": epoch,
                    "test_error": error_rate(net, data.test, data.test_labels)}
    return {**best, "val_curve": curve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.replace_prob <= 1:
        raise ValueError(f"--replace-prob: expected a probability in [0, 1], got {args.replace_prob}")
    runs = parse_runs(args.run)
    if not runs:
        raise FileNotFoundError("no trained run to augment with: run bench/prior_study.py first, or pass --run")
    with common.scoped_threads(args.threads):  # leaves an in-process caller's count as it was
        pools, about, data = {}, {}, None
        for label, run_dir in runs.items():
            pools[label], about[label], data = sample_pool(run_dir, args.per_example)
        if len({a["dataset"] for a in about.values()}) > 1:
            raise ValueError(f"--run: the runs were trained on different data sets: {about}")
        if data.train_labels is None:
            raise ValueError(f"--run: the data set {about[label]['dataset']!r} has no labels to classify")
        info = common.device_info(torch.device("cpu"))
        settings = {key: getattr(args, key) for key in ("seeds", "epochs", "hidden", "lr", "batch_size",
                                                        "per_example", "replace_prob")}
        settings.update(runs=about, torch_threads=torch.get_num_threads(), dataset=about[label]["dataset"],
                        classifier=f"MLP {data.train.shape[1]}-{args.hidden}-{args.hidden}-"
                                   f"{int(data.train_labels.max()) + 1}, ReLU, Adam, cross-entropy")
        doc = common.result_document("augment_study", info, settings, [])
        out = None if args.no_write else (args.out or common.default_result_path("augment_study", info, "mnist5k"))
        for seed in args.seeds:
            for condition in ["real", *pools]:
                t0 = time.perf_counter()
                record = {"condition": condition, "seed": seed,
                          **train_classifier(data, pools.get(condition), seed, args),
                          "wall_s": time.perf_counter() - t0}
                doc["results"].append(record)
                if out is not None:
                    common.write_json(doc, out)
                print(f"{condition:<14} seed {seed}: test error {100 * record['test_error']:.2f}% at epoch "
                      f"{record['best_epoch']} (validation {100 * record['val_error']:.2f}%)", flush=True)
    tables.print_report(tables.augment_study_caption(doc), tables.augment_study_table(doc), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
