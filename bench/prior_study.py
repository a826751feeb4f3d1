"""Test log-likelihood of each prior on the embedded mnist-5k digits: the paper's density
comparison (Gaussian vs VampPrior vs Exemplar, exact and retrieval-augmented) in miniature,
sized for a CPU, so that anyone can check on their own machine that the exemplar prior does
what the paper says. Not the paper's setting (4,000 training digits, not 50,000): its
numbers are comparable with each other, not with the paper's tables.

    python bench/prior_study.py                          # 4 priors x 1 seed (1-2 h on one CPU thread)
    python bench/prior_study.py --seeds 0 1 2 --priors standard,exemplar-retrieval
    python bench/prior_study.py --epochs 2 --iw-samples 10 --runs-dir /tmp/s --no-write  # smoke
    python bench/prior_study.py --merge study.json more-priors.json  # one table of both

Every (prior, seed) is one `exvae train` run of configs/mnist-5k-demo.toml (VAE, d = 40,
batch 100, gradient-normalised Adam 5e-4) with the study's epochs, KL warm-up and early
stopping, then `exvae evaluate` on the 500 test digits (ELBO split, importance-weighted
log-likelihood, active units, the kNN classification error of the posterior means and, for
exemplar priors, the retrieval gap: the share of the
test-time prior the k nearest exemplars carry). A run folder that already has a last
checkpoint is resumed (an early-stopped or finished run trains no further), so an
interrupted study continues where it stopped. The results document is rewritten after each
run; `python bench/plot.py --markdown` puts its table in bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from exvae_fast.cli_parser import SEEDS_HELP, SeedsAction

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import tables  # noqa: E402

BASE_CONFIG = common.REPO_DIR / "configs" / "mnist-5k-demo.toml"
PRIORS: dict[str, tuple[str, list[str]]] = {
    "standard": ("Standard Gaussian", ["prior.name=standard"]),
    "vamp500": ("VampPrior(500)", ["prior.name=vamp", "prior.num_components=500"]),
    "exemplar-exact": ("Exemplar exact (M = 2,000)", ["prior.name=exemplar", "prior.mode=exact"]),
    "exemplar-retrieval": ("Exemplar retrieval k=10", ["prior.name=exemplar", "prior.mode=retrieval",
                                                       "prior.k=10"]),
    # how few neighbours Algorithm 1 can train with (not in the default set: --priors)
    "exemplar-retrieval-k1": ("Exemplar retrieval k=1", ["prior.name=exemplar", "prior.mode=retrieval",
                                                         "prior.k=1"]),
    "exemplar-retrieval-k3": ("Exemplar retrieval k=3", ["prior.name=exemplar", "prior.mode=retrieval",
                                                         "prior.k=3"]),
    # Algorithm 1 as printed: each row's own k neighbours rather than the batch's union
    "exemplar-retrieval-own": ("Exemplar retrieval k=10, own neighbours",
                               ["prior.name=exemplar", "prior.mode=retrieval", "prior.k=10",
                                "prior.retrieval_mixture=own"]),
}
DEFAULT_PRIORS = ("standard", "vamp500", "exemplar-exact", "exemplar-retrieval")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exvae bench priors", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--priors", default=",".join(DEFAULT_PRIORS), help=f"subset of {','.join(PRIORS)}")
    p.add_argument("--seeds", nargs="+", action=SeedsAction,
                   default=[0],
                   help=f"{SEEDS_HELP} (default 0)")
    p.add_argument("--epochs", type=int, default=400, help="most epochs per run")
    p.add_argument("--warmup-epochs", type=int, default=100, help="KL warm-up (paper: 100)")
    p.add_argument("--patience", type=int, default=50, help="early stopping patience (paper: 50)")
    p.add_argument("--steps-per-epoch", type=int, help="cap on the steps of an epoch (smoke runs)")
    p.add_argument("--iw-samples", type=int, default=1000, help="importance samples per test digit")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/prior-study"), help="parent of the run folders")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<device>/prior_study-<time>.json)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--merge", type=Path, nargs="+", metavar="DOC",
                   help="train nothing: merge these results documents (same study settings, other priors or "
                        "seeds) into one, written to --out (default: a new file beside the first)")
    return p


COMPARABLE = ("base_config", "dataset", "epochs", "warmup_epochs", "early_stopping_patience", "steps_per_epoch",
              "iw_samples", "device")
"""Study settings that documents must share to be merged into one table."""


def merge_documents(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One prior_study document of several measured with the same study settings on the same
    kind of device: their results in order, each record keeping the time and commit of the
    document it came from ("measured"); a (prior, seed) measured twice is refused."""
    if not docs:
        raise ValueError("--merge: expected at least one document")
    base = docs[0]
    results, seen = [], set()
    for doc in docs:
        if doc.get("kind") != "prior_study":
            raise ValueError(f"--merge: expected prior_study documents, got kind {doc.get('kind')!r}")
        differing = [key for key in COMPARABLE if doc["settings"].get(key) != base["settings"].get(key)]
        if differing or doc["device"].get("slug") != base["device"].get("slug"):
            raise ValueError(f"--merge: documents differ in {', '.join(differing) or 'device'}; only runs of "
                             "one study setting on one kind of device make one table")
        for record in doc["results"]:
            key = (record["prior"], record["seed"])
            if key in seen:
                raise ValueError(f"--merge: prior {key[0]!r} seed {key[1]} is in more than one document")
            seen.add(key)
            measured = record.get("measured") or {"created": doc["created"], "git": doc["device"].get("git")}
            results.append({**record, "measured": measured})
    settings = dict(base["settings"])
    settings["priors"] = list(dict.fromkeys(p for doc in docs for p in doc["settings"]["priors"]))
    settings["seeds"] = sorted({s for doc in docs for s in doc["settings"]["seeds"]})
    settings["overrides"] = {k: v for doc in docs for k, v in doc["settings"]["overrides"].items()}
    merged = common.result_document("prior_study", base["device"], settings, results)
    # a merged document contributes the documents it was merged from, so that every entry
    # names the time and commit of a measurement, not of a merge
    merged["merged_from"] = [entry for doc in docs for entry in doc.get("merged_from") or [
        {"created": doc["created"], "git": doc["device"].get("git"), "priors": doc["settings"]["priors"],
         "seeds": doc["settings"]["seeds"]}]]
    return merged


