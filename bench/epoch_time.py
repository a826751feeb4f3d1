"""Seconds per training epoch: (VAE, HVAE, ConvHVAE) x (Standard, VampPrior(500),
VampPrior(1000), Exemplar exact torch, Exemplar retrieval k=10 torch, Exemplar retrieval
k=10 fused) on MNIST-shaped (50,000 x 784) and Omniglot-shaped (23,000 x 784) data: the
paper's section H comparison (T4: ConvHVAE Omniglot VampPrior(1000) 58 s/epoch vs
Exemplar 51; ConvHVAE MNIST VampPrior(500) 82 vs Exemplar 107).

    python bench/epoch_time.py --quick                    # the quick sweep (GPU: < 5 min)
    python bench/epoch_time.py --quick --device cpu --threads 1 --size-scale 0.02 --steps 2 --models vae --no-write
    python bench/epoch_time.py --data-root mnist=/data/mnist --epochs-fraction 1

What one epoch includes: every training step of the epoch as `Trainer._train_epoch` runs
it (shuffling, minibatch indexing, dynamic binarisation, forward, loss, backward,
optimizer step, the prior's kNN search and cache write-backs, the loop's per-step
finite-loss check) plus the per-epoch full refresh of the latent cache (exemplar priors,
Algorithm 1). Excluded: validation, checkpoints, logging, model construction, the initial
cache fill and the warm-up steps. With a fraction below 1 only `timed_steps` steps are
timed and the epoch is extrapolated: t_steps * steps_per_epoch / timed_steps + t_refresh
(said so in the table and the JSON). The device is synchronised before each clock read.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import math
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import tables  # noqa: E402

MODELS = {"vae": "VAE", "hvae": "HVAE", "convhvae": "ConvHVAE"}
EXACT_MAX_EXEMPLARS = 25_000
"""Exemplar sub-sample M of both exemplar priors: min(25,000, N/2), the authors' setting
(25,000 of MNIST's 50,000; half of Omniglot's 23,000 is 11,500, as in Table 5)."""


@dataclass(frozen=True)
class PriorSpec:
    label: str
    fields: dict[str, Any]  # PriorConfig fields; num_exemplars is filled in per data set


PRIORS: dict[str, PriorSpec] = {
    "standard": PriorSpec("Standard", {"name": "standard"}),
    "vamp500": PriorSpec("VampPrior(500)", {"name": "vamp", "num_components": 500}),
    "vamp1000": PriorSpec("VampPrior(1000)", {"name": "vamp", "num_components": 1000}),
    "exact-torch": PriorSpec("Exemplar exact (torch)", {"name": "exemplar", "mode": "exact", "backend": "torch"}),
    "retrieval-torch": PriorSpec("Exemplar retrieval k=10 (torch)",
                                 {"name": "exemplar", "mode": "retrieval", "k": 10, "backend": "torch"}),
    "retrieval-fused": PriorSpec("Exemplar retrieval k=10 (fused, auto)",
                                 {"name": "exemplar", "mode": "retrieval", "k": 10, "backend": "auto"}),
}


@dataclass(frozen=True)
class DatasetSpec:
    label: str
    size: int  # training rows
    real_name: str  # exvae_fast.data name when --data-root is given


DATASETS = {"mnist": DatasetSpec("MNIST-shaped", 50_000, "mnist"),
            "omniglot": DatasetSpec("Omniglot-shaped", 23_000, "omniglot")}

# Run order: the paper's comparison (ConvHVAE; VampPrior vs fused retrieval) first, so a
# time budget that runs out drops the least important rows.
RUN_ORDER_MODELS = ("convhvae", "hvae", "vae")
RUN_ORDER_PRIORS = ("vamp500", "retrieval-fused", "vamp1000", "retrieval-torch", "exact-torch", "standard")

QUICK = {"epochs_fraction": 0.02, "min_steps": 10, "repeats": 3, "warmup_steps": 3}
FULL = {"epochs_fraction": 1.0, "min_steps": 1, "repeats": 3, "warmup_steps": 20}

INCLUDED = ("all training steps of an epoch (shuffle, batch indexing, dynamic binarisation, forward, "
            "backward, optimizer step, kNN search and cache write-backs, per-step finite-loss check) "
            "+ the per-epoch latent-cache refresh")
EXCLUDED = "validation, checkpoint I/O, logging, model construction, initial cache fill, warm-up steps"


def _parse_roots(items: list[str]) -> dict[str, str]:
    roots = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or name not in DATASETS:
            raise ValueError(f"--data-root: expected NAME=PATH with NAME in {', '.join(DATASETS)}, got {item!r}")
        roots[name] = path
    return roots


def _csv(text: str, valid: dict | tuple, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise ValueError(f"--{what}: expected a comma-separated subset of {', '.join(valid)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exvae bench epoch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"quick preset {QUICK} (default without it: {FULL})")
    p.add_argument("--epochs-fraction", type=float, help="time this fraction of each epoch's steps and extrapolate")
    p.add_argument("--steps", type=int, help="time exactly this many steps per repeat (overrides the fraction)")
    p.add_argument("--min-steps", type=int, help="at least this many timed steps per repeat")
    p.add_argument("--repeats", type=int, help="timed repeats per configuration (median and spread over them)")
    p.add_argument("--warmup-steps", type=int, help="untimed steps (and one cache refresh) first")
    p.add_argument("--models", default=",".join(MODELS), help="subset of vae,hvae,convhvae")
    p.add_argument("--priors", default=",".join(PRIORS), help=f"subset of {','.join(PRIORS)}")
    p.add_argument("--datasets", default=",".join(DATASETS), help="subset of mnist,omniglot")
    p.add_argument("--data-root", action="append", default=[], metavar="NAME=PATH",
                   help="real data (mnist: IDX folder; omniglot: chardata.mat) instead of synthetic")
    p.add_argument("--size-scale", type=float, default=1.0,
                   help="scale the training-set sizes (CPU smoke runs); recorded in the JSON")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true",
                   help="train.compile: torch.compile each step's forward (compiled in the warm-up steps)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; $EXVAE_BENCH_THREADS)")
    p.add_argument("--time-budget", type=float, help="seconds; configurations that would start after it are skipped")
    p.add_argument("--out", type=Path, help="results JSON (default bench/results/<device>/epoch_time-<preset>-<time>.json)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    return p


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    preset = dict(QUICK if args.quick else FULL)
    for key in ("epochs_fraction", "min_steps", "repeats", "warmup_steps"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if not 0 < preset["epochs_fraction"] <= 1:
        raise ValueError(f"--epochs-fraction: expected a number in (0, 1], got {preset['epochs_fraction']}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps: expected >= 1, got {args.steps}")
    for key in ("min_steps", "repeats"):
        if preset[key] < 1:
            raise ValueError(f"--{key.replace('_', '-')}: expected >= 1, got {preset[key]}")
    if preset["warmup_steps"] < 0:
        raise ValueError("--warmup-steps: expected >= 0")
    if not 0 < args.size_scale <= 1:
        raise ValueError(f"--size-scale: expected a number in (0, 1], got {args.size_scale}")
    roots = _parse_roots(args.data_root)
    return {
        "preset": "quick" if args.quick else "full",
        **preset,
        "steps": args.steps,
        "models": _csv(args.models, MODELS, "models"),
        "priors": _csv(args.priors, PRIORS, "priors"),
        "datasets": _csv(args.datasets, DATASETS, "datasets"),
        "data_roots": roots,
        "data_source": ", ".join(f"{n}: {roots.get(n, 'synthetic')}" for n in _csv(args.datasets, DATASETS, "datasets")),
        "size_scale": args.size_scale,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "compile": args.compile,
        "time_budget_s": args.time_budget,
        "included": INCLUDED,
        "excluded": EXCLUDED,
        "latent_dim": 40,
        "refresh_batch_size": 500,
    }


def load_data(name: str, settings: dict[str, Any]):
    """DataSplits for data set `name`: real when a root was given, else synthetic, both cut
    to size * size_scale training rows."""
    from exvae_fast.data import load_dataset

    spec = DATASETS[name]
    size = max(200, round(spec.size * settings["size_scale"]))
    root = settings["data_roots"].get(name)
    if root is None:
        return load_dataset("synthetic", size=size, input_shape=(1, 28, 28), seed=settings["seed"])
    data = load_dataset(spec.real_name, root, seed=settings["seed"])
    if data.train.shape[0] > size:
        labels = None if data.train_labels is None else data.train_labels[:size]
        data = dataclasses.replace(data, train=data.train[:size], train_labels=labels)
    return data


def make_config(model: str, prior: str, dataset: str, data, settings: dict[str, Any], device: torch.device,
                out_dir: str):
    from exvae_fast.train.config import RunConfig, validate_config

    cfg = RunConfig(name="bench", out_dir=out_dir)
    root = settings["data_roots"].get(dataset)
    cfg.data.name = "synthetic" if root is None else DATASETS[dataset].real_name
    cfg.data.root = root
    cfg.data.synthetic_size = data.train.shape[0]
    cfg.model.name = model
    cfg.model.latent_dim = settings["latent_dim"]
    for key, value in PRIORS[prior].fields.items():
        setattr(cfg.prior, key, value)
    if cfg.prior.name == "exemplar":
        cfg.prior.num_exemplars = min(EXACT_MAX_EXEMPLARS, data.train.shape[0] // 2)
    cfg.train.batch_size = settings["batch_size"]
    cfg.train.device = str(device)
    cfg.train.seed = settings["seed"]
    cfg.train.compile = settings["compile"]
    cfg.train.warmup_epochs = 0
    cfg.train.eval_batch_size = settings["refresh_batch_size"]
    validate_config(cfg)
    return cfg


def resolved_backends(model, device: torch.device) -> dict[str, str] | None:
    """Backend each op resolves to for an exemplar prior (None for the other priors)."""
    from exvae_fast.ops.dispatch import resolve_backend
    from exvae_fast.priors import ExemplarPrior

    prior = model.prior
    if not isinstance(prior, ExemplarPrior):
        return None
    probe = torch.empty(1, device=device)
    return {op: resolve_backend(op, prior.backend, probe)
            for op in ("mixture_log_density", "knn_search", "cache_update_")}


SYNC_STEPS = 4  # untimed training steps run under CUDA's sync debug mode after the timing


def count_host_syncs(trainer, epoch: int, steps: int = SYNC_STEPS) -> dict[str, Any] | None:
    """Host-device synchronisations per training step, counted by CUDA's sync debug mode over
    `steps` untimed steps (the epoch's shuffle included), with the Python lines that caused the
    most: each one stalls the host until the GPU's queue drains. None off CUDA."""
    if trainer.device.type != "cuda":
        return None
    trainer.cfg.train.steps_per_epoch = steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer._train_epoch(epoch)
        except Exception as err:  # noqa: BLE001  a diagnostic must not cost the timing record
            return {"error": f"{type(err).__name__}: {err}"}
        finally:
            torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"per_step": len(syncs) / steps, "steps": steps, "top_sites": sites.most_common(10)}


