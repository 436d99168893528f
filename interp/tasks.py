"""Built-in multiple-choice tasks for the model organism: a registry and their generator.

"language" tasks come from held-out real text (``interp.organism.corpus.documents("heldout")``,
files never trained on):

    next_line      the true next line among 4 lines of the same file (context: 4 lines before it)
    next_word      the true next identifier among 4 identifiers of the same file

Distractors are drawn from the file's occurrences, weighted like the true answer, so a model that
knows only how frequent a line or word is stays at chance.
    swapped_words  the true line vs the same line with two of its words swapped

"reasoning" tasks come from the rule families of ``interp.organism.rules`` (one task per family,
the true answer among itself and 3 distractors of the same form, ``rules.distractors``):
``rule_progression``, ``rule_brackets``, ``rule_copy``, ``rule_count``, ``rule_successor``. The
rules' input spaces are small (``count`` has 9 contexts), so reasoning items may coincide with
training instances; what is measured is applying the rule, not recalling unseen text.

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
LANGUAGE = ("next_line", "next_word", "swapped_words")
RULE_FAMILIES = ("progression", "brackets", "copy", "count", "successor")
BUILTIN: dict[str, str] = {
    **{name: "language" for name in LANGUAGE},
    **{f"rule_{f}": "reasoning" for f in RULE_FAMILIES},
}

Item = dict  # {"context": str, "choices": [str, ...], "gold": int}
_IDENT = re.compile(r"(?<= )[A-Za-z_][A-Za-z0-9_]{2,}")


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


def _draw_distinct(pool: list[str], exclude: str, k: int, rng: random.Random) -> list[str] | None:
    """``k`` distinct values drawn from the occurrences in ``pool`` (so with the same frequency
    weighting as the true answer, which leaves a unigram prior at chance), none equal to
    ``exclude``; None when the pool has fewer than ``k`` distinct other values."""
    others = [x for x in pool if x != exclude]
    if len(set(others)) < k:
        return None
    out: list[str] = []
    while len(out) < k:
        x = rng.choice(others)
        if x not in out:
            out.append(x)
    return out


def next_line_item(doc: str, rng: random.Random) -> Item | None:
    """Context: 4 non-blank lines; choices: ``"\\n" + line`` for the true next line and 3 other
    distinct lines of the same file. None when the drawn position does not qualify."""
    lines = _usable_lines(doc)
    if len(lines) < 12:
        return None
    i = rng.randrange(4, len(lines))
    wrong = _draw_distinct([ln for ln in lines[4:] if _ok_line(ln)], lines[i], N_CHOICES - 1, rng)
    if not _ok_line(lines[i]) or wrong is None:
        return None
    return _mc_item("\n".join(lines[i - 4 : i]), "\n" + lines[i], ["\n" + w for w in wrong], rng)


def next_word_item(doc: str, rng: random.Random) -> Item | None:
    """Context: up to 6 lines ending just before a space-preceded identifier; choices: ``" " +
    identifier`` for it and 3 other identifiers of the same file."""
    matches = list(_IDENT.finditer(doc))
    if len(matches) < 20:
        return None
    m = rng.choice(matches)
    start = m.start()
    for _ in range(6):
        start = max(0, doc.rfind("\n", 0, start))
        if start == 0:
            break
    context = doc[start : m.start() - 1].lstrip("\n")
    wrong = _draw_distinct([x.group() for x in matches], m.group(), N_CHOICES - 1, rng)
    if not context.strip() or wrong is None:
        return None
    return _mc_item(context, " " + m.group(), [" " + w for w in wrong], rng)


def swapped_words_item(doc: str, rng: random.Random) -> Item | None:
    """Context: 3 non-blank lines; choices: the true next line and that line with two of its
    distinct whitespace-separated words swapped (indentation kept)."""
    lines = _usable_lines(doc)
    if len(lines) < 8:
        return None
    i = rng.randrange(3, len(lines))
    line = lines[i]
    indent, words = line[: len(line) - len(line.lstrip())], line.split()
    if len(words) < 3 or not _ok_line(line):
        return None
    a, b = rng.sample(range(len(words)), 2)
    if words[a] == words[b]:
        return None
    words[a], words[b] = words[b], words[a]
    swapped = indent + " ".join(words)
    if swapped == line:
        return None
    return _mc_item("\n".join(lines[i - 3 : i]), "\n" + line, ["\n" + swapped], rng)


LANGUAGE_MAKERS: dict[str, Callable[[str, random.Random], Item | None]] = {
    "next_line": next_line_item,
    "next_word": next_word_item,
    "swapped_words": swapped_words_item,
}


def language_task(name: str, docs: list[tuple[str, str]], n: int = N_ITEMS) -> list[Item]:
    """``n`` distinct items of language task ``name`` from ``docs`` ((name, text) pairs)."""
    rng, make = random.Random(f"bench:{name}"), LANGUAGE_MAKERS[name]
    items: list[Item] = []
    seen: set[str] = set()
    for _ in range(200 * n):
        item = make(rng.choice(docs)[1], rng)
        key = json.dumps(item, sort_keys=True) if item else ""
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
