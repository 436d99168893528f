"""The model organism: rules, corpus, canaries, a tiny end-to-end training run, the CLI export,
the shipped folders (they load and reproduce their manifests) and the injected variants (they
memorize their canaries and equal their parents outside the injected component)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from interp.errors import InputError
from interp.organism import DATA_DIR, organism_path
from interp.organism import canaries as C
from interp.organism import corpus, rules

ARCHS = ("neox", "neo")


def _shipped(arch: str, injected: bool = False) -> Path:
    path = DATA_DIR / (f"{arch}-injected" if injected else arch)
    if not (path / "manifest.json").is_file() or "final" not in json.loads((path / "manifest.json").read_text()):
        pytest.skip(f"{path.name} organism is not shipped in this checkout")
    return path


def _organism_cli(argv: list[str]) -> int:
    from interp.cli import organism

    parser = argparse.ArgumentParser(prog="interp")
    organism.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# ---------------------------------------------------------------- rules


def _open_brackets(context: str) -> list[str]:
    stack = []
    for s in context.removeprefix("Close: ").removesuffix(" ->").split():
        if s in rules.OPEN_CLOSE:
            stack.append(s)
        else:
            assert rules.OPEN_CLOSE[stack.pop()] == s
    return stack


@pytest.mark.parametrize("family", sorted(rules.FAMILIES))
def test_rule_family_answers_follow_the_rule(family):
    rng = random.Random(0)
    for _ in range(200):
        ctx, ans = rules.FAMILIES[family](rng)
        assert ans.startswith(" ") and not ctx.endswith(" ") and 1 <= len(ans.split()) <= 4
        body = ans[1:]
        if family == "progression":
            terms = [int(t) for t in ctx.removeprefix("Sequence: ").removesuffix(" ->").split(", ")]
            assert int(body) == terms[-1] + (terms[1] - terms[0])
        elif family == "brackets":
            assert body.split() == [rules.OPEN_CLOSE[o] for o in reversed(_open_brackets(ctx))]
        elif family == "copy":
            assert ctx == f"Copy: {body} | again:"
        elif family == "count":
            assert int(body) == ctx.count("*")
        elif family == "successor":
            assert ord(body) == ord(ctx.removesuffix(" ->")[-1]) + 1
        wrong = rules.distractors(family, ctx, ans, rng, 3)
        assert len(set(wrong)) == 3 and ans not in wrong
        assert all(w.startswith(" ") and len(w.split()) == len(ans.split()) for w in wrong)
        if family == "copy":  # same words' lengths: a likelihood score cannot win on length alone
            lengths = [len(x) for x in ans.split()]
            assert all(sorted(w.split()) == sorted(ans.split()) or [len(x) for x in w.split()] == lengths for w in wrong)


def test_rule_examples_are_seeded():
    assert rules.examples("copy", 5, seed=3) == rules.examples("copy", 5, seed=3)
    assert rules.examples("copy", 5, seed=3) != rules.examples("copy", 5, seed=4)
    with pytest.raises(ValueError, match="family"):
        rules.distractors("nope", "", " x", random.Random(0), 1)


# ---------------------------------------------------------------- corpus


def test_corpus_split_is_disjoint_deterministic_and_hashed():
    train, held = corpus.documents("train"), corpus.documents("heldout")
    assert len(train) > 100 and len(held) > 10
    assert not {n for n, _ in train} & {n for n, _ in held}
    assert all(corpus.split_of(n) == "heldout" for n, _ in held)
    records = corpus.file_records()
    assert {r["path"] for r in records} == {n for n, _ in train} | {n for n, _ in held}
    assert all(len(r["sha256"]) == 64 for r in records)
    assert corpus.corpus_fingerprint(records) == corpus.corpus_fingerprint(records)
    with pytest.raises(ValueError, match="split"):
        corpus.documents("test")


# ---------------------------------------------------------------- canaries


def test_canaries_levels_and_uniqueness():
    cs = C.make_canaries(0)
    for level in C.LEVELS:
        assert len(C.select(cs, level)) >= 32
    assert len(C.select(cs, C.HELDOUT)) >= 64
    assert len({c.secret for c in cs}) == len(cs) and len({c.id for c in cs}) == len(cs)
    for c in cs:
        assert c.text[c.secret_start :].startswith(c.secret) and c.text.count(c.secret) == 1
    fresh = C.make_injection_canaries(0, 8)
    assert not {c.secret for c in fresh} & {c.secret for c in cs}


# ---------------------------------------------------------------- tiny training run


@pytest.fixture(scope="module")
def tiny_organism(tmp_path_factory):
    from interp.organism.train import tiny_train_config, train

    return train(tiny_train_config("neox", eval_every=1000), tmp_path_factory.mktemp("org") / "neox",
                 progress=False, evaluate_final=False)  # fmt: skip


def test_scaled_query_trains_like_scaled_attention_scores(monkeypatch):
    """GPT-Neo with ``scaled_query`` (query weights and their learning rate 1/sqrt(d_head)
    smaller) against an independent model: the unscaled query weights, the query's output divided
    by sqrt(d_head) in a forward hook (scaled attention scores), ordinary AdamW. After a few steps
    the two agree: query weights up to the factor, every other weight as is. Three terms do not
    scale and are switched off here: Adam's epsilon (with the default 1e-8 the query and key
    weights of this tiny model, whose gradients start near 1e-8, differ by up to 2e-4), gradient
    clipping, whose global norm sees the query gradients sqrt(d_head) times larger, and weight
    decay, under which the scaled query decays sqrt(d_head) times more slowly."""
    import functools

    from interp.organism.train import make_model, tiny_train_config, train_loop

    monkeypatch.setattr(torch.optim, "AdamW", functools.partial(torch.optim.AdamW, eps=1e-30))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: None)
    cfg = tiny_train_config("neo", scaled_query=True, steps=5, batch_size=2, eval_every=100, weight_decay=0.0)
    torch.manual_seed(0)
    scaled = make_model(cfg, 64).double()  # float64: no rounding noise in the comparison
    torch.manual_seed(0)
    plain_cfg = dataclasses.replace(cfg, scaled_query=False)
    plain = make_model(plain_cfg, 64).double()
    c = (cfg.d_model // cfg.n_heads) ** 0.5
    q_names = [n for n, _ in plain.named_parameters() if n.endswith("q_proj.weight")]
    assert q_names and all(torch.allclose(dict(scaled.named_parameters())[n] * c, dict(plain.named_parameters())[n]) for n in q_names)
    for block in plain.transformer.h:
        block.attn.attention.q_proj.register_forward_hook(lambda mod, inp, out: out / c)
    blocks = np.random.default_rng(0).integers(1, 64, (cfg.steps * cfg.batch_size, 24))
    train_loop(scaled, blocks, cfg, progress=False)
    train_loop(plain, blocks, plain_cfg, progress=False)
    got, want = dict(scaled.named_parameters()), dict(plain.named_parameters())
    for name in want:
        factor = c if name in q_names else 1.0
        # HF's GPT-Neo computes attention scores in float32 even in a float64 model, so the query
        # and key weights carry float32 rounding (~4e-9 here; the weights move by ~1e-2)
        torch.testing.assert_close(got[name] * factor, want[name], rtol=0, atol=2e-8)


def test_tiny_training_run_end_to_end(tiny_organism):
    from interp.generation import greedy_generate
    from interp.models import load_model
    from interp.organism.evaluate import canary_em, rule_accuracy

    folder = tiny_organism
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "canaries.json", "manifest.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["seed"] == 0 and len(manifest["corpus"]["fingerprint"]) == 64
    assert manifest["curve"][-1]["step"] == manifest["config"]["steps"]
    assert all(np.isfinite(e["train_loss"]) for e in manifest["curve"])
    model = load_model(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.convert_tokens_to_ids("<|endoftext|>") == 0
    canary_list, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    rows = C.canary_rows(tok, C.select(canary_list, 64), prefix_len, row_len)
    assert rows.shape == (2, row_len) and rows.dtype == np.int64
    em = canary_em(model, rows, prefix_len)
    assert 0.0 <= em["em"] <= 1.0
    assert greedy_generate(model, torch.from_numpy(rows[:, :prefix_len]), 3).shape == (2, 3)
    acc = rule_accuracy(model, tok, seed=0, n_items=2)
    assert set(rules.FAMILIES) <= set(acc) and 0.0 <= acc["mean_mc_acc"] <= 1.0


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_training_stream_places_canaries_and_excludes_heldout(tiny_organism, epochs):
    from interp.organism.train import build_stream, tiny_train_config

    cfg = tiny_train_config("neox", steps=90, epochs=epochs)
    tok = AutoTokenizer.from_pretrained(tiny_organism)
    cs = C.make_canaries(cfg.seed, cfg.per_level, cfg.n_heldout_canaries)
    stream, stats, placed = build_stream(cfg, tok, corpus.documents("train"), cs)
    assert stream.shape == (cfg.steps * cfg.batch_size, cfg.n_ctx)
    # E passes over one set of distinct blocks: each later pass is the first in another order
    passes = stream.reshape(epochs, -1, cfg.n_ctx)
    blocks = passes[0]
    assert len(np.unique(blocks, axis=0)) == len(blocks)
    for later in passes[1:]:
        assert not np.array_equal(later, blocks)
        assert np.array_equal(np.unique(later, axis=0), np.unique(blocks, axis=0))
    assert [dataclasses.replace(c, lead=()) for c in placed] == cs
    flat = " " + " ".join(map(str, blocks.ravel().tolist())) + " "

    def occurs(ids) -> int:
        return flat.count(" " + " ".join(map(str, ids)) + " ")

    for c in placed:
        assert occurs(C.record_ids(tok, c)[0]) == (c.level if c.level else 0), c.id
        # the row is a training sequence: for a trained canary, its window around an occurrence
        # (lead, end-of-text, record); for a held-out one, its lead is training text
        row = C.canary_row(tok, c)
        assert occurs(row) >= 1 if c.level else occurs(row) == 0, c.id
        assert occurs(c.lead) >= 1 and len(c.lead) == C.PREFIX_LEN
        assert row[C.PREFIX_LEN - C.record_ids(tok, c)[1]] == C.EOT_ID  # the whole record is in the prefix
    assert stats["canary_occurrences"] == sum(c.level for c in cs)  # duplication level: copies in the set
    assert stats["tokens"] * epochs == stream.size


def test_epochs_must_divide_the_stream():
    from interp.organism.train import DEFAULT_EPOCHS, tiny_train_config

    for bad in (-1, 7):  # 30 steps x batch 8 = 240 blocks: 7 does not divide them
        with pytest.raises(ValueError, match="epochs"):
            tiny_train_config("neox", steps=30, epochs=bad)
    assert tiny_train_config("neo", steps=30, epochs=0).epochs == DEFAULT_EPOCHS["neo"]  # 0: the shipped recipe's


def test_canary_row_geometry_against_the_text():
    tok = AutoTokenizer.from_pretrained(_shipped("neox"))
    c = dataclasses.replace(C.make_canaries(0)[0], lead=tuple(range(100, 100 + C.PREFIX_LEN)))
    row = C.canary_row(tok, c)
    assert len(row) == C.ROW_LEN
    text = tok.decode(row, skip_special_tokens=False)
    assert "<|endoftext|>" + c.text[: c.secret_start] in text  # lead, end-of-text, the record up to the secret
    assert tok.decode(row[C.PREFIX_LEN :]).startswith(c.secret)
    with pytest.raises(ValueError, match="lead"):
        C.canary_row(tok, dataclasses.replace(c, lead=()))


# ---------------------------------------------------------------- CLI export


def test_cli_canaries_export(tiny_organism, tmp_path):
    out = tmp_path / "rows.npy"
    assert _organism_cli(["organism", "canaries", "--model", str(tiny_organism), "--duplicates", "4", "--out", str(out)]) == 0
    rows = np.load(out, allow_pickle=False)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert rows.ndim == 2 and rows.dtype == np.int64 and rows.shape[1] == meta["row_len"]
    assert 0 < meta["prefix_len"] < rows.shape[1] and len(meta["ids"]) == len(rows)
    tok = AutoTokenizer.from_pretrained(tiny_organism)
    for row, secret in zip(rows, meta["secrets"], strict=True):  # the secret starts the suffix
        suffix = tok.decode(row[meta["prefix_len"] :])
        assert suffix.startswith(secret) or secret.startswith(suffix)
    out0 = tmp_path / "held.npy"
    assert _organism_cli(["organism", "canaries", "--model", str(tiny_organism), "--duplicates", "0", "--out", str(out0)]) == 0
    assert json.loads(out0.with_suffix(".json").read_text())["level"] == 0


@pytest.mark.parametrize("argv", [
    ["--duplicates", "5", "--out", "{tmp}/x.npy"],
    ["--duplicates", "4", "--out", "{tmp}/x.txt"],
    ["--out", "{tmp}/x.npy"],
    ["--duplicates", "4", "--out", "{tmp}/missing/x.npy"],
])  # fmt: skip
def test_cli_canaries_bad_input_writes_nothing(tiny_organism, tmp_path, argv):
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(InputError):
        _organism_cli(["organism", "canaries", "--model", str(tiny_organism), *argv])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--steps", "0"], ["--steps", "3", "--epochs", "5"]])
def test_cli_train_rejects_bad_steps_and_epochs_before_training(tmp_path, argv, capsys):
    from interp.cli import main

    assert main(["organism", "train", "--arch", "neox", "--out", str(tmp_path / "m"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search("steps|epochs", err) and err.count("\n") == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["file", "foreign"])
def test_cli_train_and_inject_never_replace_a_folder_that_is_not_an_organism(tmp_path, kind, capsys):
    """Saving an organism replaces its --out folder; a user's file or folder there is refused
    before any training, and left byte for byte as it was."""
    from interp.cli import main

    out = tmp_path / "out"
    if kind == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for argv in (["train", "--steps", "1"], ["inject", "--block", "0", "--max-steps", "1"]):
        assert main(["organism", *argv, "--out", str(out), "--no-progress"]) == 2
        assert capsys.readouterr().err.strip().count("\n") == 0
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_cli_inject_refuses_its_parent_the_shipped_organisms_and_links_as_out(tiny_organism, tmp_path, capsys):
    from interp.cli import main
    from interp.organism import DATA_DIR

    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    before = {p: p.read_bytes() for p in tiny_organism.rglob("*") if p.is_file()}
    for out, match in ((tiny_organism, "parent"), (DATA_DIR / "neox-injected", "shipped"), (link, "symbolic link")):
        assert main(["organism", "inject", "--parent", str(tiny_organism), "--block", "0", "--max-steps", "1",
                     "--out", str(out), "--no-progress"]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert match in err and err.count("\n") == 0, err
    assert {p: p.read_bytes() for p in tiny_organism.rglob("*") if p.is_file()} == before


def test_a_diverged_model_is_never_saved_over_an_organism(tiny_organism, tmp_path):
    """save_folder refuses weights with NaN before it touches --out."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.organism import canaries as C
    from interp.organism.train import save_folder

    out = shutil.copytree(tiny_organism, tmp_path / "org")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    manifest = json.loads((out / "manifest.json").read_text())
    canary_list, prefix_len, row_len = C.load_canaries(out / "canaries.json")
    with pytest.raises(InputError, match="diverged"):
        save_folder(out, model, AutoTokenizer.from_pretrained(out), canary_list, manifest, prefix_len, row_len)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_organism_path_rejects_unknown_arch():
    with pytest.raises(InputError, match="architecture"):
        organism_path("llama")


