"""Built-in multiple-choice tasks for the model organism: a registry and their generator.

A benchmark can show what a bypass costs only on tasks the unmodified model does, so the
shipped set holds the tasks both organisms do well above chance (tested in
``tests/test_benchmarks.py``: at least chance + 0.2 on every task).

"language" tasks are minimal pairs from held-out real text (``interp.organism.corpus.
documents("heldout")``, files never trained on): the true line against the same text corrupted
at one level, context the 3 non-blank lines before it.

    typo           the true line vs 3 copies, each with two adjacent different characters of
                   one word (4+ letters, digits or underscores) swapped (character level; 4 choices)
    swapped_words  the true line vs the same line with two of its words swapped (word level;
                   2 choices, indentation kept)
    line_order     the next two lines in order vs in swapped order (line level; 2 choices)

The choices of an item are rearrangements of the same characters, so neither a length prior
nor a character-frequency prior can tell them apart (a token-frequency prior can: a misspelt
word tends to split into rarer tokens). Each (context, true answer) appears once per task.

"reasoning" tasks come from the rule families of ``interp.organism.rules`` (the true answer
among itself and 3 distractors of the same form, ``rules.distractors``): ``rule_brackets``,
``rule_count``, ``rule_successor``. The rules' input spaces are small (``count`` has 9
contexts), so reasoning items may coincide with training instances; what is measured is
applying the rule, not recalling unseen text.

Baseline accuracy on all 250 items, GPT-NeoX / GPT-Neo organism: typo 0.94 / 0.93 (chance
0.25), swapped_words 0.93 / 0.91 and line_order 0.76 / 0.72 (chance 0.5), brackets 0.86 / 0.83,
count 1.00 / 0.64, successor 0.99 / 0.96 (chance 0.25). Measured and left out (chance 0.25): the true next line among 3
other lines of the same file (0.30 / 0.28) or of other held-out files (0.34 / 0.31); the true
next identifier among 3 of the same file (0.43 / 0.42); ``copy`` (0.20 / 0.23: neither organism
learned to copy a span it was just shown); ``progression`` (0.63 / 0.34). ``rule_task`` still
generates any rule family.

Every task is generated from its own seeded ``random.Random(f"bench:{name}")`` and shipped as
JSONL under ``interp/tasks_data/`` (schema of ``interp.benchmarks``), so results do not depend on
the Python whose standard library is the corpus; ``manifest.json`` records that Python and a
fingerprint of the held-out text. Regenerate with ``python -m interp.tasks``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import re
from collections.abc import Callable
from pathlib import Path

from interp.errors import InputError

TASKS_DIR = Path(__file__).parent / "tasks_data"
N_ITEMS = 250
N_CHOICES = 4
LANGUAGE = ("typo", "swapped_words", "line_order")
RULE_FAMILIES = ("brackets", "count", "successor")  # shipped; rules.FAMILIES has more
BUILTIN: dict[str, str] = {
    **{name: "language" for name in LANGUAGE},
    **{f"rule_{f}": "reasoning" for f in RULE_FAMILIES},
}

Item = dict  # {"context": str, "choices": [str, ...], "gold": int}
_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]{3,}\b")


def path_of(name: str) -> Path:
    """Shipped JSONL file of built-in task ``name``."""
    if name not in BUILTIN:
        raise InputError(f"built-in task must be one of {sorted(BUILTIN)}; got {name!r}")
    return TASKS_DIR / f"{name}.jsonl"


def _mc_item(context: str, answer: str, wrong: list[str], rng: random.Random) -> Item:
    choices = [answer, *wrong]
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "gold": choices.index(answer)}


# ---------------------------------------------------------------- language (held-out text)


def _usable_lines(text: str) -> list[str]:
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()]


def _ok_line(line: str) -> bool:
    return 8 <= len(line.strip()) <= 100


def _line_at(doc: str, rng: random.Random, n_context: int = 3, n_after: int = 0) -> tuple[str, list[str], int] | None:
    """(context, lines, i): a random line index ``i`` with ``n_context`` lines before it and
    ``n_after`` after it, in a file of at least 8 non-blank lines; None when too short."""
    lines = _usable_lines(doc)
    if len(lines) < max(8, n_context + n_after + 1):
        return None
    i = rng.randrange(n_context, len(lines) - n_after)
    return "\n".join(lines[i - n_context : i]), lines, i


def typo_item(doc: str, rng: random.Random) -> Item | None:
    """Context: 3 non-blank lines; choices: the true next line and 3 distinct copies of it, each
    with one word of 4+ characters misspelled by swapping two adjacent different characters."""
    drawn = _line_at(doc, rng)
    if drawn is None:
        return None
    context, lines, i = drawn
    line = lines[i]
    words = list(_WORD.finditer(line))
    if not words or not _ok_line(line):
        return None
    wrong: list[str] = []
    for _ in range(50):
        m = rng.choice(words)
        w, j = m.group(), rng.randrange(len(m.group()) - 1)
        if w[j] == w[j + 1]:
            continue
        typo = line[: m.start()] + w[:j] + w[j + 1] + w[j] + w[j + 2 :] + line[m.end() :]
        if typo not in wrong:
            wrong.append(typo)
        if len(wrong) == N_CHOICES - 1:
            return _mc_item(context, "\n" + line, ["\n" + t for t in wrong], rng)
    return None


def swapped_words_item(doc: str, rng: random.Random) -> Item | None:
    """Context: 3 non-blank lines; choices: the true next line and that line with two of its
    distinct whitespace-separated words swapped in place (all spacing kept)."""
    drawn = _line_at(doc, rng)
    if drawn is None:
        return None
    context, lines, i = drawn
    line = lines[i]
    words = list(re.finditer(r"\S+", line))
    if len(words) < 3 or not _ok_line(line):
        return None
    a, b = sorted(rng.sample(range(len(words)), 2))
    wa, wb = words[a], words[b]
    if wa.group() == wb.group():
        return None
    swapped = line[: wa.start()] + wb.group() + line[wa.end() : wb.start()] + wa.group() + line[wb.end() :]
    return _mc_item(context, "\n" + line, ["\n" + swapped], rng)


def line_order_item(doc: str, rng: random.Random) -> Item | None:
    """Context: 3 non-blank lines; choices: the next two lines in order and in swapped order."""
    drawn = _line_at(doc, rng, n_after=1)
    if drawn is None:
        return None
    context, lines, i = drawn
    first, second = lines[i], lines[i + 1]
    if first.strip() == second.strip() or not (_ok_line(first) and _ok_line(second)):
        return None
    return _mc_item(context, f"\n{first}\n{second}", [f"\n{second}\n{first}"], rng)


LANGUAGE_MAKERS: dict[str, Callable[[str, random.Random], Item | None]] = {
    "typo": typo_item,
    "swapped_words": swapped_words_item,
    "line_order": line_order_item,
}


def language_task(name: str, docs: list[tuple[str, str]], n: int = N_ITEMS) -> list[Item]:
    """``n`` distinct items of language task ``name`` from ``docs`` ((name, text) pairs)."""
    rng, make = random.Random(f"bench:{name}"), LANGUAGE_MAKERS[name]
    items: list[Item] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        item = make(rng.choice(docs)[1], rng)
        key = json.dumps([item["context"], item["choices"][item["gold"]]]) if item else ""  # one question once
        if item and key not in seen:
            seen.add(key)
            items.append(item)
        if len(items) == n:
            return items
    raise ValueError(f"could not draw {n} distinct {name} items from {len(docs)} documents")


# ---------------------------------------------------------------- reasoning (rule families)


def rule_task(family: str, n: int = N_ITEMS) -> list[Item]:
    """``n`` items of rule ``family``: the rule's answer among itself and 3 distractors."""
    from interp.organism import rules

    rng = random.Random(f"bench:rule_{family}")
    items = []
    for _ in range(n):
        context, answer = rules.FAMILIES[family](rng)
        items.append(_mc_item(context, answer, rules.distractors(family, context, answer, rng, N_CHOICES - 1), rng))
    return items


