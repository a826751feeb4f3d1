"""Triton kernels of the fused mixture log-density (launched from `mixture_log_density.py`).

All logits are kept in base 2 (log2 e * natural logits) so the inner loops use `exp2`, as
FlashAttention does, and the saved logsumexp stays in base 2 (no rounding round trip).

Precision. Squared distances use ||z - c||^2 + ||mu - c||^2 - 2 (z - c).(mu - c) with a
float32 `tl.dot` (input_precision "ieee" by default, never plain TF32), z and mu shifted by
one centre c (the mean of the rows of z: an exact identity that keeps latents far from the
origin accurate). That expansion loses a few ulps of ||z - c||^2 + ||mu - c||^2, which
matters only for components that carry weight and are either near neighbours of the row
(the leave-one-out / nearest-neighbour case: the distance cancels) or seen through a small
sigma^2 (the error is scaled by 1 / (2 sigma^2)). A tile holding such a component is
recomputed by direct differences of the raw rows (Kahan-summed over d) and its moments
sum_j p_bj (mu_j - z_b) are accumulated by direct differences too (`_tile_logits`), so
gradients do not cancel either. Everywhere else the moments come from the centred dot
products minus sum_j p_bj (z_b - c), which then loses at most a few bits.
Component offsets are int64 so N * d may exceed 2^31. The sizes B, N (which changes every
step in retrieval mode) and the chunk length are not specialised on, so they never trigger a
recompile; d is, as its alignment helps the loads.
"""
from __future__ import annotations

import triton
import triton.language as tl

# globals read inside @triton.jit code must be constexpr
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
LOG_2PI = tl.constexpr(1.8378770664093453)
SIGNIFICANT2 = tl.constexpr(40.0)
FLT_MAX = tl.constexpr(3.4028234663852886e38)
"""Base-2 logits more than this below their row's maximum (weight < 2^-40) are never refined."""


@triton.jit
def _raw_column(ptr, rows, n, D, k):
    """Column k of the row-major [n, D] tensor at `rows`, in float32 (0 where rows >= n)."""
    return tl.load(ptr + rows.to(tl.int64) * D + k, mask=rows < n, other=0.0).to(tl.float32)


@triton.jit
def _exact_sq(z_ptr, mu_ptr, rows, cols, B, hi, D, like):
    """||z_b - mu_j||^2 [BLOCK_B, BLOCK_N] by direct differences of the raw (uncentred)
    rows: z_k - mu_k is exact to one rounding, so nothing cancels; the d squares are summed
    with Kahan compensation, so the result is within a few ulps whatever d."""
    sq = tl.zeros_like(like)
    carry = tl.zeros_like(like)
    for k in range(0, D):
        zk = _raw_column(z_ptr, rows, B, D, k)
        diff = zk[:, None] - _raw_column(mu_ptr, cols, hi, D, k)[None, :]
        term = diff * diff - carry
        total = sq + term
        carry = (total - sq) - term
        sq = total
    return sq


@triton.jit
def _exact_moment(w, z_ptr, mu_ptr, rows, cols, dims, B, hi, D, like, AXIS: tl.constexpr):
    """Moments by direct differences of the raw rows, for weights w [BLOCK_B, BLOCK_N]:
    AXIS = 1: sum_j w_bj (mu_j - z_b) [BLOCK_B, D_PAD] (the rows' moments, forward);
    AXIS = 0: sum_b w_bj (z_b - mu_j) [BLOCK_N, D_PAD] (the components', means backward)."""
    out = tl.zeros_like(like)
    for k in range(0, D):
        zk = _raw_column(z_ptr, rows, B, D, k)[:, None]
        muk = _raw_column(mu_ptr, cols, hi, D, k)[None, :]
        if AXIS == 1:
            diff = muk - zk
        else:
            diff = zk - muk
        out += tl.where(dims[None, :] == k, tl.sum(w * diff, AXIS)[:, None], 0.0)
    return out


