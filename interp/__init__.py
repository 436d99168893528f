"""interp: localize memorization in language models through TransformerLens hook points.

The core method is the attention bypass of Menta, Agrawal and Agarwal (NAACL 2025,
arXiv 2501.05078): in a chosen block, every token attends only to itself while the layer
norms, value/output projections, MLP and residual connections are kept.
"""

import interp._quiet  # noqa: F401  (side effect: silences third-party notices on stderr)
from interp.interventions import (
    AttentionBypass,
    Intervention,
    MeanAblation,
    ZeroAblation,
    apply,
)
from interp.mitigate import load_interventions
from interp.models import load_model

__all__ = [
    "AttentionBypass",
    "Intervention",
    "MeanAblation",
    "ZeroAblation",
    "apply",
    "load_interventions",
    "load_model",
]
__version__ = "0.1.0"
