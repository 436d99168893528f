"""lm-evaluation-harness adapter: a local YAML task run by the harness itself on ``BridgeLM``
must give the same acc / acc_norm as our own scorer on the same items, under a bypass too.
Skipped (never passed) when lm-eval is not installed."""

import json
import math

import pytest

from interp import benchmarks as B
from interp import tasks as T
from interp.interventions import AttentionBypass
from interp.models import load_model
from interp.tiny import make_tiny_model

pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -e '.[lmeval]')")

TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: gold
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory):
    """Two local harness tasks made from shipped items (one rule task, one language task)."""
    folder = tmp_path_factory.mktemp("lmeval_tasks")
    names = []
    for source in ("rule_count", "typo"):
        items = T.path_of(source).read_text().splitlines()[:12]
        data = folder / f"{source}.jsonl"
        data.write_text("\n".join(items) + "\n")
        name = f"local_{source}"
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data))
        names.append((name, data))
    return folder, names


@pytest.mark.parametrize("arch", ["neox", "neo"])
def test_harness_on_bridge_equals_our_scorer(local_tasks, tmp_path_factory, monkeypatch, arch):
    from interp.lm_eval_adapter import harness_accuracy

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
    folder, names = local_tasks
    model = load_model(make_tiny_model(tmp_path_factory.mktemp(arch), arch, seed=4, n_ctx=256))
    configs = {"baseline": [], "block:1": [AttentionBypass(1)]}
    got = harness_accuracy(model, [n for n, _ in names], configs, include_path=str(folder))
    assert len(got) == len(configs) * len(names)
    for config, ivs in configs.items():
        for name, data in names:
            ours = B.evaluate_task(model, B.load_task(data, name=name), ivs, progress=False)
            row = got[(got.config == config) & (got.task == name)].iloc[0]
            assert math.isclose(row.acc, ours["acc"], abs_tol=1e-12), (config, name)
            assert math.isclose(row.acc_norm, ours["acc_norm"], abs_tol=1e-12), (config, name)


def test_bridge_lm_rolling_loglikelihood_equals_our_perplexity(tmp_path):
    from lm_eval.api.instance import Instance

    from interp.lm_eval_adapter import BridgeLM

    model = load_model(make_tiny_model(tmp_path, "neox", seed=4, n_ctx=16))
    text = "import os\nprint(os.getcwd())\n" * 4  # longer than the 16-token window
    lm = BridgeLM(model, [AttentionBypass(0)])
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    want = B.perplexity(model, [text], [AttentionBypass(0)], progress=False)["nll"]
    assert got == pytest.approx(-want, rel=1e-9)


def test_bridge_lm_generate_until_equals_hf_greedy_cut_at_the_stop_string(tmp_path):
    """``generate_until`` under a bypass: HF greedy decoding with the reference bypass, decoded
    and cut before the first stop string, as the harness expects."""
    import torch
    from lm_eval.api.instance import Instance
    from reference import HFBypass, hf_greedy, load_hf

    from interp.lm_eval_adapter import BridgeLM

    folder = make_tiny_model(tmp_path, "neox", seed=4, n_ctx=64)
    model, hf = load_model(folder), load_hf(folder)
    context = "def parse(self, text):\n    return"
    ctx = model.tokenizer.encode(context, add_special_tokens=False)
    with torch.no_grad(), HFBypass(hf, [1]):
        full = model.tokenizer.decode(hf_greedy(hf, torch.tensor([ctx]), 12)[0].tolist(), skip_special_tokens=True)
    stop = full[3:5]  # a stop string that occurs in the continuation
    assert len(stop) == 2 and full.index(stop) > 0
    lm = BridgeLM(model, [AttentionBypass(1)])
    got = lm.generate_until([Instance("generate_until", {}, (context, {"until": [stop], "max_gen_toks": 12}), 0),
                             Instance("generate_until", {}, (context, {"until": ["\x00never"], "max_gen_toks": 12}), 1)])
    assert got == [full[: full.index(stop)], full]


@pytest.mark.parametrize("max_len, context_len", [(8, 1), (8, 3), (8, 8), (5, 2)])
def test_rolling_windows_equal_the_harness_windows(max_len, context_len):
    """``rolling_windows`` equals lm-eval's own ``get_rolling_token_windows`` followed by
    ``make_disjoint_window``, for lengths around the window size."""
    import random

    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    rng = random.Random(max_len * 10 + context_len)
    for n in [0, 1, max_len - 1, max_len, max_len + 1, 3 * max_len + 2, 40]:
        tokens = [rng.randrange(1, 500) for _ in range(n)]
        want = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 0, max_len, context_len)]
        assert [(list(a), list(b)) for a, b in B.rolling_windows(tokens, 0, max_len, context_len)] == \
            [(list(a), list(b)) for a, b in want], n  # fmt: skip


def test_multi_window_perplexity_equals_hf_over_the_harness_windows(tmp_path):
    """The total NLL of a text longer than the context, against the HF model scoring each of the
    harness's windows (float64 log-softmax), under a bypass (reference hook on the HF model)."""
    import torch
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
    from reference import HFBypass, load_hf

    folder = make_tiny_model(tmp_path, "neox", seed=4, n_ctx=16)
    model, hf = load_model(folder), load_hf(folder)
    text = "import os\nprint(os.getcwd())\n" * 4
    tokens = model.tokenizer.encode(text, add_special_tokens=False)
    assert len(tokens) > 16
    want = 0.0
    with HFBypass(hf, [0]), torch.no_grad():
        for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(tokens, model.tokenizer.eos_token_id, 16, 1)):
            seq = torch.tensor([list(ctx) + list(cont)])
            logp = torch.log_softmax(hf(seq).logits[0, :-1].double(), -1)
            targets = seq[0, 1:]
            want -= float(logp[-len(cont):].gather(-1, targets[-len(cont):, None]).sum())
    got = B.perplexity(model, [text], [AttentionBypass(0)], progress=False)
    assert got["nll"] == pytest.approx(want, rel=1e-5)
    assert got["n_tokens"] == len(tokens)
