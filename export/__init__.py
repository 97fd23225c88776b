"""bitnet.export: packed checkpoints (transformers' ``bitnet`` layout, GGUF) and importers.

- :func:`export_hf` writes transformers' packed ``autobitlinear`` layout (what 2B4T ships);
- :func:`export_gguf` writes a GGUF (TQ2_0 / TQ1_0) for llama.cpp's ``bitnet`` architecture;
- :func:`load_model` reads any of: our packed export, transformers-written packed ``bitlinear``
  checkpoints (inverse scale), ``online`` bf16 master-weight checkpoints, our model directories,
  training checkpoints and run directories.
"""

from .hf import export_hf, load_hf_dir, load_model, packed_state_dict, read_safetensors

__all__ = ["export_hf", "export_gguf", "load_model", "load_hf_dir", "packed_state_dict", "read_safetensors"]


def __getattr__(name: str):  # the gguf package is an optional extra: import it only when used
    if name == "export_gguf":
        from .gguf_export import export_gguf

        return export_gguf
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