def step_counts(rows: int, settings: dict[str, Any]) -> tuple[int, int]:
    """(steps per epoch, timed steps per repeat) for a training set of `rows` rows."""
    steps_per_epoch = math.ceil(rows / settings["batch_size"])
    timed = settings["steps"] or max(settings["min_steps"], math.ceil(settings["epochs_fraction"] * steps_per_epoch))
    return steps_per_epoch, min(timed, steps_per_epoch)


def time_config(model_name: str, prior: str, dataset: str, data, settings: dict[str, Any],
                device: torch.device) -> dict[str, Any]:
    """Warm up, then time `repeats` x (timed steps + one cache refresh) of one configuration."""
    from exvae_fast.train.loop import Trainer, refresh_exemplar_cache

    steps_per_epoch, timed = step_counts(data.train.shape[0], settings)
    with tempfile.TemporaryDirectory() as out_dir:
        cfg = make_config(model_name, prior, dataset, data, settings, device, out_dir)
        trainer = Trainer(cfg, data=data, progress=False)
        refresh_batch = cfg.train.eval_batch_size
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        refresh_exemplar_cache(trainer.model, refresh_batch)  # Algorithm 1's initial fill: untimed
        epoch = 1
        if settings["warmup_steps"]:
            trainer.cfg.train.steps_per_epoch = settings["warmup_steps"]
            trainer._train_epoch(epoch)
            refresh_exemplar_cache(trainer.model, refresh_batch)
        common.synchronize(device)
        steps_s, refresh_s, epoch_s = [], [], []
        trainer.cfg.train.steps_per_epoch = timed if timed < steps_per_epoch else None
        for _ in range(settings["repeats"]):
            epoch += 1
            common.synchronize(device)
            t0 = time.perf_counter()
            trainer._train_epoch(epoch)
            common.synchronize(device)
            t1 = time.perf_counter()
            refresh_exemplar_cache(trainer.model, refresh_batch)
            common.synchronize(device)
            t2 = time.perf_counter()
            steps_s.append(t1 - t0)
            refresh_s.append(t2 - t1)
            epoch_s.append((t1 - t0) * steps_per_epoch / timed + (t2 - t1))
        host_syncs = count_host_syncs(trainer, epoch + 1)
        record = {
            "num_exemplars": cfg.prior.num_exemplars if cfg.prior.name == "exemplar" else None,
            "num_components": cfg.prior.num_components if cfg.prior.name == "vamp" else None,
            "k": cfg.prior.k if cfg.prior.name == "exemplar" and cfg.prior.mode == "retrieval" else None,
            "prior_config": dataclasses.asdict(cfg.prior),
            "backends": resolved_backends(trainer.model, device),
            "steps_per_epoch": steps_per_epoch,
            "timed_steps": timed,
            "extrapolated": timed < steps_per_epoch,
            "s_per_epoch": common.summarize(epoch_s),
            "s_per_step": common.summarize([s / timed for s in steps_s]),
            "refresh_s": common.summarize(refresh_s),
            "repeats_s_per_epoch": epoch_s,
            "parameters": sum(p.numel() for p in trainer.model.parameters()),
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            "host_syncs": host_syncs,
        }
        del trainer
    return record


