"""Benchmarks: lm-eval encoding and scoring against a direct HF computation, metrics, batching,
bypass configs, perplexity windows, the joined table, shipped tasks and the ``bench`` CLI."""

from __future__ import annotations

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from interp import benchmarks as B
from interp.cli import main
from interp import tasks as T
from interp.errors import InputError
from interp.interventions import AttentionBypass
from interp.models import load_model
from interp.tiny import make_tiny_model

ITEMS = [
    B.Item("The logger writes", (" a message", " to the handler", " json"), 1),
    B.Item("def parse(self, text):\n    return ", ("self.parse(text)", "None", "json.loads(text, strict=False)"), 0),
    B.Item("import json ", ("email", "logging"), 0),  # trailing space moves onto the continuation
    B.Item("", (" header", " value of the field"), 1),  # empty context: end-of-text token
]
TASK = B.Task("hand", tuple(ITEMS))


@pytest.fixture(scope="module", params=["neox", "neo"])
def tiny(request, tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp(request.param), request.param, seed=1, n_ctx=64)
    return folder, load_model(folder)


def hf_score(hf, tok, context: str, continuation: str) -> float:
    """Independent reference: harness encoding spelled out, log-softmax by hand."""
    if context:
        n = len(context) - len(context.rstrip())
        if n:
            context, continuation = context[:-n], context[-n:] + continuation
        ctx = tok.encode(context, add_special_tokens=False)
        cont = tok.encode(context + continuation, add_special_tokens=False)[len(ctx) :]
    else:
        ctx, cont = [tok.eos_token_id], tok.encode(continuation, add_special_tokens=False)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logits = hf(ids).logits[0].double()
    logp = logits - logits.exp().sum(-1, keepdim=True).log()
    return float(sum(logp[len(ctx) - 1 + j, t] for j, t in enumerate(cont)))


def test_encode_pair_moves_trailing_whitespace(tiny):
    _, model = tiny
    tok = model.tokenizer
    assert B.encode_pair(tok, "import json ", "email") == B.encode_pair(tok, "import json", " email")
    ctx, cont = B.encode_pair(tok, "The logger", " writes")
    assert ctx + cont == tok.encode("The logger writes", add_special_tokens=False)
    assert B.encode_pair(tok, "", " x")[0] == [tok.eos_token_id]
    assert B.encode_pair(tok, "  ", "x") == B.encode_pair(tok, "", "  x")  # whitespace-only context
    assert tok.eos_token_id not in B.encode(tok, "The logger")  # no BOS on either family


def test_scores_equal_direct_hf_computation(tiny):
    folder, model = tiny
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ours, _ = B.loglikelihoods(model, B.task_requests(model.tokenizer, TASK), batch_size=4, progress=False)
    ref = [hf_score(hf, model.tokenizer, it.context, c) for it in ITEMS for c in it.choices]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)


def test_batching_does_not_change_scores(tiny):
    _, model = tiny
    reqs = B.task_requests(model.tokenizer, TASK)
    one, g1 = B.loglikelihoods(model, reqs, batch_size=1, progress=False)
    many, g2 = B.loglikelihoods(model, reqs, batch_size=5, progress=False)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)
    assert (g1 == g2).all()


def test_acc_on_items_with_known_answer(tiny):
    _, model = tiny
    # a choice that extends another by whole words has strictly lower log-likelihood
    items = (B.Item("The handler", (" writes", " writes the record to the stream"), 0),
             B.Item("The handler", (" emits the record and flushes", " emits"), 1))  # fmt: skip
    m = B.evaluate_task(model, B.Task("known", items), progress=False)
    assert m["acc"] == 1.0 and m["n_items"] == 2 and m["chance"] == 0.5


def test_mc_metrics_acc_norm_divides_by_characters():
    items = (B.Item("q", (" a", " bbbbbbbbbb"), 1), B.Item("q", (" aa", " b"), 0), B.Item("q", (" x", " y"), 1, " "))
    scores = [np.array([-1.0, -5.0]), np.array([-2.0, -1.5]), np.array([-1.0, -1.0])]
    m = B.mc_metrics(B.Task("t", items), scores)
    # item 0: acc picks 0 (wrong), norm -5/11 > -1/2 picks 1 (right); item 1: acc picks 1 (wrong),
    # norm -2/3 > -1.5/2 picks 0 (right); item 2: tie -> lowest index 0 (wrong) under both
    assert m["acc"] == 0.0 and m["acc_norm"] == pytest.approx(2 / 3)
    np.testing.assert_array_equal(items[2].norm_lengths(), [1.0, 1.0])  # delimiter not counted


