"""Bounds on how much the attention bypass changes a block's output, checked numerically.

Menta, Agrawal and Agarwal (NAACL 2025, arXiv 2501.05078) prove bounds on the difference
between block outputs with and without the attention bypass (identity attention, ``z := v``)
and argue that a difference made early is amplified by the later blocks. Their statements could
not be read, so this module implements OUR formulation (shared paper.md section 5; statements,
derivations and assumptions in docs/theory.md):

- D1, exact identity: ``delta_i = o_i - õ_i = sum_m sum_{j<i} A^m_ij (u_j - u_i) W_VO^m``.
- D2, per-token bounds ``||delta_i|| <= B1 <= B2 <= B3`` (local layers: keys in the window).
- D3, block output: parallel blocks (GPT-NeoX) pass ``delta`` through unchanged; sequential
  blocks (GPT-Neo) amplify it by at most ``1 + ||W_out|| c_act ||W_in|| ||gamma2||_inf / s_min``,
  with ``s_min`` the smallest LayerNorm scale along the segment between the two residuals.
- D4, propagation factors ``rho_k = E_k / E_{k-1}`` through the later blocks with a certified
  step bound on each (LayerNorm, value path, softmax and MLP with local constants), and the
  logits bound ``||delta logits|| <= ||W_U||_2 ||gamma_f||_inf / s_min ||delta h_final||``.

Every function is pure: weights come from the bridge's HF model (``model.original_model``),
activations from ``run_with_cache`` of the normal run and of the run with
``AttentionBypass(layer)``. All bound arithmetic is in float64. Results are tidy DataFrames.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers.activations import ACT2FN

from interp import sites
from interp.errors import InputError, check_finite
from interp.interventions import AttentionBypass, apply

log = logging.getLogger(__name__)

F64 = torch.float64
BOUNDS = ("B1", "B2", "B3")
RTOL = 1e-5  # float32 forward passes: differences are trusted to RTOL x the compared vectors' norm


# ---------------------------------------------------------------------------------------------
# Weights, read from the HF modules under the bridge
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockWeights:
    """What the theorem needs of one block, in float64, as ``x @ W`` (rows are inputs)."""

    W_V: Float[Tensor, "head d_model d_head"]
    b_V: Float[Tensor, "head d_head"]
    W_O: Float[Tensor, "head d_head d_model"]
    b_O: Float[Tensor, " d_model"]
    gamma1: Float[Tensor, " d_model"]
    gamma2: Float[Tensor, " d_model"]
    eps2: float
    W_in: Float[Tensor, "d_model d_mlp"]
    W_out: Float[Tensor, "d_mlp d_model"]
    act: str
    window: int | None  # keys j with i - window < j <= i (local attention); None = causal
    parallel: bool
    W_Q: Float[Tensor, "head d_model d_head"]
    b_Q: Float[Tensor, "head d_head"]
    W_K: Float[Tensor, "head d_model d_head"]
    b_K: Float[Tensor, "head d_head"]
    score_scale: float  # scores are score_scale * (R_i q_i) . (R_j k_j) with rotary R (identity for GPT-Neo)
    rope_gain: float  # |R x| <= rope_gain |x| (1 for plain rotary)
    eps1: float
    rms: bool = False  # RMSNorm (Llama family: no centering, no shift) instead of LayerNorm
    W_gate: Float[Tensor, "d_model d_mlp"] | None = None  # gated MLP: (act(x W_gate) * (x W_in)) W_out


@dataclass(frozen=True)
class FinalWeights:
    W_U: Float[Tensor, "d_model vocab"]
    gamma_f: Float[Tensor, " d_model"]
    eps_f: float
    rms: bool = False


def _unwrap(module):
    """The HF module under (possibly nested) TransformerLens bridge wrappers."""
    while getattr(module, "original_component", None) is not None:
        module = module.original_component
    return module


def _linear(module) -> tuple[Tensor, Tensor | None]:
    """``(W [in, out], b [out] or None)`` of an ``nn.Linear`` in float64."""
    lin = _unwrap(module)
    bias = None if lin.bias is None else lin.bias.detach().to(F64)
    return lin.weight.detach().to(F64).T, bias


def _norm(module) -> tuple[Tensor, float]:
    ln = _unwrap(module)
    eps = ln.eps if hasattr(ln, "eps") else ln.variance_epsilon  # LayerNorm / Llama-family RMSNorm
    return ln.weight.detach().to(F64), float(eps)


def _split_heads(W: Tensor, b: Tensor | None, n_heads: int) -> tuple[Tensor, Tensor]:
    d_model, width = W.shape
    W_h = W.reshape(d_model, n_heads, width // n_heads).permute(1, 0, 2)
    b_h = torch.zeros(n_heads, width // n_heads, dtype=F64) if b is None else b.reshape(n_heads, -1)
    return W_h, b_h


def block_weights(model, layer: int) -> BlockWeights:
    """Weights of block ``layer`` of a GPT-NeoX or GPT-Neo bridge (raw HF parameters)."""
    hf = model.original_model
    cfg = hf.config
    n_heads = int(model.cfg.n_heads)
    if cfg.model_type == "gpt_neox":
        blk = hf.gpt_neox.layers[layer]
        attn = _unwrap(blk.attention)
        (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = _neox_qkv(*_linear(attn.query_key_value), n_heads)
        W_o, b_o = _linear(attn.dense)
        ln1, ln2, fc_in, fc_out = blk.input_layernorm, blk.post_attention_layernorm, blk.mlp.dense_h_to_4h, blk.mlp.dense_4h_to_h
        act, window, parallel = cfg.hidden_act, None, bool(cfg.use_parallel_residual)
        scale = float(getattr(attn, "scaling", W_V.shape[-1] ** -0.5))
        rope_gain = max(1.0, float(getattr(_unwrap(hf.gpt_neox.rotary_emb), "attention_scaling", 1.0)))
    elif cfg.model_type == "gpt_neo":
        blk = hf.transformer.h[layer]
        attn = _unwrap(blk.attn)  # the bridge wraps GPTNeoSelfAttention directly
        attn = attn if hasattr(attn, "v_proj") else attn.attention
        (W_Q, b_Q), (W_K, b_K), (W_V, b_V) = (_split_heads(*_linear(getattr(attn, f"{n}_proj")), n_heads) for n in "qkv")
        W_o, b_o = _linear(attn.out_proj)
        ln1, ln2, fc_in, fc_out = blk.ln_1, blk.ln_2, blk.mlp.c_fc, blk.mlp.c_proj
        local = cfg.attention_layers[layer] == "local"
        act, window, parallel = cfg.activation_function, (int(cfg.window_size) if local else None), False
        scale, rope_gain = 1.0, 1.0  # GPT-Neo does not scale its scores
    elif cfg.model_type in ("llama", "qwen2"):
        return _llama_block_weights(hf, layer, n_heads)
    else:
        raise InputError(f"the theory checks support gpt_neox, gpt_neo, llama and qwen2 models; found {cfg.model_type!r}")
    d_head = W_V.shape[-1]
    W_O = W_o.reshape(n_heads, d_head, -1)
    b_O = torch.zeros(W_O.shape[-1], dtype=F64) if b_o is None else b_o
    gamma1, eps1 = _norm(ln1)
    gamma2, eps2 = _norm(ln2)
    return BlockWeights(
        W_V, b_V, W_O, b_O, gamma1, gamma2, eps2, _linear(fc_in)[0], _linear(fc_out)[0], act, window, parallel,
        W_Q, b_Q, W_K, b_K, scale, rope_gain, eps1,
    )  # fmt: skip


def _llama_block_weights(hf, layer: int, n_heads: int) -> BlockWeights:
    """Llama family (Llama, Qwen2): RMSNorm, rotary scores scaled by 1/sqrt(d_head), a gated
    SiLU MLP, sequential residual, and grouped-query attention: query head j reads key/value
    head j // (n_heads / n_kv_heads), so the per-head key and value weights are the shared
    ones repeated (every statement of docs/theory.md holds per query head)."""
    cfg = hf.config
    types = getattr(cfg, "layer_types", None) or []
    if types and types[layer] != "full_attention":
        raise InputError(f"block {layer} is a {types[layer]!r} layer; the theory checks cover full attention only")
    blk = hf.model.layers[layer]
    attn, mlp = _unwrap(blk.self_attn), _unwrap(blk.mlp)
    n_kv = int(cfg.num_key_value_heads)
    shared = [j // (n_heads // n_kv) for j in range(n_heads)]
    W_Q, b_Q = _split_heads(*_linear(attn.q_proj), n_heads)
    (W_K, b_K), (W_V, b_V) = (_split_heads(*_linear(getattr(attn, f"{n}_proj")), n_kv) for n in "kv")
    W_K, b_K, W_V, b_V = W_K[shared], b_K[shared], W_V[shared], b_V[shared]
    W_o, b_o = _linear(attn.o_proj)
    d_head = W_V.shape[-1]
    gamma1, eps1 = _norm(blk.input_layernorm)
    gamma2, eps2 = _norm(blk.post_attention_layernorm)
    rope_gain = max(1.0, float(getattr(_unwrap(hf.model.rotary_emb), "attention_scaling", 1.0)))
    return BlockWeights(
        W_V, b_V, W_o.reshape(n_heads, d_head, -1), torch.zeros(W_o.shape[-1], dtype=F64) if b_o is None else b_o,
        gamma1, gamma2, eps2, _linear(mlp.up_proj)[0], _linear(mlp.down_proj)[0], cfg.hidden_act, None, False,
        W_Q, b_Q, W_K, b_K, float(attn.scaling), rope_gain, eps1, rms=True, W_gate=_linear(mlp.gate_proj)[0],
    )  # fmt: skip


def _neox_qkv(W_qkv: Tensor, b_qkv: Tensor | None, n_heads: int) -> list[tuple[Tensor, Tensor]]:
    """(W, b) of q, k, v from GPT-NeoX's fused projection, laid out per head as [head, (q, k, v), d_head]."""
    d_model = W_qkv.shape[0]
    W = W_qkv.reshape(d_model, n_heads, 3, -1).permute(2, 1, 0, 3)  # [3, head, d_model, d_head]
    b = torch.zeros(3, n_heads, W.shape[-1], dtype=F64) if b_qkv is None else b_qkv.reshape(n_heads, 3, -1).permute(1, 0, 2)
    return [(W[n], b[n]) for n in range(3)]


