"""Tables of bench results, as Markdown, from results documents (bench/common.py format).

`epoch_time.py` prints `epoch_table` after every run; `plot.py --markdown` writes the same
tables (and the op tables) into bench/README.md, so no number there is typed by hand.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from exvae_fast.run_table import markdown_table, mean_spread  # noqa: E402

REFERENCE_VAMP = "vamp500"
REFERENCE_EXACT = "exact-torch"
MODEL_ORDER = ("vae", "hvae", "convhvae")
DATASET_ORDER = ("mnist", "omniglot")
PRIOR_ORDER = ("standard", "vamp500", "vamp1000", "exact-torch", "retrieval-torch", "retrieval-fused")
MODE_ORDER = ("forward", "backward", "full")
PROVIDER_ORDER = ("torch", "torch-naive", "triton", "cpp", "faiss", "faiss-gpu", "faiss-cpu", "keops")


def print_report(caption: str, table: str, out: Path | None) -> None:
    """What a bench script prints at its end: the caption, the table, where the JSON went."""
    print(f"\n{caption}\n\n{table}")
    if out is not None:
        print(f"\nwrote {out}")


def _index(order: tuple, item: str) -> int:
    return order.index(item) if item in order else len(order)


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _fmt_fraction(value: float) -> str:
    return f"{value:.0%}" if value >= 0.1 else f"{value * 100:.2g}%"


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Set each ok record's ratio_to_vamp500 and ratio_to_exact_torch: its median s/epoch over
    that of the reference prior with the same model and data set (None when missing)."""
    medians = {(r["model"], r["dataset"], r["prior"]): r["s_per_epoch"]["median"]
               for r in results if r.get("status") == "ok"}
    for r in results:
        if r.get("status") != "ok":
            continue
        own = r["s_per_epoch"]["median"]
        for ref, field in ((REFERENCE_VAMP, "ratio_to_vamp500"), (REFERENCE_EXACT, "ratio_to_exact_torch")):
            base = medians.get((r["model"], r["dataset"], ref))
            r[field] = None if not base else own / base


