"""``run_eval``: lm-eval's ``simple_evaluate`` on a bitnet model, hub tasks or local files."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .backends import BACKENDS

__all__ = ["run_eval", "results_table", "write_results", "hub_address", "hub_reachable"]

# A TCP connect to a reachable hub (or proxy) takes well under a second; without this check the
# datasets library spends about 40 s retrying before it reports an unreachable hub.
HUB_CONNECT_TIMEOUT_S = 2.0
DEFAULT_HUB = "https://huggingface.co"


def hub_address() -> tuple[str, int]:
    """``(host, port)`` the data downloads connect to: the HTTPS proxy when one is set, else the hub
    (``$HF_ENDPOINT``, default huggingface.co)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or DEFAULT_HUB)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """True when a TCP connection to :func:`hub_address` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection(hub_address(), timeout=timeout):
            return True
    except OSError:  # refused, unreachable network, unknown host, timed out
        return False


def _offline_mode() -> bool:
    """The user asked the hub libraries to use only their caches (no connection is attempted)."""
    return any(os.environ.get(k, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def run_eval(
    model_dir: str | Path,
    tasks: str | list[str],
    limit: int | float | None = None,
    data_dir: str | Path | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 1,
    backend: str = "engine",
    threads: int | None = None,
    prefix_reuse: bool = True,
    log_samples: bool = False,
    output: str | Path | None = None,
    seed: int = 1234,
) -> dict[str, Any]:
    """Score ``model_dir`` on lm-eval ``tasks`` with the ``bitnet`` model; returns lm-eval's results dict.

    ``data_dir`` (layout of ``../shared/data``) runs the tasks from local files through
    :mod:`bitnet.eval.tasks`; without it lm-eval's standard tasks read the hub. ``limit`` caps the
    documents per (sub)task. ``output`` also writes the JSON (atomically). ``log_samples`` keeps
    per-document records under ``"samples"``.

    Raises:
        ValueError: unknown task names or backend, bad numbers.
        FileNotFoundError: missing model dir, tokenizer.json, or data dir / data files.
        IsADirectoryError: ``output`` is a directory.
        ConnectionError: no ``data_dir`` and the hub is unreachable (checked within
            :data:`HUB_CONNECT_TIMEOUT_S`, unless ``HF_HUB_OFFLINE`` asks for the cache only).
    """
    from lm_eval import simple_evaluate

    from . import lm as _lm  # noqa: F401  registers the "bitnet" model
    from .lm import BitNetLM
    from .tasks import check_task_names, local_task_dir, parse_tasks, task_manager

    names = parse_tasks(tasks)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise ValueError(f"num_fewshot must be >= 0, got {num_fewshot}")
    if output is not None and Path(output).is_dir():  # refused now, not after the whole evaluation has run
        raise IsADirectoryError(f"{output}: is a directory; give the results .json file to write")
    if data_dir is None and not _offline_mode() and not hub_reachable():
        host, port = hub_address()
        raise ConnectionError(f"{host}:{port} is not reachable and without --data-dir the tasks download their "
                              "data from the hub: pass --data-dir DIR (local data in ../shared/data's layout), "
                              "or set HF_HUB_OFFLINE=1 to use the datasets cache")
    with contextlib.ExitStack() as stack:
        task_dir = None
        if data_dir is not None:
            task_dir = stack.enter_context(local_task_dir(data_dir))
            # local JSON files only: do not let datasets try the network for anything
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        stack.enter_context(_quiet_git_hash())
        manager = task_manager(task_dir)
        check_task_names(names, manager, offline=task_dir is not None)
        model = BitNetLM(model_dir, backend=backend, threads=threads, batch_size=batch_size,
                         prefix_reuse=prefix_reuse, seed=seed)
        try:
            results = simple_evaluate(
                model=model,
                tasks=names,
                num_fewshot=num_fewshot,
                limit=limit,
                task_manager=manager,
                log_samples=log_samples,
                bootstrap_iters=0,  # stderr by bootstrap costs minutes on CPU; lm-eval then reports N/A
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
        except ConnectionError as e:  # datasets could not reach the hub (the default data source)
            if data_dir is not None:
                raise
            raise ConnectionError(f"{e}; without --data-dir the tasks download their data from the hub: "
                                  "pass --data-dir DIR (e.g. ../shared/data) to run from local files") from None
    if results is None:  # simple_evaluate returns None only on non-zero ranks; we run one process
        raise RuntimeError("lm-eval returned no results")
    results["config"]["model"] = "bitnet"
    results["config"]["model_args"] = {"pretrained": str(model_dir), "backend": backend, "threads": threads,
                                       "prefix_reuse": prefix_reuse, "data_dir": str(data_dir) if data_dir else None}
    results["bitnet_stats"] = dict(model.stats)
    if output is not None:
        write_results(results, output)
    return results


@contextlib.contextmanager
def _quiet_git_hash():
    """lm-eval records ``git describe`` of the working directory in its results and lets git print
    "fatal: not a git repository" to the terminal outside a checkout. We swap in the same lookup
    with git's stderr silenced for the call (a deliberate patch of lm-eval's evaluator module; if a
    later lm-eval drops the function, nothing is patched)."""
    import subprocess

    import lm_eval.evaluator as evaluator

    def quiet() -> str | None:
        try:
            run = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=False)
        except OSError:  # no git
            return None
        return (run.stdout.strip() or None) if run.returncode == 0 else None

    before = getattr(evaluator, "get_git_commit_hash", None)
    if before is None:
        yield
        return
    evaluator.get_git_commit_hash = quiet
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = before


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's own results table (and the groups table when there are groups)."""
    from lm_eval.utils import make_table

    table = make_table(results)
    if results.get("groups"):
        table += "\n" + make_table(results, "groups")
    return table


def write_results(results: dict[str, Any], path: str | Path) -> Path:
    """Write ``results`` as JSON atomically (lm-eval's serializer for numpy values and the like)."""
    from lm_eval.utils import handle_non_serializable

    from bitnet.io import atomic_file

    path = Path(path)
    with atomic_file(path, "w") as f:
        json.dump(results, f, indent=2, default=handle_non_serializable, ensure_ascii=False)
    return path