def final_weights(model) -> FinalWeights:
    hf = model.original_model
    kind = hf.config.model_type
    ln_f = {"gpt_neox": lambda: hf.gpt_neox.final_layer_norm, "gpt_neo": lambda: hf.transformer.ln_f}.get(kind, lambda: hf.model.norm)()
    gamma_f, eps_f = _norm(ln_f)
    return FinalWeights(_linear(hf.get_output_embeddings())[0], gamma_f, eps_f, rms=kind in ("llama", "qwen2"))


# ---------------------------------------------------------------------------------------------
# Constants: spectral norms, activation derivative bound
# ---------------------------------------------------------------------------------------------


def spectral_norm(W: Float[Tensor, "rows cols"]) -> float:
    """Largest singular value, from the Gram matrix of the smaller side (float64)."""
    W = W.to(F64)
    gram = W.T @ W if W.shape[0] >= W.shape[1] else W @ W.T
    return math.sqrt(max(float(torch.linalg.eigvalsh(gram)[-1]), 0.0))


def _head_factors(w: BlockWeights) -> tuple[Tensor, Tensor]:
    """``R_O [head, d_head, d_head]`` with ``||a W_O^m|| = ||a R_O^m^T||`` for every row ``a``,
    and ``||W_VO^m||_2 [head]``; both from thin QR factors, never forming d_model x d_model."""
    _, R_O = torch.linalg.qr(w.W_O.transpose(-1, -2))  # W_O^T = Q_O R_O
    _, R_V = torch.linalg.qr(w.W_V)  # W_V = Q_V R_V, so W_VO = Q_V R_V R_O^T Q_O^T
    norms = torch.linalg.matrix_norm(R_V @ R_O.transpose(-1, -2), ord=2)
    return R_O, norms