@triton.jit
def _tile_logits(z, z_sq, mu, mu_sq, lw2, excl, m_ref, z_ptr, mu_ptr, rows, cols, B, hi, D,
                 scale2, refine, cancel, HAS_EXCLUDE: tl.constexpr, PRECISION: tl.constexpr):
    """Base-2 logits [BLOCK_B, BLOCK_N] of centred rows z against centred components mu
    (-inf where j >= hi or j is the row's excluded index), the squared distances, the mask
    of components that take part, and whether the tile was refined.

    The dot-product distances carry an absolute error of a few ulps of
    ||z - c||^2 + ||mu - c||^2. The tile is recomputed by direct differences (and flagged, so
    its moments are accumulated exactly too) when a component within 2^-40 of its row's
    maximum (max of m_ref and this tile) has that error, in logit units, above the tolerance
    (`refine` = 2^-22 / tolerance), or has lost more than -log2(`cancel`) bits to
    cancellation (||z - mu||^2 < cancel (||z - c||^2 + ||mu - c||^2): a near neighbour).
    refine = cancel = 0 never refines."""
    cross = tl.dot(z, tl.trans(mu), input_precision=PRECISION)
    norms = z_sq[:, None] + mu_sq[None, :]
    sq = tl.maximum(norms - 2.0 * cross, 0.0)
    keep = (cols < hi)[None, :] & (rows < B)[:, None]
    if HAS_EXCLUDE:
        keep = keep & (cols[None, :] != excl[:, None])
    logit = tl.where(keep, lw2[None, :] - sq * scale2, float("-inf"))
    ref = tl.maximum(m_ref, tl.max(logit, 1))
    shaky = (norms * (scale2 * refine) > 1.0) | (sq < norms * cancel)
    shaky = shaky & (logit > ref[:, None] - SIGNIFICANT2)
    refined = tl.max(shaky.to(tl.int32)) > 0
    if refined:
        sq = _exact_sq(z_ptr, mu_ptr, rows, cols, B, hi, D, sq)
        logit = tl.where(keep, lw2[None, :] - sq * scale2, float("-inf"))
    return logit, sq, keep, refined


@triton.jit
def _load_rows(ptr, rows, dims, B, D):
    """[BLOCK_B, D_PAD] float32 tile of a row-major [B, D] tensor, zero padded."""
    mask = (rows < B)[:, None] & (dims < D)[None, :]
    return tl.load(ptr + rows[:, None].to(tl.int64) * D + dims[None, :], mask=mask,
                   other=0.0).to(tl.float32)


@triton.jit
def _precision(lv_ptr):
    """1 / sigma^2 = exp(-log_var) in float32, capped at the largest float32 (log_var below
    about -88.7 would overflow to inf, and a zero distance times inf is NaN)."""
    return tl.minimum(tl.exp(-tl.load(lv_ptr).to(tl.float32)), FLT_MAX)


@triton.jit
def _load_centered(ptr, rows, dims, B, D, center):
    """Like _load_rows, minus the centre c [D_PAD] on the valid rows (padding stays 0)."""
    x = _load_rows(ptr, rows, dims, B, D)
    return tl.where((rows < B)[:, None], x - center[None, :], 0.0)


@triton.jit
def _safe(m):
    """m with -inf replaced by 0, so exp2(x - m) is 0 (not NaN) for x = -inf."""
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _empty_state(BLOCK_B: tl.constexpr, D_PAD: tl.constexpr):
    """The online-logsumexp state of BLOCK_B rows before any component: running max m = -inf,
    sums s = q = 0, acc = 0 [BLOCK_B, D_PAD], and the log-weight normaliser's (wm, ws)."""
    m = tl.full([BLOCK_B], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_B], tl.float32)
    q = tl.zeros([BLOCK_B], tl.float32)
    acc = tl.zeros([BLOCK_B, D_PAD], tl.float32)
    wm = tl.full([BLOCK_B], float("-inf"), tl.float32)
    ws = tl.zeros([BLOCK_B], tl.float32)
    return m, s, q, acc, wm, ws


