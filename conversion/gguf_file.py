"""GGUF (llama.cpp) file -> config + parameter pytree, dequantised to float.

llama.cpp's converter permutes the rows of q and k for its interleaved RoPE; we undo that so the
weights are in the Hugging Face (rotate-half) layout. Read with the ``gguf`` package (NumPy only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conversion.common import CheckpointError, assemble
from tempo_jax.config import ModelConfig, RopeScaling, UnsupportedConfigError

GGUF_LAYER_NAMES = {
    "attn_norm": "attn_norm", "mlp_norm": "ffn_norm", "wq": "attn_q", "wk": "attn_k",
    "wv": "attn_v", "wo": "attn_output", "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down",
    "bq": "attn_q.bias", "bk": "attn_k.bias", "bv": "attn_v.bias",
    "q_norm": "attn_q_norm", "k_norm": "attn_k_norm", "post_attn_norm": "post_attention_norm",
    "post_mlp_norm": "post_ffw_norm",
}


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's q/k row permutation on ``w[n_head*D, ...]``."""
    # llama.cpp: reshape(n_head, 2, D/2, ...).swapaxes(1, 2); the inverse starts from (n_head, D/2, 2)
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _open(path: Path):
    import gguf

    if not path.exists():
        raise CheckpointError(f"GGUF file {path} does not exist")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/IndexError/... on damaged files
        raise CheckpointError(f"GGUF file {path} is truncated or corrupted: {type(e).__name__}: {e}") from e


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def _gemma3_config(reader, name: str) -> ModelConfig:
    """Gemma 3 from llama.cpp's metadata. What llama.cpp does not store, it fixes in code, and so do
    we: the query scale 1/sqrt(key_length) (query_pre_attn_scalar = head dim; llama.cpp's rule for
    every size but 27B, refused here), sliding layers except every 6th, local RoPE base 10000."""
    g = lambda k, d=None: _field(reader, f"gemma3.{k}", d)
    if g("rope.scaling.type", "none") not in ("none", None):
        raise UnsupportedConfigError(f"GGUF gemma3.rope.scaling.type={g('rope.scaling.type')!r} is not "
                                     "implemented (Gemma 3 4B and larger); convert from safetensors")
    n, width, heads = int(g("block_count")), int(g("embedding_length")), int(g("attention.head_count"))
    if n == 62:
        raise UnsupportedConfigError("GGUF gemma3 27B (its query scale is not head-dim based) is not implemented")
    head_dim = int(g("attention.key_length", width // heads))
    pattern = int(g("attention.sliding_window_pattern", 6))
    names = {t.name for t in reader.tensors}
    vocab = g("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=int(vocab), hidden_size=width, intermediate_size=int(g("feed_forward_length")),
        num_layers=n, num_heads=heads, num_kv_heads=int(g("attention.head_count_kv", heads)),
        head_dim=head_dim, rope_theta=float(g("rope.freq_base", 1e6)),
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-6)),
        tie_embeddings="output.weight" not in names, max_position_embeddings=int(g("context_length", 32768)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),), name=name, family="gemma3",
        embed_scale=float(np.float32(width ** 0.5)), norm_offset=1.0, qk_norm=True, sandwich_norms=True,
        query_scale=float(head_dim) ** -0.5, mlp_act="gelu_tanh",
        sliding_window=int(g("attention.sliding_window")),
        layer_types=tuple("sliding" if (i + 1) % pattern else "full" for i in range(n)),
        local_rope_theta=float(g("rope.freq_base_swa", 10000.0)))