def run_overrides(prior: str, seed: int, args: argparse.Namespace) -> list[str]:
    """`--set` overrides of the base config for one (prior, seed) run."""
    overrides = [*PRIORS[prior][1], f"train.seed={seed}", f"train.epochs={args.epochs}",
                 f"train.warmup_epochs={args.warmup_epochs}", f"train.early_stopping_patience={args.patience}",
                 f"train.device={args.device}", f"eval.iw_samples={args.iw_samples}",
                 f"name={prior}-s{seed}", f"out_dir={args.runs_dir}"]
    if args.steps_per_epoch is not None:
        overrides.append(f"train.steps_per_epoch={args.steps_per_epoch}")
    return overrides


def train_and_evaluate(prior: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume) one run and evaluate its best checkpoint: one results record."""
    from exvae_fast.report import evaluate_run
    from exvae_fast.train.config import apply_overrides, load_config, validate_config
    from exvae_fast.train.loop import Trainer

    cfg = apply_overrides(load_config(BASE_CONFIG), run_overrides(prior, seed, args))
    validate_config(cfg)
    run_dir = Path(cfg.out_dir) / cfg.name
    resume = (run_dir / "checkpoint_last.pt").is_file()
    summary = Trainer(cfg, progress=not args.no_progress).fit(resume=resume)
    metrics = evaluate_run(run_dir, progress=not args.no_progress)
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keep = ("elbo", "kl", "neg_recon", "log_likelihood", "iw_samples", "active_units", "knn_error",
            "retrieval_gap")
    return {"prior": prior, "prior_label": PRIORS[prior][0], "seed": seed, "run_dir": str(run_dir),
            "resumed": resume, "epochs": summary.epochs_completed, "best_epoch": summary.best_epoch,
            "stopped_early": summary.stopped_early, "best_val_elbo": summary.best_val_elbo,
            "train_s_per_epoch": statistics.median(r["train_seconds"] for r in epochs),
            "val_elbo_curve": [r["val_elbo"] for r in epochs],
            "prior_variance": (None if "prior_log_var" not in epochs[-1]
                               else math.exp(epochs[-1]["prior_log_var"])),
            **{key: metrics[key] for key in keep if key in metrics}}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge:
        doc = merge_documents([common.load_document(path) for path in args.merge])
        out = args.out or common.default_result_path("prior_study", doc["device"], "mnist5k")
        common.write_json(doc, out)
        tables.print_report(tables.prior_study_caption(doc), tables.prior_study_table(doc), out)
        return 0
    priors = [p for p in args.priors.split(",") if p]
    unknown = [p for p in priors if p not in PRIORS]
    if unknown or not priors:
        raise ValueError(f"--priors: expected a subset of {','.join(PRIORS)}, got {args.priors!r}")
    with common.scoped_threads(args.threads):  # leaves an in-process caller's count as it was
        device = common.bench_device(args.device)
        info = common.device_info(device)
        settings = {"base_config": str(BASE_CONFIG.relative_to(common.REPO_DIR)), "dataset": "mnist-5k",
                    "priors": priors, "seeds": args.seeds, "epochs": args.epochs,
                    "warmup_epochs": args.warmup_epochs, "early_stopping_patience": args.patience,
                    "steps_per_epoch": args.steps_per_epoch, "iw_samples": args.iw_samples,
                    "device": str(device), "torch_threads": torch.get_num_threads(),
                    "overrides": {p: PRIORS[p][1] for p in priors}}
        doc = common.result_document("prior_study", info, settings, [])
        out = None if args.no_write else (args.out or common.default_result_path("prior_study", info, "mnist5k"))
        start = time.perf_counter()
        for seed in args.seeds:
            for prior in priors:
                t0 = time.perf_counter()
                record = train_and_evaluate(prior, seed, args)
                record["wall_s"] = time.perf_counter() - t0
                doc["results"].append(record)
                doc["elapsed_s"] = time.perf_counter() - start
                if out is not None:
                    common.write_json(doc, out)
                print(f"{record['prior_label']:<28} seed {seed}: test log-likelihood "
                      f"{record['log_likelihood']:.2f} nats after {record['epochs']} epochs "
                      f"(best {record['best_epoch']}) [{record['wall_s']:.0f} s]", flush=True)
    tables.print_report(tables.prior_study_caption(doc), tables.prior_study_table(doc), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
