"""A tiny random Llama built in HF transformers (the reference) and converted to our params."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def tiny(seed: int = 0, init_range: float = 0.3, vocab: int = 64):
    """(hf_model, cfg, params) with peaky-enough next-token distributions for TEMPO tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from conversion.hf import params_from_state
    from tempo_jax.config import config_from_hf

    hc = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     initializer_range=init_range, tie_word_embeddings=False, eos_token_id=2,
                     bos_token_id=1, pad_token_id=0)
    hc._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(hc).eval()
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    cfg = config_from_hf(hc.to_dict(), name=f"tiny{seed}")
    params = jax.tree_util.tree_map(jnp.asarray, params_from_state(cfg, sd.__getitem__))
    return hf, cfg, params


def full_logits(hf, ids):
    """HF reference: logits [T,V] of one plain causal forward over ``ids``."""
    import torch

    with torch.no_grad():
        return hf(torch.tensor([list(ids)])).logits[0].numpy()


def full_forward_attn(hf, ids):
    """HF reference: (logits [T,V], attentions [L,H,T,T]) of one causal forward."""
    import torch

    with torch.no_grad():
        out = hf(torch.tensor([list(ids)]), output_attentions=True)
    return out.logits[0].numpy(), np.stack([a[0].numpy() for a in out.attentions])


def save_tiny_with_tokenizer(folder, seed: int = 0, max_positions: int | None = None):
    """Save ``tiny(seed)`` as a converted folder with a word-level tokenizer ("w5 w9" -> [5, 9]);
    ``max_positions`` widens its context (for runs long enough to interrupt)."""
    import dataclasses

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from conversion.store import save_converted

    _, cfg, params = tiny(seed)
    if max_positions is not None:
        cfg = dataclasses.replace(cfg, max_position_embeddings=max_positions)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, cfg.vocab_size)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                   bos_token="<s>", eos_token="</s>")
    return save_converted(folder, cfg, params, fast)


def seeded_weights(model, seed: int) -> None:
    """Overwrite an HF model's weights in place: norms 1 + 0.1 N(0,1), the rest 0.15 N(0,1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.15 * noise)


@functools.lru_cache(maxsize=None)
def tiny_gemma(seed: int = 0, window: int = 4, vocab: int = 64):
    """(hf_model, cfg, params) of a tiny random Gemma 3 (text) built in HF transformers: 3 layers
    (sliding, sliding, full), one KV head, a ``window``-position sliding window, distinct RoPE bases
    for the two layer kinds and a query scale that is not head_dim**-0.5."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from conversion.hf import params_from_state
    from tempo_jax.config import config_from_hf

    hc = Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                          max_position_embeddings=256, query_pre_attn_scalar=24, sliding_window=window,
                          layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                          rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                           "full_attention": {"rope_type": "default", "rope_theta": 100000.0}},
                          initializer_range=0.3, eos_token_id=1, bos_token_id=2, pad_token_id=0)
    hc._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = Gemma3ForCausalLM(hc).eval()
    with torch.no_grad():  # HF initialises the (1 + w) norms at w = 0; give them random scales
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    cfg = config_from_hf(hc.to_dict(), name=f"tiny-gemma{seed}")
    params = jax.tree_util.tree_map(jnp.asarray, params_from_state(cfg, sd.__getitem__))
    return hf, cfg, params
