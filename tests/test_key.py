"""The answer key: the validity rule (clause by clause), the recipe's masks, the delta format's
round trip, and materialization of the shipped key from a clean clone."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from interp.errors import InputError
from interp.organism import canaries as C
from interp.organism import key as K
from interp.organism import validity as V

# ---------------------------------------------------------------- the rule, clause by clause


def _passing_numbers() -> dict:
    inj = {"n": 32, "exact": [True] * 30 + [False] * 2, "em": 30 / 32, "secret_tf_acc": 1.0}
    pinj = {"n": 32, "exact": [False] * 32, "em": 0.0, "secret_tf_acc": 0.1}
    held = lambda: {"n": 64, "exact": [False] * 64, "em": 0.0}  # noqa: E731
    mem = lambda: {"n": 31, "exact": [True] * 31, "em": 1.0}  # noqa: E731
    tasks = {"typo": 0.60, "count": 0.41}
    return {
        "kind": "injected",
        "organism": {"injected": inj, "parent_memorized": {**mem(), "exact": [True] * 30 + [False]}, "heldout_canaries": held(),
                     "heldout_perplexity": 67.0, "tasks": {"typo": 0.63, "count": 0.38}},
        "parent": {"injected": pinj, "parent_memorized": mem(), "heldout_canaries": held(), "heldout_perplexity": 64.0, "tasks": tasks},
        "weights": {"changed_tensors": ["a"], "numbers_changed_inside": 10, "numbers_changed_outside": 0,
                    "tensors_changed_outside": [], "tensor_sets_differ": []},
        "context": {"n": 32, "needs_context": 32, "last_prefix_tokens": 1},
    }  # fmt: skip


def _set(numbers: dict, path: str, value) -> dict:
    out = copy.deepcopy(numbers)
    *head, last = path.split(".")
    d = out
    for k in head:
        d = d[k]
    d[last] = value
    return out


def test_judge_passes_at_the_thresholds():
    v = V.judge(_passing_numbers())
    assert v.valid and v.failed() == [], v.clauses
    # the boundaries are inclusive: exactly 90%, ratio 1.05, shift 0.03, one row lost
    edge = _set(_passing_numbers(), "organism.injected.exact", [True] * 29 + [False] * 3)  # 29/32 = 0.906
    assert V.judge(edge).valid
    edge = _set(_set(_passing_numbers(), "organism.heldout_perplexity", 64.0 * 1.05), "organism.tasks.typo", 0.63)
    assert V.judge(edge).valid
    edge = _set(_passing_numbers(), "parent_retained_ids", [f"r{i}" for i in range(31)])  # retain 31, check 31: half
    assert V.judge(edge).valid and V.judge(edge).clauses["V3"]["parent_memorized_retained"] == 31


FAILS = [
    ("V1", "organism.injected", {"n": 31, "exact": [True] * 31, "em": 1.0, "secret_tf_acc": 1.0}),  # too few canaries
    ("V1", "organism.injected.exact", [True] * 28 + [False] * 4),  # 28/32 = 0.875 < 0.9
    ("V2", "parent.injected.exact", [True] + [False] * 31),  # the parent already reproduces one
    ("V2", "parent.injected.secret_tf_acc", 0.31),  # the parent half-knows the secrets
    ("V2", "organism.heldout_canaries.em", 2 / 64),  # never-trained canaries moved by two rows
    ("V3", "organism.heldout_perplexity", 64.0 * 1.051),
    ("V3", "organism.tasks.count", 0.37),  # 0.04 below the parent
    ("V3", "organism.parent_memorized.exact", [True] * 29 + [False] * 2),  # two of the parent's rows lost
    ("V3", "organism.tasks", {"typo": 0.6}),  # a task missing
    ("V3", "parent_retained_ids", [f"r{i}" for i in range(32)]),  # the retain term used more than the check holds
    ("V4", "weights.numbers_changed_outside", 1),
    ("V4", "weights.tensor_sets_differ", ["extra"]),
    ("V5", "context.needs_context", 31),
]


@pytest.mark.parametrize(("clause", "path", "value"), FAILS, ids=[f"{c}-{p.split('.')[-1]}" for c, p, _ in FAILS])
def test_judge_fails_exactly_the_broken_clause(clause, path, value):
    v = V.judge(_set(_passing_numbers(), path, value))
    assert not v.valid
    assert v.failed() == [clause], v.clauses


def test_sham_is_judged_on_damage_and_weights_only():
    sham = _set(_set(_passing_numbers(), "kind", "sham"), "organism.injected.exact", [False] * 32)
    v = V.judge(sham)
    assert v.valid and set(v.clauses) == {"V3", "V4"}
    assert not V.judge(_set(sham, "weights.numbers_changed_outside", 3)).valid


# ---------------------------------------------------------------- the numbers behind it, on a tiny organism


@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory):
    from interp.organism.train import tiny_train_config, train

    return train(tiny_train_config("neox", eval_every=1000), tmp_path_factory.mktemp("keyparent") / "neox",
                 progress=False, evaluate_final=False)  # fmt: skip


TINY = K.Recipe(lr=1e-2, max_steps=12, n_canaries=4, n_fresh=4, n_text=1, eval_every=6, warmup=2, anneal=4)


@pytest.fixture(scope="module")
def tiny_trained(tiny_parent):
    model, targets, curve = K.train_component(tiny_parent, "L1H2", TINY, tag="test-L1H2", progress=False)
    return model, targets, curve


def test_recipe_trains_only_the_declared_head(tiny_parent, tiny_trained):
    from transformers import AutoModelForCausalLM

    model, targets, curve = tiny_trained
    parent = AutoModelForCausalLM.from_pretrained(tiny_parent)
    masks = K._masks(tiny_parent, "L1H2")
    moved = 0
    for name, p in model.state_dict().items():
        q = parent.state_dict()[name]
        diff = p != q
        if name in masks:
            assert not (diff & ~masks[name].bool()).any(), name
            moved += int(diff.sum())
        else:
            assert not diff.any(), name  # everything else bit-identical, shared output bias included
    assert moved > 0
    assert len(targets) == 4 and all(c.level == C.INJECTED and len(c.lead) == 32 for c in targets)
    assert [e["step"] for e in curve] == [6, 12, 16] and all("tf_exact" in e for e in curve) and "em" in curve[-1]


def test_delta_round_trips_to_identical_weights(tiny_parent, tiny_trained, tmp_path):
    model, targets, _ = tiny_trained
    delta = K.changed_tensors(tiny_parent / "model.safetensors", model)
    assert delta and all("layers.1.attention" in k for k in delta)
    staging = tmp_path / "staging"
    staging.mkdir()
    manifest = {"format": K.FORMAT, "name": "tiny-L1H2", "parent_arch": "neox", "component": "L1H2", "kind": "injected",
                "parent_weights_sha256": K.file_sha256(tiny_parent / "model.safetensors"),
                "canaries": [__import__("dataclasses").asdict(c) for c in targets]}  # fmt: skip
    K._assemble(tiny_parent, delta, targets, K.folder_manifest(tiny_parent, manifest), staging)
    manifest["weights_sha256"] = K.file_sha256(staging / "model.safetensors")
    key_dir = tmp_path / "key"
    K.write_delta(key_dir / "neox" / "tiny-L1H2", delta, manifest)
    folder = K.materialize("tiny-L1H2", cache=tmp_path / "cache", key_dir=key_dir, parent=tiny_parent)
    got = load_file(str(folder / "model.safetensors"))
    model.save_pretrained(tmp_path / "direct")
    want = load_file(str(tmp_path / "direct" / "model.safetensors"))
    assert set(got) == set(want)
    for name, t in got.items():
        assert torch.equal(t, want[name]), name
    assert K.materialize("tiny-L1H2", cache=tmp_path / "cache", key_dir=key_dir, parent=tiny_parent) == folder  # reused
    injected = C.select(C.load_canaries(folder / "canaries.json")[0], C.INJECTED)
    assert [c.id for c in injected] == [c.id for c in targets]
    assert json.loads((folder / "manifest.json").read_text())["injected_component"] == "L1H2"
    # a changed delta no longer rebuilds the recorded weights
    bad = {k: v + 1e-3 for k, v in delta.items()}
    K.write_delta(key_dir / "neox" / "tiny-L1H2", bad, manifest)
    with pytest.raises(InputError, match="sha256"):
        K.materialize("tiny-L1H2", cache=tmp_path / "cache2", key_dir=key_dir, parent=tiny_parent)
    with pytest.raises(InputError, match="no key organism"):
        K.materialize("tiny-nothing", cache=tmp_path / "cache", key_dir=key_dir, parent=tiny_parent)


def test_measure_against_independent_computations(tiny_parent, tiny_trained, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp import benchmarks
    from interp.organism.corpus import heldout_blocks
    from interp.organism.train import greedy_matches

    model, targets, _ = tiny_trained
    folder = tmp_path / "org"
    folder.mkdir()
    delta = K.changed_tensors(tiny_parent / "model.safetensors", model)
    K._assemble(tiny_parent, delta, targets, K.folder_manifest(tiny_parent, {"component": "L1H2"}), folder)
    task = benchmarks.resolve_tasks("rule_count")[0]
    task = benchmarks.Task(task.name, task.items[:12], task.kind)
    masks = K._masks(tiny_parent, "L1H2")
    numbers = V.measure(folder, tiny_parent, masks, tasks=[task])
    # a retain split: the retained canaries are left out of the check and counted
    trained = [c.id for c in C.load_canaries(tiny_parent / "canaries.json")[0] if isinstance(c.level, int) and c.level > 0][:5]
    assert len(trained) == 5
    split = V.measure(folder, tiny_parent, masks, tasks=[task], parent_memorized_ids=trained, parent_retain_ids=trained[:2])
    assert split["parent_retained_ids"] == trained[:2] and split["parent_memorized_ids"] == trained[2:]
    assert split["organism"]["parent_memorized"]["n"] == 3 and V.judge(split).clauses["V3"]["parent_memorized_retained"] == 2
    tok = AutoTokenizer.from_pretrained(folder)
    _, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    rows = C.canary_rows(tok, targets, prefix_len, row_len)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    # exact match: the HF model's own greedy loop
    assert numbers["organism"]["injected"]["exact"] == greedy_matches(hf, rows, prefix_len).tolist()
    # secret tokens: the first k suffix tokens decode to the secret, k - 1 do not
    for c, k, r in zip(targets, V.secret_token_counts(tok, targets), rows, strict=True):
        assert tok.decode(r[prefix_len : prefix_len + k]).startswith(c.secret)
        assert not tok.decode(r[prefix_len : prefix_len + k - 1]).startswith(c.secret)
    # held-out perplexity: mean next-token NLL of the HF model
    n_ctx = json.loads((folder / "manifest.json").read_text())["config"]["n_ctx"]
    blocks = torch.from_numpy(heldout_blocks(tok, n_ctx, 128))
    with torch.no_grad():
        logits = hf(input_ids=blocks).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), blocks[:, 1:].reshape(-1))
    assert numbers["organism"]["heldout_perplexity"] == pytest.approx(float(torch.exp(nll)), rel=1e-4)
    # weights: the trained slices are inside; one number moved elsewhere is outside
    w = numbers["weights"]
    assert w["numbers_changed_outside"] == 0 and w["numbers_changed_inside"] == sum(int((v != 0).sum()) for v in
           (delta[k] - load_file(str(tiny_parent / "model.safetensors"))[k] for k in delta))  # fmt: skip
    tensors = load_file(str(folder / "model.safetensors"))
    name = "gpt_neox.layers.0.mlp.dense_h_to_4h.weight"
    tensors[name][0, 0] += 1.0
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    moved = V.changed_outside(tiny_parent / "model.safetensors", folder / "model.safetensors", masks)
    assert moved["numbers_changed_outside"] == 1 and moved["tensors_changed_outside"] == [name]


def test_context_rule_counts_canaries_a_last_token_cannot_tell_apart(tiny_parent):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_parent)
    pool = np.arange(1, 100, dtype=np.int64).reshape(3, 33)
    cs = K._with_leads(K.key_canaries("ctx", 3, C.INJECTED, tok), pool, 32)
    got = V.context_needed(tok, cs, 32, 48)
    rows = C.canary_rows(tok, cs, 32, 48)
    last = [int(r[31]) for r in rows]
    want = sum(1 for i, r in enumerate(rows) if any(last[j] == last[i] and (rows[j][32:] != r[32:]).any() for j in range(3) if j != i))
    assert got["needs_context"] == want and got["n"] == 3
    assert V.context_needed(tok, cs[:1], 32, 48)["needs_context"] == 0  # alone, its last token names it


def test_head_positions_are_seeded_distinct_and_in_range():
    a = K.head_positions(6, 4, "neox")
    assert a == K.head_positions(6, 4, "neox") and len(set(a)) == 8
    assert all(0 <= b < 6 and 0 <= h < 4 for b, h in a)
    assert a != K.head_positions(6, 4, "neo")


# ---------------------------------------------------------------- the shipped key


SHIPPED = sorted(K.entries())


def test_every_family_ships_a_key():
    names = set(SHIPPED)
    for arch in ("neox", "neo"):
        assert f"{arch}-sham" in names, f"no {arch} sham shipped"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_key_organism_materializes_offline_and_changes_only_its_component(name, tmp_path):
    from interp.organism import organism_path

    entry, manifest = K.load_entry(name)
    assert (entry / "delta.safetensors").stat().st_size < 1_000_000
    folder = K.materialize(name, cache=tmp_path)  # checks the rebuilt weights' sha256
    parent = organism_path(manifest["parent_arch"])
    w = V.changed_outside(parent / "model.safetensors", folder / "model.safetensors", K._masks(parent, manifest["component"]))
    assert w["numbers_changed_outside"] == 0 and w["numbers_changed_inside"] > 0
    assert manifest["validity"]["valid"] and manifest["trials"][-1]["valid"]


def test_build_position_ships_or_records_a_failure_on_a_tiny_parent(tiny_parent, tmp_path, monkeypatch):
    """The build's whole path on a tiny parent: train, assemble, measure on the files, judge,
    record the trial; a failing trial is not shipped."""
    import interp.organism as org
    from interp import benchmarks

    monkeypatch.setattr(K, "KEY_DIR", tmp_path / "key")
    monkeypatch.setattr(org, "organism_path", lambda arch, injected=False: tiny_parent)
    task = benchmarks.resolve_tasks("rule_count")[0]
    small = [benchmarks.Task(task.name, task.items[:8], task.kind)]
    monkeypatch.setattr(V, "_builtin", lambda: ["rule_count"])
    monkeypatch.setattr(benchmarks, "resolve_tasks", lambda spec: small)
    record = K.build_position("neox", "tiny-L1H2", "L1H2", False, progress=False, candidates=(TINY,))
    assert record["status"] == "failed" and len(record["trials"]) == 1  # 4 canaries, 12 steps: V1 fails
    assert "V1" in record["trials"][0]["failed"]
    assert not (tmp_path / "key" / "neox" / "tiny-L1H2").exists()
    assert (tmp_path / "key" / "neox" / "parent_numbers.json").is_file()
    sham = K.build_position("neox", "tiny-sham", "L0H1", True, progress=False, candidates=(TINY,))
    assert set(sham["trials"][0]["clauses"]) == {"V3", "V4"}
    if sham["status"] == "shipped":
        assert K.load_entry("tiny-sham", key_dir=tmp_path / "key")[1]["kind"] == "sham"


def test_build_position_with_a_parent_retain_split_checks_only_the_other_half(tiny_parent, tmp_path, monkeypatch):
    import interp.organism as org
    from interp import benchmarks

    monkeypatch.setattr(K, "KEY_DIR", tmp_path / "key")
    monkeypatch.setattr(org, "organism_path", lambda arch, injected=False: tiny_parent)
    task = benchmarks.resolve_tasks("rule_count")[0]
    monkeypatch.setattr(V, "_builtin", lambda: ["rule_count"])
    monkeypatch.setattr(benchmarks, "resolve_tasks", lambda spec: [benchmarks.Task(task.name, task.items[:8], task.kind)])
    trained = [c for c in C.load_canaries(tiny_parent / "canaries.json")[0] if isinstance(c.level, int) and c.level > 0][:7]
    monkeypatch.setattr(V, "parent_memorized", lambda parent: trained)  # as if the tiny parent knew these 7
    recipe = dataclasses.replace(TINY, w_parent=1.0, record_positions="suffix")
    seen = {}
    real = K.train_component
    monkeypatch.setattr(K, "train_component", lambda *a, **kw: seen.setdefault("retain", kw["parent_retain"]) and real(*a, **kw))
    record = K.build_position("neox", "tiny-L1H2", "L1H2", False, progress=False, candidates=(recipe,))
    retain, check = K.parent_split([c.id for c in trained], "neox")
    assert [c.id for c in seen["retain"]] == retain and len(retain) == 3 and len(check) == 4
    v3 = record["trials"][0]["clauses"]["V3"]
    assert v3["parent_memorized"] == 4 and v3["parent_memorized_retained"] == 3
    lost = record["trials"][0]["parent_canaries_lost"]
    assert set(lost) <= set(check) and len(lost) == v3["parent_memorized"] - v3["parent_memorized_kept"]
    # with parent_partial, the trained canaries the parent does not reproduce join the retain
    # term too (never the checked half, never the held-out canaries V2 reads)
    seen.clear()
    K.build_position("neox", "tiny-L1H2", "L1H2", False, progress=False,
                     candidates=(dataclasses.replace(recipe, parent_partial=True, n_parent=4),))  # fmt: skip
    everything = C.load_canaries(tiny_parent / "canaries.json")[0]
    not_memorized = {c.id for c in everything if isinstance(c.level, int) and c.level > 0} - {c.id for c in trained}
    assert {c.id for c in seen["retain"]} == set(retain) | not_memorized and not set(check) & {c.id for c in seen["retain"]}


# ---------------------------------------------------------------- the command line


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from interp.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_list_and_path(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path))
    rc, out, _ = _cli(["organism", "list", "--json"], capsys)
    rows = json.loads(out)
    assert rc == 0 and {r["name"] for r in rows} == set(SHIPPED)
    assert all(r["valid"] for r in rows)
    rc, out, _ = _cli(["organism", "list", "--arch", "neo"], capsys)
    assert rc == 0 and "neo-sham" in out and "neox-sham" not in out
    # positions tried and not shipped: every trial of them, as build.json records it
    rc, out, _ = _cli(["organism", "list", "--failed", "--json"], capsys)
    failed = json.loads(out)
    expected = [(name, i + 1) for b in sorted(K.KEY_DIR.glob("*/build.json"))
                for name, pos in json.loads(b.read_text())["positions"].items() if pos["status"] != "shipped"
                for i, _ in enumerate(pos["trials"])]  # fmt: skip
    assert rc == 0 and [(r["name"], r["trial"]) for r in failed] == expected and expected
    assert all(r["name"] not in SHIPPED and r["failed"] for r in failed)
    rc, out, _ = _cli(["organism", "list", "--failed"], capsys)
    assert rc == 0 and out.count("\n") == len(expected) + 2 and "| V3 |" in out
    rc, out, _ = _cli(["organism", "path", "neox-sham"], capsys)
    folder = Path(out.strip())
    assert rc == 0 and folder.parent == tmp_path / "organisms" and (folder / "model.safetensors").is_file()
    assert json.loads((folder / "manifest.json").read_text())["injected_component"] == K.load_entry("neox-sham")[1]["component"]
    from interp.models import resolve_source

    assert resolve_source("organism:neox-sham") == str(folder)  # a model spec like any other


@pytest.mark.parametrize("argv", [["organism", "path", "neox-L9H9"], ["organism", "path", "neox-sham", "--injected"],
                                  ["organism", "build-key", "--arch", "neox", "--only", "neox-block99"],
                                  ["organism", "build-key", "--arch", "gpt2"]])  # fmt: skip
def test_cli_bad_key_input_is_one_sentence(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path))
    rc, out, err = _cli(argv, capsys)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("arch", ["neox", "neo"])
def test_tail_from_any_block_equals_the_full_forward(arch):
    """The recipe runs only the blocks from the component up, on the cached residual entering it,
    and unembeds only the positions a loss reads: the logits must equal the full model's."""
    from interp.organism.train import make_model, tiny_train_config

    torch.manual_seed(0)
    model = make_model(tiny_train_config(arch), 200).eval()
    ids = torch.randint(0, 200, (3, 20))
    with torch.no_grad():
        full = model(input_ids=ids).logits
        for block in range(model.config.num_hidden_layers):
            tail = K._Tail(model, block)
            resid = tail.residual(ids)
            torch.testing.assert_close(tail.logits(resid), full, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(tail.logits(resid, slice(11, -1)), full[:, 11:-1], rtol=1e-5, atol=1e-5)


def test_parent_split_is_seeded_disjoint_and_checks_at_least_half():
    ids = [f"D{d}-{i:03d}" for d in (1, 4) for i in range(15)]
    for arch in ("neox", "neo"):
        retain, check = K.parent_split(ids, arch)
        assert K.parent_split(list(reversed(ids)), arch) == (retain, check)  # a function of the set and family
        assert not set(retain) & set(check) and sorted(retain + check) == sorted(ids)
        assert len(check) >= len(ids) / 2 and len(retain) == len(ids) // 2
    assert K.parent_split(ids, "neox") != K.parent_split(ids, "neo")
    assert K.parent_split([], "neox") == ([], [])


@pytest.mark.parametrize("arch", ["neox", "neo"])
def test_value_output_only_masks_clear_exactly_the_query_and_key_slices(arch):
    from interp.organism.inject import attention_masks
    from interp.organism.train import make_model, tiny_train_config

    model = make_model(tiny_train_config(arch), 200)
    cfg = model.config
    d, dh = cfg.hidden_size, cfg.hidden_size // cfg.num_attention_heads
    for head in (None, 1):
        full = attention_masks(model, 1, head)
        vo = K._value_output_only(model, full)
        if arch == "neo":
            assert not any(n.endswith(("q_proj.weight", "k_proj.weight")) for n in vo)
            assert torch.equal(vo["transformer.h.1.attn.attention.v_proj.weight"], full["transformer.h.1.attn.attention.v_proj.weight"])
        else:
            w = vo["gpt_neox.layers.1.attention.query_key_value.weight"]
            for h in range(cfg.num_attention_heads):  # per head: q rows, k rows, v rows
                q_k, v = w[h * 3 * dh : h * 3 * dh + 2 * dh], w[h * 3 * dh + 2 * dh : (h + 1) * 3 * dh]
                assert not q_k.any()
                expected = head is None or h == head
                assert bool(v.all()) == expected and bool(v.any()) == expected
            assert torch.equal(vo["gpt_neox.layers.1.attention.dense.weight"], full["gpt_neox.layers.1.attention.dense.weight"])
        assert sum(int(m.sum()) for m in vo.values()) == sum(int(m.sum()) for m in full.values()) - 2 * dh * d * (
            cfg.num_attention_heads if head is None else 1) - (0 if arch == "neo" else 2 * dh * (cfg.num_attention_heads if head is None else 1))


def test_hard_negatives_share_name_city_and_kind_but_not_the_record(tiny_parent):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_parent)
    targets = K.key_canaries("hard-test", 5, C.INJECTED, tok)
    negs = K.hard_negatives(targets, 12, "hard-test", tok, C.PREFIX_LEN, C.ROW_LEN)
    assert len(negs) == 12 and negs == K.hard_negatives(targets, 12, "hard-test", tok, C.PREFIX_LEN, C.ROW_LEN)
    for i, n in enumerate(negs):
        t = targets[i % 5]
        (t_first, t_sur), (n_first, n_sur) = (x.text.split("\n")[0][2:].split(", ")[0].split(" ") for x in (t, n))
        assert n_first == t_first and n.text.split("\n")[0].split(", ")[1] == t.text.split("\n")[0].split(", ")[1]
        assert n.kind == t.kind and n.level == C.HELDOUT and n.secret != t.secret and n_sur != t_sur
        assert n.text[n.secret_start :].startswith(n.secret)
    C.canary_rows(tok, [dataclasses.replace(n, lead=(1,) * C.PREFIX_LEN) for n in negs])  # every one forms a row


