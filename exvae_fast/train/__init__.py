"""Training infrastructure: run configuration, the normalised-Adam optimiser, checkpoints."""
from ..atomic_io import atomic_write
from .checkpoint import (
    CHECKPOINT_FORMAT_VERSION,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .config import (
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PriorConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_json,
    save_config_json,
    validate_config,
)
from .optim import GRAD_NORM_EPS, NormalizedAdam

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GRAD_NORM_EPS",
    "ModelConfig",
    "NormalizedAdam",
    "PriorConfig",
    "RunConfig",
    "TrainConfig",
    "apply_overrides",
    "atomic_write",
    "capture_rng_state",
    "config_from_dict",
    "config_to_dict",
    "load_checkpoint",
    "load_config",
    "load_config_json",
    "restore_rng_state",
    "save_checkpoint",
    "save_config_json",
    "validate_config",
]
