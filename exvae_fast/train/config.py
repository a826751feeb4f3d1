"""Run configuration: typed dataclasses, TOML files, command-line overrides, JSON snapshots.

A TOML file has top-level `name` / `out_dir` and sections [data] [model] [prior] [train]
[eval] whose keys are the dataclass fields below; every key is optional (omitted = the
default), and None is expressed by omitting the key. Overrides look like
"train.epochs=3", "prior.num_exemplars=none", "name=my-run". Every loader checks types
and values and raises `ConfigError` (a ValueError) naming the key.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from ..atomic_io import atomic_write_text

DATASETS = ("mnist-5k", "mnist", "fashion-mnist", "omniglot", "celeba", "frey-faces", "synthetic", "array")
EMBEDDED_DATASETS = ("mnist-5k", "synthetic")  # take no data.root (exvae_fast.data.load_dataset)
MODELS = ("vae", "hvae", "convhvae", "pixelhvae", "celeba")
CACHE_DTYPE_NAMES = ("float32", "bfloat16", "float16")  # prior.cache_dtype: torch dtype names
LIKELIHOODS = ("bernoulli", "logistic")
PRIORS = ("standard", "mog", "vamp", "exemplar")
MODES = ("exact", "retrieval")
RETRIEVAL_MIXTURES = ("union", "own")  # exvae_fast.priors.exemplar.RETRIEVAL_MIXTURES
BACKENDS = ("auto", "torch", "triton", "cpp")
INDEXES = ("exact", "ivf", "hnsw")
NUM_BITS = (5, 8)
_DEVICE_RE = re.compile(r"cpu|cuda(:\d+)?")


class ConfigError(ValueError):
    """A configuration file, dict or override is malformed; the message names the key."""


@dataclass
class DataConfig:
    """Which data set to train on (names accepted by exvae_fast.data.load_dataset)."""

    name: str = "mnist-5k"
    root: str | None = None  # path of the raw data; required, except None for mnist-5k / synthetic
    synthetic_size: int = 50000  # rows, for name == "synthetic"
    num_bits: int = 8  # CelebA colour depth: 8 or 5
    # "array" (your own .npz, exvae_fast/data/arrays.py): sizes of the validation / test splits
    # carved from its train images when the file holds none; None = a tenth each
    n_validation: int | None = None
    n_test: int | None = None


@dataclass
class ModelConfig:
    """Architecture (paper supplement L.1) and likelihood."""

    name: str = "vae"  # vae | hvae | convhvae | pixelhvae | celeba
    latent_dim: int = 40  # top latent layer (128 for CelebA)
    likelihood: str | None = None  # None = the data set's default; "bernoulli" | "logistic"


@dataclass
class PriorConfig:
    """Prior over the top latent layer."""

    name: str = "exemplar"  # standard | mog | vamp | exemplar
    num_components: int = 500  # mog / vamp K
    components_per_step: int | None = None  # mog/vamp components sub-sampled per step; None = all
    mode: str = "retrieval"  # exemplar: "exact" | "retrieval" (Algorithm 1)
    num_exemplars: int | None = None  # exemplar sub-sample M per step; None = half the training set
    k: int = 10  # nearest neighbours (5 for CelebA)
    # retrieval mode's mixture per row: "union" of the batch's neighbours (authors' code) or the
    # row's "own" k (the supplement's pseudo-code); both divide by M
    retrieval_mixture: str = "union"
    leave_one_out: bool = True
    init_log_var: float = 0.0  # initial log sigma^2 of the exemplar kernel
    backend: str = "auto"  # ops backend: auto | torch | triton | cpp
    # storage of the latent cache (N x d means): bfloat16 / float16 halve its memory for very large
    # training sets; the ops accumulate in float32 either way
    cache_dtype: str = "float32"
    # retrieval-mode neighbour search: "exact" | "ivf" | "hnsw" (approximate FAISS index,
    # exvae_fast.ann.FaissIndex; needs faiss-cpu; single process only)
    index: str = "exact"
    index_nlist: int = 1024  # ivf: k-means lists (at most the training-set size)
    index_nprobe: int = 32  # ivf: lists searched per query (<= index_nlist)
    index_hnsw_m: int = 32  # hnsw: graph degree M (>= 2)
    index_ef_search: int = 64  # hnsw: search beam
    index_ef_construction: int = 40  # hnsw: construction beam
    index_threads: int | None = 1  # OpenMP threads of FAISS calls; none = all cores (see exvae_fast.ann)


@dataclass
class TrainConfig:
    """Optimisation (paper L.2: normalised Adam, lr 5e-4, batch 100, early stopping 50)."""

    epochs: int = 2000  # upper bound; early stopping usually ends sooner
    batch_size: int = 100
    lr: float = 5e-4
    warmup_epochs: int = 100  # KL warm-up: beta = min(1, epoch / warmup_epochs); 0 = none
    early_stopping_patience: int = 50  # epochs without a better validation ELBO
    steps_per_epoch: int | None = None  # cap on the steps of an epoch; None = whole training set
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | cuda:N
    tensorboard: bool = False
    compile: bool = False  # torch.compile the training step's forward (inductor; the first steps compile)
    eval_batch_size: int = 500  # rows per batch for validation ELBO / cache refresh


@dataclass
class EvalConfig:
    """Test-time evaluation."""

    iw_samples: int = 5000  # importance samples per test point (paper: 5000)
    max_rows: int = 50000  # test points x samples evaluated per batch
    active_unit_threshold: float = 0.01  # Burda et al.'s threshold on Var(mu)
    num_sample_images: int = 100  # images in the sample grids


@dataclass
class RunConfig:
    """A whole run: what `exvae train` reads and saves as config.json beside checkpoints."""

    name: str = "run"
    out_dir: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "model": ModelConfig, "prior": PriorConfig, "train": TrainConfig, "eval": EvalConfig,
}
_TOP_LEVEL = ("name", "out_dir")


@cache
def _field_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Field name -> (base type, optional) for a config dataclass."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        if isinstance(hint, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            out[name] = (args[0], True)
        else:
            out[name] = (hint, False)
    return out


def _key_type(key: str) -> tuple[type, bool]:
    section, _, name = key.rpartition(".")
    return _field_types(SECTIONS[section] if section else RunConfig)[name]


def _check_type(key: str, value: Any) -> Any:
    """Return `value` (ints widened to float for float fields) or raise ConfigError."""
    base, optional = _key_type(key)
    if value is None and optional:
        return None
    ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{key}: expected {base.__name__}, got {type(value).__name__}")
    return value


def _choice(key: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def _at_least(key: str, value: Any, low: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value < low:
        raise ConfigError(f"{key}: expected >= {low}, got {value!r}")


def _positive_finite(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}: expected a finite number > 0, got {value!r}")


def _check_exemplar_subsample(p: PriorConfig) -> None:
    """ConfigError unless the sub-sample M = prior.num_exemplars leaves every row a component
    (leave-one-out takes one) and, in retrieval mode, prior.k neighbours; checked again against
    the training-set size when the prior is built."""
    available = p.num_exemplars - int(p.leave_one_out)
    if available < 1:
        raise ConfigError("prior.num_exemplars: expected at least 2 with prior.leave_one_out, got "
                          f"{p.num_exemplars}")
    if p.mode == "retrieval" and p.k > available:
        less = " - 1 (leave-one-out)" if p.leave_one_out else ""
        raise ConfigError(f"prior.k: expected at most prior.num_exemplars{less} = {available}, got {p.k}")


def validate_config(cfg: RunConfig) -> None:
    """Check field types, enumerations and ranges; raise ConfigError naming the first bad key."""
    if not isinstance(cfg, RunConfig):
        raise ConfigError(f"expected a RunConfig, got {type(cfg).__name__}")
    for top in _TOP_LEVEL:
        _check_type(top, getattr(cfg, top))
    for section, cls in SECTIONS.items():
        sub = getattr(cfg, section)
        if not isinstance(sub, cls):
            raise ConfigError(f"{section}: expected {cls.__name__}, got {type(sub).__name__}")
        for f in dataclasses.fields(cls):
            _check_type(f"{section}.{f.name}", getattr(sub, f.name))

    if not cfg.name or "/" in cfg.name or "\\" in cfg.name:
        raise ConfigError(f"name: expected a non-empty name without path separators, got {cfg.name!r}")
    if not cfg.out_dir:
        raise ConfigError("out_dir: expected a non-empty path")

    d, m, p, t, e = cfg.data, cfg.model, cfg.prior, cfg.train, cfg.eval
    _choice("data.name", d.name, DATASETS)
    if d.name not in EMBEDDED_DATASETS and not d.root:
        raise ConfigError(f"data.root: required for data set {d.name!r} (path of the raw data)")
    if d.name in EMBEDDED_DATASETS and d.root is not None:
        raise ConfigError(f"data.root: data set {d.name!r} takes no root, got {d.root!r} (use data.root=none)")
    _at_least("data.synthetic_size", d.synthetic_size, 1)
    _choice("data.num_bits", d.num_bits, NUM_BITS)
    for key in ("n_validation", "n_test"):
        if getattr(d, key) is not None:
            if d.name != "array":
                raise ConfigError(f"data.{key}: only for data.name='array' (the paper's data sets keep their "
                                  f"published splits), got data.name={d.name!r}")
            _at_least(f"data.{key}", getattr(d, key), 1)

    _choice("model.name", m.name, MODELS)
    _at_least("model.latent_dim", m.latent_dim, 1)
    if m.likelihood is not None:
        _choice("model.likelihood", m.likelihood, LIKELIHOODS)
    if (m.name == "celeba") != (d.name == "celeba") and (m.name, d.name) != ("celeba", "array"):
        raise ConfigError(
            f"model.name: the 'celeba' model and the 'celeba' data set go together (the model also takes "
            f"your own 'array' images, H and W multiples of 16), got model {m.name!r} with data {d.name!r}"
        )

    _choice("prior.name", p.name, PRIORS)
    _at_least("prior.num_components", p.num_components, 1)
    _at_least("prior.components_per_step", p.components_per_step, 1, optional=True)
    if p.name in ("mog", "vamp") and p.components_per_step is not None and p.components_per_step > p.num_components:
        raise ConfigError(
            f"prior.components_per_step: expected <= prior.num_components ({p.num_components}), "
            f"got {p.components_per_step}"
        )
    _choice("prior.mode", p.mode, MODES)
    _choice("prior.retrieval_mixture", p.retrieval_mixture, RETRIEVAL_MIXTURES)
    if p.retrieval_mixture != "union" and (p.name, p.mode) != ("exemplar", "retrieval"):
        raise ConfigError(f"prior.retrieval_mixture: {p.retrieval_mixture!r} applies to the exemplar prior's "
                          f"retrieval mode only, got prior.name={p.name!r}, prior.mode={p.mode!r}")
    _at_least("prior.num_exemplars", p.num_exemplars, 1, optional=True)
    _at_least("prior.k", p.k, 1)
    if p.name == "exemplar" and p.num_exemplars is not None:
        _check_exemplar_subsample(p)
    if not math.isfinite(p.init_log_var):
        raise ConfigError(f"prior.init_log_var: expected a finite number, got {p.init_log_var!r}")
    _choice("prior.backend", p.backend, BACKENDS)
    _choice("prior.cache_dtype", p.cache_dtype, CACHE_DTYPE_NAMES)
    _choice("prior.index", p.index, INDEXES)
    if p.index != "exact" and (p.name, p.mode) != ("exemplar", "retrieval"):
        raise ConfigError(f"prior.index: an approximate index ({p.index!r}) serves only the exemplar "
                          f"prior's retrieval mode, got prior.name={p.name!r}, prior.mode={p.mode!r}")
    _at_least("prior.index_nlist", p.index_nlist, 1)
    _at_least("prior.index_nprobe", p.index_nprobe, 1)
    if p.index == "ivf" and p.index_nprobe > p.index_nlist:
        raise ConfigError(f"prior.index_nprobe: expected <= prior.index_nlist ({p.index_nlist}), "
                          f"got {p.index_nprobe}")
    _at_least("prior.index_hnsw_m", p.index_hnsw_m, 2)
    _at_least("prior.index_ef_search", p.index_ef_search, 1)
    _at_least("prior.index_ef_construction", p.index_ef_construction, 1)
    _at_least("prior.index_threads", p.index_threads, 1, optional=True)

    _at_least("train.epochs", t.epochs, 1)
    _at_least("train.batch_size", t.batch_size, 1)
    _positive_finite("train.lr", t.lr)
    _at_least("train.warmup_epochs", t.warmup_epochs, 0)
    _at_least("train.early_stopping_patience", t.early_stopping_patience, 1)
    _at_least("train.steps_per_epoch", t.steps_per_epoch, 1, optional=True)
    _at_least("train.seed", t.seed, 0)
    if not _DEVICE_RE.fullmatch(t.device):
        raise ConfigError(f"train.device: expected 'cpu', 'cuda' or 'cuda:N', got {t.device!r}")
    _at_least("train.eval_batch_size", t.eval_batch_size, 1)

    _at_least("eval.iw_samples", e.iw_samples, 1)
    _at_least("eval.max_rows", e.max_rows, 1)
    _positive_finite("eval.active_unit_threshold", e.active_unit_threshold)
    _at_least("eval.num_sample_images", e.num_sample_images, 1)


def _valid_keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def config_from_dict(d: dict[str, Any], source: str = "config") -> RunConfig:
    """Build and validate a RunConfig from nested dicts (the shape of `config_to_dict`).

    Missing keys take their defaults; unknown sections/keys and wrong types raise
    ConfigError. `source` (e.g. a file name) prefixes structural errors.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected a table/dict at the top level, got {type(d).__name__}")
    cfg = RunConfig()
    for key, value in d.items():
        if key in _TOP_LEVEL:
            setattr(cfg, key, _check_type(key, value))
        elif key in SECTIONS:
            cls = SECTIONS[key]
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table, got {type(value).__name__}")
            valid = {f.name for f in dataclasses.fields(cls)}
            sub = getattr(cfg, key)
            for name, v in value.items():
                if name not in valid:
                    raise ConfigError(
                        f"{source}: unknown key '{key}.{name}'; valid keys in [{key}]: {_valid_keys(cls)}"
                    )
                setattr(sub, name, _check_type(f"{key}.{name}", v))
        else:
            raise ConfigError(
                f"{source}: unknown section or key {key!r}; valid: {', '.join(_TOP_LEVEL)} and sections "
                f"{', '.join(f'[{s}]' for s in SECTIONS)}"
            )
    validate_config(cfg)
    return cfg