def test_bypass_changes_scores(tiny):
    _, model = tiny
    reqs = B.task_requests(model.tokenizer, TASK)
    base, _ = B.loglikelihoods(model, reqs, progress=False)
    for layer in range(int(model.cfg.n_layers)):
        byp, _ = B.loglikelihoods(model, reqs, [AttentionBypass(layer)], progress=False)
        assert np.abs(byp - base).max() > 1e-3
    again, _ = B.loglikelihoods(model, reqs, progress=False)
    np.testing.assert_array_equal(base, again)  # hooks removed afterwards


def test_evaluate_tidy_table(tiny):
    _, model = tiny
    configs = {"baseline": [], "block:1": [AttentionBypass(1)]}
    df = B.evaluate(model, [TASK], configs, progress=False)
    assert list(df.columns[:4]) == ["config", "task", "acc", "acc_norm"]
    assert df[["config", "task"]].values.tolist() == [["baseline", "hand"], ["block:1", "hand"]]
    assert (df["n_items"] == 4).all() and df["chance"].iloc[0] == pytest.approx((1 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 4)


def test_rolling_windows_cover_every_token_once():
    toks = list(range(1, 24))
    for max_len, ctx_len in [(8, 1), (8, 4), (30, 1), (5, 5)]:
        reqs = B.rolling_windows(toks, 0, max_len, ctx_len)
        assert [t for _, c in reqs for t in c] == toks
        assert reqs[0][0] == [0]
        for ctx, cont in reqs[1:]:
            inp = (ctx + cont)[:-1]
            assert len(inp) == max_len and ctx + cont == toks[toks.index(inp[0]) : toks.index(cont[-1]) + 1]


def test_perplexity_equals_hf_on_short_text(tiny):
    folder, model = tiny
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    text = "import logging\nlogger = logging.getLogger(__name__)"
    ppl = B.perplexity(model, [text], progress=False)
    ref = hf_score(hf, model.tokenizer, "", text)
    assert ppl["nll"] == pytest.approx(-ref, rel=1e-5)
    assert ppl["token_perplexity"] == pytest.approx(np.exp(-ref / ppl["n_tokens"]), rel=1e-5)
    long = B.perplexity(model, [text * 8], progress=False)  # longer than n_ctx: several windows
    assert long["n_tokens"] == len(model.tokenizer.encode(text * 8, add_special_tokens=False))


def test_joined_table_with_hand_made_memorization():
    acc = pd.DataFrame({
        "config": ["baseline"] * 3 + ["block:0"] * 3,
        "task": ["a", "b", "u"] * 2,
        "kind": ["language", "reasoning", "user"] * 2,
        "acc": [0.8, 0.5, 0.4, 0.4, 0.5, 0.2],
        "acc_norm": [0.8, 0.5, 0.4, 0.4, 0.5, 0.2],
    })  # fmt: skip
    mem = pd.DataFrame({"config": ["block:0", "baseline"], "exact_match": [0.1, 0.9],
                        "exact_match_ci_low": [0.0, 0.8], "n_sequences": [5, 5]})  # fmt: skip
    j = B.joined_table(acc, mem)
    assert "exact_match_ci_low" not in j
    assert j["config"].tolist() == ["baseline", "block:0"]
    row = j.set_index("config").loc["block:0"]
    assert row["exact_match"] == 0.1 and row["acc:a"] == 0.4
    assert row["drop:a"] == pytest.approx(0.5) and row["drop:b"] == 0 and row["drop_user"] == pytest.approx(0.5)
    assert row["drop_language"] == pytest.approx(0.5) and row["acc_reasoning"] == 0.5
    assert (j.set_index("config").loc["baseline", ["drop:a", "drop:b", "drop:u"]] == 0).all()
    with pytest.raises(InputError, match="baseline"):
        B.joined_table(acc[acc["config"] != "baseline"])


@pytest.mark.parametrize("line, match", [
    ("not json", "is not valid JSON"),
    ('{"context": "x", "choices": [" a"], "gold": 0}', r"needs at least two non-empty choices; found \[' a'\]"),
    ('{"context": "x", "choices": [" a", " b"], "gold": 2}', r"gold must be an integer index into the 2 choices; found integer 2"),
    ('{"context": "x", "choices": [" a", " b"], "gold": -1}', r"gold must be an integer index into the 2 choices; found integer -1"),
    ('{"context": "x", "choices": [" a", " b"], "gold": true}', r"gold must be an integer index .*; found boolean true"),
    ('{"context": "x", "choices": [" a", " b"], "gold": 1.0}', r"gold must be an integer index .*; found number 1\.0"),
    ('{"context": "x", "choices": [" a", " b"], "gold": "1"}', r"gold must be an integer index .*; found string \"1\""),
    ('{"context": "x", "choices": [" a", " b"], "gold": null}', r"gold must be an integer index .*; found null"),
    ('{"context": 3, "choices": [" a", " b"], "gold": 0}', r"context must be a string; found integer 3"),
    ('{"context": 5, "choices": [" a", " b"], "gold": 0}', r"context must be a string; found integer 5"),
    ('{"context": null, "choices": [" a", " b"], "gold": 0}', r"context must be a string; found null"),
    ('{"context": ["x"], "choices": [" a", " b"], "gold": 0}', r"context must be a string; found array"),
    ('{"context": "x", "choices": " a b", "gold": 0}', r"choices must be a list of strings; found string"),
    ('{"context": "x", "choices": {"a": 1}, "gold": 0}', r"choices must be a list of strings; found object"),
    ('{"context": "x", "choices": [" a", 2], "gold": 0}', r"choices must be a list of strings; choice 1 is integer 2"),
    ('{"context": "x", "choices": [" a", [" b"]], "gold": 0}', r"choices must be a list of strings; choice 1 is array"),
    ('{"context": "x", "choices": [" a", null], "gold": 0}', r"choices must be a list of strings; choice 1 is null"),
    ('{"context": "x", "choices": [" a", ""], "gold": 0}', r"choice 1 is empty"),
    ('{"context": "x", "choices": [" a", " b", " a"], "gold": 0}', r"choices 0 and 2 are both ' a'; expected distinct choices"),
    ('{"context": "x", "choices": [" b", " b"], "gold": 1}', r"choices 0 and 1 are both ' b'"),
    ('{"context": "x", "choices": [" a", " b"], "gold": 0, "delimiter": 1}', r"delimiter must be a string; found integer 1"),
    ('{"choices": [" a", " b"], "gold": 0}', r"expected \{.*\}; 'context' missing \(found keys \['choices', 'gold'\]\)"),
    ('{"context": "x", "choices": [" a", " b"]}', r"expected \{.*\}; 'gold' missing"),
    ('[1, 2]', r"expected \{.*\}; found array \[1, 2\]"),
    ('7', r"expected \{.*\}; found integer 7"),
])  # fmt: skip
def test_bad_task_file_is_an_input_error(tmp_path, line, match):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "ok", "choices": [" a", " b"], "gold": 0}\n\n' + line + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl:3:? " + match):
        B.load_task(path)