def epoch_order(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records sorted by model (VAE, HVAE, ConvHVAE), data set, then prior (as the paper)."""
    return sorted(records, key=lambda r: (_index(MODEL_ORDER, r.get("model")), r.get("model"),
                                          _index(DATASET_ORDER, r.get("dataset")), r.get("dataset"),
                                          _index(PRIOR_ORDER, r.get("prior")), r.get("prior")))


def epoch_table(doc: dict[str, Any]) -> str:
    """s/epoch table of an "epoch_time" document."""
    header = ["model", "data", "prior", "s/epoch (median)", "min-max", "t / t(VampPrior(500))",
              "t / t(exact torch)", "steps timed / epoch", "backends", "status"]
    rows = []
    for r in epoch_order(doc["results"]):
        if r.get("status") == "ok":
            spread = r["s_per_epoch"]
            backends = r.get("backends") or {}
            names = sorted(set(backends.values())) if backends else []
            rows.append([r["model_label"], r["dataset_label"], r["prior_label"], _fmt_seconds(spread["median"]),
                         f"{_fmt_seconds(spread['min'])}-{_fmt_seconds(spread['max'])}",
                         _fmt_ratio(r.get("ratio_to_vamp500")), _fmt_ratio(r.get("ratio_to_exact_torch")),
                         f"{r['timed_steps']} / {r['steps_per_epoch']}", "+".join(names) or "-", "ok"])
        else:
            rows.append([r.get("model_label", r.get("model")), r.get("dataset_label", r.get("dataset")),
                         r.get("prior_label", r.get("prior")), "-", "-", "-", "-", "-", "-",
                         str(r.get("status", "?")).replace("|", "/")[:80]])
    return markdown_table(header, rows, text_columns=(0, 1, 2, 8, 9))


def _cpu_note(dev: dict[str, Any]) -> str:
    if dev.get("type") != "cpu":
        return ""
    return (f" CPU run: {dev.get('torch_threads')} torch thread(s) on {dev.get('cpu_count')} cores, load "
            f"average {dev.get('load_average')} when it started (other work on the machine makes CPU "
            f"timings noisy).")


def epoch_caption(doc: dict[str, Any]) -> str:
    """One paragraph saying what was timed, on what, and how."""
    s, dev = doc["settings"], doc["device"]
    extrapolated = any(r.get("extrapolated") for r in doc["results"] if r.get("status") == "ok")
    how = ("s/epoch **extrapolated** from the timed steps (timed steps x steps per epoch / timed steps, "
           "plus one measured cache refresh)" if extrapolated else "whole epochs timed")
    return (f"Device: **{dev['name']}** ({dev.get('type')}), torch {dev.get('torch')}, triton "
            f"{dev.get('triton')}, commit {str((dev.get('git') or {}).get('commit'))[:10]}, measured "
            f"{doc['created']}. Preset `{s.get('preset')}`; {how}; median of {s.get('repeats')} repeats "
            f"after {s.get('warmup_steps')} warm-up steps; batch {s.get('batch_size')}; data "
            f"{s.get('data_source')}, training-set sizes x{s.get('size_scale')}. Included: {s.get('included')}. "
            f"Excluded: {s.get('excluded')}.{_cpu_note(dev)}")


def op_axis(records: list[dict[str, Any]]) -> str:
    """The parameter along which an op's cases are swept: extra_info["axis"], default "N"."""
    return next((r["params"]["axis"] for r in records if r["params"].get("axis")), "N")


def series_key(records: list[dict[str, Any]]) -> Callable[[dict[str, Any]], tuple[tuple[str, Any], ...]]:
    """record -> its identifying parameters besides the axis (those that vary among records)."""
    axis = op_axis(records)
    skip = set(common.INFORMATIONAL_PARAMS) | {axis}
    keys = sorted({key for r in records for key in r["params"] if key not in skip})
    varying = [key for key in keys if len({repr(r["params"].get(key)) for r in records}) > 1]
    return lambda r: tuple((key, r["params"].get(key)) for key in varying)


def series_label(key: tuple[tuple[str, Any], ...]) -> str:
    """"subset" for the variant, "K=1100" for other parameters; "-" when nothing varies."""
    parts = [str(value) if name == "variant" else f"{name}={value}" for name, value in key]
    return ", ".join(parts) or "-"


def op_table(doc: dict[str, Any], op: str) -> str:
    """Median time per call, and GB/s (fraction of peak) where known, of one op: one row per
    (provider, mode, series), one column per value of the axis (N unless the file says)."""
    records = [r for r in doc["results"] if r.get("op") == op]
    if not records:
        return f"(no measurement of {op})"
    axis, key_of = op_axis(records), series_key(records)
    columns = sorted({r["params"].get(axis) for r in records if r["params"].get(axis) is not None})
    rows_by: dict[tuple, dict[Any, dict]] = {}
    for r in records:
        rows_by.setdefault((r["provider"], r["mode"], key_of(r)), {})[r["params"].get(axis)] = r

    def order(key: tuple) -> tuple:
        provider, mode, series = key
        return (tuple(repr(v) if not isinstance(v, (int, float)) else f"{v:020.6f}" for _, v in series),
                _index(MODE_ORDER, mode), _index(PROVIDER_ORDER, provider), provider)
    header = ["provider", "mode", "case"] + [f"{axis}={c:,}" if isinstance(c, int) else f"{axis}={c}"
                                            for c in columns]
    rows = []
    for key in sorted(rows_by, key=order):
        provider, mode, series = key
        cells = []
        for column in columns:
            r = rows_by[key].get(column)
            if r is None:
                cells.append("-")
                continue
            cell = f"{r['time_s']['median'] * 1e3:.3g} ms"
            if r.get("gbps") and r.get("peak_bandwidth_fraction"):  # GPUs: bandwidth is the yardstick
                cell += f" ({r['gbps']:.3g} GB/s, {_fmt_fraction(r['peak_bandwidth_fraction'])})"
            cells.append(cell)
        rows.append([provider, mode, series_label(series)] + cells)
    return markdown_table(header, rows, text_columns=3)


def ops_caption(doc: dict[str, Any]) -> str:
    dev, s = doc["device"], doc["settings"]
    peak = dev.get("peak_bandwidth_bytes_per_s")
    peak_text = (f"in brackets the achieved GB/s (the bytes each call must move at least) and its "
                 f"fraction of the datasheet peak {peak / 1e12:.2f} TB/s" if peak
                 else "no bandwidth shown (no datasheet peak for this device; GB/s are in the JSON)")
    return (f"Device: **{dev['name']}** ({dev.get('type')}), torch {dev.get('torch')}, triton "
            f"{dev.get('triton')}, commit {str((dev.get('git') or {}).get('commit'))[:10]}, measured "
            f"{doc['created']}. B={s.get('B')}, d={s.get('d')}, k={s.get('k')}; median wall time per "
            f"call; {peak_text}.{_cpu_note(dev)}")


def skipped_list(doc: dict[str, Any], limit: int = 40) -> str:
    """Bullet list of skipped cases, one line per distinct reason."""
    reasons: dict[str, int] = {}
    for item in doc.get("skipped", []):
        reasons[item.get("reason", "?")] = reasons.get(item.get("reason", "?"), 0) + 1
    lines = [f"- {count} case(s): {reason}" for reason, count in list(reasons.items())[:limit]]
    return "\n".join(lines)


PRIOR_STUDY_ORDER = ("standard", "vamp500", "exemplar-exact", "exemplar-retrieval", "exemplar-retrieval-k3",
                     "exemplar-retrieval-k1")


def _group_by(records: list[dict[str, Any]], field: str) -> dict[str, list[dict[str, Any]]]:
    """Records by the value of `field`, in order of first appearance."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r[field], []).append(r)
    return groups


def _measured_on(doc: dict[str, Any]) -> str:
    """'Device: **name** (type), torch x, commit c, measured t.' of a study document."""
    dev = doc["device"]
    return (f"Device: **{dev['name']}** ({dev.get('type')}), torch {dev.get('torch')}, commit "
            f"{_commit(dev.get('git'))}, measured {doc['created']}.")


def _commit(git: dict[str, Any] | None) -> str:
    """'abcdef1234' of a document's git record, '(with uncommitted changes)' when it was dirty."""
    git = git or {}
    return str(git.get("commit"))[:10] + (" (with uncommitted changes)" if git.get("dirty") else "")


def _knn_errors(runs: list[dict[str, Any]]) -> str:
    """Mean 1-NN and 5-NN classification error over the runs that measured it."""
    measured = [r["knn_error"] for r in runs if r.get("knn_error")]
    if not measured:
        return "-"
    return " / ".join(f"{100 * sum(m[k] for m in measured) / len(measured):.1f}%" for k in ("1", "5"))


def prior_study_table(doc: dict[str, Any]) -> str:
    """Test log-likelihood per prior of a "prior_study" document (mean ± std over seeds)."""
    header = ["prior", "test log-likelihood (nats)", "test ELBO", "KL", "neg. reconstruction",
              "active units", "kNN error k=1 / 5", "epochs (best)", "sigma^2", "k=10 carries (test / train)"]
    by_prior = _group_by(doc["results"], "prior")
    rows = []
    for prior in sorted(by_prior, key=lambda p: (_index(PRIOR_STUDY_ORDER, p), p)):
        runs = by_prior[prior]
        gaps = [r["retrieval_gap"] for r in runs if r.get("retrieval_gap")]
        carried = "-"
        if gaps and "10" in gaps[0].get("test", {}):
            carried = " / ".join(_fmt_fraction(sum(g[split]["10"]["mass"] for g in gaps) / len(gaps))
                                 for split in ("test", "train"))
        variances = [r["prior_variance"] for r in runs if r.get("prior_variance") is not None]
        rows.append([runs[0]["prior_label"], mean_spread([r["log_likelihood"] for r in runs]),
                     mean_spread([r["elbo"] for r in runs]), mean_spread([r["kl"] for r in runs]),
                     mean_spread([r["neg_recon"] for r in runs]),
                     mean_spread([r["active_units"] for r in runs], 1), _knn_errors(runs),
                     ", ".join(f"{r['epochs']} ({r['best_epoch']})" for r in runs),
                     f"{sum(variances) / len(variances):.3g}" if variances else "-", carried])
    return markdown_table(header, rows)  # every column but the prior's name holds numbers


def prior_study_caption(doc: dict[str, Any]) -> str:
    """One paragraph saying what was trained, on what, and how it was evaluated."""
    s = doc["settings"]
    seeds = s.get("seeds") or []
    measured = _measured_on(doc)
    if doc.get("merged_from"):
        dev = doc["device"]
        parts = "; ".join(f"{', '.join(m['priors'])} (seeds {m['seeds']}) measured {m['created']} at commit "
                          f"{_commit(m.get('git'))}" for m in doc["merged_from"])
        measured = (f"Device: **{dev['name']}** ({dev.get('type')}), torch {dev.get('torch')}; "
                    f"{len(doc['merged_from'])} documents of these same study settings merged: {parts}.")
    return (f"{measured} VAE (d = 40) "
            f"on the embedded `{s.get('dataset')}` digits (4,000 train / 500 validation / 500 test), "
            f"`{s.get('base_config')}` with at most {s.get('epochs')} epochs, KL warm-up "
            f"{s.get('warmup_epochs')}, early stopping after {s.get('early_stopping_patience')} epochs "
            f"without a better validation ELBO (best checkpoint evaluated); {len(seeds)} seed(s) "
            f"{seeds} per prior (mean ± sample std when several). Test log-likelihood: importance-weighted "
            f"with {s.get('iw_samples')} samples per digit. Last column: mean share of the test-time "
            f"exemplar prior carried by the 10 exemplars nearest to the posterior mean "
            f"(exp(-retrieval gap), `exvae_fast.evaluation.retrieval_gap`). A miniature of the paper's "
            f"comparison, not its setting: compare the rows with each other, not with the paper's tables.")


def augment_study_table(doc: dict[str, Any]) -> str:
    """Test error per condition of an "augment_study" document (mean ± std over seeds)."""
    header = ["training data", "test error (%)", "validation error (%)", "best epoch per seed"]
    by_condition = _group_by(doc["results"], "condition")
    runs = doc["settings"].get("runs", {})
    rows = []
    for condition, records in by_condition.items():
        about = runs.get(condition)
        label = "real digits only" if about is None else (
            f"real + samples of `{condition}` ({about['prior']}"
            + (f" {about['prior_mode']}" if about["prior"] == "exemplar" else "") + " prior)")
        rows.append([label, mean_spread([100 * r["test_error"] for r in records]),
                     mean_spread([100 * r["val_error"] for r in records]),
                     ", ".join(str(r["best_epoch"]) for r in records)])
    return markdown_table(header, rows)


def augment_study_caption(doc: dict[str, Any]) -> str:
    """One paragraph saying how the classifiers were trained and evaluated."""
    s = doc["settings"]
    return (f"{_measured_on(doc)} {s.get('classifier')}, "
            f"lr {s.get('lr')}, batch {s.get('batch_size')}, {s.get('epochs')} epochs on the "
            f"`{s.get('dataset')}` training digits; augmented conditions draw {s.get('per_example')} samples "
            f"per digit once and replace each digit of a minibatch by one of them with probability "
            f"{s.get('replace_prob')}; every digit binarised as the test digits are. Test error at the "
            f"epoch of the lowest validation error; seeds "
            f"{s.get('seeds')} (mean ± sample std). A CPU-sized miniature of the paper's augmentation "
            f"experiment, not its setting.")
