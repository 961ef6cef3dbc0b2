"""The long-tail steps of the stack sampler (docs/ops.md "sample_stack", "Long-tail steps"): DRY, typical-p,
epsilon, eta, XTC, dynamic temperature (llama.cpp's temp_ext), mirostat v2, and order="llama.cpp".

Route: steps 1-3 (mask -> bias -> penalties) in the backend's own kernels (the C++ op `stack_processed_logits`
on CPU and CUDA, the Triton kernels, or the torch reference), then DRY as a short override list from the
history, then the filters of the chosen order one after the other on float64 logits z (a dropped token is
-inf; every filter sees the softmax of the survivors of the filters before it), then the draws. Everything
after steps 1-3 is device torch ops: nothing is read on the host (graph-safe), but these steps are not fused
into the kernels' passes. tests/oracle.py's `sample_stack_tail` is the float64 numpy twin of this module.
"""
from __future__ import annotations

import math

import torch

from ..reference import philox_uniform
from .spec import XTC_DRAW, StackOpArgs, TailArgs, penalties_ok, tail_params_ok

Tensor = torch.Tensor
_INF = float("inf")
_LN2 = math.log(2.0)
# llama.cpp clamps DRY's exponent so that base ** exponent stays a finite float: log(FLT_MAX) as it writes it.
DRY_FLOAT_MAX_LOG = 88.7228391
_DRY_CHUNK = 1 << 24  # elements of one block of DRY's history comparison


def steps_1_3(args: StackOpArgs, backend: str) -> tuple[Tensor, Tensor]:
    """(y float32 [B, V], bad bool [B]) from the backend's kernels of steps 1-3."""
    from . import compose, reference

    rows = (args.row("repetition"), args.row("frequency"), args.row("presence"))
    if backend == "torch":
        y, bad = reference.processed_logits(args.logits.to(torch.float32), *args.steps_1_3()[1:6], *rows)
        return y, compose.invalid_rows(args, bad)
    if backend == "triton":
        from ..triton import stack_sampler

        y, bad = stack_sampler.processed_logits(args.logits.contiguous(), *args.steps_1_3()[1:6], *rows)
        return y, compose.invalid_rows(args, bad)
    contiguous = lambda t: t if t is None or not isinstance(t, Tensor) else t.contiguous()  # noqa: E731
    return torch.ops.fastsample.stack_processed_logits(*map(contiguous, args.steps_1_3()))


# ------------------------------------------------------------------------------------------------------ DRY
def history(prompt_ids: Tensor | None, output_ids: Tensor | None, batch: int, device) -> Tensor:
    """The DRY history: prompt then output ids of each row with the -1 slots removed, right-aligned in an
    int64 [B, L] tensor (the last token in column L - 1; -1 to the left of the first one)."""
    parts = [t for t in (prompt_ids, output_ids) if t is not None]
    if not parts:
        return torch.full((batch, 0), -1, dtype=torch.int64, device=device)
    h = torch.cat(parts, dim=1)
    cols = torch.arange(h.shape[1], device=device).expand_as(h)
    order = torch.argsort(torch.where(h != -1, cols, -1), dim=1, stable=True)
    return h.gather(1, order)


def dry_kernel_available() -> bool:
    """Whether the extension has the CPU kernel of DRY's override list (op stack_tail_dry)."""
    try:
        return hasattr(torch.ops.fastsample, "stack_tail_dry")
    except (AttributeError, RuntimeError):
        return False


def dry_overrides(h: Tensor, t: TailArgs, vocab: int) -> tuple[Tensor, Tensor]:
    """DRY's override list from the C++ op stack_tail_dry (CPU): (ids int64 [B, L], penalty float32 [B, L]) for
    y.scatter_add(1, ids, -penalty); h the right-aligned history of `history`."""
    breakers = t.dry_sequence_breakers
    return torch.ops.fastsample.stack_tail_dry(
        h.contiguous(), t.dry_multiplier.contiguous(), t.dry_base.contiguous(), t.dry_allowed_length.contiguous(),
        t.dry_penalty_last_n.contiguous(), None if breakers is None else breakers.contiguous(), vocab)