def test_bad_task_files_as_a_whole(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b'{"context": "caf\xe9", "choices": [" a", " b"], "gold": 0}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:1 is not UTF-8 text \(byte 0xe9"):
        B.load_task(tmp_path / "x.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(InputError, match=r"task path '.*dir\.jsonl' is a folder; expected a \.jsonl file"):
        B.resolve_tasks(str(tmp_path / "dir.jsonl"))
    (tmp_path / "e.jsonl").write_text("\n  \n")
    with pytest.raises(InputError, match=r"task file '.*e\.jsonl' holds no items"):
        B.load_task(tmp_path / "e.jsonl")


def test_valid_task_file_loads_the_same_items(tmp_path):
    lines = [
        {"context": "a\u2028b", "choices": [" x", " y\x85z"], "gold": 1},
        {"context": "", "choices": [" 1", " 2", " 3"], "gold": 2, "delimiter": " ", "source": "extra keys are ignored"},
    ]
    body = "\ufeff" + "\r\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\r\n"
    (tmp_path / "ok.jsonl").write_bytes(body.encode("utf-8"))
    task = B.load_task(tmp_path / "ok.jsonl")
    assert task.name == "ok" and task.kind == "user"
    assert task.items == (B.Item("a\u2028b", (" x", " y\x85z"), 1), B.Item("", (" 1", " 2", " 3"), 2, " "))


@pytest.fixture(scope="module")
def neox_tok(tiny_dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dirs["neox"]))


def test_choice_that_adds_no_tokens_is_refused_with_task_and_item(neox_tok):
    enc = lambda s: neox_tok.encode(s, add_special_tokens=False)  # noqa: E731
    word = next(w for w in ["import", "return", "self", "def", "class", "print"] if len(enc(w)) == 1)
    # the context is the word without its last letter; the word is one token, so the choice adds none
    task = B.Task("merge", (ITEMS[0], B.Item(word[:-1], (word[-1], " other"), 0)))
    with pytest.raises(InputError, match=rf"task 'merge' item 1 \(0-based\), choice 0 '{word[-1]}': the choice adds no tokens to the encoding of the context '{word[:-1]}'"):
        B.task_requests(neox_tok, task)
    empty = B.Task("empty", (B.Item("x =", (" 1", ""), 0),))  # built directly, not loaded
    with pytest.raises(InputError, match=r"task 'empty' item 0 \(0-based\), choice 1 '': the choice adds no tokens"):
        B.task_requests(neox_tok, empty)


class _DigitBlindTokenizer:
    """Encodes letters only: a context of digits encodes to nothing."""

    eos_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text if c.isalpha()]


