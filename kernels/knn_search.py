"""Fused top-k L2 search (`knn_search`, backend "triton"): two stages, parallel over the keys.

Stage 1, `_scan_kernel`, grid (chunks, ceil(B / BLOCK_B)), chunks ~ PROGRAMS_PER_SM x SMs: a
program owns BLOCK_B query rows (all of them when B <= BLOCK_B) and one chunk of the searched
pool (the keys, or the positions of `candidates`), walked in blocks of BLOCK_N keys. Distances
of a [BLOCK_B, BLOCK_N] tile come from ||q||^2 + ||x||^2 - 2 q.x with
`tl.dot(input_precision="ieee")` (never TF32) over D slices of 16. Each (distance, key index)
is packed into one int64 key, float32 bits << 32 | index (non-negative floats order like their
bits), so one integer comparison orders by distance, then by lower index. A running K_SEL
smallest per row stays in registers; a block is folded in by one of two methods (SELECT, an
autotuned constexpr): bitonic `tl.topk` of the block and then of (kept | block's best), or
repeated min extraction ("move each row's nearest remaining key into its worst slot"), whose
round count is the most keys any row takes from the block (+1), so late blocks cost a
comparison and two reductions. A block that improves no row costs no sort either way.
`candidates` are read inside the kernel (key rows gathered by index, no copy of the subset;
on CPU nothing could be measured, so a gather-a-copy variant was not benchmarked); `exclude`
masks one key per row. Output: [B, chunks, K_SEL] packed keys - B x N never reaches memory.

Stage 2, `_merge_kernel`, grid (ceil(B / BLOCK_R),) with BLOCK_R = 1 on GPU: a second small
kernel (not torch.topk) folds the chunks' lists, BLOCK_C at a time, with `tl.topk` into the
K_SEL best, then RE-RANKS them exactly - float64 direct differences rounded to float32, the
reference's arithmetic - packs them again, sorts (`tl.sort`) and writes the first k: float32
distances [B, k] and int64 indices [B, k], equal to the reference's, ties to the lower index.

Precision guarantee. K_SEL = next_pow2(k + MARGIN) >= k + 4 candidates survive every
selection. For float32 inputs the scan's d~ differs from the exact d by at most
eps(q, x) ~ (d + 2) * 2^-24 * (||q|| + ||x||)^2 (bf16/fp16 keys convert to float32 exactly).
A true top-k key j is lost only if K_SEL keys rank ahead of it in the scan, i.e. at least
K_SEL - k + 1 >= 5 keys i outside the true top k with d_i <= d_j + eps_i + eps_j. So the
result EQUALS the exact one (indices and distances, ties to the lower index) whenever each
row has at most K_SEL - k keys in that near-tie band above its k-th distance - and always
when a row searches at most K_SEL keys. Exact ties between identical key vectors are exact in
the scan too (same arithmetic), so duplicates resolve by index in both stages.

k > MAX_K (64) runs the torch reference (K_SEL would outgrow the registers). The returned
distances carry no autograd graph. Launch: `knn_search_triton` (registered by
`register_backend`), via the operator torch.ops.exvae_fast.knn_search_triton.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

MAX_K = 64
"""Largest k served by the kernels; larger k falls back to the torch reference."""
MARGIN = 4
"""Extra candidates kept beyond k (before rounding up to a power of two) for the re-rank."""
PROGRAMS_PER_SM = 2
"""GPU: chunks x ceil(B / largest BLOCK_B) is about PROGRAMS_PER_SM x the SM count."""
SCAN_BLOCK_D = 16
"""Width of the D slices of the scan's dot (16: the smallest tl.dot accepts)."""
CHUNK_ALIGN = 256
"""GPU: chunk lengths are multiples of this (a multiple of every BLOCK_N)."""
MAX_GRID_ROWS = 65535 * 16
"""Most query rows per launch: the scan's row blocks (BLOCK_B >= 16) on CUDA grid axis 1,
whose limit is 65535; larger batches are searched in slices."""
MAX_OFFSET = 2**31 - 1
"""Largest element offset of a query row or a dimension the kernels address (int32); the
launcher copies or splits operands to stay within it."""
INTERPRETER_CONFIG = {"BLOCK_B": 16, "BLOCK_N": 16, "MAX_CHUNKS": 3, "BLOCK_C": 2, "BLOCK_R": 16,
                      "SELECT": 1}
