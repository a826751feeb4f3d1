"""The compiled cache_update_ (exvae_fast._C, csrc/) against the torch reference.

CPU here; the same comparisons on CUDA under the `gpu` marker. Tests that need the extension
skip, with the load error as the reason, when it is not built (CI checks that it is).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from exvae_fast.cache import LatentCache
from exvae_fast.ops import _extension, cache_update_
from exvae_fast.ops.dispatch import resolve_backend

needs_extension = pytest.mark.skipif(
    _extension.LOAD_ERROR is not None, reason=f"exvae_fast._C not loaded: {_extension.LOAD_ERROR}")

CSRC = Path(__file__).resolve().parents[1] / "csrc"
STORAGE = [torch.float32, torch.bfloat16, torch.float16]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def op(*args):
    return torch.ops.exvae_fast.cache_update_(*args)


def make_state(size, dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    cache = torch.randn(size, dim, generator=gen).to(device, dtype)
    norms = torch.full((size,), -7.0, device=device)
    stamps = torch.full((size,), -1, dtype=torch.int64, device=device)
    return cache, norms, stamps


def compare_backends(indices, size, dim, dtype, device, values_dtype=torch.float32, step=11,
                     seed=0):
    """Run the cpp and torch backends on copies of one state; the results must agree: the
    cache and stamps bit for bit, the norms to float32 rounding."""
    indices = indices.to(device)
    gen = torch.Generator().manual_seed(seed + 1)
    values = torch.randn(indices.numel(), dim, generator=gen).to(device, values_dtype)
    got = make_state(size, dim, dtype, device, seed)
    want = tuple(t.clone() for t in got)
    out = cache_update_(got[0], indices, values, norms=got[1], stamps=got[2], step=step,
                        backend="cpp")
    cache_update_(want[0], indices, values, norms=want[1], stamps=want[2], step=step,
                  backend="torch")
    assert out is got[0]
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=0)
    assert torch.equal(got[2], want[2])
    return got


def index_sets(size):
    gen = torch.Generator().manual_seed(size)
    return {
        "random-duplicates": torch.randint(size, (3 * size,), generator=gen),
        "all-duplicates": torch.full((size,), size // 2),
        "no-duplicates": torch.randperm(size, generator=gen)[: size // 2],
        "empty": torch.zeros(0, dtype=torch.int64),
        "all-rows": torch.randperm(size, generator=gen),
        "all-rows-twice": torch.cat([torch.randperm(size, generator=gen), torch.arange(size)]),
    }


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("pattern", list(index_sets(8)))
@pytest.mark.parametrize("size,dim", [(8, 5), (300, 40), (97, 129)])
def test_matches_reference(device, dtype, pattern, size, dim):
    compare_backends(index_sets(size)[pattern], size, dim, dtype, device)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("values_dtype", [torch.float32, torch.float16, torch.bfloat16,
                                          torch.float64])
def test_values_converted_on_write_like_the_reference(device, dtype, values_dtype):
    compare_backends(torch.tensor([3, 1, 3, 0, 6]), 7, 33, dtype, device, values_dtype)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_last_occurrence_wins_under_parallel_writes(device):
    size, count, dim = 1000, 100_000, 4
    indices = torch.randint(size, (count,), generator=torch.Generator().manual_seed(0))
    # values[k] = k: each row must end up holding the position of its last occurrence
    values = torch.arange(count, dtype=torch.float32)[:, None].expand(count, dim).contiguous()
    last = torch.full((size,), -1.0).scatter_reduce_(0, indices, values[:, 0], reduce="amax")
    for _ in range(2):
        cache, norms, stamps = make_state(size, dim, torch.float32, device)
        written = last >= 0
        op(cache, indices.to(device), values.to(device), norms, stamps, 3)
        cache, norms, stamps = cache.cpu(), norms.cpu(), stamps.cpu()
        assert torch.equal(cache[written, 0], last[written])
        assert torch.equal(cache[written], cache[written, :1].expand(-1, dim))
        assert torch.equal(norms[written], dim * last[written].square())
        assert (stamps[written] == 3).all() and (stamps[~written] == -1).all()


@needs_extension
def test_norms_and_stamps_are_independent_and_optional():
    cache, norms, stamps = make_state(6, 3, torch.bfloat16, "cpu")
    before = cache.clone(), norms.clone(), stamps.clone()
    values = torch.randn(2, 3)
    op(cache, torch.tensor([4, 1]), values, None, stamps, 9)
    assert torch.equal(cache[[4, 1]], values.bfloat16()) and torch.equal(norms, before[1])
    assert stamps.tolist() == [-1, 9, -1, -1, 9, -1]
    op(cache, torch.tensor([0]), values[:1], norms, None, 0)
    assert norms[0] == cache[0].float().square().sum() and torch.equal(norms[1:], before[1][1:])
    assert stamps.tolist() == [-1, 9, -1, -1, 9, -1]
    assert torch.equal(cache[[2, 3, 5]], before[0][[2, 3, 5]])


@needs_extension
def test_values_that_alias_the_cache_are_read_before_any_write():
    cache, norms, stamps = make_state(6, 3, torch.float32, "cpu")
    want = tuple(t.clone() for t in (cache, norms, stamps))
    indices = torch.tensor([2, 3, 0, 1])
    cache_update_(want[0], indices, want[0][:4].clone(), norms=want[1], stamps=want[2], step=2,
                  backend="torch")
    op(cache, indices, cache[:4], norms, stamps, 2)  # rows 0..3 rotated in place
    assert torch.equal(cache, want[0]) and torch.equal(stamps, want[2])
    torch.testing.assert_close(norms, want[1], rtol=1e-5, atol=0)


@needs_extension
def test_indices_that_alias_the_stamps_are_read_before_any_write():
    buffer = torch.tensor([3, 0, 2, 2, 1, 5])
    stamps, indices = buffer, buffer[1:4]  # indices [0, 2, 2] share memory with stamps
    cache, norms, _ = make_state(6, 2, torch.float32, "cpu")
    values = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    op(cache, indices, values, norms, stamps, 7)
    assert cache[:, 0][[0, 2]].tolist() == [1.0, 3.0]
    assert stamps.tolist() == [7, 0, 7, 2, 1, 5]


@needs_extension
def test_non_contiguous_targets_are_written_through_copies():
    wide = torch.zeros(8, 6)
    cache = wide[:, ::2]
    norms = torch.zeros(8, 2)[:, 1]
    stamps = torch.full((8, 3), -1)[:, 0]
    values = torch.randn(3, 3).t()  # a non-contiguous read is fine as well
    cache_update_(cache, torch.tensor([5, 2, 5]), values, norms=norms, stamps=stamps, step=1,
                  backend="cpp")
    assert torch.equal(wide[5, ::2], values[2]) and torch.equal(wide[2, ::2], values[1])
    assert torch.equal(wide[:, 1::2], torch.zeros(8, 3))
    torch.testing.assert_close(norms[[2, 5]], values[[1, 2]].square().sum(1))
    assert stamps.tolist() == [-1, -1, 1, -1, -1, 1, -1, -1]


@needs_extension
@settings(max_examples=40, deadline=None)
@given(data=st.data(), size=st.integers(1, 12), dim=st.integers(1, 6),
       dtype=st.sampled_from(STORAGE))
def test_property_matches_reference(data, size, dim, dtype):
    indices = torch.tensor(data.draw(st.lists(st.integers(0, size - 1), max_size=3 * size)),
                           dtype=torch.int64)
    compare_backends(indices, size, dim, dtype, "cpu", seed=data.draw(st.integers(0, 100)))


# --- argument checks of the compiled op (before any write) ---------------------------------

def good_args():
    return [torch.zeros(5, 3), torch.tensor([0, 4]), torch.ones(2, 3), torch.zeros(5),
            torch.full((5,), -1), 2]


def overlapping_norms():
    args = good_args()
    args[3] = args[0].view(-1)[:5]
    return args


def overlapping_stamps():
    args = good_args()
    args[4] = torch.zeros(10, dtype=torch.int64)[:5]
    args[3] = args[4].view(torch.float32)[:5]  # same bytes, other dtype
    return args


def changed(position, value):
    args = good_args()
    args[position] = value
    return args


@needs_extension
@pytest.mark.parametrize("args,match", [
    (changed(0, torch.zeros(5, 3, dtype=torch.float64)), "cache: expected dtype Float, Half or BFloat16, got Double"),
    (changed(0, torch.zeros(15)), r"cache: expected shape \[N, d\], got \[15\]"),
    (changed(0, torch.zeros(3, 5).t()), "cache: expected a contiguous tensor"),
    (changed(1, torch.tensor([0.0, 4.0])), "indices: expected dtype Long, got Float"),
    (changed(1, torch.tensor([[0, 4]])), r"indices: expected shape \[K\], got \[1, 2\]"),
    (changed(1, torch.tensor([0, 9, 4])[::2]), "indices: expected a contiguous tensor"),
    (changed(1, torch.tensor([0, 5])), r"indices: expected values in \[0, 5\), got 5 at position 1"),
    (changed(1, torch.tensor([-1, 2])), r"indices: expected values in \[0, 5\), got -1 at position 0"),
    (changed(2, torch.ones(2, 3, dtype=torch.float64)), "values: expected dtype Float, Half or BFloat16, got Double"),
    (changed(2, torch.ones(3, 3)), r"values: expected shape \[2, 3\] \(K matching indices, d matching cache\), got \[3, 3\]"),
    (changed(2, torch.ones(3, 2).t()), "values: expected a contiguous tensor"),
    (changed(3, torch.zeros(5, dtype=torch.float64)), "norms: expected dtype Float, got Double"),
    (changed(3, torch.zeros(4)), r"norms: expected shape \[5\] \(one entry per cache row\), got \[4\]"),
    (changed(3, torch.zeros(10)[::2]), "norms: expected a contiguous tensor"),
    (changed(4, torch.zeros(5)), "stamps: expected dtype Long, got Float"),
    (changed(4, torch.zeros(5, 1, dtype=torch.int64)), r"stamps: expected shape \[5\]"),
    (changed(5, -1), "step: expected an int >= 0, got -1"),
    (overlapping_norms(), "norms: shares memory with cache, and the op writes both"),
    (overlapping_stamps(), "stamps: shares memory with norms, and the op writes both"),
])
def test_compiled_op_rejects_bad_arguments_before_writing(args, match):
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(RuntimeError, match=match):
        op(*args)
    for now, then in zip(args, before):
        if isinstance(now, torch.Tensor) and now.dtype == then.dtype:
            assert torch.equal(now, then)


# --- torch.library integration ---------------------------------------------------------------

@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", STORAGE)
@pytest.mark.parametrize("with_rows", [True, False], ids=["norms-stamps", "cache-only"])
def test_opcheck(device, dtype, with_rows):
    cache, norms, stamps = make_state(10, 4, dtype, device)
    indices = torch.tensor([1, 3, 1, 9], device=device)
    values = torch.randn(4, 4, device=device)
    args = (cache, indices, values, norms if with_rows else None, stamps if with_rows else None, 3)
    torch.library.opcheck(torch.ops.exvae_fast.cache_update_.default, args)


@needs_extension
@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_runs_under_torch_compile(device):
    def train_step(cache, indices, values, norms, stamps):
        torch.ops.exvae_fast.cache_update_(cache, indices, values * 2, norms, stamps, 5)
        return norms.sum() + cache.float().sum()

    torch._dynamo.reset()
    compiled = torch.compile(train_step, fullgraph=True)
    indices = torch.tensor([1, 3, 1, 9], device=device)
    values = torch.randn(4, 4, device=device)
    got = make_state(10, 4, torch.bfloat16, device)
    want = tuple(t.clone() for t in got)
    torch.testing.assert_close(compiled(got[0], indices, values, got[1], got[2]),
                               train_step(want[0], indices, values, want[1], want[2]))
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@needs_extension
def test_auto_prefers_the_compiled_op_and_latent_cache_uses_it():
    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    assert resolve_backend("cache_update_", "auto", torch.zeros(1)) == "cpp"
    cache = LatentCache(5, 2, dtype=torch.float16)
    cache.advance(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the compiled op is there: no fallback warning
        with Calls() as calls:
            cache.update_(torch.tensor([3, 0, 3]), torch.tensor([[1.0, 2.0], [0.5, 0.5], [2.0, 1.0]]))
    assert "exvae_fast.cache_update_.default" in calls.names
    assert cache.means[3].tolist() == [2.0, 1.0] and cache.sq_norms[[0, 3]].tolist() == [0.5, 5.0]
    assert cache.stamps.tolist() == [4, -1, -1, 4, -1] and cache.mean_staleness() == 0.0


def test_without_the_extension_auto_falls_back_with_one_warning():
    # a fresh interpreter in which importing exvae_fast._C fails, as when it was never built
    script = textwrap.dedent("""
        import json, sys, warnings
        sys.modules["exvae_fast._C"] = None
        import torch
        from exvae_fast import LatentCache
        from exvae_fast.ops import cache_update_
        from exvae_fast.ops.dispatch import registered_backends
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cache = LatentCache(4, 2)
            cache.update_(torch.tensor([1, 1]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
            cache_update_(cache.means, torch.tensor([0]), torch.ones(1, 2))
        try:
            cache_update_(cache.means, torch.tensor([0]), torch.ones(1, 2), backend="cpp")
            error = None
        except ValueError as exc:
            error = str(exc)
        print(json.dumps(dict(warnings=[str(w.message) for w in caught], error=error,
                              backends=registered_backends("cache_update_"),
                              means=cache.means.tolist())))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(report["warnings"]) == 1, report["warnings"]
    message = report["warnings"][0]
    assert message.startswith("cache_update_: the C++ extension exvae_fast._C could not be loaded (ModuleNotFoundError: import of exvae_fast._C halted")
    assert "using the 'torch' backend instead" in message
    assert "pip install --no-build-isolation -e ." in message
    assert report["backends"] == ["torch"]
    assert report["means"] == [[1.0, 1.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]]
    assert "backend 'cpp' is not available" in report["error"]


# --- CUDA only -------------------------------------------------------------------------------

@needs_extension
@pytest.mark.gpu
def test_cuda_kernel_is_built_and_chosen_by_auto():
    assert _extension.has_kernel("cache_update_", "cuda"), _extension.fallback_reason(
        "cache_update_", "cuda")
    assert resolve_backend("cache_update_", "auto", torch.zeros(1, device="cuda")) == "cpp"


@needs_extension
@pytest.mark.gpu
@pytest.mark.parametrize("size,count", [(50_000, 12_100), (1_000_000, 100_000)])
def test_cuda_large_updates_are_deterministic(size, count):
    gen = torch.Generator().manual_seed(count)
    indices = torch.randint(size, (count,), generator=gen)
    first = compare_backends(indices, size, 40, torch.bfloat16, "cuda", seed=1)
    second = compare_backends(indices, size, 40, torch.bfloat16, "cuda", seed=1)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@needs_extension
@pytest.mark.gpu
def test_cuda_out_of_range_raises_and_writes_nothing():
    cache, norms, stamps = make_state(5, 3, torch.float16, "cuda")
    before = cache.clone(), norms.clone(), stamps.clone()
    with pytest.raises(RuntimeError, match=r"indices: expected values in \[0, 5\), got values in \[-2, 5\]"):
        op(cache, torch.tensor([1, 5, -2, 3], device="cuda"), torch.ones(4, 3, device="cuda"),
           norms, stamps, 1)
    for now, then in zip((cache, norms, stamps), before):
        assert torch.equal(now, then)
    op(cache, torch.tensor([2], device="cuda"), torch.ones(1, 3, device="cuda"), norms, stamps, 1)
    assert norms[2].item() == 3.0  # the device is still usable


@needs_extension
def test_cpu_checks_the_range_even_when_told_not_to():
    cache, norms, stamps = make_state(5, 3, torch.float32, "cpu")
    before = cache.clone()
    with pytest.raises(RuntimeError, match=r"indices: expected values in \[0, 5\)"):
        op(cache, torch.tensor([1, 7]), torch.ones(2, 3), norms, stamps, 1, False)
    assert torch.equal(cache, before)


@needs_extension
@pytest.mark.gpu
def test_cuda_without_range_check_writes_nothing_out_of_range_and_does_not_synchronise():
    cache, norms, stamps = make_state(5, 3, torch.float16, "cuda")
    before = cache.clone(), norms.clone(), stamps.clone()
    bad, good = torch.tensor([1, 5], device="cuda"), torch.tensor([2, 2], device="cuda")
    ones = torch.ones(2, 3, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronisation raises
    try:
        op(cache, bad, ones, norms, stamps, 1, False)
        op(cache, good, ones, norms, stamps, 1, False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    expected = [t.clone() for t in before]
    expected[0][2], expected[1][2], expected[2][2] = 1.0, 3.0, 1
    for now, want in zip((cache, norms, stamps), expected):
        assert torch.equal(now, want)


@needs_extension
@pytest.mark.gpu
def test_cuda_public_op_synchronises_once():
    """The public op's validation reads the data once; the compiled op then skips its own
    range read-back (check_range=False)."""
    from test_device_checks import cuda_synchronisations

    cache, norms, stamps = make_state(1000, 40, torch.bfloat16, "cuda")
    indices = torch.randint(1000, (1100,), device="cuda")
    values = torch.randn(1100, 40, device="cuda")
    syncs = cuda_synchronisations(lambda: cache_update_(cache, indices, values, norms=norms,
                                                        stamps=stamps, step=2, backend="cpp"))
    assert len(syncs) == 1, syncs


@needs_extension
@pytest.mark.gpu
def test_cuda_rejects_tensors_on_another_device():
    cache, norms, stamps = make_state(5, 3, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="indices: expected a tensor on cuda:0 .*got cpu"):
        op(cache, torch.tensor([1]), torch.ones(1, 3, device="cuda"), norms, stamps, 1)


# --- the CUDA kernels, compiled (not run) without a GPU ------------------------------------

@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines build and run the kernel")
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_cuda_kernels_compile_for_sm90_without_spills(tmp_path):
    """nvcc compiles csrc/cache_update_cuda.cu for sm_90 against this torch's headers, with
    the flags torch's BuildExtension passes, and ptxas reports no register spills: a CPU
    machine with the CUDA toolkit catches what would otherwise fail only in a GPU session.
    A CPU wheel of torch lacks one header that a CUDA build generates; the test writes it."""
    from torch.utils import cpp_extension

    generated = tmp_path / "include" / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    generated.parent.mkdir(parents=True)
    generated.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    includes = [str(tmp_path / "include"), *cpp_extension.include_paths(),
                sysconfig.get_paths()["include"]]
    command = ["nvcc", "-c", str(CSRC / "cache_update_cuda.cu"), "-o", str(tmp_path / "k.o"),
               "-std=c++20", "-O3", "-gencode", "arch=compute_90,code=sm_90", "-Xptxas", "-v",
               *cpp_extension.COMMON_NVCC_FLAGS, *(f"-I{path}" for path in includes)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    entries = re.findall(r"Compiling entry function '(\w+)'", done.stderr)
    kernels = {name for name in ("reset_kernel", "claim_kernel", "write_kernel")
               if any(name in entry for entry in entries)}
    assert kernels == {"reset_kernel", "claim_kernel", "write_kernel"}, done.stderr[-4000:]
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", done.stderr)
    assert len(spills) == len(entries) and all(s == ("0", "0") for s in spills), done.stderr