def test_context_that_encodes_to_nothing_is_refused():
    tok = _DigitBlindTokenizer()
    assert B.task_requests(tok, B.Task("ok", (B.Item("ab", (" c", " d"), 0),))) == [([97, 98], [99]), ([97, 98], [100])]
    both = B.Task("digits", (B.Item("ab", (" c", " d"), 0), B.Item("12", (" 3", " d"), 1)))
    with pytest.raises(InputError, match=r"task 'digits' item 1 \(0-based\), choice 0 ' 3': the context '12' and the choice together encode to no tokens"):
        B.task_requests(tok, both)
    ctx_only = B.Task("digits", (B.Item("12", (" c", " d"), 1),))
    with pytest.raises(InputError, match=r"task 'digits' item 0 \(0-based\), choice 0 ' c': the context '12' encodes to no tokens"):
        B.task_requests(tok, ctx_only)


def test_check_requests_refuses_empty_context_or_continuation():
    from types import SimpleNamespace

    model = SimpleNamespace(cfg=SimpleNamespace(n_ctx=8))
    B.check_requests(model, [([1], [2, 3])], "task 't'")
    with pytest.raises(InputError, match=r"task 't' 1: the context encodes to no tokens"):
        B.check_requests(model, [([1], [2]), ([], [2])], "task 't'")
    with pytest.raises(InputError, match=r"task 't' 0: the continuation encodes to no tokens"):
        B.check_requests(model, [([1], [])], "task 't'")
    with pytest.raises(InputError, match=r"request 0: the continuation has 9 tokens, more than the context length 8"):
        B.check_requests(model, [([1], list(range(9)))])


@pytest.mark.parametrize("arch", ["neox", "neo"])
def test_shipped_tasks_encode_with_the_organism_tokenizer(arch):
    from transformers import AutoTokenizer

    from interp.organism import organism_path

    try:
        tok = AutoTokenizer.from_pretrained(str(organism_path(arch)))
    except InputError as err:
        pytest.skip(f"organism {arch!r} is not shipped: {err}")
    for t in B.resolve_tasks(",".join(T.BUILTIN)):
        assert len(B.task_requests(tok, t)) == sum(len(it.choices) for it in t.items)