def dry(y: Tensor, prompt_ids: Tensor | None, output_ids: Tensor | None, t: TailArgs,
        kernel: bool = False) -> Tensor:
    """DRY (llama.cpp's rule, docs/ops.md): y - penalty on each token that would extend a repeat of the end of
    the history of at least dry_allowed_length tokens. Work O(L^2) compares on the history [B, L] (in blocks), then one scatter of at
    most L values per row (memory O(B * L) plus one bounded block); y float32 [B, V] in, float32 out (the penalty rounded to float32 and subtracted in
    float32, as llama.cpp does). kernel=True (CPU): the override list from the C++ op stack_tail_dry instead
    (O(L) per row: the Z-function of the reversed window), the same scatter."""
    batch, vocab = y.shape
    device = y.device
    h = history(prompt_ids, output_ids, batch, device)
    L = h.shape[1]
    if L < 2:
        return y
    if kernel:
        ids, penalty = dry_overrides(h, t, vocab)
        return y.scatter_add(1, ids, -penalty)
    cols = torch.arange(L, device=device)
    count = (h != -1).sum(dim=1)
    last_n = t.dry_penalty_last_n
    m = torch.where(last_n < 0, count, torch.minimum(count, last_n))  # window length per row
    in_win = cols.unsqueeze(0) >= (L - m).unsqueeze(1)
    hw = torch.where(in_win, h, -2 - cols.unsqueeze(0))  # outside the window: ids that match nothing
    # rep_limit: distance from the end of the last sequence breaker in the window (none: the window length).
    breakers = t.dry_sequence_breakers
    if breakers is not None and breakers.shape[1] > 0:
        is_breaker = ((hw.unsqueeze(2) == breakers.unsqueeze(1)) & (breakers.unsqueeze(1) >= 0)).any(dim=2)
        last_breaker = torch.where(is_breaker, cols, -1).amax(dim=1)
        rep_limit = torch.where(last_breaker >= 0, L - 1 - last_breaker, m)
    else:
        rep_limit = m
    allowed = t.dry_allowed_length
    # run[b, e]: how many tokens ending at column e equal the tokens ending at the last column (e < L - 1),
    # in chunks of columns e so that the [B, chunk, L] comparison stays within _DRY_CHUNK elements.
    suffix = hw.flip(1).unsqueeze(1)  # suffix[b, 0, j] = hw[b, L - 1 - j]
    chunk = max(1, _DRY_CHUNK // max(1, batch * L))
    runs = []
    for start in range(0, L, chunk):
        e = cols[start:start + chunk]
        idx = e.unsqueeze(1) - cols.unsqueeze(0)  # [e, j] -> column e - j
        earlier = hw.gather(1, idx.clamp(min=0).reshape(1, -1).expand(batch, -1)).view(batch, e.numel(), L)
        eq = (earlier == suffix) & (idx >= 0).unsqueeze(0)
        runs.append(torch.cummin(eq.to(torch.uint8), dim=2).values.sum(dim=2, dtype=torch.int64))
    run = torch.minimum(torch.cat(runs, dim=1), rep_limit.unsqueeze(1))
    base = t.dry_base
    row_on = (t.dry_multiplier > 0) & (base >= 1) & (last_n != 0) & (m > allowed) & (rep_limit >= allowed)
    nxt = torch.cat([hw[:, 1:], hw.new_full((batch, 1), -1)], dim=1)  # the token after column e
    on = in_win & (cols < L - 1).unsqueeze(0) & (run >= allowed.unsqueeze(1)) & row_on.unsqueeze(1)
    if breakers is not None and breakers.shape[1] > 0:
        on = on & ~((nxt.unsqueeze(2) == breakers.unsqueeze(1)) & (breakers.unsqueeze(1) >= 0)).any(dim=2)
    on = on & (nxt >= 0) & (nxt < vocab)
    # The longest repeat each token would extend: sort the entries by (token, longest run first) and keep the
    # first entry of each token (O(L log L); the entries that are off sort last).
    key = torch.where(on, nxt * (L + 1) + (L - run), torch.iinfo(torch.int64).max)
    key, order = torch.sort(key, dim=1)
    nxt, run, on = nxt.gather(1, order), run.gather(1, order), on.gather(1, order)
    first = on & torch.cat([torch.ones_like(on[:, :1]), nxt[:, 1:] != nxt[:, :-1]], dim=1)
    exponent = run - allowed.unsqueeze(1)
    log_base = torch.log(base)  # float32, as llama.cpp's std::log(float)
    max_exp = torch.where(base > torch.tensor(1.000001, dtype=torch.float32),
                          torch.trunc(torch.tensor(DRY_FLOAT_MAX_LOG, dtype=torch.float32) / log_base), 0)
    max_exp = max_exp.to(torch.int64).unsqueeze(1)
    exponent = torch.where((max_exp > 0) & (exponent > max_exp), max_exp, exponent)
    penalty = (t.dry_multiplier.double().unsqueeze(1) * base.double().unsqueeze(1) ** exponent.double()).float()
    penalty = torch.where(first, penalty, 0.0)
    return y.scatter_add(1, torch.where(first, nxt, 0), -penalty)


# --------------------------------------------------------------------------------------------- the filters
def _weights(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(w = exp(z - max) [B, V], S = sum w [B, 1], zmax [B, 1]) of float64 logits z."""
    zmax = z.amax(dim=1, keepdim=True)
    w = torch.exp(z - zmax)
    return w, w.sum(dim=1, keepdim=True), zmax


def _entropy(z: Tensor) -> Tensor:
    """Shannon entropy (nats) [B, 1] of softmax(z) over the finite z."""
    w, s, zmax = _weights(z)
    logp = z - zmax - torch.log(s)
    return -torch.where(w > 0, (w / s) * logp, 0.0).sum(dim=1, keepdim=True)


def _drop(z: Tensor, keep: Tensor, on: Tensor) -> Tensor:
    return torch.where(keep | ~on.unsqueeze(1), z, -_INF)


def _prefix_threshold(key: Tensor, w: Tensor, s: Tensor, limit: Tensor, descending: bool) -> Tensor:
    """The key of the last token of the kept prefix when tokens are taken in key order while the mass of the
    tokens before them is < limit * S (the first token always kept); ties in key are all kept by the caller."""
    sorted_key, order = torch.sort(key, dim=1, descending=descending, stable=True)
    sw = w.gather(1, order)
    before = sw.cumsum(dim=1) - sw
    below = (before < limit.double().unsqueeze(1) * s) & (sw > 0)
    last = (below.sum(dim=1, keepdim=True) - 1).clamp(min=0)
    return sorted_key.gather(1, last)


def top_n_sigma(z: Tensor, n: Tensor) -> Tensor:
    finite = z > -_INF
    count = finite.sum(dim=1, keepdim=True)
    mean = torch.where(finite, z, 0.0).sum(dim=1, keepdim=True) / count
    sigma = (torch.where(finite, (z - mean) ** 2, 0.0).sum(dim=1, keepdim=True) / count).sqrt()
    top = z.amax(dim=1, keepdim=True)
    cut = torch.where(sigma > 0, top - n.double().unsqueeze(1) * sigma, top)
    return _drop(z, z >= cut, n > 0)


def top_k(z: Tensor, k: Tensor) -> Tensor:
    vocab = z.shape[1]
    sorted_z = torch.sort(z, dim=1, descending=True).values
    kth = sorted_z.gather(1, (k.clamp(1, vocab) - 1).unsqueeze(1))
    return _drop(z, z >= kth, (k > 0) & (k < vocab))


def top_p(z: Tensor, p: Tensor) -> Tensor:
    w, s, _ = _weights(z)
    return _drop(z, z >= _prefix_threshold(z, w, s, p, True), p < 1)


def min_p(z: Tensor, p: Tensor) -> Tensor:
    w, _, _ = _weights(z)
    return _drop(z, w >= p.double().unsqueeze(1), p > 0)


def typical(z: Tensor, p: Tensor) -> Tensor:
    w, s, zmax = _weights(z)
    logp = z - zmax - torch.log(s)
    shifted = torch.where(w > 0, (-logp - _entropy(z)).abs(), _INF)
    return _drop(z, (shifted <= _prefix_threshold(shifted, w, s, p, False)) & (w > 0), p < 1)


def epsilon(z: Tensor, eps: Tensor) -> Tensor:
    w, s, zmax = _weights(z)
    return _drop(z, (w / s >= eps.double().unsqueeze(1)) | (z == zmax), eps > 0)


def eta(z: Tensor, eps: Tensor) -> Tensor:
    w, s, zmax = _weights(z)
    e = eps.double().unsqueeze(1)
    cut = torch.minimum(e, e.sqrt() * torch.exp(-_entropy(z)))
    return _drop(z, (w / s >= cut) | (z == zmax), eps > 0)


def xtc(z: Tensor, probability: Tensor, threshold: Tensor, u: Tensor) -> Tensor:
    w, s, _ = _weights(z)
    above = (w / s >= threshold.double().unsqueeze(1)) & (w > 0)
    lowest = torch.where(above, z, _INF).amin(dim=1, keepdim=True)
    on = ((probability > 0) & (threshold <= 0.5) & (u <= probability) & ((w > 0).sum(dim=1) >= 2)
          & (above.sum(dim=1) >= 2))
    return _drop(z, ~above | (z <= lowest), on)


def temperature(z: Tensor, temp: Tensor, dyn_range: Tensor, dyn_exp: Tensor) -> tuple[Tensor, Tensor]:
    """(z / T, greedy [B]): T the row's temperature, or with dynatemp_range > 0 llama.cpp's temp_ext:
    T = max(0, T - r) + 2r' * (H / log N) ** exponent (r' the range above the floor, N the survivors); a row
    whose T is 0 becomes greedy: z keeps only its maxima (at 0)."""
    t = temp.double()
    r = dyn_range.double()
    n = (z > -_INF).sum(dim=1)
    dyn = (r > 0) & (n > 1)
    lo, hi = (t - r).clamp(min=0), t + r
    norm_h = _entropy(z).squeeze(1) / torch.log(n.clamp(min=2).double())
    t_dyn = lo + (hi - lo) * norm_h.clamp(min=0) ** dyn_exp.double()
    skip = (r > 0) & (n <= 1)  # llama.cpp leaves a single candidate alone
    t = torch.where(dyn, t_dyn, t)
    greedy = (temp == 0) | (t <= 0)
    zmax = z.amax(dim=1, keepdim=True)
    scaled = torch.where((greedy | skip).unsqueeze(1), z, z / torch.where(t > 0, t, 1.0).unsqueeze(1))
    scaled = torch.where(greedy.unsqueeze(1), torch.where(z == zmax, 0.0, -_INF), scaled)
    return scaled, greedy


def static_temperature(z: Tensor, temp: Tensor) -> tuple[Tensor, Tensor]:
    """`temperature` without dynamic temperature: z / T; T == 0 rows greedy (only their maxima, at 0)."""
    greedy = temp == 0
    scaled = z / torch.where(greedy, 1.0, temp.double()).unsqueeze(1)
    zmax = z.amax(dim=1, keepdim=True)
    return torch.where(greedy.unsqueeze(1), torch.where(z == zmax, 0.0, -_INF), scaled), greedy


def mirostat_truncate(z: Tensor, mu: Tensor) -> Tensor:
    """Mirostat v2's truncation: keep the tokens whose surprise -log2 p is <= mu (at least the maxima)."""
    w, s, zmax = _weights(z)
    surprise = -(z - zmax - torch.log(s)) / _LN2
    return torch.where((surprise <= mu.double().unsqueeze(1)) | (z == zmax), z, -_INF)


ORDER_STEPS = {
    "hf": ("temperature", "top_n_sigma", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta", "xtc"),
    "vllm": ("temperature", "top_n_sigma", "min_p", "top_k", "top_p", "typical_p", "epsilon", "eta", "xtc"),
    "llama.cpp": ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon", "eta", "xtc", "temperature"),
}


# Step codes of the CPU kernel csrc/cpu/stack_tail.cpp (op stack_tail_filters).
CPU_STEP_CODES = {"temperature": 0, "dynatemp": 1, "top_n_sigma": 2, "top_k": 3, "top_p": 4, "min_p": 5,
                  "typical_p": 6, "epsilon": 7, "eta": 8, "xtc": 9}


def cpu_kernel_available() -> bool:
    """Whether the extension has the CPU kernel of the filter chain (an extension built before it lacks it)."""
    try:
        return hasattr(torch.ops.fastsample, "stack_tail_filters")
    except (AttributeError, RuntimeError):
        return False


def filtered_cpu(y: Tensor, args: StackOpArgs, t: TailArgs, u: Tensor | int | None = None, overrides=None):
    """`filtered` in the CPU kernel: one float64 copy of each row, the steps in order on the surviving ids only,
    rows in parallel -> (z, greedy). With the uniforms u [B, n] (or u = n: the op draws the Philox uniforms of
    args.seed/offset itself, XTC's included) it also draws: -> (tokens [B, n], greedy,
    p_token float64 [B], finite [B]) without z (no [B, V] output: the draws need only the survivors); overrides
    = DRY's (ids, penalty) list, subtracted in float32 inside the op instead of a scatter into a copy of y."""
    codes = []
    for step in ORDER_STEPS[t.order]:
        if step == "temperature":
            codes.append(CPU_STEP_CODES["dynatemp" if "dynatemp" in t.active else "temperature"])
        elif step in t.active:
            codes.append(CPU_STEP_CODES[step])
    in_op = u is not None and not isinstance(u, Tensor)  # u = the number of draws: the op draws the uniforms
    u_xtc = (philox_uniform(args.seed, args.offset, XTC_DRAW) if "xtc" in t.active and not in_op
             else torch.zeros_like(t.xtc_probability))
    row = lambda name: args.row(name)  # noqa: E731
    dry_ids, dry_penalty = (None, None) if overrides is None else overrides
    z, greedy, tokens, p_token, finite = torch.ops.fastsample.stack_tail_filters(
        y.contiguous(), row("temperature"), row("top_k"), row("top_p"), row("min_p"), row("top_n_sigma"),
        t.typical_p.contiguous(), t.epsilon.contiguous(), t.eta.contiguous(), t.xtc_probability.contiguous(),
        t.xtc_threshold.contiguous(), u_xtc.contiguous(), t.dynatemp_range.contiguous(),
        t.dynatemp_exponent.contiguous(), None if t.mirostat_mu is None else t.mirostat_mu.contiguous(), codes,
        None if in_op else u, u is None, dry_ids, dry_penalty, args.seed.contiguous() if in_op else None,
        args.offset.contiguous() if in_op else None, int(u) if in_op else 0)
    return (z, greedy) if u is None else (tokens, greedy, p_token, finite)


def filtered(y: Tensor, args: StackOpArgs, t: TailArgs) -> tuple[Tensor, Tensor]:
    """The final float64 logits z (dropped tokens -inf) of the chosen order from the processed logits y (after
    DRY), and the greedy rows."""
    z = y.double()
    top = z.amax(dim=1, keepdim=True)
    z = torch.where(top == _INF, torch.where(z == _INF, 0.0, -_INF), z)  # +inf tokens share the mass
    greedy = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
    for step in ORDER_STEPS[t.order]:
        if step != "temperature" and step not in t.active:
            continue
        if step == "temperature":
            if "dynatemp" in t.active:
                z, greedy = temperature(z, args.row("temperature"), t.dynatemp_range, t.dynatemp_exponent)
            else:
                z, greedy = static_temperature(z, args.row("temperature"))
        elif step == "top_n_sigma":
            z = top_n_sigma(z, args.row("top_n_sigma"))
        elif step == "top_k":
            z = top_k(z, args.row("top_k"))
        elif step == "top_p":
            z = top_p(z, args.row("top_p"))
        elif step == "min_p":
            z = min_p(z, args.row("min_p"))
        elif step == "typical_p":
            z = typical(z, t.typical_p)
        elif step == "epsilon":
            z = epsilon(z, t.epsilon)
        elif step == "eta":
            z = eta(z, t.eta)
        elif step == "xtc":
            z = xtc(z, t.xtc_probability, t.xtc_threshold, philox_uniform(args.seed, args.offset, XTC_DRAW))
    if t.mirostat_mu is not None:
        z = mirostat_truncate(z, t.mirostat_mu)
    return z, greedy


def _valid_rows(args: StackOpArgs, t: TailArgs, y: Tensor, bad: Tensor, finite: Tensor | None = None) -> Tensor:
    """Rows whose parameters are in range, with no NaN (`bad`, from steps 1-3) and a finite token left (`finite`
    when the caller has it: the CPU op's y.amax > -inf)."""
    vocab = y.shape[1]
    temp, top_p_, min_p_ = args.row("temperature"), args.row("top_p"), args.row("min_p")
    params_ok = (penalties_ok(args.row("repetition"), args.row("frequency"), args.row("presence"))
                 & (top_p_ >= 0) & (top_p_ <= 1) & (min_p_ >= 0) & (min_p_ <= 1) & args.row("top_n_sigma").isfinite()
                 & (temp >= 0) & temp.isfinite() & tail_params_ok(t))
    if t.dry_sequence_breakers is not None:  # a breaker id outside [-1, V) makes its row invalid
        br = t.dry_sequence_breakers
        params_ok = params_ok & ~((br < -1) | (br >= vocab)).any(dim=1)
    return params_ok & ~bad & ((y.amax(dim=1) > -_INF) if finite is None else finite)


def _sample_cpu_sparse(args: StackOpArgs, t: TailArgs, y: Tensor, bad: Tensor, overrides=None):
    """`sample_stack` without logprobs on CPU: the filters and the draws in the C++ op on the survivors only
    (the same uniforms, the same running sums in id order as the torch draws below)."""
    batch = y.shape[0]
    device = y.device
    # the op draws the Philox uniforms itself (the same draws 0..n-1 and XTC's index as philox_uniform here)
    token, greedy, p_token, finite = filtered_cpu(y, args, t, args.num_samples, overrides)
    valid = _valid_rows(args, t, y, bad, finite)
    tokens = torch.where(valid.unsqueeze(1), token, -1)
    mu = None
    if t.mirostat_mu is not None:
        surprise = -torch.log(p_token) / _LN2
        new_mu = t.mirostat_mu.double() - t.mirostat_eta.double() * (surprise - t.mirostat_tau.double())
        mu = torch.where(valid, new_mu.float(), t.mirostat_mu)
    empty = torch.empty(0, args.num_samples, device=device)
    return (tokens, empty, empty.long(), torch.empty(batch, 0, dtype=torch.int64, device=device),
            torch.empty(batch, 0, device=device), mu)


def sample_stack(args: StackOpArgs, t: TailArgs, backend: str):
    """The stack sampler with long-tail steps. Returns (tokens, logprobs, ranks, top_ids, top_logprobs, mu)
    as the op `sample_stack` does, mu the updated mirostat state (float32 [B]) or None."""
    x = args.logits
    batch, vocab = x.shape
    device = x.device
    y, bad = steps_1_3(args, backend)
    dry_on = "dry" in t.active and (args.prompt_ids is not None or args.output_ids is not None)
    if backend == "cpu" and cpu_kernel_available() and dry_kernel_available() and args.logprobs_mode == 0:
        # DRY's list, the filters and the draws in the C++ ops: no [B, V] pass after steps 1-3 but the op's own
        overrides = None
        if dry_on:
            h = history(args.prompt_ids, args.output_ids, batch, device)
            overrides = dry_overrides(h, t, vocab) if h.shape[1] >= 2 else None
        return _sample_cpu_sparse(args, t, y, bad, overrides)
    if dry_on:
        y = dry(y, args.prompt_ids, args.output_ids, t, kernel=backend == "cpu" and dry_kernel_available())
    if backend == "cpu" and cpu_kernel_available():
        z, greedy = filtered_cpu(y, args, t)
    else:
        z, greedy = filtered(y, args, t)
    valid = _valid_rows(args, t, y, bad)
    zmax = z.amax(dim=1, keepdim=True)
    kept_w = torch.where(z > -_INF, torch.exp(z - zmax), 0.0)
    draws = torch.arange(args.num_samples, device=device)
    u = philox_uniform(args.seed.unsqueeze(1), args.offset.unsqueeze(1), draws.unsqueeze(0))  # [B, n]
    cdf = kept_w.cumsum(dim=1)
    total = cdf[:, -1:]
    token = torch.searchsorted(cdf, u.to(torch.float64) * total, right=True).clamp(max=vocab - 1)
    token = torch.where(greedy.unsqueeze(1), z.argmax(dim=1, keepdim=True), token)
    tokens = torch.where(valid.unsqueeze(1), token, -1)
    mu = None
    if t.mirostat_mu is not None:
        surprise = -torch.log(kept_w.gather(1, token[:, :1]).squeeze(1) / total.squeeze(1)) / _LN2
        new_mu = t.mirostat_mu.double() - t.mirostat_eta.double() * (surprise - t.mirostat_tau.double())
        mu = torch.where(valid, new_mu.float(), t.mirostat_mu)
    if args.logprobs_mode == 0:
        empty = torch.empty(0, args.num_samples, device=device)
        return (tokens, empty, empty.long(), torch.empty(batch, 0, dtype=torch.int64, device=device),
                torch.empty(batch, 0, device=device), mu)
    if args.logprobs_mode == 1:
        lp = torch.log(kept_w / total)
    else:
        raw = x.to(torch.float64)
        lp = torch.log_softmax(raw, dim=1)
    token_lp = lp.gather(1, token)
    ranks = (lp.unsqueeze(1) >= token_lp.unsqueeze(2)).sum(dim=2)
    top_values, top_ids = torch.sort(lp, dim=1, descending=True, stable=True)
    top_values, top_ids = top_values[:, :args.top_n], top_ids[:, :args.top_n]
    row = valid.unsqueeze(1)
    nan = float("nan")
    return (tokens, torch.where(row, token_lp, nan).float(), torch.where(row, ranks, -1),
            torch.where(row, top_ids, -1), torch.where(row, top_values, nan).float(), mu)
