"""Read a ternary GGUF (bitnet.cpp's I2_S, upstream llama.cpp's TQ2_0 / TQ1_0) into a TernaryModel.

Architectures (``general.architecture``) and the FFN each engine computes for them:

- ``bitnet`` (upstream llama.cpp; the 2024 b1.58 models, our own GGUF export): SiLU-gated
  (``silu(gate) * up``), as llama.cpp's ``bitnet`` graph always computes it;
- ``bitnet-b1.58`` and the older ``bitnet-25`` (bitnet.cpp / ik_llama.cpp; BitNet b1.58 2B4T):
  ReLU²-gated (``relu(gate)^2 * up``), as their ``build_bitnet_158`` graph computes it.

Both have the attention and FFN sub-norms, NEOX (rotate-half) RoPE with Q/K rows unpermuted, and a
head tied to ``token_embd`` unless an ``output`` tensor is present. The load log says which FFN was
used and why.

Ternary tensors:

- ``TQ2_0`` / ``TQ1_0`` (and ``Q8_0`` / ``F16`` / ``F32`` fallbacks of narrow rows) are decoded with
  the ``gguf`` package (``gguf.quants.dequantize``); every row must then be one magnitude times
  {-1, 0, 1} (per-block ``d`` of a per-tensor-scale model all equal beta);
- ``I2_S`` (type 36 in bitnet.cpp's fork; the id collides with nothing the ``gguf`` package knows,
  so this module reads its bytes itself). Layout of bitnet.cpp's ``quantize_i2_s`` (x86, the
  ``ACT_PARALLEL`` layout its gemm-config.h selects, which is also the layout of its earlier
  releases), confirmed byte for byte against its ``llama-quantize``: the tensor's ``n = rows * cols``
  codes in row-major order are cut into blocks of 128; block ``b`` is 32 bytes, and element ``j`` of
  it sits in byte ``b*32 + j % 32`` at bits ``6 - 2*(j // 32)`` (and the one above). Code 0 = -1,
  1 = 0, 2 = +1 (3 is never written). After the ``n / 4`` code bytes comes one float32, the tensor's
  scale (its max |W|, i.e. beta for ternary input), then padding to ``n / 4 + 32`` bytes.
  (bitnet.cpp's ARM build uses blocks of 64 in 16 bytes, and its non-ACT_PARALLEL x86 build a 4-row
  interleave; neither is marked in the file: this reader reads the x86 default.)
  bitnet.cpp's ``llama-quantize`` writes this layout only when run with one thread (``llama-quantize
  IN OUT I2_S 1``, as its setup_env.py does): with more, a tensor over one chunk (16384 weights,
  whole rows) is cut into chunks written at 4x their offset, and the file holds chunk 0, its scale
  mid-tensor, then stale buffer bytes. Such a tensor shows a code 3 (a scale in [2^-31, 2) has one in
  its exponent byte) or a bad scale, and is refused with that advice.

Embeddings and the output head: F32 / F16 / BF16 are borrowed from the file mapping; any other
type (Q8_0, Q6_K, Q4_K, ...) is dequantized to float32 at load.

The tokenizer is built from the file's own vocabulary (``tokenizer.ggml.tokens`` / ``merges``:
a byte-level BPE with llama.cpp's pre-tokenizer split), and ``tokenizer.chat_template`` is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bitnet.config import BitNetConfig

from .description import LINEAR_NAMES, Table, TernaryLinear, TernaryModel
from .ternary import pack, row_scales_of_ternary

__all__ = ["ARCH_FFN", "I2_S", "read_gguf", "i2s_decode", "i2s_decode_reference", "i2s_encode"]

I2_S = 36  # bitnet.cpp's GGML_TYPE_I2_S
I2S_BLOCK = 128  # x86 block: 128 codes in 32 bytes
# arch -> (hidden_act, why): the FFN each engine's graph computes for that architecture
ARCH_FFN = {
    "bitnet": ("silu", "llama.cpp's 'bitnet' graph computes silu(gate) * up"),
    "bitnet-b1.58": ("relu2", "bitnet.cpp's 'bitnet-b1.58' graph (build_bitnet_158) computes relu(gate)^2 * up"),
    "bitnet-25": ("relu2", "bitnet.cpp's 'bitnet-25' graph (build_bitnet_158) computes relu(gate)^2 * up"),
}
_GGUF_LINEARS = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
_GGUF_NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.attn_sub_norm": "attn_sub_norm", "mlp.ffn_sub_norm": "ffn_sub_norm"}
# llama.cpp's pre-tokenizer regexes by tokenizer.ggml.pre (Llama-3's split also serves Falcon3)
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_SPLITS = {"llama-bpe": _LLAMA3_SPLIT, "llama3": _LLAMA3_SPLIT, "falcon3": _LLAMA3_SPLIT}


_I2S_CORRUPT = ("bitnet.cpp's llama-quantize writes a broken I2_S tensor when run with more than one thread; "
                "quantize with one: llama-quantize IN.gguf OUT.gguf I2_S 1")


def i2s_decode_reference(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, float]:
    """The readable form of :func:`i2s_decode`: bitnet.cpp's ``quantize_i2_s`` (x86) loop run backwards."""
    n = rows * cols
    q = np.zeros(n, np.int8)
    for i in range(n // I2S_BLOCK):
        for j in range(I2S_BLOCK):
            group_idx, group_pos = j // 32, j % 32
            q[i * I2S_BLOCK + j] = ((int(raw[i * 32 + group_pos]) >> (6 - 2 * group_idx)) & 3) - 1
    return q.reshape(rows, cols), float(raw[n // 4: n // 4 + 4].view(np.float32)[0])


def i2s_decode(raw: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, float]:
    """I2_S bytes (see module doc) -> (int8 codes - 1 in {-1, 0, 1} of shape (rows, cols), scale).

    Raises:
        ValueError: too few bytes, a size not a multiple of the 128-code block, a code 3, or a
            scale that is not a finite number >= 0.
    """
    n = rows * cols
    if n % I2S_BLOCK:
        raise ValueError(f"{rows}x{cols} = {n} codes is not a multiple of I2_S's {I2S_BLOCK}-code block")
    if raw.size < n // 4 + 4:
        raise ValueError(f"I2_S data holds {raw.size} bytes, {n // 4 + 4} needed")
    blocks = raw[: n // 4].reshape(-1, 32)  # (n/128, 32)
    shifts = np.array([6, 4, 2, 0], dtype=np.uint8)
    codes = (blocks[:, None, :] >> shifts[None, :, None]) & 3  # (n/128, 4 groups, 32): element g*32 + p
    if codes.size and codes.max() > 2:
        at = int(np.argmax(codes.reshape(-1) == 3))
        raise ValueError(f"I2_S code 3 (at weight {at // cols}, {at % cols}) is not a ternary value ({_I2S_CORRUPT})")
    scale = float(raw[n // 4: n // 4 + 4].view(np.float32)[0])
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"I2_S scale {scale} is not a finite number >= 0 ({_I2S_CORRUPT})")
    return (codes.reshape(rows, cols).astype(np.int8) - 1), scale


def i2s_encode(q: np.ndarray, scale: float) -> np.ndarray:
    """The inverse of :func:`i2s_decode` (for tests and tools): ``n / 4 + 32`` bytes."""
    n = q.size
    codes = (q.reshape(-1, 4, 32).astype(np.int16) + 1).astype(np.uint8)  # (n/128, 4, 32)
    blocks = (codes[:, 0] << 6) | (codes[:, 1] << 4) | (codes[:, 2] << 2) | codes[:, 3]
    out = np.zeros(n // 4 + 32, np.uint8)
    out[: n // 4] = blocks.reshape(-1)
    out[n // 4: n // 4 + 4] = np.frombuffer(np.float32(scale).tobytes(), np.uint8)
    return out


def _reader(path: Path) -> Any:
    """gguf.GGUFReader that also lists I2_S tensors (raw bytes) instead of failing on type 36."""
    import gguf
    from gguf.gguf_reader import ReaderTensor

    class Reader(gguf.GGUFReader):
        def _build_tensors(self, start_offs: int, fields: list) -> None:  # type: ignore[override]
            i2s = [f for f in fields if int(f.parts[4][0]) == I2_S]
            super()._build_tensors(start_offs, [f for f in fields if int(f.parts[4][0]) != I2_S])
            for f in i2s:
                _, name, _, dims, _, off = f.parts
                n = int(np.prod(dims))
                self.tensors.append(ReaderTensor(
                    name=str(bytes(name), encoding="utf-8"), tensor_type=I2_S, shape=dims, n_elements=n,
                    n_bytes=n // 4 + 32, data_offset=int(start_offs + off[0]),
                    data=self._get(int(start_offs + off[0]), np.uint8, n // 4 + 32), field=f))

    try:
        return Reader(str(path), "r")
    except (ValueError, KeyError, IndexError, OSError) as e:
        raise ValueError(f"{path}: not a readable GGUF file, truncated or damaged ({e})") from None


def _field(r: Any, key: str, default: Any = None) -> Any:
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def read_gguf(path: str | Path) -> TernaryModel:
    """Describe the ternary model in a GGUF file (see the module docstring).

    Raises:
        ValueError: one line naming the file and the key or tensor that is unsupported or wrong.
    """
    import gguf

    path = Path(path)
    r = _reader(path)
    arch = _field(r, "general.architecture")
    if arch not in ARCH_FFN:
        raise ValueError(f"{path}: general.architecture {arch!r} is not supported (supported: {', '.join(ARCH_FFN)})")
    tensors = {t.name: t for t in r.tensors}
    act, why = ARCH_FFN[arch]

    def key(name: str, default: Any = None, required: bool = True) -> Any:
        v = _field(r, f"{arch}.{name}", default)
        if v is None and required:
            raise ValueError(f"{path}: missing key {arch}.{name}")
        return v

    if "token_embd.weight" not in tensors:
        raise ValueError(f"{path}: missing tensor 'token_embd.weight'")
    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    vocab = int(tensors["token_embd.weight"].shape[1])
    head_dim = int(key("attention.key_length", hidden // max(heads, 1), required=False))
    try:
        cfg = BitNetConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=int(key("feed_forward_length")),
            num_hidden_layers=int(key("block_count")), num_attention_heads=heads,
            num_key_value_heads=int(key("attention.head_count_kv", heads, required=False)), head_dim=head_dim,
            hidden_act=act, max_position_embeddings=int(key("context_length", 2048, required=False)),
            rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5, required=False)),
            rope_theta=float(key("rope.freq_base", 10000.0, required=False)),
            tie_word_embeddings="output.weight" not in tensors,
            bos_token_id=_field(r, "tokenizer.ggml.bos_token_id"), eos_token_id=_field(r, "tokenizer.ggml.eos_token_id"),
            use_sub_norms=True,
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    if heads * head_dim != hidden:
        raise ValueError(f"{path}: the attention sub-norm needs head_count * key_length == embedding_length")
    used = set()

    def tensor(name: str) -> Any:
        if name not in tensors:
            raise ValueError(f"{path}: missing tensor {name!r} ({arch} layout)")
        used.add(name)
        return tensors[name]

    def floats(name: str, shape: tuple[int, ...]) -> np.ndarray:
        t = tensor(name)
        got = tuple(int(d) for d in reversed(t.shape.tolist()))
        if got != shape:
            raise ValueError(f"{path}: tensor {name} has shape {list(got)}, the header's sizes say {list(shape)}")
        try:
            return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        except (NotImplementedError, ValueError, KeyError) as e:
            raise ValueError(f"{path}: tensor {name} of type {t.tensor_type!r} cannot be decoded ({e})") from None

    def table(name: str) -> Table:
        t = tensor(name)
        kind = gguf.GGMLQuantizationType(t.tensor_type)
        shape = (vocab, hidden)
        if tuple(int(d) for d in reversed(t.shape.tolist())) != shape:
            raise ValueError(f"{path}: tensor {name} has shape {list(reversed(t.shape.tolist()))}, expected {list(shape)}")
        if kind in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            return Table(np.asarray(t.data).reshape(shape), "f16" if kind == gguf.GGMLQuantizationType.F16 else "f32")
        if kind == gguf.GGMLQuantizationType.BF16:
            return Table(np.asarray(t.data).view(np.uint16).reshape(shape), "bf16")
        return Table(floats(name, shape), "f32")  # Q8_0, Q6_K, ...: dequantized once

    embed = table("token_embd.weight")
    lm_head = None if cfg.tie_word_embeddings else table("output.weight")
    C, I = cfg.hidden_size, cfg.intermediate_size
    final_norm = floats("output_norm.weight", (C,))
    layer_norms = [{ours: floats(f"blk.{i}.{theirs}.weight", (I if ours == "mlp.ffn_sub_norm" else C,))
                    for ours, theirs in _GGUF_NORMS.items()} for i in range(cfg.num_hidden_layers)]
    q_out, kv_out = heads * head_dim, cfg.num_key_value_heads * head_dim
    shapes = {"self_attn.q_proj": (q_out, C), "self_attn.k_proj": (kv_out, C), "self_attn.v_proj": (kv_out, C),
              "self_attn.o_proj": (C, q_out), "mlp.gate_proj": (I, C), "mlp.up_proj": (I, C), "mlp.down_proj": (C, I)}
    types: dict[str, int] = {}
    for i in range(cfg.num_hidden_layers):
        for lin, g in _GGUF_LINEARS.items():
            t = tensor(f"blk.{i}.{g}.weight")
            types[gguf.GGMLQuantizationType(t.tensor_type).name if t.tensor_type != I2_S else "I2_S"] = 1
            if f"blk.{i}.{g}.scale" in tensors:
                used.add(f"blk.{i}.{g}.scale")

    def linear(i: int, lin: str) -> TernaryLinear:
        name = f"blk.{i}.{_GGUF_LINEARS[lin]}.weight"
        t = tensors[name]
        rows, cols = shapes[lin]
        if tuple(int(d) for d in reversed(t.shape.tolist())) != (rows, cols):
            raise ValueError(f"{path}: tensor {name} has shape {list(reversed(t.shape.tolist()))}, expected {[rows, cols]}")
        if t.tensor_type == I2_S:
            try:
                q, beta = i2s_decode(np.asarray(t.data), rows, cols)
            except ValueError as e:
                raise ValueError(f"{path}: tensor {name}: {e}") from None
            row_scale = None
        else:
            w = floats(name, (rows, cols))
            scales = row_scales_of_ternary(w)
            if scales is None or not np.isfinite(w).all():
                raise ValueError(f"{path}: tensor {name} ({gguf.GGMLQuantizationType(t.tensor_type).name}) is not "
                                 "ternary: a row holds more than one nonzero magnitude")
            q = np.sign(w).astype(np.int8)
            beta, row_scale = (float(scales[0]), None) if np.all(scales == scales[0]) else (1.0, scales)
        extra = f"blk.{i}.{_GGUF_LINEARS[lin]}.scale"  # bitnet.cpp's optional per-tensor output multiplier
        if extra in tensors:
            beta *= float(floats(extra, (1,))[0])
        try:
            packed = pack(q)
        except ValueError as e:
            raise ValueError(f"{path}: tensor {name}: {e}") from None
        return TernaryLinear(packed, float(beta), row_scale, None, None, f"{path}: {name}")

    rope_inv = None
    if "rope_freqs.weight" in tensors:  # llama3-style per-frequency factors: theta_i / factor_i
        factors = floats("rope_freqs.weight", (head_dim // 2,))
        base = 1.0 / (np.float32(cfg.rope_theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        rope_inv = (base / factors).astype(np.float32)
    scale_type = _field(r, f"{arch}.rope.scaling.type")
    factor = _field(r, f"{arch}.rope.scaling.factor")
    if scale_type not in (None, "none", "linear") or (scale_type == "linear" and factor not in (None, 1.0)):
        raise ValueError(f"{path}: {arch}.rope.scaling.type {scale_type!r} with factor {factor!r} is not supported "
                         "(supported: none, linear with factor 1)")
    unused = sorted(set(tensors) - used - {"rope_freqs.weight"})
    if unused:
        raise ValueError(f"{path}: tensors the {arch} layout does not account for: {unused[:5]}")
    trained = _field(r, "bitnet.export.hidden_act")
    note = f"{path}: GGUF arch {arch}, {'/'.join(sorted(types))} ternary weights, FFN {act} ({why})"
    if trained and trained != act:
        note += f"; the file says the model was trained with {trained}, which this architecture does not compute"
    return TernaryModel(
        config=cfg, family=f"gguf-{arch}", source=path, embed=embed, lm_head=lm_head, final_norm=final_norm,
        layer_norms=layer_norms, linear=linear, inner_eps=cfg.rms_norm_eps, rope_inv_freq=rope_inv,
        tokenizer=_tokenizer_loader(r, path), tokenizer_config=_tokenizer_config(r, cfg), notes=[note], keep=[r],
    )


def _tokenizer_config(r: Any, cfg: BitNetConfig) -> dict[str, Any]:
    tokens = _field(r, "tokenizer.ggml.tokens") or []
    tc: dict[str, Any] = {}
    template = _field(r, "tokenizer.chat_template")
    if template:
        tc["chat_template"] = template
    for k, i in (("bos_token", cfg.bos_token_id), ("eos_token", cfg.eos_token_id)):
        if i is not None and 0 <= i < len(tokens):
            tc[k] = tokens[i]
    return tc


def _tokenizer_loader(r: Any, path: Path):
    """A byte-level BPE ``tokenizers.Tokenizer`` from the GGUF's vocabulary (None when the file has
    no ``gpt2``-model vocabulary: SentencePiece vocabularies are not rebuilt here)."""
    if _field(r, "tokenizer.ggml.model") != "gpt2" or not _field(r, "tokenizer.ggml.tokens"):
        return None

    def load():
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

        tokens = list(_field(r, "tokenizer.ggml.tokens"))
        types = list(_field(r, "tokenizer.ggml.token_type") or [1] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in (_field(r, "tokenizer.ggml.merges") or [])]
        vocab: dict[str, int] = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        pre = _field(r, "tokenizer.ggml.pre") or "default"
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre in _PRE_SPLITS))
        if pre in _PRE_SPLITS:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(_PRE_SPLITS[pre]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:  # "gpt-2" / "default": ByteLevel's built-in regex is GPT-2's
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        control = [AddedToken(tokens[i], special=True, normalized=False) for i, ty in enumerate(types) if int(ty) == 3]
        if control:
            tok.add_special_tokens(control)
        bos = _field(r, "tokenizer.ggml.bos_token_id")
        if _field(r, "tokenizer.ggml.add_bos_token") and bos is not None:
            tok.post_processor = processors.TemplateProcessing(single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A $B",
                                                               special_tokens=[(tokens[bos], int(bos))])
        return tok

    return load