def test_shipped_tasks_load_with_enough_items():
    tasks = B.resolve_tasks(",".join(T.BUILTIN))
    kinds = [t.kind for t in tasks]
    assert kinds.count("language") >= 3 and kinds.count("reasoning") >= 3
    for t in tasks:
        assert len(t.items) >= 200, t.name
        assert len({json.dumps([it.context, it.choices]) for it in t.items}) > 1


def test_rule_tasks_regenerate_identically():
    for name, kind in T.BUILTIN.items():
        if kind == "reasoning":
            shipped = [json.loads(x) for x in T.path_of(name).read_text().splitlines()]
            assert T.generate(name, len(shipped)) == shipped, name


def test_language_tasks_regenerate_identically_from_the_same_heldout_text():
    from interp.organism.corpus import documents

    manifest = json.loads((T.TASKS_DIR / "manifest.json").read_text())
    docs = documents("heldout")
    if T.heldout_fingerprint(docs) != manifest["heldout_fingerprint"]:
        pytest.skip(f"held-out text differs from the one the tasks were made from (Python {manifest['python']})")
    for name in T.LANGUAGE:
        shipped = T.path_of(name).read_text()
        assert "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in T.generate(name, manifest["n_items"], docs)) == shipped


def test_language_tasks_are_deterministic():
    docs = [("a.py", "\n".join(f"value_{i} = compute(item_{i}, other_{i % 7}) + {i}" for i in range(60)))]
    for name in T.LANGUAGE:
        first = T.language_task(name, docs, 20)
        assert first == T.language_task(name, docs, 20)
        assert all(it["choices"][it["gold"]] != c for it in first for i, c in enumerate(it["choices"]) if i != it["gold"])


def _adjacent_transposition(a: str, b: str) -> bool:
    """``b`` is ``a`` with two adjacent, different characters swapped."""
    d = [i for i in range(len(a)) if a[i] != b[i]] if len(a) == len(b) else []
    return len(d) == 2 and d[1] == d[0] + 1 and a[d[0]] == b[d[1]] and a[d[1]] == b[d[0]]


def test_language_items_are_minimal_pairs_of_the_true_text():
    """Each wrong choice is the true text corrupted at one level, nothing else changed; the
    context is the 3 non-blank lines before the answer (trailing whitespace dropped)."""
    raw = [f"    value_{i}  = compute(item_{i}, other_{i % 7}) + {i}" + " " * (i % 3) for i in range(60)]
    text = "\n".join(line + ("\n\n   " if i % 5 == 0 else "") for i, line in enumerate(raw))
    lines = [line.rstrip() for line in raw]  # the non-blank lines, as the context shows them
    for name in T.LANGUAGE:
        items = T.language_task(name, [("a.py", text)], 30)
        assert len({(it["context"], it["choices"][it["gold"]]) for it in items}) == len(items)
        for it in items:
            gold, choices = it["choices"][it["gold"]], it["choices"]
            context_lines = it["context"].split("\n")
            i = lines.index(context_lines[-1]) + 1
            assert context_lines == lines[i - 3 : i]
            wrong = [c for j, c in enumerate(choices) if j != it["gold"]]
            assert all(sorted(c) == sorted(gold) for c in wrong)  # same characters
            if name == "typo":
                assert gold == "\n" + lines[i] and len(set(wrong)) == 3
                for c in wrong:
                    assert _adjacent_transposition(gold, c)
                    k = next(k for k in range(len(gold)) if gold[k] != c[k])
                    assert any(m.start() <= k and k + 2 <= m.end() for m in T._WORD.finditer(gold)), (gold, c)
            elif name == "swapped_words":
                assert gold == "\n" + lines[i] and len(wrong) == 1
                gw, ww = gold.split(" "), wrong[0].split(" ")
                assert len(gw) == len(ww)  # spacing kept: the same split pattern
                diff = [k for k in range(len(gw)) if gw[k] != ww[k]]
                assert len(diff) == 2 and gw[diff[0]] == ww[diff[1]] and gw[diff[1]] == ww[diff[0]]
            else:
                assert gold == f"\n{lines[i]}\n{lines[i + 1]}" and wrong == [f"\n{lines[i + 1]}\n{lines[i]}"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["neox", "neo"])