"""Fixed launch configuration under TRITON_INTERPRET=1 (no autotuning there); tests shrink it
to make small inputs span several blocks and chunks. BLOCK_N is raised to K_SEL if smaller."""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _launchable(kernel):
    """`kernel` wrapped for torch's tracing (wrap_triton), or as is in the interpreter, whose
    kernels torch cannot trace (torch 2.11 rejects them in wrap_triton; later releases hand
    them back unwrapped)."""
    return kernel if _interpreting() else wrap_triton(kernel)


# Packed keys: float32 distance bits << 32 | key index. Real keys are at most
# 0x7f800000_7fffffff (+inf); slots that hold no key carry distinct sentinels NO_KEY - lane,
# all >= _FLOOR, so they lose to every real key and the extraction's "replace the worst" is
# unambiguous.
_NO_KEY = tl.constexpr(2**63 - 1)
_FLOOR = tl.constexpr(0x7F800001 << 32)
_LOW31 = tl.constexpr(2**31 - 1)    # index bits (indices < 2^31)
SELECT_TOPK = 0
"""Per-block selection by bitonic `tl.topk` of the block, then of (kept | block's best)."""
SELECT_EXTRACT = 1
"""Per-block selection by repeated min extraction while some row still improves."""


@triton.jit
def _smallest(x, K: tl.constexpr):
    """The K smallest packed keys along the last axis (tl.topk keeps the largest: invert)."""
    return ~tl.topk(~x, K)


@triton.jit
def _empty_slots(ROWS: tl.constexpr, K: tl.constexpr):
    lane = tl.arange(0, K)
    return tl.full([ROWS, K], _NO_KEY, tl.int64) - lane[None, :]