def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read and validate a TOML run configuration."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: TOML syntax error: {e}") from e
    return config_from_dict(data, source=path)


def load_config_json(path: str | os.PathLike[str]) -> RunConfig:
    """Read a config.json written by `save_config_json` (same checks as `config_from_dict`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: JSON syntax error: {e}") from e
    return config_from_dict(data, source=path)


_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


def _parse_value(key: str, text: str) -> Any:
    """Parse the text of an override by the field's type."""
    base, optional = _key_type(key)
    s = text.strip()
    if optional and s.lower() in ("none", "null"):
        return None
    if base is bool:
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise ConfigError(f"{key}: cannot parse {text!r} as bool (use true/false/1/0/yes/no)")
    if base is int or base is float:
        try:
            return base(s)
        except ValueError:
            hint = " or none" if optional else ""
            raise ConfigError(f"{key}: cannot parse {text!r} as {base.__name__}{hint}") from None
    return text


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Return a validated copy of `cfg` with "section.key=value" items applied in order.

    Top-level keys are written without a section ("name=my-run"). `cfg` is not modified.
    """
    out = copy.deepcopy(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        section, _, name = key.rpartition(".")
        if not section:
            if key not in _TOP_LEVEL:
                raise ConfigError(
                    f"override {item!r}: unknown key {key!r}; use section.key with a section in "
                    f"{', '.join(SECTIONS)}, or one of {', '.join(_TOP_LEVEL)}"
                )
            setattr(out, key, _parse_value(key, text))
            continue
        if section not in SECTIONS:
            raise ConfigError(f"override {item!r}: unknown section {section!r}; valid: {', '.join(SECTIONS)}")
        cls = SECTIONS[section]
        if name not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"override {item!r}: unknown key {key!r}; valid keys in [{section}]: {_valid_keys(cls)}")
        setattr(getattr(out, section), name, _parse_value(key, text))
    validate_config(out)
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"seed": 0}} -> {"train.seed": 0}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Nested plain dicts (JSON-serialisable; None stays None)."""
    return dataclasses.asdict(cfg)


def save_config_json(cfg: RunConfig, path: str | os.PathLike[str]) -> None:
    """Write `cfg` as indented JSON, atomically (temp file in the same folder + os.replace)."""
    text = json.dumps(config_to_dict(cfg), indent=2) + "\n"
    atomic_write_text(path, text)
