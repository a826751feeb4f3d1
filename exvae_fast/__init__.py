"""exvae-fast: a fast Exemplar VAE (Norouzi, Fleet & Norouzi, NeurIPS 2020).

    import exvae_fast as ex
    ex.ops.mixture_log_density / knn_search / cache_update_
    ex.LatentCache, ex.priors.*, ex.models.*, ex.data.load_dataset
    ex.distributed.ShardedLatentCache (the cache split over torch.distributed ranks)
    ex.ann.FaissIndex (optional approximate neighbour search; needs faiss-cpu)
"""
from . import ann, data, distributed, models, ops, priors
from .cache import LatentCache

__version__ = "0.1.0"

__all__ = ["ops", "priors", "models", "data", "distributed", "ann", "LatentCache", "__version__"]