@triton.jit(do_not_specialize=["n_queries", "n_pool", "pool_key"])
def _scan_kernel(q_ptr, k_ptr, cand_ptr, excl_ptr, part_ptr,
                 n_queries, n_pool, chunk_size, n_chunks, dim,
                 stride_qb, stride_qd, stride_kn, stride_kd, pool_key,
                 HAS_CAND: tl.constexpr, HAS_EXCL: tl.constexpr, K_SEL: tl.constexpr,
                 D_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, SELECT: tl.constexpr):
    # grid (chunks, row blocks): the launcher keeps the row blocks within axis 1's limit of
    # 65535 (MAX_GRID_ROWS rows per launch; with the row blocks on axis 0 instead, the
    # 16 x 256 tile spills 8 B more under Triton 3.6).
    # pool_key (next_pow2(n_pool)) is only the autotuning key: the exact size would re-run
    # the autotuning at every new pool size (the shards' candidate counts vary per step).
    # Offsets of query rows and of dimensions are int32 (int64 ones spill under Triton 3.6):
    # the launcher keeps each of them below 2^31 (`_launch`); key rows are int64.
    chunk = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < n_queries
    start = chunk * chunk_size
    stop = tl.minimum(start + chunk_size, n_pool)
    if HAS_EXCL:
        skip = tl.load(excl_ptr + rows, mask=row_ok, other=-1)

    # query tile: the first D slice stays in registers; ||q||^2 once per program
    dd0 = tl.arange(0, BLOCK_D)
    q_first = tl.load(q_ptr + rows[:, None] * stride_qb + dd0[None, :] * stride_qd,
                      mask=row_ok[:, None] & (dd0 < dim)[None, :], other=0.0).to(tl.float32)
    q_norm = tl.sum(q_first * q_first, axis=1)
    for d0 in tl.static_range(BLOCK_D, D_PAD, BLOCK_D):
        dd = d0 + dd0
        q = tl.load(q_ptr + rows[:, None] * stride_qb + dd[None, :] * stride_qd,
                    mask=row_ok[:, None] & (dd < dim)[None, :], other=0.0).to(tl.float32)
        q_norm += tl.sum(q * q, axis=1)

    best = _empty_slots(BLOCK_B, K_SEL)
    for base in range(start, stop, BLOCK_N):
        pos = base + tl.arange(0, BLOCK_N)
        pos_ok = pos < stop
        if HAS_CAND:
            idx = tl.load(cand_ptr + pos, mask=pos_ok, other=0)
        else:
            idx = pos.to(tl.int64)
        dot = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
        k_norm = tl.zeros([BLOCK_N], tl.float32)
        for d0 in tl.static_range(0, D_PAD, BLOCK_D):
            dd = d0 + dd0
            if d0 == 0:
                q = q_first
            else:
                q = tl.load(q_ptr + rows[:, None] * stride_qb + dd[None, :] * stride_qd,
                            mask=row_ok[:, None] & (dd < dim)[None, :], other=0.0).to(tl.float32)
            kt = tl.load(k_ptr + idx[None, :] * stride_kn + dd[:, None] * stride_kd,
                         mask=pos_ok[None, :] & (dd < dim)[:, None], other=0.0).to(tl.float32)
            dot += tl.dot(q, kt, input_precision="ieee")
            k_norm += tl.sum(kt * kt, axis=0)
        dist = q_norm[:, None] + k_norm[None, :] - 2.0 * dot
        # NaN (inf - inf when norms overflow) ranks as +inf; cancellation can make d~ slightly
        # negative (or -0.0): clamp through the bits
        dist = tl.where(dist == dist, dist, float("inf"))
        bits = tl.maximum(dist.to(tl.int32, bitcast=True), 0)
        ok = pos_ok[None, :] & row_ok[:, None]
        if HAS_EXCL:
            ok = ok & (idx[None, :] != skip[:, None])
        key = tl.where(ok, (bits.to(tl.int64) << 32) | idx[None, :], _NO_KEY)
        worst = tl.max(best, axis=1)
        nearest = tl.min(key, axis=1)
        if SELECT == 0:
            if tl.max((nearest < worst).to(tl.int32), axis=0) > 0:  # some row improves
                if BLOCK_N > K_SEL:
                    top = _smallest(key, K_SEL)
                else:
                    top = key
                best = _smallest(tl.reshape(tl.join(best, top), [BLOCK_B, 2 * K_SEL]), K_SEL)
        else:
            # rounds = the most keys any row takes from this block (+1); each round moves every
            # row's nearest remaining key into its worst slot when it is nearer
            while tl.max((nearest < worst).to(tl.int32), axis=0) > 0:
                take = (best == worst[:, None]) & (nearest < worst)[:, None]
                best = tl.where(take, nearest[:, None], best)
                key = tl.where(key == nearest[:, None], _NO_KEY, key)
                worst = tl.max(best, axis=1)
                nearest = tl.min(key, axis=1)

    lane = tl.arange(0, K_SEL)
    out = part_ptr + (rows[:, None].to(tl.int64) * n_chunks + chunk) * K_SEL + lane[None, :]
    tl.store(out, best, mask=row_ok[:, None])


