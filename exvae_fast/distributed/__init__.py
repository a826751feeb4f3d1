"""Multi-process training support (DESIGN.md section 5): torch.distributed helpers and the
latent cache sharded by example index over the ranks (tested with gloo on CPU)."""
from .comm import all_gather_rows, init_from_env, is_distributed, rank, shard_range, world_size
from .sharded_cache import ShardedLatentCache

__all__ = ["ShardedLatentCache", "shard_range", "all_gather_rows", "init_from_env",
           "is_distributed", "rank", "world_size"]
