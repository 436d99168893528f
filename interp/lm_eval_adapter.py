"""Run EleutherAI lm-evaluation-harness tasks on a bridge with interventions active.

``BridgeLM`` is an ``lm_eval`` model (a ``TemplateLM``): the harness does its own prompt
building, context/continuation encoding (``TemplateLM._encode_pair``) and metric computation;
we only score token ids, under whatever interventions are installed, with the same scorer as
``interp.benchmarks`` (``loglikelihoods``, ``rolling_windows``) and generate greedily with
``interp.generation``. So harness tasks (PIQA, ARC, HellaSwag, LAMBADA, WinoGrande, or a local
YAML task) can be evaluated under a bypass exactly like the built-in JSONL tasks.

``lm-eval`` is optional (``pip install -e '.[lmeval]'``); its task data must be reachable (the
Hugging Face cache, or local files named by a task YAML under ``include_path``).

    from interp.lm_eval_adapter import harness_accuracy
    acc = harness_accuracy(model, ["piqa"], {"baseline": [], "block:20": [AttentionBypass(20)]}, limit=200)
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from interp import benchmarks as B
from interp.errors import InputError
from interp.generation import greedy_generate
from interp.interventions import Intervention

try:  # optional dependency
    from lm_eval.api.model import TemplateLM
except ImportError:  # pragma: no cover - exercised only without lm-eval
    TemplateLM = None


def _require_lm_eval() -> None:
    if TemplateLM is None:
        raise InputError("lm-eval is not installed; install it with: pip install -e '.[lmeval]'")


class _Base(TemplateLM if TemplateLM is not None else object):  # type: ignore[misc]
    pass


class BridgeLM(_Base):
    """An lm-eval model over a ``TransformerBridge``; ``interventions`` are active in every call."""

    backend = "causal"

    def __init__(self, model, interventions: Sequence[Intervention] = (), *, batch_size: int = 32,
                 progress: bool = False):  # fmt: skip
        _require_lm_eval()
        super().__init__()
        self.model = model
        self.tokenizer = model.tokenizer
        self.interventions = list(interventions)
        self.batch_size = batch_size
        self.progress = progress

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def max_length(self) -> int:
        return int(self.model.cfg.n_ctx)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # the harness's HF model adds no special tokens for GPT-NeoX / GPT-Neo (no BOS)
        return list(self.tokenizer.encode(string, add_special_tokens=bool(add_special_tokens)))

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        reqs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
        scores, greedy = B.loglikelihoods(self.model, reqs, self.interventions, batch_size=self.batch_size,
                                          progress=self.progress and not disable_tqdm)  # fmt: skip
        return [(float(s), bool(g)) for s, g in zip(scores, greedy, strict=True)]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in requests:
            (text,) = req.args
            windows = B.rolling_windows(self.tok_encode(text), self.eot_token_id, self.max_length)
            scores, _ = B.loglikelihoods(self.model, windows, self.interventions, batch_size=self.batch_size, progress=False)
            out.append(float(scores.sum()))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in requests:
            context, gen_kwargs = req.args
            gen_kwargs = dict(gen_kwargs)
            until = gen_kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id], skip_special_tokens=False)]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.pop("max_gen_toks", 256))
            if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0.0) or 0.0) > 0:
                raise InputError("BridgeLM generates greedily only; the task asks for sampling")
            ctx = self.tok_encode(context) or [self.eot_token_id]
            ctx = ctx[-max(1, self.max_length - max_new) :]
            max_new = min(max_new, self.max_length - len(ctx))
            new = greedy_generate(self.model, torch.tensor([ctx]), max_new, self.interventions)[0].tolist()
            text = self.tok_decode(new)
            cut = min((text.find(s) for s in until if s and s in text), default=len(text))
            out.append(text[:cut])
        return out


def harness_accuracy(
    model,
    tasks: Sequence[str],
    configs: dict[str, Sequence[Intervention]],
    *,
    limit: int | None = None,
    include_path: str | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> pd.DataFrame:
    """``config, task, acc, acc_norm`` (NaN where the task has no such metric) for each config,
    running ``lm_eval.simple_evaluate`` (zero-shot) on a ``BridgeLM`` with that config's
    interventions. ``include_path`` is a folder of extra task YAMLs (local tasks)."""
    _require_lm_eval()
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    rows = []
    for config, ivs in configs.items():
        lm = BridgeLM(model, ivs, batch_size=batch_size, progress=progress)
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=0, limit=limit,
                                      task_manager=manager, bootstrap_iters=0, log_samples=False)  # fmt: skip
        for task, metrics in res["results"].items():
            rows.append({"config": config, "task": task, "acc": metrics.get("acc,none", float("nan")),
                         "acc_norm": metrics.get("acc_norm,none", float("nan"))})  # fmt: skip
    return pd.DataFrame(rows, columns=["config", "task", "acc", "acc_norm"])
