"""The fused ops of the exemplar prior. Each takes `backend=`: "auto" (the best available
for the device), "torch" (the plain-PyTorch reference), or "triton"/"cpp" where built."""
from .cache_update import cache_update_
from .errors import NonFiniteError
from .knn import knn_search
from .mixture import mixture_log_density

__all__ = ["cache_update_", "knn_search", "mixture_log_density", "NonFiniteError"]


def _register_triton_backends() -> None:
    """Add the Triton kernels as backend "triton" when triton is installed (on CUDA they
    become the "auto" choice; under TRITON_INTERPRET=1 they also run, slowly, on CPU)."""
    try:
        from ..kernels import knn_search as knn_kernel
        from ..kernels import mixture_log_density as mixture_kernel
    except ModuleNotFoundError as err:
        if err.name != "triton":
            raise
        return
    knn_kernel.register_backend()
    mixture_kernel.register_backend()


_register_triton_backends()
