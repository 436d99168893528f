import json

import numpy as np
import pytest
import torch

from interp.data import load_rows, mine_memorized, save_rows, validate_rows
from interp.errors import InputError
from interp.generation import greedy_generate


def test_npy_roundtrip_with_prefix_json(tmp_path):
    rows = np.arange(24).reshape(3, 8)
    save_rows(tmp_path / "r.npy", rows, prefix_len=4)
    assert np.array_equal(load_rows(tmp_path / "r.npy"), rows)
    assert json.loads((tmp_path / "r.json").read_text())["prefix_len"] == 4


def test_npy_refuses_pickles(tmp_path, monkeypatch):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import pickle

    def no_unpickling(*a, **k):
        raise AssertionError("load_rows unpickled data")

    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    with pytest.raises(InputError, match=r"o\.npy' holds Python objects, which are not loaded") as err:
        load_rows(tmp_path / "o.npy")
    assert "allow_pickle" not in str(err.value)


@pytest.mark.parametrize("arr", [np.zeros(5, dtype=np.int64), np.zeros((2, 3), dtype=np.float32), np.zeros((2, 2, 2), dtype=int)])
def test_npy_must_be_2d_integer(tmp_path, arr):
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(InputError, match="2-D integer array"):
        load_rows(tmp_path / "a.npy")


def test_jsonl_tokens_and_text(tmp_path, tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["neox"]))
    (tmp_path / "t.jsonl").write_text('{"tokens": [1,2,3,4,5]}\n{"tokens": [6,7,8,9]}\n')
    assert load_rows(tmp_path / "t.jsonl", length=4).tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]  # cut when asked
    (tmp_path / "e.jsonl").write_text('{"tokens": [1,2,3,4]}\n\n{"tokens": [6,7,8,9]}\n')
    assert load_rows(tmp_path / "e.jsonl").tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]
    (tmp_path / "x.jsonl").write_text('{"text": "def foo(bar): return bar"}\n')
    ids = tok("def foo(bar): return bar", add_special_tokens=False)["input_ids"]
    assert load_rows(tmp_path / "x.jsonl", tokenizer=tok, length=5).tolist() == [ids[:5]]
    with pytest.raises(InputError, match="shorter than 50"):
        load_rows(tmp_path / "x.jsonl", tokenizer=tok, length=50)


def test_bad_jsonl_line_is_named(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"tokens": [1]}\nnot json\n')
    with pytest.raises(InputError, match="b.jsonl:2"):
        load_rows(tmp_path / "b.jsonl")


@pytest.mark.parametrize(
    "rows,prefix,match",
    [
        (np.ones((2, 8), dtype=int), 8, "prefix length"),
        (np.ones((2, 8), dtype=int), 0, "prefix length"),
        (np.full((2, 8), 600), 4, "token id 600 is outside"),
        (np.full((2, 8), -1), 4, "token id -1 is outside"),
        (np.ones((2, 200), dtype=int), 4, "more than the model's context of 128"),
    ],
)
def test_validation_messages(rows, prefix, match):
    with pytest.raises(InputError, match=match):
        validate_rows(rows, prefix, vocab_size=512, context_length=128)


def test_validation_boundaries():
    """The edges are inclusive where they should be: ids 0 and vocab-1 and rows exactly as long as
    the context are accepted, one past each is refused."""
    ok = np.zeros((2, 128), dtype=np.int64)
    ok[0, -1] = 511
    validate_rows(ok, 127, vocab_size=512, context_length=128)
    with pytest.raises(InputError, match="token id 512 is outside"):
        validate_rows(np.full((2, 8), 512), 4, vocab_size=512, context_length=128)
    with pytest.raises(InputError, match="129 tokens, more than the model's context of 128"):
        validate_rows(np.zeros((2, 129), dtype=np.int64), 4, vocab_size=512, context_length=128)


def test_empty_npy_is_refused(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 8), dtype=np.int64))
    with pytest.raises(InputError, match="holds no rows"):
        load_rows(tmp_path / "empty.npy")


def test_mine_memorized_keeps_what_the_model_reproduces(bridge):
    prefixes = torch.randint(1, 500, (6, 5))
    cont = greedy_generate(bridge, prefixes, 4)
    good = torch.cat([prefixes, cont], 1).numpy()
    bad = good.copy()
    bad[:, -1] = (bad[:, -1] + 1) % 500
    candidates = np.concatenate([good[:3], bad[3:]])
    kept, mask = mine_memorized(bridge, candidates, 5)
    assert mask.tolist() == [True, True, True, False, False, False]
    assert np.array_equal(kept, good[:3])


# ---------------------------------------------------------------- bad input is one InputError


def _npz_renamed(p):
    np.savez(p.with_suffix(".npz"), a=np.zeros((2, 3), dtype=np.int64))
    p.with_suffix(".npz").rename(p)


def _truncated(p):
    np.save(p, np.arange(24).reshape(3, 8))
    p.write_bytes(p.read_bytes()[:-5])