def wvo_norms(w: BlockWeights) -> Float[Tensor, " head"]:
    """Spectral norm of ``W_VO^m = W_V^m W_O^m`` for each head."""
    return _head_factors(w)[1]


@functools.lru_cache(maxsize=16)
def activation_derivative_bound(name: str) -> float:
    """``c_act = sup_x |act'(x)|`` for the HF activation ``name`` (e.g. ``gelu``, ``gelu_new``).

    The derivative (autograd, float64) is maximised on a grid over [-30, 30] with step 6e-4,
    refined on a 1e-7 grid around the best point, and raised by 1e-9 relative to cover the
    remaining grid error. For the GELU family the supremum lies near x = 1.4 (about 1.1289);
    a maximum at the grid edge is reported as a warning (the tails would then need an argument).
    """
    fn = ACT2FN[name]
    x = torch.linspace(-30.0, 30.0, 100_001, dtype=F64)
    g = _derivative(fn, x)
    k = int(g.argmax())
    if k in (0, len(x) - 1):
        log.warning("activation %r has its largest derivative at the grid edge; c_act may be too small", name)
    fine = torch.linspace(float(x[max(k - 1, 0)]), float(x[min(k + 1, len(x) - 1)]), 20_001, dtype=F64)
    return float(max(g.max(), _derivative(fn, fine).max())) * (1 + 1e-9)


def _derivative(fn, x: Tensor) -> Tensor:
    with torch.enable_grad():
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g.abs()


# ---------------------------------------------------------------------------------------------
# D1 and D2: the attention sublayer
# ---------------------------------------------------------------------------------------------


def key_mask(n_pos: int, window: int | None) -> Bool[Tensor, "query key"]:
    """``mask[i, j]``: key ``j != i`` that query ``i`` may attend to (``j < i``, and
    ``j > i - window`` for a local layer). The diagonal is excluded: it cancels in D1."""
    i = torch.arange(n_pos)[:, None]
    j = torch.arange(n_pos)[None, :]
    mask = j < i
    if window is not None:
        mask &= j > i - window
    return mask


def off_diagonal_mass(pattern: Float[Tensor, "batch head query key"]) -> Float[Tensor, "batch head query"]:
    """``sum_{j != i} A_ij``, which is ``1 - A_ii`` up to rounding; the triangle inequality on D1
    gives exactly this weight, without assuming the rows sum to 1 in floating point."""
    eye = torch.eye(pattern.shape[-1], dtype=torch.bool)
    return pattern.to(F64).masked_fill(eye, 0.0).sum(-1)


