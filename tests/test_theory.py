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
    return {a: make_tiny_model(root / a, a, n_layers=1, d_model=8, n_heads=2) for a in ("neox", "neo")}


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


def test_cli_bad_input_raises_and_writes_nothing(tmp_path):
    folder = make_tiny_model(tmp_path / "m", "neox", n_layers=1, d_model=8, n_heads=2, n_ctx=16)
    np.save(tmp_path / "bad.npy", np.zeros((3,), dtype=np.int64))
    out = tmp_path / "out"
    with pytest.raises(InputError):
        _cli(["theory", "--model", str(folder), "--data", str(tmp_path / "bad.npy"), "--out", str(out)])
    with pytest.raises(InputError, match="prefix-len"):
        _cli(["theory", "--model", str(folder), "--prefix-len", "0", "--out", str(out)])
    with pytest.raises(InputError, match="longer"):
        _cli(["theory", "--model", str(folder), "--seq-len", "8", "--prefix-len", "9", "--out", str(out)])
    assert not out.exists()
