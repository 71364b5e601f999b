"""Tokenizer from GGUF metadata, built with ``tokenizers`` and wrapped by transformers.

transformers' GGUF loading reads the file through torch; this module does not. Byte-level BPE
(``tokenizer.ggml.model = gpt2``, the default model) is built here; a Gemma sentencepiece vocabulary
(``llama`` in a ``gemma*`` file: no merges stored, multi-space tokens spelled with spaces) is handed
to transformers' own GGUF vocabulary rebuild (``gemma_tokenizer``: merges recovered from the token
order), which imports no torch. BOS/EOS come from the GGUF's own metadata (``tokenizer.ggml.*``),
and BOS is added only if the file says so. A conversion stores the result as ``tokenizer.json``, so
the rebuild runs once per model.
"""

from __future__ import annotations

from conversion.common import CheckpointError


def tokenizer_from_gguf(reader):
    """A ``PreTrainedTokenizerFast`` for a GGUF whose tokenizer is byte-level BPE (``gpt2``) or
    Gemma sentencepiece (``llama`` in a ``gemma*`` file); any other kind is refused in one line."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    kind = field("tokenizer.ggml.model")
    arch = field("general.architecture")
    tokens = field("tokenizer.ggml.tokens")
    if kind == "gpt2":
        tok = _byte_level(field, tokens)
    elif kind == "llama" and str(arch).startswith("gemma"):
        tok = _gemma_sentencepiece(field, arch, tokens)
    else:
        raise CheckpointError(f"GGUF tokenizer.ggml.model={kind!r} in a {arch!r} file is not supported "
                              "(supported: 'gpt2' byte-level BPE, 'llama' sentencepiece in gemma files)")

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


def _byte_level(field, tokens):
    """Byte-level BPE from the file's vocabulary and merges (SmolLM's digit split when it says so)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

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
    return tok


def _gemma_sentencepiece(field, arch, tokens):
    """Gemma's sentencepiece BPE (byte fallback) rebuilt by transformers from the vocabulary order,
    with control tokens (type 3) special and user-defined ones (type 4) whole."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    d = {"tokenizer_type": "llama", "tokens": list(tokens),
         "scores": list(field("tokenizer.ggml.scores") or [0.0] * len(tokens)),
         "token_type": list(field("tokenizer.ggml.token_type") or [1] * len(tokens))}
    for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                      ("unknown_token_id", "unk_token_id"), ("padding_token_id", "pad_token_id")):
        if field(f"tokenizer.ggml.{key}") is not None:
            d[name] = int(field(f"tokenizer.ggml.{key}"))
    backend, _ = convert_gguf_tokenizer(str(arch), d)
    return backend
