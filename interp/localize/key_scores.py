"""Continuous, canary-specific scores of removing each component, for scoring localization
methods on the answer key (docs/answer_key.md): the increase in the injected secrets' NLL
minus the increase in held-out NLL, both per token. Exact match is all or nothing on a few
dozen canaries, so it is reported beside these scores but never ranks by itself.

- ``secret_nll``: per row, the mean teacher-forced NLL (nats) of the secret's tokens, the first
  ``n_secret[i]`` tokens of row i's suffix (the rest of a canary's suffix is a closing line
  that the format alone predicts).
- ``removal_scores``: for every component, that score under its removal (attention bypass or
  zero ablation), with both increases and the exact match of the secrets' rows beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from interp import metrics
from interp.errors import InputError, check_finite
from interp.generation import teacher_forced_logits
from interp.interventions import Intervention
from interp.localize.knockout import knockout_interventions, token_nll_per_row

KEY_SCORE_COLUMNS = ["component", "secret_nll_increase", "heldout_nll_increase", "score", "secret_tf_exact"]


def secret_nll(model, rows: np.ndarray, n_secret: Sequence[int], prefix_len: int,
               interventions: Sequence[Intervention] = (), *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per row: mean NLL (nats) over the secret's tokens, and whether every suffix token is the
    teacher-forced argmax (greedy decoding then reproduces the suffix exactly)."""
    rows = np.asarray(rows)
    n_secret = np.asarray(n_secret, dtype=int)
    suffix_len = rows.shape[1] - prefix_len
    if len(n_secret) != len(rows) or (n_secret < 1).any() or (n_secret > suffix_len).any():
        raise InputError(f"n_secret needs one count in 1..{suffix_len} per row")
    t = torch.as_tensor(rows, dtype=torch.long)
    logits = metrics.suffix_slice(teacher_forced_logits(model, t, interventions, batch_size=batch_size), prefix_len, suffix_len)
    check_finite(logits, "logits on the secrets' rows")
    target = t[:, prefix_len:]
    nll = -torch.log_softmax(logits.double(), -1).gather(-1, target[..., None])[..., 0]
    mask = torch.arange(suffix_len)[None, :] < torch.as_tensor(n_secret)[:, None]
    per_row = (nll * mask).sum(1) / mask.sum(1)
    exact = (logits.argmax(-1) == target).all(1)
    return per_row.numpy(), exact.numpy()


def removal_scores(model, rows: np.ndarray, n_secret: Sequence[int], prefix_len: int, heldout_rows: np.ndarray,
                   components: Sequence[str], *, how: str = "bypass", batch_size: int = 32) -> pd.DataFrame:  # fmt: skip
    """One row per component (``block:L`` or ``L{l}H{h}``): the increase in mean secret-token NLL
    and in mean held-out token NLL when it is removed, their difference ``score`` (higher = more
    specific to the secrets) and the secrets' teacher-forced exact match under the removal."""
    base_s, _ = secret_nll(model, rows, n_secret, prefix_len, batch_size=batch_size)
    base_h = token_nll_per_row(model, heldout_rows, batch_size=batch_size).mean()
    out = []
    for c in components:
        ivs = knockout_interventions([c], how)
        s, exact = secret_nll(model, rows, n_secret, prefix_len, ivs, batch_size=batch_size)
        h = token_nll_per_row(model, heldout_rows, ivs, batch_size=batch_size).mean()
        ds, dh = float(s.mean() - base_s.mean()), float(h - base_h)
        out.append({"component": c, "secret_nll_increase": ds, "heldout_nll_increase": dh, "score": ds - dh,
                    "secret_tf_exact": float(exact.mean())})  # fmt: skip
    return pd.DataFrame.from_records(out, columns=KEY_SCORE_COLUMNS)