@pytest.mark.parametrize("make, match", [
    (lambda p: p.write_bytes(b""), r"x\.npy' is empty \(0 bytes\); expected a \.npy array file"),
    (_npz_renamed, r"x\.npy' is a \.npz \(zip\) archive, not a \.npy array file"),
    (lambda p: p.write_text("1 2 3\n4 5 6\n"), r"x\.npy' is not a \.npy array file"),
    (lambda p: p.mkdir(), r"data path '.*x\.npy' is a folder; expected a \.npy or \.jsonl file"),
    (_truncated, r"x\.npy' is a damaged or unsupported \.npy file"),
    (lambda p: np.save(p, np.ones((2, 3), dtype=bool)), r"x\.npy' must hold a 2-D integer array of token ids; found 2-D bool"),
    (lambda p: np.save(p, np.zeros((2, 3), dtype="m8[s]")), r"x\.npy' must hold a 2-D integer array .* found 2-D timedelta64"),
    (lambda p: np.save(p, np.zeros((2, 2), dtype=[("a", "i8"), ("b", "i8")])), r"x\.npy' must hold a 2-D integer array"),
    (lambda p: np.save(p, np.array([[2**64 - 1, 1]], dtype=np.uint64)), r"x\.npy' holds token id 18446744073709551615, too large"),
    (lambda p: np.save(p, np.zeros((3, 0), dtype=np.int64)), r"x\.npy' holds rows of 0 tokens"),
    (lambda p: np.save(p, np.int64(5)), r"x\.npy' must hold a 2-D integer array .* found 0-D"),
])  # fmt: skip
def test_bad_npy_is_an_input_error(tmp_path, make, match):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(InputError, match=match) as err:
        load_rows(path)
    assert "allow_pickle" not in str(err.value) and "pickled" not in str(err.value)


def test_npy_edge_shapes_and_dtypes_load(tmp_path):
    for arr in [np.array([[7, 8, 9]], dtype=np.int32), np.array([[1], [2]], dtype=np.uint16),
                np.asfortranarray(np.arange(6).reshape(2, 3)), np.arange(6, dtype=">i8").reshape(2, 3),
                np.array([[2**63 - 1, 0]], dtype=np.uint64)]:  # fmt: skip
        np.save(tmp_path / "a.npy", arr)
        out = load_rows(tmp_path / "a.npy")
        assert out.dtype == np.int64 and np.array_equal(out, arr.astype(np.int64))


@pytest.mark.parametrize("body, match", [
    ('{"tokens": ["5", 1]}', r'x\.jsonl:1: "tokens" must hold integer token ids; element 0 is string "5"'),
    ('{"tokens": [[1, 2], [3, 4]]}', r'x\.jsonl:1: "tokens" must hold integer token ids; element 0 is array \[1, 2\]'),
    ('{"tokens": [1, 3.5]}', r'x\.jsonl:1: "tokens" must hold integer token ids; element 1 is number 3\.5'),
    ('{"tokens": [1, 3.0]}', r'x\.jsonl:1: "tokens" must hold integer token ids; element 1 is number 3\.0'),
    ('{"tokens": [true, 1]}', r'x\.jsonl:1: "tokens" must hold integer token ids; element 0 is boolean true'),
    ('{"tokens": [1, null]}', r'x\.jsonl:1: "tokens" must hold integer token ids; element 1 is null'),
    ('{"tokens": [NaN]}', r'x\.jsonl:1: "tokens" must hold integer token ids; element 0 is number NaN'),
    ('{"tokens": [1, 1000000000000000000000000000000]}', r'x\.jsonl:1: "tokens" element 1 is 10{30}, outside the 64-bit'),
    ('{"tokens": [-9223372036854775809]}', r'x\.jsonl:1: "tokens" element 0 is -9223372036854775809, outside the 64-bit'),
    ('{"tokens": "1 2 3"}', r'x\.jsonl:1: "tokens" must be a list of integer token ids; found string "1 2 3"'),
    ('{"tokens": {"0": 1}}', r'x\.jsonl:1: "tokens" must be a list of integer token ids; found object'),
    ('{"tokens": []}', r'x\.jsonl:1: "tokens" is an empty list; expected at least one token id'),
    ('{"text": 5}', r'x\.jsonl:1: "text" must be a string; found integer 5'),
    ('{"text": ["a"]}', r'x\.jsonl:1: "text" must be a string; found array'),
    ('[1, 2, 3]', r'x\.jsonl:1: expected an object with "tokens" .* or "text" .*; found array \[1, 2, 3\]'),
    ('42', r'x\.jsonl:1: expected an object with "tokens" .* or "text" .*; found integer 42'),
    ('"1 2 3"', r'x\.jsonl:1: expected an object .*; found string "1 2 3"'),
    ('{"ids": [1, 2]}', r"x\.jsonl:1: expected an object with .*; found keys \['ids'\]"),
    ('{"tokens": [1], "text": "a"}', r'x\.jsonl:1 holds both "tokens" and "text"'),
    ('{"tokens": [1, 2]}\n{"tokens": [1, 2', r"x\.jsonl:2 is not valid JSON"),
    ('{"tokens": [1, 2, 3]}\n\n{"tokens": [4, 5, 6]}\n{"tokens": [7, 8]}',
     r"x\.jsonl' holds \"tokens\" rows of different lengths \[2, 3\] \(line 4 has 2 tokens, line 1 has 3\), which are not cut"),
    ('{"tokens": [1, 2]}\n{"tokens": [3, 4, 5]}',
     r"x\.jsonl' holds \"tokens\" rows of different lengths \[2, 3\] \(line 2 has 3 tokens, line 1 has 2\)"),
    ('{"text": "a b"}', r"x\.jsonl:1 holds text but no tokenizer"),
    ("\n \n", r"x\.jsonl' holds no rows"),
])  # fmt: skip
def test_bad_jsonl_is_an_input_error(tmp_path, body, match):
    (tmp_path / "x.jsonl").write_text(body + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=match):
        load_rows(tmp_path / "x.jsonl")


