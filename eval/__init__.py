"""bitnet.eval: lm-eval on the C++ engine, offline task data, and perplexity.

Importing this package registers the lm-eval model ``bitnet``
(``model_args="pretrained=DIR[,threads=N,batch_size=N,backend=engine|torch]"``).

- :func:`run_eval` (``bitnet eval``): lm-eval's ``simple_evaluate`` on a model, hub or local data.
- :func:`perplexity` (``bitnet perplexity``): sliding-window perplexity of a text file.
- :class:`BitNetLM`: the lm-eval model; :mod:`bitnet.eval.backends`: the engine and the reference.
"""

from bitnet.deps import require

require("lm_eval", "bitnet.eval")  # one line naming the package, not a traceback from deep inside lm.py

from .api import results_table, run_eval, write_results  # noqa: E402
from .backends import EngineBackend, TorchBackend, load_backend  # noqa: E402
from .lm import BitNetLM  # noqa: E402
from .perplexity import perplexity, sliding_window_nll  # noqa: E402

__all__ = [
    "run_eval",
    "results_table",
    "write_results",
    "perplexity",
    "sliding_window_nll",
    "BitNetLM",
    "EngineBackend",
    "TorchBackend",
    "load_backend",
]
