"""Tests of interp.theory: property tests of the bounds over random tiny models (Hypothesis),
reference tests of every ingredient against independent computations, the shipped organisms,
and the ``interp theory`` command.

``INTERP_HYPOTHESIS_EXAMPLES=N`` runs N examples per property test (default 60 each).
"""

from __future__ import annotations

import argparse
import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from jaxtyping import install_import_hook  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.activations import ACT2FN  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

with install_import_hook("interp.theory", "beartype.beartype"):
    from interp import theory  # noqa: E402

from interp import sites  # noqa: E402
from interp.errors import InputError  # noqa: E402
from interp.interventions import AttentionBypass, apply  # noqa: E402
from interp.models import load_model  # noqa: E402
from interp.tiny import make_tiny_model, random_model  # noqa: E402

N_EXAMPLES = int(os.environ.get("INTERP_HYPOTHESIS_EXAMPLES", "60"))
PROPERTY = settings(
    max_examples=N_EXAMPLES,
    deadline=None,
    derandomize="INTERP_HYPOTHESIS_EXAMPLES" not in os.environ,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
VOCAB = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls are fastest (and least disturbed by other jobs) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def boot_dirs(tmp_path_factory) -> dict:
    """One saved folder per family, only for the bridge to find a config and tokenizer; the
    models under test are built in memory and passed as ``hf_model``."""
    root = tmp_path_factory.mktemp("theory_boot")
    return {a: make_tiny_model(root / a, a, n_layers=1, d_model=8, n_heads=2) for a in ("neox", "neo", "llama", "qwen2")}


def _randomize_norms(hf, seed: int, scale: float) -> None:
    """LayerNorm gains of random size and sign, and random LayerNorm and linear biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if p.ndim != 1:
                continue
            if name.endswith("weight"):  # LayerNorm gains
                mag = torch.empty(p.shape).uniform_(0.1, 3.0, generator=g)
                sign = torch.where(torch.rand(p.shape, generator=g) < 0.2, -1.0, 1.0)
                p.copy_(mag * sign)
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def _boot(boot_dirs, arch: str, hf) -> TransformerBridge:
    model = TransformerBridge.boot_transformers(str(boot_dirs[arch]), hf_model=hf)
    return model.eval()


@st.composite
def cases(draw, arch: str):
    n_heads = draw(st.integers(1, 4))
    d_head = draw(st.sampled_from([2, 4, 6, 8]))
    kw = dict(
        n_layers=draw(st.integers(1, 3)),
        n_heads=n_heads,
        d_model=n_heads * d_head,
        d_mlp=draw(st.sampled_from([4, 16, 32])),
        n_ctx=32,
        vocab_size=VOCAB,
    )
    if arch == "neo":
        kw["window"] = draw(st.integers(1, 6))
    elif arch in ("llama", "qwen2"):  # grouped-, multi- or ordinary multi-head attention
        kw["n_kv_heads"] = draw(st.sampled_from([k for k in range(1, n_heads + 1) if n_heads % k == 0]))
    else:
        kw["rotary_pct"] = draw(st.sampled_from([0.25, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.floats(0.25, 8.0))
    bias_scale = draw(st.sampled_from([0.0, 0.1, 1.0]))
    batch, pos = draw(st.integers(1, 3)), draw(st.integers(1, 20))
    tokens = torch.tensor(draw(st.lists(st.integers(0, VOCAB - 1), min_size=batch * pos, max_size=batch * pos))).reshape(batch, pos)
    return kw, seed, scale, bias_scale, tokens


def _case_model(boot_dirs, arch, kw, seed, scale, bias_scale):
    hf = random_model(arch, seed=seed, weight_scale=scale, **kw)
    _randomize_norms(hf, seed + 1, bias_scale)
    return _boot(boot_dirs, arch, hf)


def _assert_no_violations(tables: theory.TheoryTables) -> None:
    viol = theory.violations(tables.bounds)
    bad = tables.bounds[viol.any(axis=1)]
    assert not len(bad), f"{viol.sum().to_dict()}\n{bad.head().T}"
    step = theory.propagation_violations(tables.propagation)
    assert not step.any(), f"step bound violated:\n{tables.propagation[step].head().T}"


def _check_case(boot_dirs, arch, case) -> None:
    kw, seed, scale, bias_scale, tokens = case
    model = _case_model(boot_dirs, arch, kw, seed, scale, bias_scale)
    tables = theory.theory_tables(model, tokens)
    _assert_no_violations(tables)
    b = tables.bounds
    assert (b.loc[b["token"] == 0, "measured"] == 0).all(), "the first token's difference must vanish"
    if arch == "neox":
        assert b["block_identity_err"].max() <= 1e-5 * b["block_scale"].max() + 1e-12
    _check_propagation_consistent(tables)


def _check_propagation_consistent(tables: theory.TheoryTables) -> None:
    """E at the bypassed block is the per-sequence norm of the per-token block differences."""
    p, b = tables.propagation, tables.bounds
    first = p[p["block"] == p["layer"]].set_index(["layer", "sequence"])["E"]
    per_seq = b.groupby(["layer", "sequence"])["block_measured"].apply(lambda x: math.sqrt((x**2).sum()))
    np.testing.assert_allclose(first.sort_index().to_numpy(), per_seq.sort_index().to_numpy(), rtol=1e-9, atol=1e-12)


@PROPERTY
@given(case=cases("neox"))
def test_bounds_hold_on_random_neox(boot_dirs, case):
    _check_case(boot_dirs, "neox", case)


@PROPERTY
@given(case=cases("neo"))
def test_bounds_hold_on_random_neo(boot_dirs, case):
    _check_case(boot_dirs, "neo", case)


@PROPERTY
@given(case=cases("llama"))
def test_bounds_hold_on_random_llama(boot_dirs, case):
    """RMSNorm, gated SiLU MLP, grouped-query attention (docs/theory.md D5)."""
    _check_case(boot_dirs, "llama", case)


@PROPERTY
@given(case=cases("qwen2"))
def test_bounds_hold_on_random_qwen2(boot_dirs, case):
    """As Llama, with q/k/v biases."""
    _check_case(boot_dirs, "qwen2", case)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), d=st.sampled_from([4, 8, 16]), d_mlp=st.sampled_from([4, 16, 48]),
       scale=st.floats(0.1, 10.0), near=st.booleans())  # fmt: skip
def test_gated_mlp_constant_bounds_the_hf_sublayer(seed, d, d_mlp, scale, near):
    """D5 against Hugging Face's own RMSNorm and gated MLP: ||MLP(RMS(r)) - MLP(RMS(r~))|| is at
    most gated_mlp_constant(RMS(r), RMS(r~)) ||r - r~|| / s_min (RMS segment minimum)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

    g = torch.Generator().manual_seed(seed)
    cfg = LlamaConfig(hidden_size=d, intermediate_size=d_mlp, hidden_act="silu", rms_norm_eps=1e-6, num_attention_heads=1,
                      num_key_value_heads=1)
    mlp, norm = LlamaMLP(cfg).double(), LlamaRMSNorm(d, eps=1e-6).double()
    with torch.no_grad():
        for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            lin.weight.copy_(scale * torch.randn(lin.weight.shape, generator=g, dtype=torch.float64))
        norm.weight.copy_(torch.empty(d, dtype=torch.float64).uniform_(-3, 3, generator=g))
    r = scale * torch.randn(1, 5, d, generator=g, dtype=torch.float64)
    r_b = r + (1e-3 if near else 1.0) * scale * torch.randn(1, 5, d, generator=g, dtype=torch.float64)
    w = theory.BlockWeights(
        W_V=torch.zeros(1, d, 1, dtype=torch.float64), b_V=torch.zeros(1, 1, dtype=torch.float64),
        W_O=torch.zeros(1, 1, d, dtype=torch.float64), b_O=torch.zeros(d, dtype=torch.float64), gamma1=norm.weight.detach(),
        gamma2=norm.weight.detach(), eps2=1e-6, W_in=mlp.up_proj.weight.detach().T, W_out=mlp.down_proj.weight.detach().T,
        act="silu", window=None, parallel=False, W_Q=torch.zeros(1, d, 1, dtype=torch.float64),
        b_Q=torch.zeros(1, 1, dtype=torch.float64), W_K=torch.zeros(1, d, 1, dtype=torch.float64),
        b_K=torch.zeros(1, 1, dtype=torch.float64), score_scale=1.0, rope_gain=1.0, eps1=1e-6, rms=True,
        W_gate=mlp.gate_proj.weight.detach().T,
    )  # fmt: skip
    with torch.no_grad():
        p, q = norm(r), norm(r_b)
        measured = (mlp(p) - mlp(q)).norm(dim=-1)
    const = theory.gated_mlp_constant(w, theory.mlp_norms(w), p, q)
    bound = const * (r - r_b).norm(dim=-1) / theory.segment_min_scale(r, r_b, 1e-6, rms=True)
    assert (measured <= bound * (1 + 1e-9) + 1e-12).all()
    # the constant itself against the formula of docs/theory.md D5, by numpy (SVD norms, loops over tokens)
    sv = {n: np.linalg.svd(getattr(mlp, f"{n}_proj").weight.detach().numpy(), compute_uv=False)[0] for n in ("gate", "up", "down")}
    c_silu = 1.0998  # sup |silu'| = 1.09984 at x = 2.3994
    for i in range(5):
        pn, qn = p[0, i].numpy(), q[0, i].numpy()
        up = mlp.up_proj.weight.detach().numpy() @ pn
        a_q = mlp.gate_proj.weight.detach().numpy() @ qn
        silu_q = a_q / (1 + np.exp(-a_q))
        want = sv["down"] * (c_silu * np.abs(up).max() * sv["gate"] + np.abs(silu_q).max() * sv["up"]) * np.abs(norm.weight.detach().numpy()).max()
        assert float(const[0, i]) == pytest.approx(want, rel=1e-4)


def test_sliding_window_layers_are_refused(tmp_path):
    """D5 covers full attention only: a Qwen2 with a sliding-window layer is refused in one sentence."""
    import json

    folder = make_tiny_model(tmp_path / "q", "qwen2", seed=1, n_layers=2, d_model=16, n_heads=2, n_ctx=32)
    config = json.loads((folder / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4, layer_types=["full_attention", "sliding_attention"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="sliding_attention"):
        theory.theory_tables(load_model(folder), torch.zeros(1, 4, dtype=torch.long))


def test_rms_segment_min_scale_is_the_minimum_over_the_segment():
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        a, b = torch.randn(2, 7, dtype=torch.float64, generator=g).unbind(0)
        b = b * 0.1 + a * float(torch.rand(1, generator=g))  # segments that pass near the origin too
        t = torch.linspace(0, 1, 20001, dtype=torch.float64)[:, None]
        x = b + t * (a - b)
        sampled = torch.sqrt((x * x).mean(-1) + 1e-6).min()
        exact = theory.segment_min_scale(a, b, 1e-6, rms=True)
        assert exact <= sampled + 1e-12 and sampled - exact < 1e-6


# ---------------------------------------------------------------------------------------------
# Reference tests: each ingredient against an independent computation
# ---------------------------------------------------------------------------------------------

ARCHS = ["neox", "neo"]


@pytest.fixture(scope="module", params=ARCHS)
def ref(request, tmp_path_factory):
    """A fixed tiny model (bridge and an independent HF copy loaded from the same folder),
    with random LayerNorm gains and biases saved into the folder, and a batch of tokens."""
    arch = request.param
    folder = tmp_path_factory.mktemp(f"theory_ref_{arch}")
    kw = dict(n_layers=3, d_model=24, n_heads=3, n_ctx=32, window=3) if arch == "neo" else dict(n_layers=3, d_model=24, n_heads=3, n_ctx=32)
    make_tiny_model(folder, arch, seed=5, weight_scale=2.0, **kw)
    hf = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()
    _randomize_norms(hf, 7, 0.3)
    hf.save_pretrained(folder)
    tokens = torch.randint(0, 500, (2, 12), generator=torch.Generator().manual_seed(3))
    return arch, load_model(folder), AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval(), tokens


def _cache(model, tokens, names, interventions=()):
    with apply(model, *interventions):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: cache[n].to(torch.float64) for n in names}


def test_value_weights_reproduce_hook_v_and_output_projection_reproduces_attn_out(ref):
    _, model, _, tokens = ref
    for layer in range(model.cfg.n_layers):
        w = theory.block_weights(model, layer)
        c = _cache(model, tokens, {sites.ln1_out(layer), sites.v(layer), sites.z(layer), sites.attn_out(layer)})
        v = torch.einsum("bpd,hde->bphe", c[sites.ln1_out(layer)], w.W_V) + w.b_V
        torch.testing.assert_close(v, c[sites.v(layer)], rtol=1e-5, atol=1e-5)
        out = torch.einsum("bphe,hed->bpd", c[sites.z(layer)], w.W_O) + w.b_O
        torch.testing.assert_close(out, c[sites.attn_out(layer)], rtol=1e-5, atol=1e-5)


def test_pattern_is_the_used_attention_and_respects_the_key_mask(ref):
    arch, model, _, tokens = ref
    for layer in range(model.cfg.n_layers):
        w = theory.block_weights(model, layer)
        c = _cache(model, tokens, {sites.pattern(layer), sites.v(layer), sites.z(layer)})
        A = c[sites.pattern(layer)]
        torch.testing.assert_close(torch.einsum("bhij,bjhe->bihe", A, c[sites.v(layer)]), c[sites.z(layer)], rtol=1e-5, atol=1e-6)
        allowed = theory.key_mask(tokens.shape[1], w.window) | torch.eye(tokens.shape[1], dtype=torch.bool)
        assert (A[..., ~allowed] == 0).all()
        assert (w.window is not None) == (arch == "neo" and layer % 2 == 1)


def _hf_attention_outputs(hf, tokens, layer: int, bypass: bool) -> torch.Tensor:
    """Attention-sublayer output of ``layer`` straight from HF modules; with ``bypass`` the
    module's output is replaced by its per-token value/output projection (written here)."""
    attn = hf.gpt_neox.layers[layer].attention if hf.config.model_type == "gpt_neox" else hf.transformer.h[layer].attn.attention
    H = hf.config.num_attention_heads if hf.config.model_type == "gpt_neox" else hf.config.num_heads
    got = {}

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        if bypass:
            b, s, _ = x.shape
            if hasattr(module, "query_key_value"):
                qkv = module.query_key_value(x).view(b, s, H, -1)
                v = qkv[..., 2 * qkv.shape[-1] // 3 :]
                proj = module.dense
            else:
                v, proj = module.v_proj(x), module.out_proj
            output = (proj(v.reshape(b, s, -1)), *output[1:])
        got["o"] = output[0]
        return output

    handle = attn.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(tokens)
    finally:
        handle.remove()
    return got["o"].to(torch.float64)


def test_measured_difference_matches_an_hf_only_computation(ref):
    _, model, hf, tokens = ref
    tables = theory.theory_tables(model, tokens)
    for layer in range(model.cfg.n_layers):
        delta = _hf_attention_outputs(hf, tokens, layer, False) - _hf_attention_outputs(hf, tokens, layer, True)
        got = tables.bounds[tables.bounds["layer"] == layer]["measured"].to_numpy()
        np.testing.assert_allclose(got, delta.norm(dim=-1).ravel().numpy(), rtol=1e-4, atol=1e-6)


def test_d1_and_bounds_match_brute_force_loops(ref):
    """D1 and B1-B3 by explicit loops over tokens, keys and heads, in d_model space."""
    _, model, _, tokens = ref
    tokens = tokens[:1, :8]
    for layer in range(model.cfg.n_layers):
        w = theory.block_weights(model, layer)
        c = _cache(model, tokens, {sites.ln1_out(layer), sites.pattern(layer)})
        u, A = c[sites.ln1_out(layer)][0], c[sites.pattern(layer)][0]
        W_VO = [w.W_V[m] @ w.W_O[m] for m in range(w.W_V.shape[0])]
        got = theory.per_token_bounds(c[sites.pattern(layer)], c[sites.ln1_out(layer)], w)
        delta = theory.attention_delta(c[sites.pattern(layer)], c[sites.ln1_out(layer)], w)[0]
        for i in range(u.shape[0]):
            keys = [j for j in range(i) if w.window is None or j > i - w.window]
            d_i = sum(A[m, i, j] * (u[j] - u[i]) @ W_VO[m] for m in range(len(W_VO)) for j in keys) if keys else torch.zeros(u.shape[1], dtype=torch.float64)
            torch.testing.assert_close(delta[i], d_i)
            mass = [1 - A[m, i, i] for m in range(len(W_VO))]
            ud = max((float((u[j] - u[i]).norm()) for j in keys), default=0.0)
            norms = [float(torch.linalg.matrix_norm(W, 2)) for W in W_VO]
            b1 = sum(mass[m] * max((float(((u[j] - u[i]) @ W_VO[m]).norm()) for j in keys), default=0.0) for m in range(len(W_VO)))
            b2 = sum(mass[m] * norms[m] * ud for m in range(len(W_VO)))
            b3 = 2 * math.sqrt(u.shape[1]) * float(w.gamma1.abs().max()) * sum(mass[m] * norms[m] for m in range(len(W_VO)))
            for name, want in (("B1", b1), ("B2", b2), ("B3", b3)):
                assert math.isclose(float(got[name][0, i]), float(want), rel_tol=1e-5, abs_tol=1e-7), (layer, i, name)


def test_wvo_norms_and_spectral_norm_match_full_svd(ref):
    _, model, _, _ = ref
    w = theory.block_weights(model, 0)
    want = torch.stack([torch.linalg.matrix_norm(w.W_V[m] @ w.W_O[m], 2) for m in range(w.W_V.shape[0])])
    torch.testing.assert_close(theory.wvo_norms(w), want)
    g = torch.Generator().manual_seed(0)
    for M in (torch.randn(7, 30, generator=g), torch.randn(30, 7, generator=g)):
        assert math.isclose(theory.spectral_norm(M), float(torch.linalg.matrix_norm(M.double(), 2)), rel_tol=1e-10)


def test_query_key_weights_reproduce_the_scores(ref):
    """W_Q, W_K, the score scale and the rotary gain. GPT-Neo (no rotary): softmax of our scores is
    hook_pattern. GPT-NeoX: q, k norms match the hooks and |s_ij| <= scale rope^2 ||q_i|| ||k_j||
    against hook_attn_scores (GPT-Neo's bridge stores the pattern there, so it is not used)."""
    arch, model, _, tokens = ref
    p = tokens.shape[1]
    for layer in range(model.cfg.n_layers):
        w = theory.block_weights(model, layer)
        names = {sites.ln1_out(layer), sites.pattern(layer), f"blocks.{layer}.attn.hook_q", f"blocks.{layer}.attn.hook_k", f"blocks.{layer}.attn.hook_attn_scores"}
        c = _cache(model, tokens, names)
        u = c[sites.ln1_out(layer)]
        q = torch.einsum("bpd,hde->bphe", u, w.W_Q) + w.b_Q
        k = torch.einsum("bpd,hde->bphe", u, w.W_K) + w.b_K
        torch.testing.assert_close(q.norm(dim=-1), c[f"blocks.{layer}.attn.hook_q"].norm(dim=-1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(k.norm(dim=-1), c[f"blocks.{layer}.attn.hook_k"].norm(dim=-1), rtol=1e-5, atol=1e-5)
        allowed = theory.key_mask(p, w.window) | torch.eye(p, dtype=torch.bool)
        if arch == "neo":
            scores = w.score_scale * torch.einsum("bihe,bjhe->bhij", q, k)
            want = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
            torch.testing.assert_close(want, c[sites.pattern(layer)], rtol=1e-4, atol=1e-5)
        else:
            scores = c[f"blocks.{layer}.attn.hook_attn_scores"]
            cap = w.score_scale * w.rope_gain**2 * torch.einsum("bih,bjh->bhij", q.norm(dim=-1), k.norm(dim=-1))
            assert (scores.abs()[..., allowed] <= cap[..., allowed] * (1 + 1e-5) + 1e-6).all()
            torch.testing.assert_close(scores.masked_fill(~allowed, float("-inf")).softmax(-1), c[sites.pattern(layer)], rtol=1e-4, atol=1e-5)


def test_step_bounds_hold_per_token_in_later_blocks(ref):
    """The attention part of the D4 step bound holds token by token, not only per sequence."""
    _, model, _, tokens = ref
    n = int(model.cfg.n_layers)
    names = {sites.resid_post(k) for k in range(n)} | {sites.ln1_out(k) for k in range(n)} | {sites.pattern(k) for k in range(n)} | {sites.attn_out(k) for k in range(n)}
    normal = _cache(model, tokens, names)
    bypassed = _cache(model, tokens, names, [AttentionBypass(0)])
    for k in range(1, n):
        w = theory.block_weights(model, k)
        h, h_b = normal[sites.resid_post(k - 1)], bypassed[sites.resid_post(k - 1)]
        du = w.gamma1.abs().max() * (h - h_b).norm(dim=-1) / theory.segment_min_scale(h, h_b, w.eps1)
        assert ((normal[sites.ln1_out(k)] - bypassed[sites.ln1_out(k)]).norm(dim=-1) <= du * (1 + 1e-6) + 1e-7).all()
        bound = theory.attention_step_bound(w, normal[sites.pattern(k)], normal[sites.ln1_out(k)], bypassed[sites.ln1_out(k)], du)
        measured = (normal[sites.attn_out(k)] - bypassed[sites.attn_out(k)]).norm(dim=-1)
        assert (measured <= bound * (1 + 1e-5) + 1e-7).all()
        assert (measured[:, 1:] > 0).any()


def _grid_min_scale(a, b, eps, lo, hi):
    t = lo[None] + (hi - lo)[None] * torch.linspace(0, 1, 4001, dtype=torch.float64)[:, None]  # [grid, n]
    s = torch.sqrt((b[None] + t[..., None] * (a - b)[None]).var(-1, unbiased=False) + eps)
    k = s.argmin(0)
    return s.amin(0), t.gather(0, k[None])[0], (hi - lo) / 4000


def test_segment_min_scale_is_the_minimum_over_the_segment():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, 16, generator=g, dtype=torch.float64)
    near = -a + 0.01 * torch.randn(50, 16, generator=g, dtype=torch.float64)  # var vanishes mid-segment
    b = torch.where(torch.rand(50, 1, generator=g) < 0.5, near, torch.randn(50, 16, generator=g, dtype=torch.float64))
    coarse, t, step = _grid_min_scale(a, b, 1e-5, torch.zeros(50, dtype=torch.float64), torch.ones(50, dtype=torch.float64))
    fine, _, _ = _grid_min_scale(a, b, 1e-5, (t - step).clamp(0, 1), (t + step).clamp(0, 1))
    got = theory.segment_min_scale(a, b, 1e-5)
    assert (got <= torch.minimum(coarse, fine) + 1e-12).all()
    torch.testing.assert_close(got, fine, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", ["gelu", "gelu_new", "relu"])
def test_activation_derivative_bound_against_finite_differences(name):
    x = torch.linspace(-12, 12, 240_001, dtype=torch.float64)
    f = ACT2FN[name]
    fd = ((f(x[1:]) - f(x[:-1])) / (x[1:] - x[:-1])).abs().max()
    c = theory.activation_derivative_bound(name)
    assert float(fd) <= c <= float(fd) * (1 + 1e-6) + 1e-9
    if name.startswith("gelu"):
        assert 1.128 < c < 1.13


def test_logits_bound_ingredients_match_the_hf_head(ref):
    _, model, hf, tokens = ref
    f = theory.final_weights(model)
    h = torch.randn(2, 5, model.cfg.d_model, dtype=torch.float64)
    ln = hf.gpt_neox.final_layer_norm if hf.config.model_type == "gpt_neox" else hf.transformer.ln_f
    with torch.no_grad():
        want = hf.get_output_embeddings()(ln(h.float())).double()
        bias = hf.get_output_embeddings().bias
    got = torch.nn.functional.layer_norm(h, (h.shape[-1],), f.gamma_f, ln.bias.double(), f.eps_f) @ f.W_U
    if bias is not None:
        got = got + bias.double()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_mlp_weights_and_activation_reproduce_the_sublayer(ref):
    """W_in, act and W_out against the MLP hooks (biases are constant offsets over positions)."""
    _, model, _, tokens = ref
    for layer in range(model.cfg.n_layers):
        w = theory.block_weights(model, layer)
        pre_h, post_h = f"blocks.{layer}.mlp.hook_pre", f"blocks.{layer}.mlp.hook_post"
        c = _cache(model, tokens, {sites.ln2_out(layer), pre_h, post_h, sites.mlp_out(layer)})
        assert ((c[sites.ln2_out(layer)] @ w.W_in - c[pre_h]).std(dim=(0, 1)) < 1e-5).all()
        torch.testing.assert_close(ACT2FN[w.act](c[pre_h]), c[post_h], rtol=1e-5, atol=1e-5)
        assert ((c[post_h] @ w.W_out - c[sites.mlp_out(layer)]).std(dim=(0, 1)) < 1e-5).all()


def test_tables_shape_and_columns(ref):
    _, model, _, tokens = ref
    tables = theory.theory_tables(model, tokens, layers=[0, 2])
    b, p = tables.bounds, tables.propagation
    assert len(b) == 2 * tokens.numel()
    for col in ("layer", "sequence", "token", "measured", "B1", "B2", "B3", "slack_B1", "tight_B1", "d1_err", "block_bound", "logits_bound"):
        assert col in b.columns
    assert set(p["layer"]) == {0, 2} and len(p) == tokens.shape[0] * (3 + 1)
    _assert_no_violations(tables)
    assert (theory.summarize(tables).filter(like="viol_").to_numpy() == 0).all()


def test_sequential_gpt_neox_gets_the_sequential_bound(boot_dirs):
    """GPT-NeoX with use_parallel_residual=False is a sequential block: D3, not the identity."""
    hf = random_model("neox", seed=2, n_layers=2, d_model=16, n_heads=2, vocab_size=VOCAB, n_ctx=32)
    hf.config.use_parallel_residual = False
    for layer in hf.gpt_neox.layers:
        layer.use_parallel_residual = False
    model = _boot(boot_dirs, "neox", hf)
    tables = theory.theory_tables(model, torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0)))
    _assert_no_violations(tables)
    b = tables.bounds[tables.bounds["token"] > 0]
    assert b["s_min_ln2"].notna().all() and b["block_identity_err"].isna().all()
    assert (b["block_measured"] - b["measured"]).abs().max() > 1e-4  # the MLP now sees the difference


def test_bad_inputs_raise_input_error(ref):
    _, model, _, tokens = ref
    with pytest.raises(InputError, match="2-D"):
        theory.theory_tables(model, tokens[0].numpy())
    with pytest.raises(InputError, match="outside"):
        theory.theory_tables(model, tokens, layers=[7])
    with pytest.raises(InputError, match="token ids"):
        theory.theory_tables(model, tokens + 10_000)


def test_bypass_hook_is_the_theorem_s_bypass(ref):
    """The bypassed attention output is the per-token affine map of LN1 (no mixing)."""
    _, model, _, tokens = ref
    layer = 1
    w = theory.block_weights(model, layer)
    c = _cache(model, tokens, {sites.ln1_out(layer), sites.attn_out(layer)}, [AttentionBypass(layer)])
    want = torch.einsum("bpd,hde->bphe", c[sites.ln1_out(layer)], w.W_V) + w.b_V
    want = torch.einsum("bphe,hed->bpd", want, w.W_O) + w.b_O
    torch.testing.assert_close(c[sites.attn_out(layer)], want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Independent recomputations (brute-force loops, hand-made frames, pandas) of the step bound,
# the violation oracles, the D3 and logits columns and the propagation/summary ratios
# ---------------------------------------------------------------------------------------------

C_ACT_DOC = {"gelu": 1.128904, "gelu_new": 1.128993, "relu": 1.0}  # docs/theory.md, D3 table


def _brute_attention_step_bound(w, A, u, u_b, du):
    """docs/theory.md D4 steps 2-5, one sequence, by loops over heads, queries and key pairs.
    Returns the bound per query and, per (head, query), the uncapped 2 max|ds|, the pair diameter
    and the largest distance to the query alone (to show the inputs exercise every term)."""
    H, p = w.W_V.shape[0], u.shape[0]
    g = w.score_scale * w.rope_gain**2
    out = torch.zeros(p, dtype=torch.float64)
    l1_raw, diam_pairs, diam_to_i = [], [], []
    for m in range(H):
        W_VO = w.W_V[m] @ w.W_O[m]
        n_vo = float(torch.linalg.matrix_norm(W_VO, ord=2))
        nQ, nK = float(torch.linalg.matrix_norm(w.W_Q[m], ord=2)), float(torch.linalg.matrix_norm(w.W_K[m], ord=2))
        for i in range(p):
            vis = [j for j in range(i + 1) if w.window is None or j > i - w.window]
            value = n_vo * sum(float(A[m, i, j]) * float(du[j]) for j in vis)
            q_i = float(torch.linalg.vector_norm(u[i] @ w.W_Q[m] + w.b_Q[m]))
            ds = [g * (q_i * nK * float(du[j]) + nQ * float(du[i]) * float(torch.linalg.vector_norm(u_b[j] @ w.W_K[m] + w.b_K[m]))) for j in vis]
            l1 = min(2.0, 2.0 * max(ds))
            x = {j: u_b[j] @ W_VO for j in vis}
            diam = max(float(torch.linalg.vector_norm(x[j] - x[jj])) for j in vis for jj in vis)
            out[i] += value + l1 / 2 * diam
            l1_raw.append(2.0 * max(ds))
            diam_pairs.append(diam)
            diam_to_i.append(max(float(torch.linalg.vector_norm(x[j] - x[i])) for j in vis))
    return out, np.array(l1_raw), np.array(diam_pairs), np.array(diam_to_i)


def test_attention_step_bound_matches_a_brute_force_loop(ref):
    """D4 attention step bound against per-head loops: value path, the scores' bilinear bound,
    ||A - Ã||_1 <= min(2, 2 max_j |Δs_ij|) and the diameter as an explicit max over pairs
    j, j' <= i in the visible window. The real input differences (bypass at block 0) and a
    scaled copies (x1e-3, x30) exercise both the capped and the uncapped softmax term."""
    _, model, _, tokens = ref
    tokens = tokens[:, :9]
    n = int(model.cfg.n_layers)
    names = {sites.resid_post(k) for k in range(n)} | {sites.ln1_out(k) for k in range(n)} | {sites.pattern(k) for k in range(n)}
    normal = _cache(model, tokens, names)
    bypassed = _cache(model, tokens, names, [AttentionBypass(0)])
    l1_all, pair_all, to_i_all = [], [], []
    for k in range(1, n):
        w = theory.block_weights(model, k)
        h, h_b = normal[sites.resid_post(k - 1)], bypassed[sites.resid_post(k - 1)]
        du0 = w.gamma1.abs().max() * (h - h_b).norm(dim=-1) / theory.segment_min_scale(h, h_b, w.eps1)
        for factor in (1.0, 1e-3, 30.0):
            du = du0 * factor
            got = theory.attention_step_bound(w, normal[sites.pattern(k)], normal[sites.ln1_out(k)], bypassed[sites.ln1_out(k)], du)
            for b in range(tokens.shape[0]):
                want, l1, pair, to_i = _brute_attention_step_bound(
                    w, normal[sites.pattern(k)][b], normal[sites.ln1_out(k)][b], bypassed[sites.ln1_out(k)][b], du[b]
                )
                np.testing.assert_allclose(got[b].numpy(), want.numpy(), rtol=1e-9, atol=1e-12, err_msg=f"block {k} seq {b} du x{factor}")
                l1_all.append(l1)
                pair_all.append(pair)
                to_i_all.append(to_i)
    l1, pair, to_i = (np.concatenate(x) for x in (l1_all, pair_all, to_i_all))
    # the comparison is sensitive to every term: both softmax regimes occur with a nonzero
    # diameter, and the spread over pairs is strictly larger than the distances to i somewhere
    assert ((l1 < 1.9) & (pair > 1e-3)).any() and (l1 > 2.0).any()
    assert (pair > to_i * (1 + 1e-6) + 1e-9).any()


def _planted_bounds_frame():
    """One clean row, one row per statement with exactly that statement violated (by 1e-3 with
    all scales 1, tolerance 1e-5), and rows violating nothing beyond the tolerance."""
    import pandas as pd

    clean = dict(layer=0, sequence=0, token=3, measured=1.0, B1=2.0, B2=3.0, B3=4.0, d1_err=0.0,
                 attn_scale=1.0, block_identity_err=float("nan"), block_measured=1.0, block_bound=2.0,
                 block_scale=1.0, logits_measured=1.0, logits_bound=2.0, logits_scale=1.0)  # fmt: skip
    planted = {
        None: {},
        "B1": dict(measured=2.001),
        "B2": dict(B1=3.001),
        "B3": dict(B2=4.001),
        "D1": dict(d1_err=1e-3),
        "first": dict(token=0, measured=1e-3),
        "block": dict(block_measured=2.001),
        "block_identity": dict(block_identity_err=1e-3, block_bound=1.0, block_measured=1.0),
        "logits": dict(logits_measured=2.001),
        "within_tol": dict(measured=2.0 + 5e-6, B1=2.0, B2=2.0 + 1e-6, d1_err=5e-6, block_measured=2.0 + 5e-6,
                           logits_measured=2.0 + 5e-6),  # fmt: skip
        "within_tol_first": dict(token=0, measured=5e-6, block_identity_err=5e-6),
        "first_clean": dict(token=0, measured=0.0),
    }
    rows = [{**clean, **kw} for kw in planted.values()]
    expect = [("block" if key == "block_identity" else key) for key in planted]
    return pd.DataFrame(rows), expect


def test_violations_flag_exactly_the_planted_row_of_each_column():
    bounds, expect = _planted_bounds_frame()
    viol = theory.violations(bounds)
    assert list(viol.columns) == ["B1", "B2", "B3", "D1", "first", "block", "logits"]
    assert viol.dtypes.eq(bool).all()
    for col in viol.columns:
        want = [e == col for e in expect]
        assert viol[col].tolist() == want, (col, viol[col].tolist())
    # the tolerance scales with the scale columns: ten times the scale absorbs a 1e-4 excess
    scaled = bounds.assign(measured=bounds["B1"] + 1e-4, attn_scale=10.0).iloc[[0]]
    assert not theory.violations(scaled)["B1"].any()
    assert theory.violations(scaled.assign(attn_scale=1.0))["B1"].all()


def test_propagation_violations_flag_exactly_the_planted_row():
    import pandas as pd

    prop = pd.DataFrame({
        "E":       [1.0, 1.0,          2.001, 2.0 + 5e-6, 2.0005, 0.0],
        "E_bound": [float("nan"), 2.0, 2.0,   2.0,        2.0, 0.0],
        "E_scale": [1.0, 1.0,          1.0,   1.0,        100.0, 0.0],
    })  # fmt: skip
    got = theory.propagation_violations(prop)
    assert got.tolist() == [False, False, True, False, False, False]
    assert theory.propagation_violations(prop.assign(E_scale=1.0)).tolist() == [False, False, True, False, True, False]


def test_summary_counts_the_planted_violations():
    import pandas as pd

    bounds, expect = _planted_bounds_frame()
    bounds = bounds.assign(**{f"tight_{k}": np.nan for k in ("B1", "B2", "B3", "block", "logits")})
    prop = pd.DataFrame({"layer": 0, "sequence": 0, "block": [0, 1], "E": [1.0, 2.001], "rho": [np.nan, 2.001], "gain": [1.0, 2.001],
                         "E_bound": [np.nan, 2.0], "rho_bound": [np.nan, 2.0], "gain_bound": [1.0, 2.0], "E_scale": 1.0})  # fmt: skip
    s = theory.summarize(theory.TheoryTables(bounds, prop)).iloc[0]
    for col in ("B1", "B2", "B3", "D1", "first", "logits"):
        assert s[f"viol_{col}"] == 1, col
    assert s["viol_block"] == 2 and s["viol_step"] == 1 and s["n_tokens"] == len(expect)


def test_block_factor_and_logits_bound_match_the_doc_formulas(ref):
    """D3 and the logits bound from the table's own columns and weights read here:
    factor = 1 + ||W_out||_2 c_act ||W_in||_2 ||gamma2||_inf / s_min (sequential; 1 for parallel),
    block_bound = factor * measured, logits_bound = ||W_U||_2 ||gamma_f||_inf / s_min_final * final_measured,
    with spectral norms from torch.linalg.matrix_norm, c_act from the doc's table, and the s_min and
    difference columns against the two runs' caches."""
    arch, model, _, tokens = ref
    n = int(model.cfg.n_layers)
    tables = theory.theory_tables(model, tokens)
    f = theory.final_weights(model)
    logits_lip = float(torch.linalg.matrix_norm(f.W_U, ord=2)) * float(f.gamma_f.abs().max())
    sequential = {k for k in range(n) if not theory.block_weights(model, k).parallel}
    normal = _cache(model, tokens, {sites.resid_post(n - 1)} | {sites.resid_mid(k) for k in sequential})
    for layer in range(n):
        b = tables.bounds[tables.bounds["layer"] == layer]
        w = theory.block_weights(model, layer)
        bypassed = _cache(model, tokens, {sites.resid_post(n - 1)} | ({sites.resid_mid(layer)} if layer in sequential else set()), [AttentionBypass(layer)])
        if w.parallel:
            np.testing.assert_allclose(b["block_factor"], 1.0)
            np.testing.assert_allclose(b["block_bound"], b["measured"], rtol=1e-12)
        else:
            lip = (float(torch.linalg.matrix_norm(w.W_out, ord=2)) * C_ACT_DOC[w.act]
                   * float(torch.linalg.matrix_norm(w.W_in, ord=2)) * float(w.gamma2.abs().max()))  # fmt: skip
            r, r_b = normal[sites.resid_mid(layer)], bypassed[sites.resid_mid(layer)]
            np.testing.assert_allclose(b["s_min_ln2"], theory.segment_min_scale(r, r_b, w.eps2).numpy().ravel(), rtol=1e-6)
            np.testing.assert_allclose(b["block_factor"], 1.0 + lip / b["s_min_ln2"], rtol=1e-6)
            np.testing.assert_allclose(b["block_bound"], b["block_factor"] * b["measured"], rtol=1e-12, atol=1e-300)
        h, h_b = normal[sites.resid_post(n - 1)], bypassed[sites.resid_post(n - 1)]
        np.testing.assert_allclose(b["final_measured"], torch.linalg.vector_norm(h - h_b, dim=-1).numpy().ravel(), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b["s_min_final"], theory.segment_min_scale(h, h_b, f.eps_f).numpy().ravel(), rtol=1e-6)
        np.testing.assert_allclose(b["logits_bound"], logits_lip / b["s_min_final"] * b["final_measured"], rtol=1e-9, atol=1e-300)
    assert arch == "neox" or (tables.bounds["block_factor"] > 1).all()
    assert (tables.bounds["logits_bound"] > 0).any()


def test_propagation_ratios_and_summary_match_a_pandas_recomputation(ref):
    """rho, gain, rho_bound, gain_bound recomputed with pandas per (layer, sequence), E against the
    caches, E_bound against the per-token step bound, and the summary's medians and counts."""
    import pandas as pd

    _, model, _, tokens = ref
    n = int(model.cfg.n_layers)
    tables = theory.theory_tables(model, tokens)
    p = tables.propagation.sort_values(["layer", "sequence", "block"]).reset_index(drop=True)
    g = p.groupby(["layer", "sequence"])["E"]
    prev = g.shift(1)
    np.testing.assert_allclose(p["rho"], p["E"] / prev, rtol=1e-12)
    np.testing.assert_allclose(p["gain"], p["E"] / g.transform("first"), rtol=1e-12)
    np.testing.assert_allclose(p["rho_bound"], p["E_bound"] / prev, rtol=1e-12)
    assert p.loc[p["block"] == p["layer"], ["rho", "E_bound", "rho_bound"]].isna().all().all()
    cum = p.assign(r=p["rho_bound"].fillna(1.0)).groupby(["layer", "sequence"])["r"].cumprod()
    np.testing.assert_allclose(p["gain_bound"], cum, rtol=1e-12)
    # E and E_bound from the caches, per sequence (Frobenius norm over positions and d_model)
    names = {sites.resid_post(k) for k in range(n)} | {sites.ln1_out(k) for k in range(n)} | {sites.pattern(k) for k in range(n)}
    names |= {sites.resid_mid(k) for k in range(n)} if any(not theory.block_weights(model, k).parallel for k in range(n)) else set()
    normal = _cache(model, tokens, names)
    for layer in range(n):
        bypassed = _cache(model, tokens, names, [AttentionBypass(layer)])
        for k in range(layer, n):
            rows = p[(p["layer"] == layer) & (p["block"] == k)].sort_values("sequence")
            E = torch.linalg.matrix_norm(normal[sites.resid_post(k)] - bypassed[sites.resid_post(k)], ord="fro")
            np.testing.assert_allclose(rows["E"], E.numpy(), rtol=1e-6, atol=1e-9)
            if k > layer:
                w = theory.block_weights(model, k)
                step = theory.block_step_bound(w, theory.mlp_lipschitz(w), normal, bypassed, k)
                np.testing.assert_allclose(rows["E_bound"], step.norm(dim=-1).numpy(), rtol=1e-6)
    # the summary
    s = theory.summarize(tables).set_index("layer")
    later = p[p["block"] > p["layer"]].groupby("layer")
    last = p[p["block"] == n - 1].groupby("layer")
    want = pd.DataFrame({
        "rho_median": later["rho"].median(),
        "rho_bound_median": later["rho_bound"].median(),
        "gain_final_median": last["gain"].median(),
        "gain_bound_final_median": last["gain_bound"].median(),
    }).reindex(s.index)  # fmt: skip
    for col in want.columns:
        np.testing.assert_allclose(s[col], want[col], rtol=1e-12, err_msg=col)
    assert (s.loc[s.index < n - 1, "gain_final_median"] != 1.0).all()
    b = tables.bounds
    np.testing.assert_array_equal(s["n_tokens"], b.groupby("layer").size().reindex(s.index))
    for col in ("B1", "B2", "B3", "block", "logits"):
        np.testing.assert_allclose(s[f"tight_{col}_median"], b.groupby("layer")[f"tight_{col}"].median().reindex(s.index), rtol=1e-12)
        np.testing.assert_allclose(s[f"tight_{col}_max"], b.groupby("layer")[f"tight_{col}"].max().reindex(s.index), rtol=1e-12)
    assert (s["viol_step"] == 0).all()


# ---------------------------------------------------------------------------------------------
# Shipped organisms and the command line
# ---------------------------------------------------------------------------------------------


def _organism(arch: str):
    from interp.organism import organism_path

    try:
        return organism_path(arch)
    except InputError as err:
        pytest.skip(f"organism {arch!r} is not shipped yet: {err}")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_bounds_hold_on_every_block_of_the_shipped_organism(arch):
    model = load_model(_organism(arch))
    from interp.cli.theory import default_rows

    rows = torch.as_tensor(default_rows(model, 4, min(48, int(model.cfg.n_ctx))))
    tables = theory.theory_tables(model, rows)
    _assert_no_violations(tables)
    assert set(tables.bounds["layer"]) == set(range(model.cfg.n_layers))


def _cli(argv: list[str]) -> int:
    from interp.cli import theory as cli_theory

    parser = argparse.ArgumentParser(prog="interp")
    parser.add_argument("-v", "--verbose", action="store_true")
    cli_theory.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_bounds_csv(tmp_path):
    import pandas as pd

    folder = make_tiny_model(tmp_path / "m", "neo", n_layers=2, d_model=16, n_heads=2, n_ctx=32, window=3)
    rows = np.random.default_rng(0).integers(0, 500, size=(3, 10))
    np.save(tmp_path / "rows.npy", rows)
    out = tmp_path / "out"
    assert _cli(["theory", "--model", str(folder), "--data", str(tmp_path / "rows.npy"), "--prefix-len", "8", "--out", str(out), "--no-progress"]) == 0
    b = pd.read_csv(out / "bounds.csv")
    assert list(b.columns[:7]) == ["layer", "sequence", "token", "measured", "B1", "B2", "B3"]
    assert len(b) == 2 * 3 * 8 and (out / "propagation.csv").is_file() and (out / "summary.csv").is_file()
    assert _cli(["theory", "--model", str(folder), "--out", str(tmp_path / "out2"), "--n-rows", "2", "--seq-len", "9", "--no-progress"]) == 0
    assert len(pd.read_csv(tmp_path / "out2" / "bounds.csv")) == 2 * 2 * 9
    _figures([str(out), "--out", str(tmp_path / "fig")])
    assert (tmp_path / "fig" / "out.png").stat().st_size > 0 and (tmp_path / "fig" / "out.pdf").is_file()


def _figures(argv: list[str]) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "analyses" / "theory_figures.py"
    spec = importlib.util.spec_from_file_location("theory_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(argv) == 0


def test_cli_bad_input_raises_and_writes_nothing(tmp_path, capsys):
    folder = make_tiny_model(tmp_path / "m", "neox", n_layers=1, d_model=8, n_heads=2, n_ctx=16)
    np.save(tmp_path / "bad.npy", np.zeros((3,), dtype=np.int64))
    out = tmp_path / "out"
    with pytest.raises(InputError):
        _cli(["theory", "--model", str(folder), "--data", str(tmp_path / "bad.npy"), "--out", str(out)])
    from interp.cli import main

    assert main(["theory", "--model", str(folder), "--prefix-len", "0", "--out", str(out)]) == 2  # refused by the parser
    assert "--prefix-len" in capsys.readouterr().err
    with pytest.raises(InputError, match="longer than the model's context"):
        _cli(["theory", "--model", str(folder), "--seq-len", "17", "--out", str(out)])
    with pytest.raises(InputError, match="more than once"):
        _cli(["theory", "--model", str(folder), "--layers", "0,0", "--out", str(out)])
    with pytest.raises(InputError, match="longer"):
        _cli(["theory", "--model", str(folder), "--seq-len", "8", "--prefix-len", "9", "--out", str(out)])
    assert not out.exists()