def test_shipped_tasks_are_well_above_chance_on_the_shipped_organism(arch):
    """The issue's bar for the built-in tasks: the unmodified organism does every one well above
    chance (here: at least chance + 0.2 on all items), so a bypass's cost can show."""
    from interp.organism import organism_path

    try:
        model = load_model(organism_path(arch))
    except InputError as err:
        pytest.skip(f"organism {arch!r} is not shipped: {err}")
    tasks = B.resolve_tasks(",".join(T.BUILTIN))
    df = B.evaluate(model, tasks, {"baseline": []}, batch_size=64, progress=False)
    low = df[df["acc"] < df["chance"] + 0.2]
    assert low.empty, low[["task", "acc", "chance"]].to_string()


def test_encode_pair_matches_lm_eval_when_installed(tiny):
    lm_eval_model = pytest.importorskip("lm_eval.api.model", reason="lm-eval is not installed")
    _, model = tiny

    class Stub(lm_eval_model.TemplateLM):  # only the encoding path is exercised
        eot_token_id = model.tokenizer.eos_token_id
        _loglikelihood_tokens = loglikelihood_rolling = generate_until = None

        def tok_encode(self, string, **kw):
            return model.tokenizer.encode(string, add_special_tokens=False)

    for it in ITEMS[:3]:
        for c in it.choices:
            assert tuple(map(list, Stub._encode_pair(Stub.__new__(Stub), it.context, c))) == B.encode_pair(
                model.tokenizer, it.context, c
            )


# ---------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def neox_folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("cli"), "neox", seed=2, n_ctx=64)


def write_task(path, items):
    path.write_text("".join(json.dumps({"context": i.context, "choices": list(i.choices), "gold": i.gold}) + "\n" for i in items))
    return path


def test_cli_writes_accuracy_csv(tmp_path, neox_folder):
    task = write_task(tmp_path / "hand.jsonl", ITEMS)
    (tmp_path / "heldout.txt").write_text("import logging\nlogger = logging.getLogger(__name__)\n" * 5)
    out = tmp_path / "out"
    rc = main(["bench", "--model", str(neox_folder), "--tasks", f"{task},rule_count", "--out", str(out),
               "--blocks", "0,2", "--batch-size", "500", "--no-progress",
               "--perplexity", str(tmp_path / "heldout.txt")])  # fmt: skip
    assert rc == 0
    acc = pd.read_csv(out / "accuracy.csv")
    assert list(acc.columns[:4]) == ["config", "task", "acc", "acc_norm"]
    assert acc["config"].unique().tolist() == ["baseline", "block:0", "block:2"]
    assert acc["task"].unique().tolist() == ["hand", "rule_count"]
    assert set(acc.loc[acc["task"] == "rule_count", "kind"]) == {"reasoning"}
    joined = pd.read_csv(out / "joined.csv")
    assert joined["config"].tolist() == ["baseline", "block:0", "block:2"] and "drop:hand" in joined
    ppl = pd.read_csv(out / "perplexity.csv")
    assert ppl["config"].tolist() == joined["config"].tolist() and (ppl["token_perplexity"] > 1).all()
    assert joined["token_perplexity"].tolist() == pytest.approx(ppl["token_perplexity"].tolist())


def test_cli_with_memorization_joins(tmp_path, neox_folder):
    task = write_task(tmp_path / "hand.jsonl", ITEMS[:2])
    rows = np.random.default_rng(0).integers(1, 400, size=(3, 12))
    np.save(tmp_path / "rows.npy", rows)
    out = tmp_path / "out"
    rc = main(["bench", "--model", str(neox_folder), "--tasks", str(task), "--out", str(out), "--blocks", "1",
               "--with-memorization", str(tmp_path / "rows.npy"), "--prefix-len", "6", "--no-progress"])  # fmt: skip
    assert rc == 0
    joined = pd.read_csv(out / "joined.csv")
    assert joined["config"].tolist() == ["baseline", "block:1"]
    assert {"exact_match", "token_accuracy", "completion_entropy", "acc:hand", "drop:hand"} <= set(joined.columns)


