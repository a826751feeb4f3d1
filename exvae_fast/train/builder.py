"""Build a data set and a model (with its prior) from a RunConfig."""
from __future__ import annotations

import torch

from ..ann import FaissIndex
from ..data import DataSplits, load_dataset
from ..models import LatentVariableModel, build_model
from ..priors import ExemplarPrior, MoGPrior, Prior, StandardPrior, VampPrior
from ..priors.exemplar import check_exemplar_counts
from .config import ConfigError, RunConfig


def load_data(cfg: RunConfig) -> DataSplits:
    """The data set named by cfg.data (options that the set takes are passed on)."""
    options: dict = {}
    if cfg.data.name == "synthetic":
        options["size"] = cfg.data.synthetic_size
    if cfg.data.name == "celeba":
        options["num_bits"] = cfg.data.num_bits
    if cfg.data.name == "array":  # the model's likelihood decides whether val/test are binarised
        likelihood = "logistic" if cfg.model.name == "celeba" else cfg.model.likelihood  # CelebAVAE's only one
        options.update(n_validation=cfg.data.n_validation, n_test=cfg.data.n_test, likelihood=likelihood)
    return load_dataset(cfg.data.name, cfg.data.root, seed=cfg.train.seed, **options)


def build_prior(cfg: RunConfig, data: DataSplits) -> Prior:
    """The prior named by cfg.prior; the exemplar prior takes the (grey) training images."""
    p, d = cfg.prior, cfg.model.latent_dim
    if p.name == "standard":
        return StandardPrior(d)
    if p.name == "mog":
        return MoGPrior(d, p.num_components, p.components_per_step)
    if p.name == "vamp":
        return VampPrior(d, data.train.shape[1], p.num_components, p.components_per_step)
    if p.name == "exemplar":
        try:  # before the prior would name its own arguments, not the config's keys
            check_exemplar_counts(data.train.shape[0], p.num_exemplars, p.k, p.mode, p.leave_one_out,
                                  prefix="prior.", items="training examples")
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if p.index == "ivf" and p.index_nlist > data.train.shape[0]:
            raise ConfigError(f"prior.index_nlist: expected at most the {data.train.shape[0]} training "
                              f"examples (IVF needs one per k-means list), got {p.index_nlist}")
        return ExemplarPrior(data.train, d, mode=p.mode, num_exemplars=p.num_exemplars, k=p.k,
                             retrieval_mixture=p.retrieval_mixture, leave_one_out=p.leave_one_out, init_log_var=p.init_log_var, backend=p.backend,
                             cache_dtype=getattr(torch, p.cache_dtype), index=build_index(cfg))
    raise ValueError(f"prior.name: expected standard, mog, vamp or exemplar, got {p.name!r}")


def build_index(cfg: RunConfig) -> FaissIndex | None:
    """The approximate neighbour index named by cfg.prior.index (None for "exact");
    ImportError when FAISS is missing."""
    p = cfg.prior
    if p.index == "exact":
        return None
    return FaissIndex(p.index, nlist=p.index_nlist, nprobe=p.index_nprobe, m=p.index_hnsw_m,
                      ef_search=p.index_ef_search, ef_construction=p.index_ef_construction,
                      seed=cfg.train.seed, threads=p.index_threads)


def build(cfg: RunConfig, data: DataSplits, device: torch.device | str | None = None) -> LatentVariableModel:
    """Model + prior on `device` (default cfg.train.device)."""
    likelihood = cfg.model.likelihood or data.likelihood
    model = build_model(cfg.model.name, build_prior(cfg, data), data.input_shape, cfg.model.latent_dim,
                        likelihood, num_bits=data.num_bits)
    return model.to(cfg.train.device if device is None else device)
