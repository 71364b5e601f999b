"""The Hugging Face transformers reference that the benchmarks time against.

:func:`hf_model` builds an HF model (float32, eager attention) from a converted tempo-jax model, so
both sides run the very same weights (:func:`conversion.hf.to_hf` writes them back into HF's layout).
:class:`HfGreedy` times HF greedy ``generate`` on one prompt, with or without attention outputs.
torch and transformers are imported only when these are used.
"""

from __future__ import annotations

import time

import numpy as np

from conversion.hf import hf_config, to_hf
from tempo_jax.config import ModelConfig

SOURCE = "tempo-jax's converted weights (conversion.hf.to_hf)"


def hf_model(cfg: ModelConfig, params):
    """An HF ``LlamaForCausalLM`` (``Qwen2ForCausalLM`` for q/k/v biases without an output bias),
    float32, eager attention, holding exactly the weights of ``params``."""
    import torch
    import transformers

    d = hf_config(cfg)
    hc = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
    model = transformers.AutoModelForCausalLM.from_config(hc, attn_implementation="eager")
    state = {k: torch.from_numpy(v) for k, v in to_hf(cfg, params, np.float32).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if cfg.tie_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"HF reference weights do not fit: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings and model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("HF reference: lm_head is not tied to the embedding")
    return model.float().eval()


class HfGreedy:
    """HF greedy ``generate`` of exactly ``n`` new tokens on one prompt (``min_new_tokens`` keeps
    end-of-sequence from cutting it short). A timed pass times a 1-token and a ``steps``-token
    generate; decode rate = (steps - 1) / difference, from the best of the passes (prefill and the
    first token removed).

    Unless ``threads`` is given, the warm-up tries torch's default thread count and 1 thread and
    keeps the faster (on a loaded 2-core machine one thread is often faster), so HF gets its best
    setting."""

    def __init__(self, model, prompt_ids, steps: int, attentions: bool = True,
                 threads: int | None = None):
        import torch

        self.torch, self.model, self.steps, self.attentions = torch, model, steps, attentions
        self.ids = torch.tensor(np.asarray(prompt_ids, np.int64)[None])
        out = self.generate(steps)  # warm-up
        if attentions:
            assert out.attentions is not None and len(out.attentions) == steps
        self.generated = out.sequences[0, self.ids.shape[1]:].tolist()
        candidates = [threads] if threads else sorted({torch.get_num_threads(), 1}, reverse=True)
        trial = {}
        for n in candidates:
            torch.set_num_threads(n)
            trial[n] = min(self.time(min(steps, 16)) for _ in range(2))
        self.threads = min(trial, key=trial.get)
        torch.set_num_threads(self.threads)
        self.full, self.one = [], []

    def generate(self, n: int):
        with self.torch.inference_mode():
            return self.model.generate(
                self.ids, attention_mask=self.torch.ones_like(self.ids), do_sample=False,
                max_new_tokens=n, min_new_tokens=n, output_attentions=self.attentions,
                return_dict_in_generate=True, pad_token_id=0)

    def time(self, n: int) -> float:
        """Seconds of one ``n``-token generate."""
        t0 = time.perf_counter()
        self.generate(n)
        return time.perf_counter() - t0

    def timed_pass(self) -> float:
        self.one.append(self.time(1))
        self.full.append(self.time(self.steps))
        return self.rate()

    def rate(self) -> float:
        """Decode-only tokens/s from the best passes."""
        return (self.steps - 1) / max(min(self.full) - min(self.one), 1e-9)