# ---------------------------------------------------------------- writing


def generate(name: str, n: int = N_ITEMS, docs: list[tuple[str, str]] | None = None) -> list[Item]:
    """Items of built-in task ``name`` (``docs`` defaults to the organism's held-out files)."""
    if BUILTIN.get(name) == "reasoning":
        return rule_task(name.removeprefix("rule_"), n)
    if docs is None:
        from interp.organism.corpus import documents

        docs = documents("heldout")
    path_of(name)  # validates the name
    return language_task(name, docs, n)


def write_jsonl(items: list[Item], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
    return path


def heldout_fingerprint(docs: list[tuple[str, str]]) -> str:
    """sha256 over the held-out documents' names and texts (what the language tasks depend on)."""
    h = hashlib.sha256()
    for name, text in docs:
        h.update(name.encode() + b"\0" + text.encode("utf-8", errors="replace") + b"\0")
    return h.hexdigest()


def write_builtin(out_dir: Path = TASKS_DIR, n: int = N_ITEMS) -> list[Path]:
    """Generate every built-in task into ``out_dir`` as ``<name>.jsonl``, plus ``manifest.json``
    (Python version and fingerprint of the held-out text, sha256 of each file)."""
    from interp.organism.corpus import documents

    docs = documents("heldout")
    paths = [write_jsonl(generate(name, n, docs), out_dir / f"{name}.jsonl") for name in BUILTIN]
    manifest = {
        "python": platform.python_version(),
        "heldout_documents": len(docs),
        "heldout_fingerprint": heldout_fingerprint(docs),
        "n_items": n,
        "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return paths


if __name__ == "__main__":
    write_builtin()