def test_jsonl_non_utf8_names_the_line(tmp_path):
    (tmp_path / "x.jsonl").write_bytes(b'{"tokens": [1]}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"x\.jsonl:2 is not UTF-8 text \(byte 0xe9 at offset 29\)"):
        load_rows(tmp_path / "x.jsonl")


def test_jsonl_bom_crlf_and_line_separators_in_strings_load(tmp_path):
    body = '\ufeff{"tokens": [1, 2], "note": "a\u2028b\x85c"}\r\n{"tokens": [3, 4]}\r\n'
    (tmp_path / "x.jsonl").write_bytes(body.encode("utf-8"))
    assert load_rows(tmp_path / "x.jsonl").tolist() == [[1, 2], [3, 4]]


def test_jsonl_negative_ids_load_and_fail_vocabulary_validation(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"tokens": [-1, 2]}\n')
    rows = load_rows(tmp_path / "x.jsonl")
    with pytest.raises(InputError, match="token id -1 is outside"):
        validate_rows(rows, 1, vocab_size=512, context_length=128)


def test_jsonl_explicit_length(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"tokens": [1, 2, 3, 4, 5]}\n{"tokens": [6, 7, 8]}\n')
    assert load_rows(tmp_path / "x.jsonl", length=3).tolist() == [[1, 2, 3], [6, 7, 8]]
    with pytest.raises(InputError, match=r"x\.jsonl': 1 rows are shorter than 4 tokens \(first: line 2, 3 tokens\)"):
        load_rows(tmp_path / "x.jsonl", length=4)
    with pytest.raises(InputError, match=r"row length for '.*x\.jsonl' must be a positive integer; got 0"):
        load_rows(tmp_path / "x.jsonl", length=0)


@pytest.fixture(scope="module")
def neox_tok(tiny_dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dirs["neox"]))


def test_jsonl_text_rows_are_cut_to_the_shortest_with_a_warning(tmp_path, neox_tok, caplog):
    texts = ["def foo(bar): return bar", "import logging", "x = [1, 2, 3] + list(range(10))"]
    ids = [neox_tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    n = min(map(len, ids))
    assert len({len(i) for i in ids}) == 3
    (tmp_path / "x.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with caplog.at_level("WARNING", logger="interp.data"):
        rows = load_rows(tmp_path / "x.jsonl", tokenizer=neox_tok)
    assert rows.tolist() == [i[:n] for i in ids]
    assert f"cut 2 of 3 text rows to {n} tokens" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="interp.data"):
        load_rows(tmp_path / "x.jsonl", tokenizer=neox_tok, length=n)  # explicit: no warning
    assert caplog.text == ""


def test_jsonl_text_errors(tmp_path, neox_tok):
    (tmp_path / "x.jsonl").write_text('{"text": "import logging"}\n{"text": ""}\n')
    with pytest.raises(InputError, match=r'x\.jsonl:2: "text" \'\' encodes to no tokens'):
        load_rows(tmp_path / "x.jsonl", tokenizer=neox_tok)


def test_jsonl_mixed_rows_cut_text_to_the_tokens_rows(tmp_path, neox_tok):
    ids = neox_tok("def foo(bar): return bar", add_special_tokens=False)["input_ids"]
    (tmp_path / "x.jsonl").write_text('{"tokens": [1, 2, 3]}\n{"text": "def foo(bar): return bar"}\n')
    assert load_rows(tmp_path / "x.jsonl", tokenizer=neox_tok).tolist() == [[1, 2, 3], ids[:3]]
    long = list(range(1, len(ids) + 2))
    (tmp_path / "y.jsonl").write_text(json.dumps({"tokens": long}) + '\n{"text": "def foo(bar): return bar"}\n')
    with pytest.raises(InputError, match=rf"y\.jsonl:2 holds text of {len(ids)} tokens, shorter than the {len(long)} tokens"):
        load_rows(tmp_path / "y.jsonl", tokenizer=neox_tok)
