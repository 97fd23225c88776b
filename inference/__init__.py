"""bitnet.inference: the C++ CPU engine and its thin Python front.

    from bitnet.inference import Engine
    eng = Engine("out/export", threads=2)       # head="auto" | "f16" | "int8"
    eng.logits([1, 2, 3])                        # float32 (3, vocab)
    eng.generate("Once upon a time", max_new_tokens=32)
    eng.generate("Once upon a time", sampling=SamplingParams(temperature=0.8, top_p=0.95, seed=1, max_tokens=32))
"""

from ._C import available_isas, cpu_features, current_isa, set_isa
from .engine import AUTO_HEAD, HEAD_MODES, Engine, sample_next
from .sampling import SamplingParams

__all__ = ["Engine", "AUTO_HEAD", "HEAD_MODES", "SamplingParams", "sample_next", "cpu_features", "available_isas", "current_isa", "set_isa"]