@triton.jit(do_not_specialize=["B", "N", "CHUNK", "B_KEY", "N_KEY"])
def mixture_forward_partial_kernel(
        z_ptr, mu_ptr, c_ptr, lv_ptr, excl_ptr, lw_ptr,  # inputs
        m_ptr, s_ptr, q_ptr, acc_ptr, wm_ptr, ws_ptr,  # partials [C, B] and acc [C, B, D]
        B, N, D, CHUNK, refine, cancel, B_KEY, N_KEY,
        D_PAD: tl.constexpr, HAS_EXCLUDE: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (i, c): rows [i*BLOCK_B, +BLOCK_B) against components [c*CHUNK, +CHUNK),
    streamed in BLOCK_N blocks with an online logsumexp. Writes per row: running max m
    (base 2), s = sum_j 2^(l_bj - m), q = sum_j 2^(l_bj - m) ||z_b - mu_j||^2,
    acc = sum_j 2^(l_bj - m) (mu_j - z_b) and, with log_weights, the same (wm, ws) pair for the
    row's normaliser logsumexp_j log w_j over its participating components."""
    pid_b = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    dims = tl.arange(0, D_PAD)
    row_ok = rows < B
    center = tl.load(c_ptr + dims, mask=dims < D, other=0.0)
    z = _load_centered(z_ptr, rows, dims, B, D, center)
    z_sq = tl.sum(z * z, 1)
    scale2 = 0.5 * LOG2E * _precision(lv_ptr)
    if HAS_EXCLUDE:
        excl = tl.load(excl_ptr + rows, mask=row_ok, other=-1)
    else:
        excl = tl.full([BLOCK_B], -1, tl.int64)
    m, s, q, acc, wm, ws = _empty_state(BLOCK_B, D_PAD)
    lo = pid_c * CHUNK
    hi = tl.minimum(lo + CHUNK, N)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        mu = _load_centered(mu_ptr, cols, dims, hi, D, center)
        mu_sq = tl.sum(mu * mu, 1)
        if HAS_WEIGHTS:
            lw2 = tl.load(lw_ptr + cols, mask=cols < hi, other=float("-inf")).to(tl.float32) * LOG2E
        else:
            lw2 = tl.zeros([BLOCK_N], tl.float32)
        logit, sq, keep, refined = _tile_logits(z, z_sq, mu, mu_sq, lw2, excl, m, z_ptr, mu_ptr,
                                                rows, cols, B, hi, D, scale2, refine, cancel,
                                                HAS_EXCLUDE, PRECISION)
        m_new = tl.maximum(m, tl.max(logit, 1))
        m_safe = _safe(m_new)
        alpha = tl.exp2(m - m_safe)
        p = tl.exp2(logit - m_safe[:, None])
        s = s * alpha + tl.sum(p, 1)
        q = q * alpha + tl.sum(p * sq, 1)
        if refined:
            moment = _exact_moment(p, z_ptr, mu_ptr, rows, cols, dims, B, hi, D, acc, 1)
        else:  # no near neighbour here: the difference of centred sums loses a few bits only
            moment = tl.dot(p, mu, input_precision=PRECISION) - tl.sum(p, 1)[:, None] * z
        acc = acc * alpha[:, None] + moment
        m = m_new
        if HAS_WEIGHTS:
            lwk = tl.where(keep, lw2[None, :], float("-inf"))
            wm_new = tl.maximum(wm, tl.max(lwk, 1))
            wm_safe = _safe(wm_new)
            ws = ws * tl.exp2(wm - wm_safe) + tl.sum(tl.exp2(lwk - wm_safe[:, None]), 1)
            wm = wm_new
    at = pid_c * B + rows
    tl.store(m_ptr + at, m, mask=row_ok)
    tl.store(s_ptr + at, s, mask=row_ok)
    tl.store(q_ptr + at, q, mask=row_ok)
    tile = at[:, None].to(tl.int64) * D + dims[None, :]
    tl.store(acc_ptr + tile, acc, mask=row_ok[:, None] & (dims < D)[None, :])
    if HAS_WEIGHTS:
        tl.store(wm_ptr + at, wm, mask=row_ok)
        tl.store(ws_ptr + at, ws, mask=row_ok)


@triton.jit(do_not_specialize=["B", "N", "C"])
def mixture_combine_kernel(
        m_ptr, s_ptr, q_ptr, acc_ptr, wm_ptr, ws_ptr, lv_ptr, excl_ptr,
        out_ptr, lse_ptr, norm_ptr, delta_ptr, msq_ptr,
        B, N, D, C,
        D_PAD: tl.constexpr, HAS_EXCLUDE: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
        BLOCK_B: tl.constexpr):
    """Merges the C partials of BLOCK_B rows. Writes out = lse - norm - d/2 log(2 pi sigma^2)
    (z's dtype) and, in float32: lse and norm in base 2 (kept in base 2 for the backward: a
    round trip through nats would move a row's maximum logit of magnitude ~1e4 by an ulp,
    i.e. its weight by ~0.1%), delta = sum_j p_bj (mu_j - z_b) and
    msq = sum_j p_bj ||z_b - mu_j||^2 (both zero for a row whose density underflows)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    dims = tl.arange(0, D_PAD)
    row_ok = rows < B
    m, s, q, acc, wm, ws = _empty_state(BLOCK_B, D_PAD)
    for c in range(0, C):
        at = c * B + rows
        m_c = tl.load(m_ptr + at, mask=row_ok, other=float("-inf"))
        m_new = tl.maximum(m, m_c)
        m_safe = _safe(m_new)
        alpha = tl.exp2(m - m_safe)
        beta = tl.exp2(m_c - m_safe)
        s = s * alpha + beta * tl.load(s_ptr + at, mask=row_ok, other=0.0)
        q = q * alpha + beta * tl.load(q_ptr + at, mask=row_ok, other=0.0)
        acc = acc * alpha[:, None] + beta[:, None] * _load_rows(acc_ptr, at, dims, (c + 1) * B, D)
        m = m_new
        if HAS_WEIGHTS:
            wm_c = tl.load(wm_ptr + at, mask=row_ok, other=float("-inf"))
            wm_new = tl.maximum(wm, wm_c)
            wm_safe = _safe(wm_new)
            ws = (ws * tl.exp2(wm - wm_safe)
                  + tl.exp2(wm_c - wm_safe) * tl.load(ws_ptr + at, mask=row_ok, other=0.0))
            wm = wm_new
    alive = s > 0.0
    lse2 = tl.where(alive, m + tl.log2(tl.where(alive, s, 1.0)), float("-inf"))
    if HAS_WEIGHTS:  # ws > 0 on every valid row (validate_mixture); padded rows: 0
        norm2 = tl.where(row_ok, _safe(wm) + tl.log2(tl.where(row_ok, ws, 1.0)), 0.0)
    else:
        count = N + tl.zeros([BLOCK_B], tl.float32)
        if HAS_EXCLUDE:
            excl = tl.load(excl_ptr + rows, mask=row_ok, other=-1)
            count = count - tl.where(excl >= 0, 1.0, 0.0)
        norm2 = tl.log2(count)
    lv = tl.load(lv_ptr).to(tl.float32)
    out = (lse2 - norm2) * LN2 - 0.5 * D * (LOG_2PI + lv)
    inv_s = tl.where(alive, 1.0 / tl.where(alive, s, 1.0), 0.0)
    delta = acc * inv_s[:, None]
    tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)
    tl.store(lse_ptr + rows, lse2, mask=row_ok)
    tl.store(norm_ptr + rows, norm2, mask=row_ok)
    tl.store(msq_ptr + rows, q * inv_s, mask=row_ok)
    tile = rows[:, None].to(tl.int64) * D + dims[None, :]
    tl.store(delta_ptr + tile, delta, mask=row_ok[:, None] & (dims < D)[None, :])


@triton.jit(do_not_specialize=["B", "N", "B_KEY", "N_KEY"])
def mixture_backward_means_kernel(
        g_ptr, z_ptr, mu_ptr, c_ptr, lv_ptr, excl_ptr, lw_ptr, lse_ptr, norm_ptr,
        gmu_ptr, glw_ptr,
        B, N, D, refine, cancel, B_KEY, N_KEY,
        D_PAD: tl.constexpr, HAS_EXCLUDE: tl.constexpr, HAS_WEIGHTS: tl.constexpr,
        NEED_MEANS: tl.constexpr, NEED_WEIGHTS: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program j owns components [j*BLOCK_N, +BLOCK_N) and loops over all B rows,
    recomputing p_bj = 2^(l_bj - lse2_b) from the saved base-2 lse (no atomics):
    grad mu_j = sum_b g_b p_bj (z_b - mu_j) / sigma^2 (exact differences in refined tiles,
    centred dot products elsewhere, as in the forward) and
    grad log w_j = sum_b g_b (p_bj - w_j / sum_{k in row b} w_k)."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D_PAD)
    col_ok = cols < N
    center = tl.load(c_ptr + dims, mask=dims < D, other=0.0)
    mu = _load_centered(mu_ptr, cols, dims, N, D, center)
    mu_sq = tl.sum(mu * mu, 1)
    precision = _precision(lv_ptr)
    scale2 = 0.5 * LOG2E * precision
    if HAS_WEIGHTS:
        lw2 = tl.load(lw_ptr + cols, mask=col_ok, other=float("-inf")).to(tl.float32) * LOG2E
    else:
        lw2 = tl.zeros([BLOCK_N], tl.float32)
    acc = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    w_sum = tl.zeros([BLOCK_N], tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        z = _load_centered(z_ptr, rows, dims, B, D, center)
        z_sq = tl.sum(z * z, 1)
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        lse2 = _safe(tl.load(lse_ptr + rows, mask=row_ok, other=0.0))
        if HAS_EXCLUDE:
            excl = tl.load(excl_ptr + rows, mask=row_ok, other=-1)
        else:
            excl = tl.full([BLOCK_B], -1, tl.int64)
        logit, sq, keep, refined = _tile_logits(z, z_sq, mu, mu_sq, lw2, excl, lse2, z_ptr,
                                                mu_ptr, rows, cols, B, N, D, scale2, refine,
                                                cancel, HAS_EXCLUDE, PRECISION)
        p = tl.exp2(logit - lse2[:, None])  # 0 off `keep` (padded rows and columns included)
        w = g[:, None] * p
        if NEED_MEANS:
            if refined:
                acc += _exact_moment(w, z_ptr, mu_ptr, rows, cols, dims, B, N, D, acc, 0)
            else:
                moment = tl.dot(tl.trans(w), z, input_precision=PRECISION)
                acc += moment - tl.sum(w, 0)[:, None] * mu
        if NEED_WEIGHTS:
            norm2 = tl.load(norm_ptr + rows, mask=row_ok, other=0.0)
            wt = tl.exp2(tl.where(keep, lw2[None, :], float("-inf")) - norm2[:, None])
            w_sum += tl.sum(w - g[:, None] * wt, 0)
    if NEED_MEANS:
        grad = precision * acc
        tile = cols[:, None].to(tl.int64) * D + dims[None, :]
        tl.store(gmu_ptr + tile, grad.to(gmu_ptr.dtype.element_ty),
                 mask=col_ok[:, None] & (dims < D)[None, :])
    if NEED_WEIGHTS:
        tl.store(glw_ptr + cols, w_sum.to(glw_ptr.dtype.element_ty), mask=col_ok)


@triton.jit(do_not_specialize=["B"])
def mixture_backward_z_kernel(g_ptr, delta_ptr, msq_ptr, lv_ptr, gz_ptr, glv_ptr, B, D,
                              D_PAD: tl.constexpr, BLOCK_B: tl.constexpr):
    """One program, O(B d): grad z_b = g_b delta_b / sigma^2 and
    grad log_var = sum_b g_b (msq_b / (2 sigma^2) - d / 2), from the forward's accumulators."""
    dims = tl.arange(0, D_PAD)
    precision = _precision(lv_ptr)
    total = tl.zeros([BLOCK_B], tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_ok = rows < B
        g = tl.load(g_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        delta = _load_rows(delta_ptr, rows, dims, B, D)
        tile = rows[:, None].to(tl.int64) * D + dims[None, :]
        tl.store(gz_ptr + tile, (g[:, None] * precision * delta).to(gz_ptr.dtype.element_ty),
                 mask=row_ok[:, None] & (dims < D)[None, :])
        msq = tl.load(msq_ptr + rows, mask=row_ok, other=0.0)
        total += g * (0.5 * precision * msq - 0.5 * D)
    tl.store(glv_ptr, tl.sum(total, 0).to(glv_ptr.dtype.element_ty))