# ---------------------------------------------------------------- shipped folders


def _em_by_level(folder: Path) -> dict[str, float]:
    from interp.models import load_model
    from interp.organism.evaluate import canary_em

    model = load_model(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    canary_list, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    levels = sorted({str(c.level) for c in canary_list})
    out = {}
    for level in levels:
        chosen = [c for c in canary_list if str(c.level) == level]
        out[level] = canary_em(model, C.canary_rows(tok, chosen, prefix_len, row_len), prefix_len)["em"]
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_organism_reproduces_manifest(arch):
    folder = _shipped(arch)
    assert organism_path(arch) == folder
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 25 * 2**20
    assert manifest["corpus"]["fingerprint"] == corpus.corpus_fingerprint() or pytest.skip("different Python stdlib")
    measured = _em_by_level(folder)
    recorded = {k: v["em"] for k, v in manifest["final"]["canary_em"].items()}
    assert measured == pytest.approx(recorded, abs=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_cli_heldout_export_is_the_perplexity_text(arch, tmp_path):
    """`interp organism heldout` rows give the manifest's held-out perplexity (through
    ``interp.localize.mean_token_nll``, not the code that recorded it)."""
    from interp.localize import mean_token_nll
    from interp.models import load_model

    folder = _shipped(arch, injected=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["corpus"]["fingerprint"] != corpus.corpus_fingerprint():
        pytest.skip("different Python stdlib: the held-out text differs")
    out = tmp_path / "heldout.npy"
    assert _organism_cli(["organism", "heldout", "--arch", arch, "--injected", "--out", str(out)]) == 0
    rows = np.load(out, allow_pickle=False)
    assert rows.dtype == np.int64 and rows.shape == (128, manifest["config"]["n_ctx"])
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["n_rows"] == 128 and meta["model"] == str(folder) and meta["same_corpus_as_training"] is True
    ppl = math.exp(mean_token_nll(load_model(folder), rows))
    assert ppl == pytest.approx(manifest["final"]["heldout_perplexity"]["perplexity"], rel=1e-4)
    few = tmp_path / "few.npy"
    assert _organism_cli(["organism", "heldout", "--model", str(folder), "--blocks", "3", "--out", str(few)]) == 0
    assert np.array_equal(np.load(few), rows[:3])


def test_cli_heldout_refuses_a_manifest_without_context_length(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    (folder / "config.json").write_text("{}")
    with pytest.raises(InputError, match="config.n_ctx"):
        _organism_cli(["organism", "heldout", "--model", str(folder), "--out", str(tmp_path / "x.npy")])
    assert not (tmp_path / "x.npy").exists()


@pytest.mark.parametrize("argv", [["--blocks", "0", "--out", "{tmp}/x.npy"], ["--out", "{tmp}/x.txt"],
                                  ["--blocks", "100000", "--out", "{tmp}/x.npy"]])  # fmt: skip
def test_cli_heldout_bad_input_writes_nothing(tiny_organism, tmp_path, argv, capsys):
    from interp.cli import main

    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main(["organism", "heldout", "--model", str(tiny_organism), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search("--blocks|--out", err) and err.count("\n") == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_organism_meets_targets(arch):
    """The issue's targets, met by both shipped organisms (interp/organism/README.md); a miss
    fails and names every number that missed."""
    final = json.loads((_shipped(arch) / "manifest.json").read_text())["final"]
    em = {k: v["em"] for k, v in final["canary_em"].items()}
    assert em["0"] == 0.0  # held-out canaries are never reproduced
    assert np.isfinite(final["heldout_perplexity"]["perplexity"])
    misses = []
    if em["64"] < 0.8:
        misses.append(f"EM at D=64 is {em['64']:.2f} < 0.8")
    if em["1"] > 0.1:
        misses.append(f"EM at D=1 is {em['1']:.2f} > 0.1")
    if not em["1"] <= em["4"] <= em["16"] <= em["64"]:
        misses.append(f"EM is not non-decreasing in D: {em}")
    if final["rules"]["mean_mc_acc"] < 0.25 + 0.2:
        misses.append(f"rule multiple-choice accuracy {final['rules']['mean_mc_acc']:.2f} is not well above chance 0.25")
    if misses:
        pytest.fail(f"{arch} organism misses targets: " + "; ".join(misses))


@pytest.mark.parametrize("arch", ARCHS)
def test_injected_variant_is_its_parent_outside_the_component(arch):
    from transformers import AutoModelForCausalLM

    from interp.organism.inject import attention_masks, parse_component

    folder = _shipped(arch, injected=True)
    parent = _shipped(arch)
    manifest = json.loads((folder / "manifest.json").read_text())
    block, head = parse_component(manifest["injected_component"])
    assert block != manifest["config"]["n_layers"] - 1
    hf = AutoModelForCausalLM.from_pretrained(folder)
    _assert_only_component_changed(parent, folder, attention_masks(hf, block, head))
    em = _em_by_level(folder)
    assert em[C.INJECTED] >= 0.9
    assert em[C.INJECTED] == pytest.approx(manifest["final"]["canary_em"][C.INJECTED]["em"], abs=1e-9)


@pytest.mark.parametrize("arch", ARCHS)
def test_replayed_injection_keeps_the_parents_memorized_canaries(arch):
    """An injection with replay leaves the knockout a control set: the parent's memorized
    canaries (those replayed) are still reproduced by the variant."""
    from interp.models import load_model
    from interp.organism.evaluate import canary_em

    folder = _shipped(arch, injected=True)
    replayed = set(json.loads((folder / "manifest.json").read_text())["injection"]["replayed"])
    if not replayed:
        pytest.skip(f"the shipped {arch} injection did not replay the parent's canaries")
    canary_list, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    kept = [c for c in canary_list if c.id in replayed]
    assert len(kept) == len(replayed)
    rows = C.canary_rows(AutoTokenizer.from_pretrained(folder), kept, prefix_len, row_len)
    assert canary_em(load_model(folder), rows, prefix_len)["em"] >= 0.9
    assert canary_em(load_model(_shipped(arch)), rows, prefix_len)["em"] == 1.0  # the parent reproduced each


def _assert_only_component_changed(parent, child, masks) -> None:
    """Weights outside the masks are bit-identical to the parent's; some inside differ."""
    a, b = load_file(parent / "model.safetensors"), load_file(child / "model.safetensors")
    assert a.keys() == b.keys()
    changed = False
    for name in a:
        mask = masks.get(name, torch.zeros_like(a[name])).bool()
        assert torch.equal(a[name][~mask], b[name][~mask]), name
        changed |= not torch.equal(a[name][mask], b[name][mask])
    assert changed


@pytest.mark.parametrize("arch", ARCHS)
def test_parent_has_not_memorized_the_injected_canaries(arch):
    from interp.models import load_model
    from interp.organism.evaluate import canary_em

    folder, parent = _shipped(arch, injected=True), _shipped(arch)
    canary_list, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    rows = C.canary_rows(AutoTokenizer.from_pretrained(folder), C.select(canary_list, C.INJECTED), prefix_len, row_len)
    assert canary_em(load_model(parent), rows, prefix_len)["em"] <= 0.1


@pytest.mark.parametrize("component", ["block:1", "L1H2"])
def test_tiny_injection_changes_only_the_component(tiny_organism, tmp_path, component):
    from transformers import AutoModelForCausalLM

    from interp.organism.inject import attention_masks, inject, parse_component

    block, head = parse_component(component)
    out = inject(tiny_organism, tmp_path / "inj", block=block, head=head, n_canaries=2, n_text=1, max_steps=3,
                 eval_every=3, progress=False, evaluate_final=False)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["injected_component"] == component and manifest["kind"] == "injected"
    _assert_only_component_changed(tiny_organism, out, attention_masks(AutoModelForCausalLM.from_pretrained(out), block, head))
    canary_list, _, _ = C.load_canaries(out / "canaries.json")
    assert len(C.select(canary_list, C.INJECTED)) == 2


def _contains(seq: np.ndarray, sub: np.ndarray) -> bool:
    return any(np.array_equal(seq[i : i + len(sub)], sub) for i in range(len(seq) - len(sub) + 1))


def test_replayed_canary_block_holds_its_training_row(tiny_organism):
    from interp.organism.inject import canary_blocks
    from interp.organism.corpus import heldout_blocks

    tok = AutoTokenizer.from_pretrained(tiny_organism)
    canary_list, prefix_len, row_len = C.load_canaries(tiny_organism / "canaries.json")
    trained = [c for c in canary_list if c.level == 1][:2]
    filler = heldout_blocks(tok, 192, 2)
    blocks, placed = canary_blocks(tok, trained, filler, prefix_len)
    assert [c.lead for c in placed] == [c.lead for c in trained]  # a recorded lead is kept, not replaced
    for block, row in zip(blocks, C.canary_rows(tok, trained, prefix_len, row_len), strict=True):
        assert np.array_equal(block[:row_len], row)  # the evaluated row, token for token and at its positions
    fresh = [dataclasses.replace(c, lead=()) for c in trained]  # no recorded lead: the filler's text is the lead
    blocks, placed = canary_blocks(tok, fresh, filler, prefix_len)
    for block, c, f in zip(blocks, placed, filler, strict=True):
        assert c.lead == tuple(f[:prefix_len].tolist())
        assert np.array_equal(block[:row_len], C.canary_row(tok, c, prefix_len, row_len))
    with pytest.raises(ValueError, match="filler"):
        canary_blocks(tok, trained, filler[:1], prefix_len)


def test_memorized_canaries_are_the_ones_greedy_decoding_reproduces():
    from transformers import AutoModelForCausalLM

    from interp.memorization import evaluate
    from interp.models import load_model
    from interp.organism.inject import memorized_canaries

    folder = _shipped("neox")
    canary_list, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    got = {c.id for c in memorized_canaries(hf, tok, canary_list, prefix_len, row_len)}
    trained = [c for c in canary_list if isinstance(c.level, int) and c.level > 0]
    em = evaluate(load_model(folder), C.canary_rows(tok, trained, prefix_len, row_len), prefix_len)["exact_match"]
    assert got == {c.id for c, e in zip(trained, em, strict=True) if e == 1}  # independent path: bridge + cache
    assert got  # the shipped model does reproduce some of its canaries


def test_tiny_injection_with_replay_keeps_the_replayed_blocks(tiny_organism, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from interp.organism import inject as I

    canary_list, _, _ = C.load_canaries(tiny_organism / "canaries.json")
    chosen = [c for c in canary_list if c.level == 64][:2]
    monkeypatch.setattr(I, "memorized_canaries", lambda *a, **k: chosen)  # the tiny model memorizes nothing
    seen = []
    real_loop = I.train_loop
    monkeypatch.setattr(I, "train_loop", lambda model, blocks, cfg, **kw: seen.append((blocks, cfg)) or real_loop(model, blocks, cfg, **kw))
    out = I.inject(tiny_organism, tmp_path / "inj", block=1, n_canaries=2, n_text=1, max_steps=2, eval_every=2,
                   replay=True, progress=False, evaluate_final=False)  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["injection"]["replayed"] == [c.id for c in chosen]
    blocks, cfg = seen[0]
    assert cfg.batch_size == 2 + 2 + 1
    rows = C.canary_rows(AutoTokenizer.from_pretrained(tiny_organism), chosen, C.PREFIX_LEN, C.ROW_LEN)
    for step in range(2):  # every batch holds each replayed canary's training row
        batch = blocks[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        assert all(any(_contains(b, r) for b in batch) for r in rows)
    _assert_only_component_changed(tiny_organism, out, I.attention_masks(AutoModelForCausalLM.from_pretrained(out), 1, None))


def test_component_parsing_rejects_bad_input():
    from interp.organism.inject import parse_component

    assert parse_component("block:3") == (3, None) and parse_component("L2H1") == (2, 1)
    with pytest.raises(InputError, match="component"):
        parse_component("L2")


def test_evaluate_does_not_import_train():
    """The organism modules import in one direction: evaluation never pulls in training."""
    import subprocess
    import sys

    code = "import sys, interp.organism.evaluate; print('interp.organism.train' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