def config_from_gguf(reader, name: str) -> ModelConfig:
    """Config from GGUF metadata; refuses architectures and RoPE scalings we do not implement."""
    arch = _field(reader, "general.architecture")
    if arch == "gemma3":
        return _gemma3_config(reader, name)
    if arch not in ("llama", "mistral"):
        raise UnsupportedConfigError(
            f"GGUF general.architecture={arch!r} is not supported (supported: llama, mistral, gemma3)")
    g = lambda k, d=None: _field(reader, f"{arch}.{k}", d)
    scaling_type = g("rope.scaling.type", "none")
    scaling = None
    if scaling_type == "linear":
        scaling = RopeScaling("linear", float(g("rope.scaling.factor")))
    elif scaling_type not in ("none", None):
        raise UnsupportedConfigError(f"GGUF {arch}.rope.scaling.type={scaling_type!r} is not implemented")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise UnsupportedConfigError("GGUF tensor rope_freqs.weight (llama3 RoPE scaling baked into the "
                                     "file) is not implemented for GGUF; convert from safetensors instead")
    if g("attention.sliding_window") is not None:
        raise UnsupportedConfigError(f"GGUF {arch}.attention.sliding_window is not implemented")
    heads, width = int(g("attention.head_count")), int(g("embedding_length"))
    head_dim = int(g("rope.dimension_count", width // heads))
    names = {t.name for t in reader.tensors}
    vocab = g("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=int(vocab), hidden_size=width, intermediate_size=int(g("feed_forward_length")),
        num_layers=int(g("block_count")), num_heads=heads,
        num_kv_heads=int(g("attention.head_count_kv", heads)), head_dim=head_dim,
        rope_theta=float(g("rope.freq_base", 10000.0)), rope_scaling=scaling,
        rms_norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        max_position_embeddings=int(g("context_length", 2048)),
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),), name=name)


def load_gguf(path, dtype=np.float32, progress=None) -> tuple[ModelConfig, dict]:
    """Read a GGUF file -> ``(cfg, params)`` with every tensor dequantised."""
    import gguf

    path = Path(path)
    reader = _open(path)
    cfg = config_from_gguf(reader, name=path.stem)
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"GGUF file {path} lacks tensor {name!r}")
        t = tensors[name]
        try:
            return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        except Exception as e:
            raise CheckpointError(f"GGUF file {path}: tensor {name} cannot be read "
                                  f"(truncated or corrupted?): {e}") from e

    E, H, G, D = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    # llama.cpp permutes q/k rows for its interleaved RoPE, except for the families it runs with
    # NEOX (rotate-half) RoPE, Gemma among them; it stores Gemma's (1 + w) norms as 1 + w
    unpermute = (lambda w, n: w) if cfg.family == "gemma3" else unpermute_rows
    norm = lambda w: w - np.float32(cfg.norm_offset)
    transforms = {  # GGUF rows are [out, in] like HF
        "wq": lambda w: unpermute(w, H).T.reshape(E, H, D),
        "wk": lambda w: unpermute(w, G).T.reshape(E, G, D),
        "wv": lambda w: w.T.reshape(E, G, D),
        "wo": lambda w: w.T.reshape(H, D, E),
        "w_gate": lambda w: w.T, "w_up": lambda w: w.T, "w_down": lambda w: w.T,
        "bq": lambda b: unpermute_rows(b, H).reshape(H, D),
        "bk": lambda b: unpermute_rows(b, G).reshape(G, D),
        "bv": lambda b: b.reshape(G, D),
        "attn_norm": norm, "mlp_norm": norm, "q_norm": norm, "k_norm": norm, "post_attn_norm": norm,
        "post_mlp_norm": norm,
    }
    leaves = ["attn_norm", "mlp_norm", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"]
    if cfg.qkv_bias:
        leaves += ["bq", "bk", "bv"]
    if cfg.qk_norm:
        leaves += ["q_norm", "k_norm"]
    if cfg.sandwich_norms:
        leaves += ["post_attn_norm", "post_mlp_norm"]
    layers = {}
    for leaf in leaves:
        fn = transforms.get(leaf, lambda w: w)
        suffix = GGUF_LAYER_NAMES[leaf]
        suffix = suffix if suffix.endswith(".bias") else suffix + ".weight"
        layers[leaf] = np.stack([fn(get(f"blk.{i}.{suffix}")) for i in range(cfg.num_layers)])
        if progress is not None:
            progress.update(1)
    tree = {"embed": get("token_embd.weight"), "layers": layers, "final_norm": norm(get("output_norm.weight"))}
    if not cfg.tie_embeddings:
        tree["lm_head"] = get("output.weight").T
    return cfg, assemble(cfg, tree, dtype)
