"""Tokenizer from GGUF metadata, built with ``tokenizers`` and wrapped by transformers.

transformers' own GGUF tokenizer path requires torch; this one does not. BOS/EOS come from the
GGUF's own metadata (``tokenizer.ggml.*``), and BOS is added only if the file says so.
"""

from __future__ import annotations

from conversion.common import CheckpointError


def tokenizer_from_gguf(reader):
    """A ``PreTrainedTokenizerFast`` for a GGUF whose tokenizer model is ``gpt2`` (byte-level BPE)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise CheckpointError(f"GGUF tokenizer.ggml.model={kind!r} is not supported (only 'gpt2' BPE)")
    tokens = field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges") or []]  # none: a tiny vocabulary
    types = field("tokenizer.ggml.token_type") or [1] * len(tokens)
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if field("tokenizer.ggml.pre") == "smollm":  # SmolLM splits digits one by one before byte-level BPE
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [t for t, ty in zip(tokens, types) if ty == 3]  # 3 = control token in GGUF
    tok.add_special_tokens(special)

    def name(key):
        i = field(key)
        return None if i is None else tokens[int(i)]

    bos = name("tokenizer.ggml.bos_token_id")
    add_bos = bool(field("tokenizer.ggml.add_bos_token", False))
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, int(field("tokenizer.ggml.bos_token_id")))])
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=name("tokenizer.ggml.eos_token_id"),
        unk_token=name("tokenizer.ggml.unknown_token_id"),
        pad_token=name("tokenizer.ggml.padding_token_id"))
    template = field("tokenizer.chat_template")
    if template:
        out.chat_template = template
    return out
