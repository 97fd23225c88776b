"""lm-eval's own ``hf`` model over transformers' loading of an export: what ``bitnet`` is checked against.

transformers' ``from_pretrained(dtype=float32)`` on a packed bitnet export still keeps the unpacked
ternary weights and other non-quantized tensors in bf16 (and then fails on mixed dtypes), so the
model is loaded here and cast to float32 before it is handed to lm-eval's ``HFLM``. Set
``TORCHDYNAMO_DISABLE=1`` before importing transformers: its BitNet quantizers are wrapped in
``torch.compile``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_transformers_fp32", "hf_lm"]


def load_transformers_fp32(export_dir: str | Path) -> Any:
    """``transformers.AutoModelForCausalLM`` of the export, every floating tensor in float32, eval mode."""
    import torch
    import transformers

    tm = transformers.AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32).eval()
    for t in list(tm.parameters()) + list(tm.buffers()):
        if t.is_floating_point():
            t.data = t.data.float()
    return tm


def hf_lm(export_dir: str | Path, batch_size: int = 1) -> Any:
    """lm-eval's ``HFLM`` on the export (float32, CPU)."""
    import transformers
    from lm_eval.models.huggingface import HFLM

    tok = transformers.AutoTokenizer.from_pretrained(str(export_dir))
    return HFLM(pretrained=load_transformers_fp32(export_dir), tokenizer=tok, batch_size=batch_size, device="cpu")
