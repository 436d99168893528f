"""Silence third-party notices that reach stderr on every run (imported by ``interp/__init__``).

With HF_HUB_OFFLINE=1 (how the pipeline and tests run), importing a GPT-Neo or GPT-NeoX model
class makes transformers probe the Hub's flash-attention kernels (``kernels-community/flash-attn4``,
``vllm-flash-attn3``, ``flash-attn2``) through the ``kernels`` package, which logs one WARNING per
kernel on the ``kernels._internals.hf_hub`` logger: "Skipping publisher trust check for '...'
because Hugging Face Hub is in offline mode." The probe then fails quietly (the kernels are not
cached, and we run on CPU), so the notice says nothing about our run. Only that message is dropped:
other records of that logger, every other logger, our own warnings and errors are untouched.
A filter on a logger by name needs no import of ``kernels`` and holds whenever it is imported.
"""

from __future__ import annotations

import logging

_OFFLINE_TRUST_NOTICE = ("kernels._internals.hf_hub", "Skipping publisher trust check for ", "Hugging Face Hub is in offline mode")


class _DropOfflineTrustNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        _, start, end = _OFFLINE_TRUST_NOTICE
        return not (record.levelno == logging.WARNING and msg.startswith(start) and end in msg)


_logger = logging.getLogger(_OFFLINE_TRUST_NOTICE[0])
if not any(isinstance(f, _DropOfflineTrustNotice) for f in _logger.filters):
    _logger.addFilter(_DropOfflineTrustNotice())