def attention_delta(
    pattern: Float[Tensor, "batch head query key"], u: Float[Tensor, "batch pos d_model"], w: BlockWeights
) -> Float[Tensor, "batch pos d_model"]:
    """D1: ``delta_i = sum_m sum_{j<i} A^m_ij (u_j - u_i) W_VO^m`` (biases cancel), float64."""
    x = torch.einsum("bpd,hde->bphe", u.to(F64), w.W_V)  # u W_V^m, bias-free
    mixed = torch.einsum("bhij,bjhe->bihe", pattern.to(F64), x)
    return torch.einsum("bihe,hed->bid", mixed - x, w.W_O)


def _masked_max_dist(x: Float[Tensor, "group pos dim"], mask: Bool[Tensor, "pos pos"]) -> Float[Tensor, "group pos"]:
    """``max_{j: mask[i, j]} ||x_j - x_i||`` (0 when no key qualifies), distances computed directly."""
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.masked_fill(~mask, 0.0).amax(-1)


def per_token_bounds(
    pattern: Float[Tensor, "batch head query key"], u: Float[Tensor, "batch pos d_model"], w: BlockWeights
) -> dict[str, Float[Tensor, "batch pos"]]:
    """D2: ``B1 <= B2 <= B3`` per token, and the attention-sublayer ``mass`` per head summed.

    B1 = sum_m (1 - A_ii) max_j ||(u_j - u_i) W_VO^m||;  B2 = sum_m (1 - A_ii) ||W_VO^m||_2 max_j ||u_j - u_i||;
    B3 = 2 sqrt(d) ||gamma1||_inf sum_m (1 - A_ii) ||W_VO^m||_2, with j over ``key_mask``.
    """
    b, p, d = u.shape
    n_heads = w.W_V.shape[0]
    mask = key_mask(p, w.window)
    mass = off_diagonal_mass(pattern)  # [b, h, p]
    R_O, norms = _head_factors(w)
    y = torch.einsum("bpd,hde,hfe->bhpf", u.to(F64), w.W_V, R_O)  # ||y_j - y_i|| = ||(u_j - u_i) W_VO||
    head_dist = _masked_max_dist(y.reshape(b * n_heads, p, -1), mask).reshape(b, n_heads, p)
    u_dist = _masked_max_dist(u.to(F64), mask)  # [b, p]
    weighted = (mass * norms[None, :, None]).sum(1)
    return {
        "B1": (mass * head_dist).sum(1),
        "B2": weighted * u_dist,
        "B3": 2 * math.sqrt(d) * float(w.gamma1.abs().max()) * weighted,
    }


# ---------------------------------------------------------------------------------------------
# D3 and the logits: LayerNorm along a segment
# ---------------------------------------------------------------------------------------------


def segment_min_scale(
    a: Float[Tensor, "... d_model"], b: Float[Tensor, "... d_model"], eps: float, rms: bool = False
) -> Float[Tensor, "..."]:
    """``min_{t in [0, 1]} sqrt(var(b + t (a - b)) + eps)``, exactly; with ``rms`` the mean square
    instead of the variance (RMSNorm, no centering).

    Either is a convex quadratic in ``t``; its minimiser is clamped to [0, 1]. This is the local
    norm constant: ``||LN(a) - LN(b)|| <= ||gamma||_inf ||a - b|| / s`` (docs/theory.md D3, D5).
    """
    a, b = a.to(F64), b.to(F64)
    pb = b if rms else b - b.mean(-1, keepdim=True)
    pd = (a - b) if rms else (a - b) - (a - b).mean(-1, keepdim=True)
    denom = (pd * pd).sum(-1)
    t = torch.where(denom > 0, -(pb * pd).sum(-1) / denom.clamp_min(1e-300), torch.zeros_like(denom)).clamp(0.0, 1.0)
    x = pb + t[..., None] * pd
    return torch.sqrt((x * x).mean(-1) + eps)


def mlp_lipschitz(w: BlockWeights) -> float:
    """``||W_out||_2 c_act ||W_in||_2 ||gamma2||_inf``: the MLP-after-LN constant before ``1/s_min``
    (a plain MLP; for a gated one see ``gated_mlp_constant``)."""
    if w.W_gate is not None:
        raise ValueError("a gated MLP has no global constant; use gated_mlp_constant")
    return spectral_norm(w.W_out) * activation_derivative_bound(w.act) * spectral_norm(w.W_in) * float(w.gamma2.abs().max())


def mlp_norms(w: BlockWeights) -> dict[str, float]:
    """The spectral norms and constants ``gated_mlp_constant`` combines (computed once per block)."""
    return {"out": spectral_norm(w.W_out), "in": spectral_norm(w.W_in), "gate": spectral_norm(w.W_gate),
            "c_act": activation_derivative_bound(w.act), "gamma2": float(w.gamma2.abs().max())}  # fmt: skip


