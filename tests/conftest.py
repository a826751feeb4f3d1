"""Suite-wide settings: Triton kernels run in the interpreter when there is no GPU, and
tests marked `gpu` are skipped without CUDA."""
from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    # Must be set before triton is first imported: kernels then run on CPU tensors. Forced,
    # not defaulted: a TRITON_INTERPRET=0 left in the shell would otherwise skip or fail
    # every kernel test on a machine that can only interpret them.
    os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
