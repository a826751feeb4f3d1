"""The fused ops of the exemplar prior. Each takes `backend=`: "auto" (the best available
for the device), "torch" (the plain-PyTorch reference), or "triton"/"cpp" where built."""
from .cache_update import cache_update_
from .knn import knn_search
from .mixture import mixture_log_density

__all__ = ["cache_update_", "knn_search", "mixture_log_density"]
