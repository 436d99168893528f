"""The shipped public-domain passages and the window mining on them (``interp.passages``)."""

import json

import numpy as np
import pytest
import torch

from interp.errors import InputError
from interp.passages import KINDS, TEXT_KINDS, load_passages, mine, summarize, windows


def test_shipped_passages_name_their_sources():
    ps = load_passages()
    text = [p for p in ps if p.kind in TEXT_KINDS]
    assert len(text) >= 40
    assert len({p.id for p in ps}) == len(ps)
    for p in ps:
        assert p.kind in KINDS and len(p.source) > 10 and p.text == p.text.strip()
    assert all(len(p.text.split()) >= 45 for p in text)  # every text passage makes at least one 64-token window
    assert {p.kind for p in ps} == set(KINDS)


@pytest.mark.parametrize("line, says", [
    ("{not json", "not a passage record"),
    ('{"id": "a", "kind": "prose", "text": "x"}', "not a passage record"),
    ('{"id": "a", "kind": "novel", "source": "s", "text": "x"}', "is not one of"),
    ('{"id": "a", "kind": "prose", "source": "s", "text": "x"}\n{"id": "a", "kind": "prose", "source": "s", "text": "y"}', "occurs twice"),
])  # fmt: skip
def test_malformed_passage_files_are_refused(tmp_path, line, says):
    path = tmp_path / "p.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(InputError, match=says):
        load_passages(path)
    with pytest.raises(InputError, match="unknown passage kind"):
        load_passages(kinds=["novel"])


class _Chars:
    """A tokenizer with one token per character (ids are code points)."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_windows_cut_every_stride():
    from interp.passages import Passage

    ps = [Passage("a", "prose", "s", "abcdefghij"), Passage("b", "verse", "s", "xyz")]
    rows, meta = windows(_Chars(), ps, prefix_len=3, suffix_len=2, stride=2)
    assert meta.start.tolist() == [0, 2, 4] and set(meta.passage) == {"a"}  # "xyz" is shorter than a window
    assert ["".join(map(chr, r)) for r in rows] == ["abcde", "cdefg", "efghi"]
    with pytest.raises(InputError):
        windows(_Chars(), ps, prefix_len=3, suffix_len=2, stride=0)


@pytest.fixture(scope="module")
def organism_passages(tmp_path_factory):
    """The neox organism and passages made of its canary rows (lead, end-of-text, record): its
    memorized canaries are reproduced, its held-out ones are not."""
    from interp.models import load_model
    from interp.organism import canaries as C
    from interp.organism import organism_path

    folder = organism_path("neox")
    model = load_model(str(folder))
    tok = model.tokenizer
    clist, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    chosen = C.select(clist, 64)[:6] + C.select(clist, C.HELDOUT)[:4]
    lines = []
    for c in chosen:
        row = C.canary_row(tok, _with_lead(c, tok, prefix_len), prefix_len, row_len)
        text = tok.decode(row)
        if tok(text, add_special_tokens=False)["input_ids"] == row:  # only rows that survive a text round trip
            lines.append({"id": c.id, "kind": "pattern" if c.level == C.HELDOUT else "prose", "source": "canary", "text": text})
    path = tmp_path_factory.mktemp("passages") / "p.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return model, load_passages(path), prefix_len, row_len


def _with_lead(c, tok, prefix_len):
    """Held-out canaries have no lead: give them a fixed one so their row can be formed."""
    import dataclasses

    from interp.organism import canaries as C

    need = C.lead_len(tok, c, prefix_len)
    return c if len(c.lead) >= need else dataclasses.replace(c, lead=tuple(tok("\nx = 1\n" * 8)["input_ids"])[-need:] if need else ())


def test_mining_matches_independent_greedy_decoding(organism_passages):
    from interp.generation import greedy_generate

    model, ps, prefix_len, row_len = organism_passages
    assert len(ps) >= 6
    suffix = row_len - prefix_len
    got = mine(model, ps, prefix_len=prefix_len, suffix_lens=(suffix, 8), stride=4)
    rows, meta = windows(model.tokenizer, ps, prefix_len, suffix, 4)
    gen = greedy_generate(model, torch.as_tensor(rows[:, :prefix_len]), suffix).numpy()
    same = gen == rows[:, prefix_len:]
    lengths = np.where(same.all(1), suffix, np.argmin(same, 1))  # leading run of equal tokens
    assert got.match_length.tolist() == lengths.tolist()
    assert got[f"exact_{suffix}"].tolist() == same.all(1).tolist()
    assert got["exact_8"].tolist() == same[:, :8].all(1).tolist()
    assert got[f"exact_{suffix}"].any() and not got[f"exact_{suffix}"].all()  # memorized rows and others both present
    s = summarize(got).set_index(["suffix_len", "kind"])
    assert s.loc[(suffix, "all"), "reproduced"] == int(same.all(1).sum())
    assert s.loc[(8, "text"), "windows"] == int((meta.kind != "pattern").sum())