@pytest.mark.parametrize("extra", [
    ["--tasks", "missing.jsonl"],
    ["--tasks", "no_such_builtin"],
    ["--tasks", "BAD"],
    ["--tasks", "GOOD", "--blocks", "7"],
    ["--tasks", "GOOD", "--blocks", "x"],
    ["--tasks", "GOOD", "--with-memorization", "rows.npy"],
    ["--tasks", "GOOD", "--with-memorization", "nope.npy", "--prefix-len", "4"],
    ["--tasks", "GOOD", "--perplexity", "nope.txt"],
])  # fmt: skip
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, neox_folder, extra, capsys):
    write_task(tmp_path / "good.jsonl", ITEMS[:1])
    (tmp_path / "bad.jsonl").write_text('{"context": "x", "choices": [" a", " b"], "gold": 5}\n')
    extra = [str(tmp_path / "good.jsonl") if e == "GOOD" else str(tmp_path / "bad.jsonl") if e == "BAD" else e for e in extra]
    out = tmp_path / "out"
    rc = main(["bench", "--model", str(neox_folder), "--out", str(out), "--no-progress", *extra])
    assert rc == 2
    assert not out.exists()
    errors = [ln for ln in capsys.readouterr().err.splitlines() if "error" in ln]
    assert len(errors) == 1 and errors[0].startswith("interp bench: error:")


