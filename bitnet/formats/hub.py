"""Model references: a local path, or a hub id ``owner/name[@revision]`` in huggingface_hub's cache.

Every command that takes a model (generate, chat, serve, eval, perplexity, bench, export,
``Engine(...)``, ``load_model(...)``) resolves it here:

1. an existing local path (directory or file) wins, even when it also looks like a hub id;
2. ``owner/name[@revision]`` is fetched with ``huggingface_hub.snapshot_download`` into its standard
   cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), only the files
   the engine reads (:data:`ALLOW_PATTERNS`), with huggingface_hub's progress bars;
   ``owner/name/FILE.gguf[@revision]`` fetches that one GGUF file;
3. with ``HF_HUB_OFFLINE=1`` nothing is downloaded: a cached snapshot is used as is, and a missing
   one is one line naming the id and the cache directory.

The environment is read at each call (not when huggingface_hub was imported), so a process that
sets ``HF_HUB_OFFLINE`` or ``HF_HUB_CACHE`` later is obeyed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["ALLOW_PATTERNS", "HubRef", "parse_hub_id", "hub_cache_dir", "hub_offline", "resolve_model"]

# What the engine and load_model read from a model repository (no pickles, no other formats).
ALLOW_PATTERNS = ["config.json", "generation_config.json", "model.safetensors", "model-*.safetensors",
                  "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "chat_template.jinja"]
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HUB_ID = re.compile(rf"^(?P<repo>{_PART}/{_PART})(?:/(?P<file>{_PART}\.gguf))?(?:@(?P<rev>[A-Za-z0-9._/-]+))?$")


class HubRef:
    """A parsed hub id: ``repo`` (owner/name), optional ``filename`` (one .gguf) and ``revision``."""

    def __init__(self, repo: str, filename: str | None, revision: str | None) -> None:
        self.repo, self.filename, self.revision = repo, filename, revision

    def __str__(self) -> str:
        s = self.repo + (f"/{self.filename}" if self.filename else "")
        return s + (f"@{self.revision}" if self.revision else "")


def parse_hub_id(ref: str) -> HubRef | None:
    """``owner/name[/FILE.gguf][@revision]`` -> HubRef; anything else (a path) -> None."""
    m = _HUB_ID.match(ref)
    if m is None or ref.startswith((".", "/", "~")):
        return None
    return HubRef(m["repo"], m["file"], m["rev"])


def hub_cache_dir() -> Path:
    """huggingface_hub's cache directory as the environment names it now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model(ref: str | Path) -> Path:
    """A local path for the model ``ref`` names (see the module docstring for the rules).

    Raises:
        FileNotFoundError: one line: no such local path (and not a hub id), or a hub id that is
        neither cached nor downloadable (offline, unknown repository or revision, no network),
        naming the id and the cache directory.
    """
    p = Path(ref).expanduser()
    if p.exists():
        return p
    hub = parse_hub_id(str(ref))
    if hub is None:
        raise FileNotFoundError(f"{p}: model directory not found (no directory or .gguf file there, and "
                                f"{str(ref)!r} is not a hub id owner/name[@revision])")
    return _fetch(hub)


def _fetch(hub: HubRef) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache, offline = hub_cache_dir(), hub_offline()
    try:
        if hub.filename:
            return Path(hf_hub_download(hub.repo, hub.filename, revision=hub.revision, cache_dir=cache,
                                        local_files_only=offline))
        path = Path(snapshot_download(hub.repo, revision=hub.revision, cache_dir=cache, local_files_only=offline,
                                      allow_patterns=ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "it could not be downloaded (no network?)"
        raise FileNotFoundError(f"{hub}: not in the hub cache at {cache} and {why}; download it once online "
                                f"(or pass a local directory)") from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{hub}: cannot fetch it into the hub cache at {cache} ({first})") from None
    if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise FileNotFoundError(f"{hub}: the cached snapshot {path} holds no config.json or .gguf file; for a GGUF "
                                f"repository name the file: {hub.repo}/FILE.gguf")
    return path