def gated_mlp_constant(
    w: BlockWeights, norms: dict[str, float], p: Float[Tensor, "batch pos d_model"], q: Float[Tensor, "batch pos d_model"]
) -> Float[Tensor, "batch pos"]:
    """D5: the local constant of a gated MLP after its norm, before ``1/s_min``, per token:
    ``||W_out||_2 (c_act ||p W_in||_inf ||W_gate||_2 + ||act(q W_gate)||_inf ||W_in||_2) ||gamma2||_inf``,
    with ``p`` and ``q`` the two runs' norm outputs (``MLP(p) - MLP(q)`` splits as
    ``(act(a) - act(a')) * b W_out + act(a') * (b - b') W_out`` with ``a, b = p W_gate, p W_in``
    and ``a', b' = q W_gate, q W_in``)."""
    b_inf = (p.to(F64) @ w.W_in).abs().amax(-1)
    g_inf = ACT2FN[w.act](q.to(F64) @ w.W_gate).abs().amax(-1)
    return norms["out"] * (norms["c_act"] * b_inf * norms["gate"] + g_inf * norms["in"]) * norms["gamma2"]


def _mlp_constant(w: BlockWeights, consts: dict, layer: int, normal: dict, bypassed: dict) -> Tensor | float:
    """The MLP constant before ``1/s_min`` of block ``layer``: a number for a plain MLP, per
    token (from both runs' LN2 outputs) for a gated one."""
    if w.W_gate is None:
        return consts["mlp_lip"][layer]
    return gated_mlp_constant(w, consts["mlp_norms"][layer], normal[sites.ln2_out(layer)], bypassed[sites.ln2_out(layer)])


def logits_lipschitz(f: FinalWeights) -> float:
    """``||W_U||_2 ||gamma_f||_inf``: the unembedding-after-LN constant before ``1/s_min``."""
    return spectral_norm(f.W_U) * float(f.gamma_f.abs().max())


def _window_diameter(y: Float[Tensor, "group pos dim"], window: int | None) -> Float[Tensor, "group pos"]:
    """``max_{j, j' in K(i) + {i}} ||y_j - y_j'||``: the spread of what query ``i`` can see."""
    dist = torch.cdist(y, y, compute_mode="donot_use_mm_for_euclid_dist")
    p = y.shape[1]
    if window is None:
        return dist.masked_fill(~torch.ones(p, p, dtype=torch.bool).tril(), 0.0).amax(-1).cummax(-1).values
    out = torch.empty(dist.shape[:2], dtype=dist.dtype)
    for i in range(p):
        lo = max(0, i - window + 1)
        out[:, i] = dist[:, lo : i + 1, lo : i + 1].amax((-1, -2))
    return out


