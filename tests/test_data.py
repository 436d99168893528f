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


def test_npy_refuses_pickles(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="without pickles"):
        load_rows(tmp_path / "o.npy")


@pytest.mark.parametrize("arr", [np.zeros(5, dtype=np.int64), np.zeros((2, 3), dtype=np.float32), np.zeros((2, 2, 2), dtype=int)])
def test_npy_must_be_2d_integer(tmp_path, arr):
    np.save(tmp_path / "a.npy", arr)
    with pytest.raises(InputError, match="2-D integer array"):
        load_rows(tmp_path / "a.npy")


def test_jsonl_tokens_and_text(tmp_path, tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dirs["neox"]))
    (tmp_path / "t.jsonl").write_text('{"tokens": [1,2,3,4,5]}\n{"tokens": [6,7,8,9]}\n')
    assert load_rows(tmp_path / "t.jsonl").tolist() == [[1, 2, 3, 4], [6, 7, 8, 9]]
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