def configurations(settings: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(model, prior, data set) triples in run order (most important first)."""
    models = [m for m in RUN_ORDER_MODELS if m in settings["models"]]
    priors = [p for p in RUN_ORDER_PRIORS if p in settings["priors"]]
    return [(m, p, d) for m in models for d in settings["datasets"] for p in priors]


SMOKE_FLAGS = "--device cpu --threads 1 --size-scale 0.02 --steps 2 --models vae --no-write"


def cpu_hint(settings: dict[str, Any], device: torch.device) -> str | None:
    """The line printed before a sweep at full data size on a CPU, where it takes long
    (ConvHVAE on 50,000 rows comes first); None elsewhere."""
    first, count = configurations(settings)[:1], len(configurations(settings))
    if device.type != "cpu" or settings["size_scale"] < 1 or not first:
        return None
    return (f"note: a sweep at full data size takes long on a CPU ({count} configurations, {MODELS[first[0][0]]} "
            f"on {DATASETS[first[0][2]].size:,} rows first, minutes or more each); for a smoke run use: {SMOKE_FLAGS}")


def run(settings: dict[str, Any], device: torch.device, out: Path | None,
        log=functools.partial(print, flush=True)) -> dict[str, Any]:  # flushed: progress through a pipe
    """Time every configuration, logging a line as each starts and as it ends; the results
    document is (re)written after each one."""
    info = common.device_info(device)
    settings = dict(settings, device=str(device), matmul_tf32=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_tf32=torch.backends.cudnn.allow_tf32,
                    float32_matmul_precision=torch.get_float32_matmul_precision(),
                    cudnn_benchmark=torch.backends.cudnn.benchmark, torch_threads=torch.get_num_threads())
    doc = common.result_document("epoch_time", info, settings, [])
    start = time.perf_counter()
    last_cost: dict[str, float] = {}
    data_cache: dict[str, Any] = {}
    budget = settings.get("time_budget_s")
    if hint := cpu_hint(settings, device):
        log(hint)
    for model_name, prior, dataset in configurations(settings):
        labels = {"model": model_name, "model_label": MODELS[model_name], "prior": prior,
                  "prior_label": PRIORS[prior].label, "dataset": dataset, "dataset_label": DATASETS[dataset].label}
        elapsed = time.perf_counter() - start
        if budget is not None and elapsed + last_cost.get(prior, 0.0) > budget:
            record = {**labels, "status": f"skipped: time budget ({budget:.0f} s) spent"}
            doc["results"].append(record)
            doc["skipped"].append({"case": f"{model_name}/{prior}/{dataset}", "reason": record["status"]})
            continue
        if dataset not in data_cache:
            data_cache[dataset] = load_data(dataset, settings)
        data = data_cache[dataset]
        name = f"{MODELS[model_name]} {DATASETS[dataset].label} {PRIORS[prior].label}"
        steps_per_epoch, timed = step_counts(data.train.shape[0], settings)
        repeats = settings["repeats"]
        log(f"start {name}: data {' x '.join(map(str, data.train.shape))}, {timed} timed step"
            f"{'s' if timed > 1 else ''} x {repeats} repeat{'s' if repeats > 1 else ''} of {steps_per_epoch} "
            f"steps per epoch (+{settings['warmup_steps']} warm-up)")
        t0 = time.perf_counter()
        try:
            record = {**labels, "data_shape": list(data.train.shape),
                      **time_config(model_name, prior, dataset, data, settings, device), "status": "ok"}
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001  one failing configuration must not lose the others
            record = {**labels, "status": f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"}
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        last_cost[prior] = time.perf_counter() - t0
        record["wall_s"] = last_cost[prior]
        doc["results"].append(record)
        tables.add_ratios(doc["results"])
        doc["elapsed_s"] = time.perf_counter() - start
        if out is not None:
            common.write_json(doc, out)
        if record["status"] == "ok":
            log(f"done  {name}: {record['s_per_epoch']['median']:.3f} s/epoch"
                f"{' (extrapolated from %d of %d steps)' % (record['timed_steps'], record['steps_per_epoch']) if record['extrapolated'] else ''}"
                f"  [{last_cost[prior]:.1f} s wall]")
        else:
            log(f"done  {name}: {record['status']}  [{last_cost[prior]:.1f} s wall]")
    return doc


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = resolve_settings(args)
    with common.scoped_threads(args.threads):  # leaves an in-process caller's count as it was
        device = common.bench_device(args.device)
        out = None
        if not args.no_write:
            out = args.out or common.default_result_path("epoch_time", common.device_info(device), settings["preset"])
        doc = run(settings, device, out)
    tables.print_report(tables.epoch_caption(doc), tables.epoch_table(doc), out)
    return 0 if any(r.get("status") == "ok" for r in doc["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