def attention_step_bound(
    w: BlockWeights,
    pattern: Float[Tensor, "batch head query key"],
    u: Float[Tensor, "batch pos d_model"],
    u_b: Float[Tensor, "batch pos d_model"],
    du: Float[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos"]:
    """D4 step, attention part: bound on ``||o_i - õ_i||`` in a block whose LN1 outputs differ by
    at most ``du_j`` at each position (normal ``u`` with pattern ``A``; perturbed ``u_b``).

    ``o - õ = sum_j A_ij (x_j - x̃_j) + sum_j (A_ij - Ã_ij) x̃_j`` per head; the first term is at most
    ``||W_VO||_2 sum_j A_ij du_j``; the second at most ``||A_i - Ã_i||_1 / 2`` times the spread of
    ``x̃`` over the visible keys, with ``||A_i - Ã_i||_1 <= min(2, range_j |Δs_ij|)`` (softmax) and
    ``|Δs_ij| <= scale rope^2 (||q_i|| ||W_K||_2 du_j + ||W_Q||_2 du_i ||k̃_j||)`` (scores are bilinear).
    """
    p = u.shape[1]
    mask = key_mask(p, w.window) | torch.eye(p, dtype=torch.bool)
    R_O, vo_norms = _head_factors(w)
    value = torch.einsum("bhij,bj,h->bi", pattern.to(F64), du, vo_norms)
    q_norm = _norm_last(torch.einsum("bpd,hde->bhpe", u.to(F64), w.W_Q) + w.b_Q[None, :, None])
    k_norm = _norm_last(torch.einsum("bpd,hde->bhpe", u_b.to(F64), w.W_K) + w.b_K[None, :, None])
    nQ, nK = (torch.linalg.matrix_norm(W, ord=2) for W in (w.W_Q, w.W_K))
    g = w.score_scale * w.rope_gain**2
    ds = g * (q_norm[..., :, None] * (nK[None, :, None, None] * du[:, None, None, :])
              + (nQ[None, :, None] * du[:, None, :])[..., None] * k_norm[..., None, :])  # fmt: skip
    l1 = (2 * ds.masked_fill(~mask, 0.0).amax(-1)).clamp(max=2.0)  # [b, h, i]
    y_b = torch.einsum("bpd,hde,hfe->bhpf", u_b.to(F64), w.W_V, R_O)
    b, h = y_b.shape[:2]
    diam = _window_diameter(y_b.reshape(b * h, p, -1), w.window).reshape(b, h, p)
    return value + (l1 / 2 * diam).sum(1)


def block_step_bound(
    w: BlockWeights, mlp_lip: float | Tensor, normal: dict[str, Tensor], bypassed: dict[str, Tensor], layer: int
) -> Float[Tensor, "batch pos"]:
    """D4 step: a bound on ``||y_i - ỹ_i||`` after block ``layer >= 1`` given its input difference
    (both runs' activations of this block provide the local constants; ``mlp_lip`` is
    ``mlp_lipschitz(w)``, or per token ``gated_mlp_constant`` for a gated MLP)."""
    h, h_b = normal[sites.resid_post(layer - 1)], bypassed[sites.resid_post(layer - 1)]
    dh = _norm_last(h - h_b)
    du = float(w.gamma1.abs().max()) * dh / segment_min_scale(h, h_b, w.eps1, w.rms)
    att = attention_step_bound(w, normal[sites.pattern(layer)], normal[sites.ln1_out(layer)], bypassed[sites.ln1_out(layer)], du)
    if w.parallel:
        return dh + att + mlp_lip * dh / segment_min_scale(h, h_b, w.eps2, w.rms)
    mid, mid_b = normal[sites.resid_mid(layer)], bypassed[sites.resid_mid(layer)]
    return (dh + att) * (1 + mlp_lip / segment_min_scale(mid, mid_b, w.eps2, w.rms))


# ---------------------------------------------------------------------------------------------
# Runs and tables
# ---------------------------------------------------------------------------------------------


class TheoryTables(NamedTuple):
    """``bounds``: one row per (layer, sequence, token); ``propagation``: one row per
    (layer, sequence, block) for the blocks at and after the bypassed ``layer``."""

    bounds: pd.DataFrame
    propagation: pd.DataFrame


def _normal_names(n_layers: int, sequential: bool, gated: bool = False) -> set[str]:
    names = {sites.resid_post(k) for k in range(n_layers)}
    for k in range(n_layers):
        names |= {sites.ln1_out(k), sites.pattern(k), sites.attn_out(k)}
        if sequential:
            names.add(sites.resid_mid(k))
        if gated:
            names.add(sites.ln2_out(k))
    return names


def _bypass_names(layer: int, n_layers: int, sequential: bool, gated: bool = False) -> set[str]:
    names = {sites.attn_out(layer)} | {sites.resid_post(k) for k in range(layer, n_layers)}
    names |= {sites.ln1_out(k) for k in range(layer + 1, n_layers)}
    names |= {sites.ln2_out(k) for k in range(layer, n_layers)} if gated else set()
    return names | ({sites.resid_mid(k) for k in range(layer, n_layers)} if sequential else set())


def _run(model, tokens: Tensor, names: set[str], interventions=()) -> tuple[Tensor, dict[str, Tensor]]:
    with apply(model, *interventions):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    check_finite(logits, "logits" + (" under the bypass" if interventions else ""))
    for n in names:
        check_finite(cache[n], f"activations at {n}")
    return logits.detach().to(F64).cpu(), {n: cache[n].detach().to(F64).cpu() for n in names}


def _norm_last(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


def _block_columns(layer, w, normal, bypassed, logits, logits_b, final, consts) -> dict[str, Tensor]:
    """All per-token quantities of one bypassed block, as [batch, pos] float64 tensors."""
    n_layers = consts["n_layers"]
    o, o_b = normal[sites.attn_out(layer)], bypassed[sites.attn_out(layer)]
    delta = o - o_b
    pattern, u = normal[sites.pattern(layer)], normal[sites.ln1_out(layer)]
    cols = {"measured": _norm_last(delta), **per_token_bounds(pattern, u, w)}
    cols["d1_err"] = _norm_last(attention_delta(pattern, u, w) - delta)
    cols["attn_scale"] = torch.maximum(_norm_last(o), _norm_last(o_b))
    y, y_b = normal[sites.resid_post(layer)], bypassed[sites.resid_post(layer)]
    cols["block_measured"] = _norm_last(y - y_b)
    cols["block_scale"] = torch.maximum(_norm_last(y), _norm_last(y_b))
    cols.update(_block_bound(w, delta, normal, bypassed, layer, consts))
    h, h_b = normal[sites.resid_post(n_layers - 1)], bypassed[sites.resid_post(n_layers - 1)]
    cols["final_measured"] = _norm_last(h - h_b)
    cols["s_min_final"] = segment_min_scale(h, h_b, final.eps_f, final.rms)
    cols["logits_measured"] = _norm_last(logits - logits_b)
    cols["logits_bound"] = consts["logits_lip"] / cols["s_min_final"] * cols["final_measured"]
    cols["logits_scale"] = torch.maximum(_norm_last(logits), _norm_last(logits_b))
    return cols


def _block_bound(w: BlockWeights, delta, normal, bypassed, layer: int, consts) -> dict[str, Tensor]:
    """D3. Parallel: identity error ``||(y - ỹ) - delta||``. Sequential: the factor and bound."""
    dnorm = _norm_last(delta)
    if w.parallel:
        y_diff = normal[sites.resid_post(layer)] - bypassed[sites.resid_post(layer)]
        nan = torch.full_like(dnorm, float("nan"))
        return {"block_identity_err": _norm_last(y_diff - delta), "s_min_ln2": nan, "block_factor": torch.ones_like(dnorm), "block_bound": dnorm}
    s_min = segment_min_scale(normal[sites.resid_mid(layer)], bypassed[sites.resid_mid(layer)], w.eps2, w.rms)
    factor = 1.0 + _mlp_constant(w, consts, layer, normal, bypassed) / s_min
    return {"block_identity_err": torch.full_like(dnorm, float("nan")), "s_min_ln2": s_min, "block_factor": factor, "block_bound": factor * dnorm}


def _propagation_rows(layer: int, normal, bypassed, seq0: int, consts) -> pd.DataFrame:
    """Per sequence and block k >= layer: ``E_k`` (Frobenius norm over positions), ``rho_k``,
    the gain ``E_k / E_layer``, the certified step bound ``E_bound_k`` (from block k's per-token
    input differences; empty at k = layer, whose bound is D3 in the bounds table),
    ``rho_bound = E_bound_k / E_{k-1}`` and its running product ``gain_bound``."""
    n_layers, weights = consts["n_layers"], consts["weights"]
    blocks = range(layer, n_layers)

    def frob(x: Tensor) -> np.ndarray:
        return torch.sqrt((x**2).sum(-1)).numpy()

    E = np.stack([frob(_norm_last(normal[sites.resid_post(k)] - bypassed[sites.resid_post(k)])) for k in blocks], 1)
    scale = np.stack([frob(_norm_last(normal[sites.resid_post(k)])) for k in blocks], 1)
    steps = [frob(block_step_bound(weights[k], _mlp_constant(weights[k], consts, k, normal, bypassed), normal, bypassed, k))
             for k in blocks if k > layer]  # fmt: skip
    E_bound = np.stack([np.full(E.shape[0], np.nan), *steps], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.concatenate([np.full((E.shape[0], 1), np.nan), E[:, 1:] / E[:, :-1]], axis=1)
        rho_bound = np.concatenate([np.full((E.shape[0], 1), np.nan), E_bound[:, 1:] / E[:, :-1]], axis=1)
        gain = E / E[:, :1]
    gain_bound = np.cumprod(np.nan_to_num(rho_bound, nan=1.0), axis=1)
    n_b, n_k = E.shape
    cols = {"E": E, "rho": rho, "gain": gain, "E_bound": E_bound, "rho_bound": rho_bound, "gain_bound": gain_bound, "E_scale": scale}
    return pd.DataFrame({
        "layer": layer,
        "sequence": np.repeat(np.arange(seq0, seq0 + n_b), n_k),
        "block": np.tile(np.arange(layer, n_layers), n_b),
        **{k: v.ravel() for k, v in cols.items()},
    })  # fmt: skip


def _tidy(layer: int, cols: dict[str, Tensor], seq0: int) -> pd.DataFrame:
    n_b, n_p = cols["measured"].shape
    df = pd.DataFrame({
        "layer": layer,
        "sequence": np.repeat(np.arange(seq0, seq0 + n_b), n_p),
        "token": np.tile(np.arange(n_p), n_b),
        **{k: v.numpy().ravel() for k, v in cols.items()},
    })  # fmt: skip
    # tightness is left empty where the bound is at float32 noise level (RTOL x the vectors' norm)
    for b in BOUNDS:
        df[f"slack_{b}"] = df[b] - df["measured"]
        df[f"tight_{b}"] = (df["measured"] / df[b]).where(df[b] > RTOL * df["attn_scale"])
    df["tight_block"] = (df["block_measured"] / df["block_bound"]).where(df["block_bound"] > RTOL * df["block_scale"])
    df["tight_logits"] = (df["logits_measured"] / df["logits_bound"]).where(df["logits_bound"] > RTOL * df["logits_scale"])
    return df


def _check_tokens(model, tokens) -> Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim != 2 or t.shape[1] < 1 or t.is_floating_point():
        raise InputError(f"token ids must be a 2-D integer [sequence, position] array; got {t.dtype} of shape {tuple(t.shape)}")
    if t.shape[1] > int(model.cfg.n_ctx):
        raise InputError(f"sequences have {t.shape[1]} tokens, more than the model's context of {model.cfg.n_ctx}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= int(model.cfg.d_vocab)):
        raise InputError(f"token ids must lie in 0..{int(model.cfg.d_vocab) - 1}; found {int(t.min())}..{int(t.max())}")
    return t.long()


@torch.no_grad()
def theory_tables(
    model,
    tokens: Int[Tensor, "sequence pos"] | np.ndarray,
    layers: Sequence[int] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> TheoryTables:
    """Measured differences, D1 error, bounds B1-B3, block (D3), propagation and logits (D4).

    ``tokens`` are used exactly as given (no BOS). For each ``layer`` (default: all) one run with
    ``AttentionBypass(layer)`` is compared with the normal run. Norms are Euclidean over
    d_model (per token) or over (pos, d_model) (per sequence, propagation table).
    """
    tokens = _check_tokens(model, tokens)
    n_layers = int(model.cfg.n_layers)
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    if bad := [x for x in layers if not 0 <= x < n_layers]:
        raise InputError(f"layers {bad} are outside the model's blocks 0..{n_layers - 1}")
    if len(set(layers)) != len(layers):
        raise InputError(f"layers {layers} name a block more than once; a selection is a set")
    weights = {k: block_weights(model, k) for k in range(n_layers)}
    final = final_weights(model)
    sequential = any(not w.parallel for w in weights.values())
    gated = any(w.W_gate is not None for w in weights.values())
    consts = {
        "n_layers": n_layers,
        "weights": weights,
        "logits_lip": logits_lipschitz(final),
        "mlp_lip": {k: mlp_lipschitz(w) for k, w in weights.items() if w.W_gate is None},
        "mlp_norms": {k: mlp_norms(w) for k, w in weights.items() if w.W_gate is not None},
    }
    bounds, props = [], []
    device = model.cfg.device
    for start in tqdm(range(0, len(tokens), batch_size), desc="theory", disable=not progress, leave=False):
        batch = tokens[start : start + batch_size].to(device)
        logits, normal = _run(model, batch, _normal_names(n_layers, sequential, gated))
        for layer in layers:
            logits_b, bypassed = _run(model, batch, _bypass_names(layer, n_layers, sequential, gated), [AttentionBypass(layer)])
            cols = _block_columns(layer, weights[layer], normal, bypassed, logits, logits_b, final, consts)
            bounds.append(_tidy(layer, cols, start))
            props.append(_propagation_rows(layer, normal, bypassed, start, consts))
    return TheoryTables(pd.concat(bounds, ignore_index=True), pd.concat(props, ignore_index=True))


# ---------------------------------------------------------------------------------------------
# Checks and summaries
# ---------------------------------------------------------------------------------------------

def violations(bounds: pd.DataFrame, rtol: float = RTOL) -> pd.DataFrame:
    """Boolean columns, one row per token: which statement fails beyond float tolerance.

    ``B1``: measured > B1; ``B2``: B1 > B2; ``B3``: B2 > B3; ``D1``: the identity's error;
    ``first``: a first token with a nonzero difference; ``block``: the D3 bound or, for parallel
    blocks, the identity; ``logits``: the logits bound. Tolerance: ``rtol`` x the scale column.
    """
    tol_a = rtol * bounds["attn_scale"] + 1e-12
    tol_y = rtol * bounds["block_scale"] + 1e-12
    tol_l = rtol * bounds["logits_scale"] + 1e-12
    identity = bounds["block_identity_err"].fillna(0.0) > tol_y
    return pd.DataFrame({
        "B1": bounds["measured"] > bounds["B1"] + tol_a,
        "B2": bounds["B1"] > bounds["B2"] * (1 + rtol) + 1e-12,
        "B3": bounds["B2"] > bounds["B3"] * (1 + rtol) + 1e-12,
        "D1": bounds["d1_err"] > tol_a,
        "first": (bounds["token"] == 0) & (bounds["measured"] > tol_a),
        "block": identity | (bounds["block_measured"] > bounds["block_bound"] + tol_y),
        "logits": bounds["logits_measured"] > bounds["logits_bound"] + tol_l,
    })  # fmt: skip


def propagation_violations(propagation: pd.DataFrame, rtol: float = RTOL) -> pd.Series:
    """Rows where the measured ``E_k`` exceeds its step bound beyond float tolerance."""
    return propagation["E"] > propagation["E_bound"] + rtol * propagation["E_scale"] + 1e-12


def summarize(tables: TheoryTables, rtol: float = RTOL) -> pd.DataFrame:
    """One row per bypassed layer: token count, violation counts, median/max tightness of each
    bound, largest relative D1 error, and the propagation gain E_final / E_layer (median)."""
    viol = violations(tables.bounds, rtol)
    b = tables.bounds.assign(**{f"viol_{k}": v for k, v in viol.items()})
    b["d1_rel_err"] = b["d1_err"] / b["attn_scale"].where(b["attn_scale"] > 0)
    agg = {"n_tokens": ("token", "size"), **{f"viol_{k}": (f"viol_{k}", "sum") for k in viol.columns}}
    for col in [f"tight_{k}" for k in BOUNDS] + ["tight_block", "tight_logits"]:
        agg[f"{col}_median"] = (col, "median")
        agg[f"{col}_max"] = (col, "max")
    agg["d1_rel_err_max"] = ("d1_rel_err", "max")
    out = b.groupby("layer").agg(**agg)
    p = tables.propagation.assign(viol_step=propagation_violations(tables.propagation, rtol))
    last = p[p["block"] == p["block"].max()].groupby("layer")
    later = p[p["block"] > p["layer"]].groupby("layer")
    prop = pd.DataFrame({
        "viol_step": p.groupby("layer")["viol_step"].sum(),
        "rho_median": later["rho"].median(),
        "rho_bound_median": later["rho_bound"].median(),
        "gain_final_median": last["gain"].median(),
        "gain_bound_final_median": last["gain_bound"].median(),
    })  # fmt: skip
    return out.join(prop).reset_index()