def test_bench_limit_scores_only_the_first_items(tmp_path, tiny_dirs):
    import json as _json

    from interp.cli import main as _main

    task = tmp_path / "t.jsonl"
    task.write_text("".join(_json.dumps({"context": f"a{i} =", "choices": [" 1", " 2"], "gold": i % 2}) + "\n" for i in range(5)))
    out = tmp_path / "out"
    assert _main(["bench", "--model", str(tiny_dirs["neox"]), "--tasks", str(task), "--blocks", "0", "--limit", "3",
                  "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    config = _json.loads((out / "config.json").read_text())
    assert config["limit"] == 3 and config["tasks"]["t"]["n_items"] == 3
    assert _main(["bench", "--model", str(tiny_dirs["neox"]), "--tasks", str(task), "--limit", "0",
                  "--out", str(tmp_path / "bad"), "--no-progress"]) == 2  # fmt: skip


# ---------------------------------------------------------------- hand-computed metric checks


def test_mc_metrics_acc_norm_counts_every_character_including_the_delimiter():
    # no delimiter named: the length is the whole choice in characters (" a" = 2, " bbb" = 4)
    items = (B.Item("q", (" a", " bbb"), 0), B.Item("q", (" bbb", " a"), 1))
    scores = [np.array([-1.0, -2.9]), np.array([-2.9, -1.0])]
    np.testing.assert_array_equal(items[0].norm_lengths(), [2.0, 4.0])
    m = B.mc_metrics(B.Task("t", items), scores)
    # -1/2 = -0.5 > -2.9/4 = -0.725 picks " a" (right); with len - 1: -1/1 = -1 < -2.9/3 = -0.967 picks " bbb"
    assert m["acc_norm"] == 1.0 and m["acc_norm_stderr"] == 0.0


def test_mc_metrics_acc_norm_uses_characters_not_bytes():
    # " é" is 2 characters but 3 UTF-8 bytes; " e" is 2 of both
    items = (B.Item("q", (" é", " e"), 1),)
    m = B.mc_metrics(B.Task("t", items), [np.array([-2.0, -1.9])])
    # characters: -2/2 = -1.0 < -1.9/2 = -0.95 -> picks 1 (right); bytes: -2/3 = -0.667 > -0.95 -> picks 0
    assert m["acc_norm"] == 1.0


def test_mc_metrics_stderr_is_the_sample_standard_error():
    items = (B.Item("q", (" a", " b"), 0), B.Item("q", (" a", " b"), 1), B.Item("q", (" a", " b"), 1))
    scores = [np.array([-2.0, -1.0]), np.array([-2.0, -1.0]), np.array([-2.0, -1.0])]  # acc = [0, 1, 1]
    m = B.mc_metrics(B.Task("t", items), scores)
    assert m["acc"] == pytest.approx(2 / 3) and m["acc_norm"] == pytest.approx(2 / 3)
    # sample sd of [0, 1, 1] is sqrt(1/3); divided by sqrt(3) gives exactly 1/3 (ddof=0 would give sqrt(2)/3/sqrt(3))
    assert m["acc_stderr"] == pytest.approx(1 / 3, rel=1e-12)
    assert m["acc_norm_stderr"] == pytest.approx(1 / 3, rel=1e-12)
    assert np.isnan(B.mc_metrics(B.Task("t", items[:1]), scores[:1])["acc_stderr"])  # one item: undefined


def test_greedy_flag_requires_every_continuation_token_to_be_the_argmax(tiny):
    folder, model = tiny
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ctx = model.tokenizer.encode("The logger writes", add_special_tokens=False)
    with torch.no_grad():
        first = int(hf(torch.tensor([ctx])).logits[0, -1].argmax())
        second = int(hf(torch.tensor([ctx + [first]])).logits[0, -1].argmax())
        third = int(hf(torch.tensor([ctx + [first, second]])).logits[0, -1].argmax())
    wrong = next(t for t in range(10, 100) if t not in (first, second, third))  # never the argmax where used
    conts = [[first, second, third], [first, second], [first, wrong], [wrong, second], [first, second, wrong]]
    reqs = [(ctx, c) for c in conts]
    _, greedy = B.loglikelihoods(model, reqs, batch_size=3, progress=False)
    expected = []
    for c in conts:
        with torch.no_grad():
            logits = hf(torch.tensor([ctx + c])).logits[0]
        argmax = logits[len(ctx) - 1 : len(ctx) - 1 + len(c)].argmax(-1).tolist()
        expected.append(all(a == t for a, t in zip(argmax, c)))
    assert expected == [True, True, False, False, False]  # only some tokens are the argmax in the last three
    assert greedy.tolist() == expected


def test_perplexity_bits_per_byte_on_non_ascii_text(tiny):
    folder, model = tiny
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    text = "café = naïve → ünïcode"
    n_bytes = len(text.encode("utf-8"))
    ppl = B.perplexity(model, [text], progress=False)
    nll = -hf_score(hf, model.tokenizer, "", text)
    assert ppl["n_bytes"] == n_bytes and n_bytes > len(text) and ppl["n_tokens"] != n_bytes
    assert ppl["nll"] == pytest.approx(nll, rel=1e-5)
    assert ppl["bits_per_byte"] == pytest.approx(nll / (n_bytes * np.log(2)), rel=1e-5)
    table = B.perplexity_table(model, [text], {"baseline": []}, progress=False)
    acc = pd.DataFrame({"config": ["baseline"], "task": ["a"], "kind": ["user"], "acc": [0.5], "acc_norm": [0.5]})
    j = B.joined_table(acc, perplexities=table)
    assert j["bits_per_byte"].tolist() == pytest.approx([nll / (n_bytes * np.log(2))], rel=1e-5)
    assert j["token_perplexity"].tolist() == pytest.approx([np.exp(nll / ppl["n_tokens"])], rel=1e-5)


def test_joined_table_drop_is_nan_when_the_baseline_accuracy_is_zero():
    acc = pd.DataFrame({
        "config": ["baseline", "baseline", "block:0", "block:0"],
        "task": ["z", "a", "z", "a"],
        "kind": ["user", "user", "user", "user"],
        "acc": [0.0, 0.5, 0.25, 0.25],
        "acc_norm": [0.0, 0.5, 0.25, 0.25],
    })  # fmt: skip
    ppl = pd.DataFrame({"config": ["block:0", "baseline"], "token_perplexity": [9.0, 3.0], "bits_per_byte": [2.5, 1.5]})
    j = B.joined_table(acc, perplexities=ppl).set_index("config")
    assert np.isnan(j.loc["baseline", "drop:z"]) and np.isnan(j.loc["block:0", "drop:z"])
    assert j.loc["block:0", "drop:a"] == pytest.approx(0.5) and j.loc["block:0", "acc:z"] == 0.25
    assert j.loc["block:0", "drop_user"] == pytest.approx(0.5)  # the mean skips the NaN drop
    assert j["bits_per_byte"].tolist() == [1.5, 2.5] and j["token_perplexity"].tolist() == [3.0, 9.0]
    np.testing.assert_array_equal(B.relative_drop(acc).isna().tolist(), [True, False, True, False])