@triton.jit
def _merge_kernel(part_ptr, q_ptr, k_ptr, dist_ptr, index_ptr,
                  n_queries, n_chunks, k, dim, stride_qb, stride_qd, stride_kn, stride_kd,
                  K_SEL: tl.constexpr, D_PAD: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_queries
    lane = tl.arange(0, K_SEL)
    best = _empty_slots(BLOCK_R, K_SEL)
    for c0 in range(0, n_chunks, BLOCK_C):
        cc = c0 + tl.arange(0, BLOCK_C)
        tile = tl.load(part_ptr + ((rows[:, None, None] * n_chunks + cc[None, :, None]) * K_SEL
                                   + lane[None, None, :]),
                       mask=row_ok[:, None, None] & (cc < n_chunks)[None, :, None], other=_NO_KEY)
        flat = tl.reshape(tile, [BLOCK_R, BLOCK_C * K_SEL])
        if BLOCK_C > 1:
            flat = _smallest(flat, K_SEL)
        best = _smallest(tl.reshape(tl.join(best, flat), [BLOCK_R, 2 * K_SEL]), K_SEL)

    # exact re-rank: float64 direct differences, rounded to float32 as the reference does
    valid = best < _FLOOR
    idx = best & _LOW31
    acc = tl.zeros([BLOCK_R, K_SEL], tl.float64)
    for d0 in tl.static_range(0, D_PAD, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)  # int32: see _scan_kernel
        q = tl.load(q_ptr + rows[:, None] * stride_qb + dd[None, :] * stride_qd,
                    mask=row_ok[:, None] & (dd < dim)[None, :], other=0.0)
        x = tl.load(k_ptr + idx[:, :, None] * stride_kn + dd[None, None, :] * stride_kd,
                    mask=valid[:, :, None] & (dd < dim)[None, None, :], other=0.0)
        diff = q.to(tl.float64)[:, None, :] - x.to(tl.float64)
        acc += tl.sum(diff * diff, axis=2)
    bits = acc.to(tl.float32).to(tl.int32, bitcast=True)
    exact = tl.sort(tl.where(valid, (bits.to(tl.int64) << 32) | idx, _NO_KEY))
    dist = (exact >> 32).to(tl.int32).to(tl.float32, bitcast=True)
    out = rows[:, None] * k + lane[None, :]
    keep = row_ok[:, None] & (lane < k)[None, :]
    tl.store(dist_ptr + out, dist, mask=keep)
    tl.store(index_ptr + out, exact & _LOW31, mask=keep)


_BOTH = (SELECT_TOPK, SELECT_EXTRACT)
_TILES = ((16, 64, 4, _BOTH), (32, 64, 8, _BOTH), (64, 64, 16, (SELECT_EXTRACT,)),
          (16, 128, 8, (SELECT_TOPK,)), (16, 256, 8, (SELECT_EXTRACT,)))
"""GPU config space: (BLOCK_B, BLOCK_N, num_warps, SELECT methods); BLOCK_N must cover K_SEL
and divide CHUNK_ALIGN. For d = 40 and K_SEL 16 to 64 each compiles for sm_90 with at most
16 B of stack per thread under Triton 3.8 and, under 3.6 (the GPU image's), at most 16 B but
16 x 256 with min extraction (32 B at K_SEL 16, 40 B at 32 and 64); K_SEL 128 (k > 60) spills
56 B or more under 3.6 whatever the tile (bench/results/sm90-compile/knn_tiles.log, last
section). The former
32 x 64 on 4 warps and 64 x 64 on 8 warps spilled 72 to 168 B."""
_TUNED: dict[tuple[int, int], object] = {}


def _autotuning() -> bool:
    return os.environ.get("EXVAE_KNN_AUTOTUNE", "1") != "0"


def _default_config(k_sel: int) -> dict:
    """The launch config when autotuning is off (EXVAE_KNN_AUTOTUNE=0)."""
    if k_sel <= 64:
        return {"BLOCK_B": 32, "BLOCK_N": 64, "num_warps": 8,
                "SELECT": SELECT_EXTRACT if k_sel <= 32 else SELECT_TOPK}
    return {"BLOCK_B": 16, "BLOCK_N": 256, "num_warps": 8, "SELECT": SELECT_EXTRACT}


def _tuned_scan(k_sel: int, block_b_cap: int):
    """The autotuned scan for K_SEL and a BLOCK_B cap (the batch rounded up to a power of
    two): a small config space, cached per problem key by triton.autotune, in memory and on
    disk (the timings of every config in Triton's cache directory, _scan_kernel.autotune.json).
    The key holds the pool size rounded up to a power of two (pool_key) and, through the
    cap, the batch's: exact sizes would re-tune at every new size."""
    key = (k_sel, block_b_cap)
    if key not in _TUNED:
        configs = [triton.Config({"BLOCK_B": bb, "BLOCK_N": bn, "SELECT": select},
                                 num_warps=warps, num_stages=2)
                   for bb, bn, warps, selects in _TILES if bn >= k_sel and bb <= block_b_cap
                   for select in selects]
        _TUNED[key] = triton.autotune(
            configs, key=["pool_key", "dim", "HAS_CAND", "HAS_EXCL"],
            cache_results=True)(_scan_kernel)
    return _TUNED[key]


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _largest_offset(t: Tensor) -> int:
    """The element offset of t's last element from its first (strides are never negative)."""
    return sum((n - 1) * stride for n, stride in zip(t.shape, t.stride()) if n > 0)


def _launch(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None,
            exclude: Tensor | None) -> tuple[Tensor, Tensor]:
    """The two-stage search on validated inputs (see the module docstring); k <= MAX_K.

    queries [B, d] float, keys [N, d] float32/bfloat16/float16 (any float), candidates int64
    [M] unique or None, exclude int64 [B] or None. Returns float32 [B, k], int64 [B, k].
    The kernels' int32 offsets of query rows and dimensions stay within MAX_OFFSET: a strided
    operand past it is made contiguous; queries still past it, or with more than MAX_GRID_ROWS
    rows, are searched in row slices.
    """
    if _largest_offset(queries) > MAX_OFFSET:
        queries = queries.contiguous()
    if (keys.shape[1] - 1) * keys.stride(1) > MAX_OFFSET:  # key rows are addressed in int64
        keys = keys.contiguous()
    rows = MAX_GRID_ROWS
    if queries.stride(0):
        rows = min(rows, max(1, (MAX_OFFSET + 1) // queries.stride(0)))
    if queries.shape[0] <= rows:
        return _launch_rows(queries, keys, k, candidates, exclude)
    parts = [_launch_rows(queries[s:s + rows], keys, k, candidates, None if exclude is None else exclude[s:s + rows])
             for s in range(0, queries.shape[0], rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _launch_rows(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None,
                 exclude: Tensor | None) -> tuple[Tensor, Tensor]:
    """`_launch` on queries whose offsets fit the kernels' int32 arithmetic."""
    batch, dim = queries.shape
    # the kernels read candidates and exclude with unit stride
    candidates = None if candidates is None else candidates.contiguous()
    exclude = None if exclude is None else exclude.contiguous()
    dists = torch.empty((batch, k), dtype=torch.float32, device=queries.device)
    indices = torch.empty((batch, k), dtype=torch.int64, device=queries.device)
    if batch == 0:
        return dists, indices
    pool = keys.shape[0] if candidates is None else candidates.shape[0]
    k_sel = triton.next_power_of_2(k + MARGIN)
    # the scan's FMA dot materialises a whole D slice per thread: slices of 16 keep it in
    # registers (wider slices spill on sm_90); D is padded to a multiple of the slice only
    d_scan = SCAN_BLOCK_D * triton.cdiv(dim, SCAN_BLOCK_D)
    # dummies for absent optional pointers (never read: HAS_CAND / HAS_EXCL are False)
    cand = queries if candidates is None else candidates
    excl = queries if exclude is None else exclude
    if _interpreting():
        cfg = INTERPRETER_CONFIG
        block_n = max(cfg["BLOCK_N"], k_sel)
        chunk = block_n * triton.cdiv(triton.cdiv(pool, block_n), cfg["MAX_CHUNKS"])
        scan = _scan_kernel
        meta = {"BLOCK_B": cfg["BLOCK_B"], "BLOCK_N": block_n, "SELECT": cfg["SELECT"]}
        block_c, block_r = cfg["BLOCK_C"], cfg["BLOCK_R"]
    else:
        # about PROGRAMS_PER_SM programs per SM at the largest BLOCK_B: many rows need few
        # chunks, which also bounds the partial lists to ~B x K_SEL x target int64
        largest = max(tile[0] for tile in _TILES)
        target = triton.cdiv(PROGRAMS_PER_SM * _sm_count(queries.device), triton.cdiv(batch, largest))
        chunk = CHUNK_ALIGN * triton.cdiv(triton.cdiv(pool, target), CHUNK_ALIGN)
        if _autotuning():
            scan, meta = _tuned_scan(k_sel, max(16, triton.next_power_of_2(batch))), {}
        else:
            scan, meta = _scan_kernel, _default_config(k_sel)
        block_c, block_r = max(1, 1024 // k_sel), 1
    n_chunks = triton.cdiv(pool, chunk)
    # re-rank slices: at most 4096 float64 differences live per program
    block_d = min(max(16, triton.next_power_of_2(dim)), max(16, 4096 // (k_sel * block_r)))
    part = torch.empty((batch, n_chunks, k_sel), dtype=torch.int64, device=queries.device)

    def grid(m):
        return (n_chunks, triton.cdiv(batch, m["BLOCK_B"]))

    _launchable(scan)[grid](
        queries, keys, cand, excl, part, batch, pool, chunk, n_chunks, dim,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1),
        triton.next_power_of_2(pool),
        HAS_CAND=candidates is not None, HAS_EXCL=exclude is not None, K_SEL=k_sel,
        D_PAD=d_scan, BLOCK_D=SCAN_BLOCK_D, **meta)
    _launchable(_merge_kernel)[(triton.cdiv(batch, block_r),)](
        part, queries, keys, dists, indices, batch, n_chunks, k, dim,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1),
        K_SEL=k_sel, D_PAD=block_d * triton.cdiv(dim, block_d), BLOCK_D=block_d,
        BLOCK_C=min(block_c, triton.next_power_of_2(n_chunks)), BLOCK_R=block_r, num_warps=4)
    return dists, indices


def _launch_fake(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None,
                 exclude: Tensor | None) -> tuple[Tensor, Tensor]:
    batch = queries.shape[0]
    return (queries.new_empty((batch, k), dtype=torch.float32),
            queries.new_empty((batch, k), dtype=torch.int64))


OP_NAME = "exvae_fast::knn_search_triton"
if _interpreting():
    # torch cannot trace interpreted kernels (wrap_triton hands them back unwrapped), so in
    # the interpreter the op is an opaque custom_op with a fake implementation instead
    knn_search_op = torch.library.custom_op(OP_NAME, _launch, mutates_args=())
    knn_search_op.register_fake(_launch_fake)
else:
    knn_search_op = triton_op(OP_NAME, _launch, mutates_args=())
"""torch.ops.exvae_fast.knn_search_triton(queries, keys, k, candidates, exclude): `_launch`
as an operator (a triton_op, so torch.compile sees the kernels; a custom_op under
TRITON_INTERPRET=1)."""


def knn_search_triton(queries: Tensor, keys: Tensor, k: int, candidates: Tensor | None = None,
                      exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Backend "triton" of `exvae_fast.ops.knn_search` (arguments already validated there):
    (sq_dists float32 [B, k], indices int64 [B, k]), equal to the torch reference within the
    precision guarantee of the module docstring. k > MAX_K runs the torch reference."""
    if k > MAX_K:
        from exvae_fast.ops.dispatch import implementation
        return implementation("knn_search", "torch", queries, keys)(
            queries, keys, k, candidates, exclude)
    if keys.shape[0] >= 2**31:
        raise ValueError(f"keys: expected fewer than 2^31 rows, got {keys.shape[0]}")
    if queries.device.type == "cuda":
        with torch.cuda.device(queries.device):
            return knn_search_op(queries, keys, k, candidates, exclude)
    return knn_search_op(queries, keys, k, candidates, exclude)


def register_backend() -> None:
    """Register `knn_search_triton` as backend "triton" of op "knn_search": on CUDA with
    priority 10 (so "auto" picks it); under TRITON_INTERPRET=1 also on CPU, with a priority
    below the torch reference's so "auto" on CPU still picks torch."""
    from exvae_fast.ops.dispatch import register
    if _interpreting():
        register("knn_search", "triton", knn_search_triton, devices={"cuda", "cpu"}, priority=-1)
    else:
        register("knn_search", "triton", knn_search_triton, devices={"cuda"}, priority=10)