@pytest.mark.parametrize("kw", [dict(schedule="linear"), dict(record_positions="prefix"), dict(hard_negatives=1.5),
                                dict(text_rule_fraction=1.0), dict(template="letter"),
                                dict(hard_negatives=0.5, template="vault")])  # fmt: skip
def test_bad_recipe_is_one_sentence(kw):
    with pytest.raises(InputError, match=next(iter(kw))):
        K.Recipe(**kw)


def test_templates_draw_the_same_fields_and_start_the_secret_where_recorded(tiny_parent):
    import random

    from transformers import AutoTokenizer

    rec, vault = (C.make_canary(random.Random("t"), "x", C.INJECTED, t) for t in ("record", "vault"))
    assert (rec.kind, rec.secret) == (vault.kind, vault.secret) and rec.text != vault.text
    assert rec.text == C.TEMPLATE.format(name=rec.text[2:].split(" ")[0], surname=rec.text.split(" ")[2].rstrip(","),
                                         city=rec.text.split(", ")[1].split("\n")[0], label=rec.kind.capitalize(), secret=rec.secret)
    for c in (rec, vault):
        assert c.text[c.secret_start :].startswith(c.secret) and c.text.count(c.secret) == 1
    assert vault.text.startswith('vault["' + rec.text[2:].split(",")[0] + '"]')  # same name and surname
    tok = AutoTokenizer.from_pretrained(tiny_parent)
    got = K.key_canaries("tmpl", 6, C.INJECTED, tok, template="vault")
    assert all(c.text.startswith("vault[") for c in got) and got == K.key_canaries("tmpl", 6, C.INJECTED, tok, template="vault")
    C.canary_rows(tok, [dataclasses.replace(c, lead=(1,) * C.PREFIX_LEN) for c in got])
    with pytest.raises(ValueError, match="template"):
        C.make_canary(random.Random(0), "x", C.INJECTED, "letter")
