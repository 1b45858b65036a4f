"""Tokenizers for the text datasets: a byte-level one that needs no files, or a local one.

``load_tokenizer("byte")`` builds :func:`byte_tokenizer`; any other spec is a local Hugging
Face tokenizer directory. Both are ``transformers`` tokenizers, so ``save_pretrained(dir)``
writes them beside a trained model and ``AutoTokenizer.from_pretrained(dir)`` reads them back.

``transformers`` (and its ``tokenizers`` dependency) is imported only when a tokenizer is
built, so ``import distill`` stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import ConfigError, DataError

__all__ = [
    "BYTE_BOS_ID",
    "BYTE_CHAT_TEMPLATE",
    "BYTE_EOS_ID",
    "BYTE_PAD_ID",
    "BYTE_VOCAB_SIZE",
    "TOKENIZER_FILES",
    "byte_tokenizer",
    "encode_plain",
    "is_byte_tokenizer",
    "load_tokenizer",
    "require_transformers",
]

#: Special tokens of the byte tokenizer. Ids 0..255 are the bytes themselves.
BYTE_PAD_ID, BYTE_BOS_ID, BYTE_EOS_ID = 256, 257, 258
BYTE_SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")
#: 256 bytes + pad, bos, eos.
BYTE_VOCAB_SIZE = 259

#: The byte tokenizer's chat template. A conversation renders as
#: ``<|bos|><|user|>\nHi<|eos|><|assistant|>\nHello<|eos|>``: the role markers are plain text
#: (bytes), only ``<|bos|>`` and ``<|eos|>`` are special tokens; every turn ends with eos.
BYTE_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

#: Files that make a directory a tokenizer directory (any one of them).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


def require_transformers() -> Any:
    """Import and return ``transformers``, or raise :class:`ConfigError` saying how to get it."""
    try:
        import transformers
    except ImportError as exc:
        raise ConfigError(
            "the text datasets and tokenizers need the transformers package, which is not "
            f"installed ({exc}); pip install transformers"
        ) from None
    return transformers


def _bytes_to_symbols() -> dict[int, str]:
    """The byte -> printable character map of byte-level BPE (GPT-2's, as ``tokenizers`` uses).

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) are
    shifted, in byte order, to the characters from U+0100 on.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + shifted)
            shifted += 1
    return symbols


def _byte_backend() -> Any:
    """The ``tokenizers.Tokenizer`` of :func:`byte_tokenizer`, before its special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {symbol: b for b, symbol in _bytes_to_symbols().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: with no merges, every byte is its own token whatever the split.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return backend


def byte_tokenizer() -> Any:
    """A byte-level tokenizer that needs no files: every UTF-8 byte is one token.

    Ids ``0..255`` are the byte values (``encode(text) == list(text.encode("utf-8"))``), then
    ``256`` = ``<|pad|>``, ``257`` = ``<|bos|>``, ``258`` = ``<|eos|>``; 259 ids in all. Encoding
    adds no special tokens by itself (like GPT-2's), so ``decode(encode(text)) == text`` for any
    text. The chat template is :data:`BYTE_CHAT_TEMPLATE`.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` (a byte-level BPE with the 256 byte symbols
        and no merges); ``save_pretrained(dir)`` writes it and
        ``transformers.AutoTokenizer.from_pretrained(dir)`` loads it back.
    """
    transformers = require_transformers()
    from tokenizers import AddedToken

    backend = _byte_backend()
    backend.add_special_tokens([AddedToken(t, special=True) for t in BYTE_SPECIAL_TOKENS])
    pad, bos, eos = BYTE_SPECIAL_TOKENS
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=pad, bos_token=bos, eos_token=eos
    )
    tokenizer.chat_template = BYTE_CHAT_TEMPLATE
    return tokenizer


def _id_fixing_json(tokenizer: Any) -> tuple[str, ...] | None:
    """The parts of a tokenizer's ``tokenizer.json`` that decide which ids a text gets."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    return tuple(
        json.dumps(spec.get(key), sort_keys=True)
        for key in ("model", "normalizer", "pre_tokenizer", "decoder")
    )


_BYTE_JSON: tuple[str, ...] | None = None


def is_byte_tokenizer(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` encodes text exactly as :func:`byte_tokenizer` does.

    True for the byte tokenizer and for copies of it saved and loaded again: same vocabulary,
    no merges, same normaliser and pre-tokeniser, and eos at id 258.
    """
    global _BYTE_JSON
    if getattr(tokenizer, "eos_token_id", None) != BYTE_EOS_ID or len(tokenizer) != BYTE_VOCAB_SIZE:
        return False
    if _BYTE_JSON is None:
        _BYTE_JSON = _id_fixing_json(byte_tokenizer())
    return _id_fixing_json(tokenizer) == _BYTE_JSON


def encode_plain(tokenizer: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of each text, with no special tokens added and none recognised in the text.

    A document's text is data, not markup: a literal ``<|eos|>`` in a file is encoded as its
    characters. For the byte tokenizer this is ``np.frombuffer(text.encode("utf-8"))``, which
    gives the ids the tokenizer itself gives, without its per-call cost.

    Returns:
        One 1-D int64 array per text.
    """
    if is_byte_tokenizer(tokenizer):
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) for t in texts]
    if not texts:
        return []
    encoded = tokenizer(
        list(texts),
        add_special_tokens=False,
        split_special_tokens=True,
        return_attention_mask=False,
        verbose=False,
    )["input_ids"]
    return [np.asarray(ids, dtype=np.int64) for ids in encoded]


def load_tokenizer(spec: str | os.PathLike) -> Any:
    """The tokenizer a recipe's ``tokenizer`` field names.

    Args:
        spec: ``"byte"`` for :func:`byte_tokenizer`; otherwise a local Hugging Face tokenizer
            directory (``~`` expanded; an ``hf:`` prefix, as model sources use, is allowed),
            loaded with ``AutoTokenizer.from_pretrained(path, local_files_only=True)``. Nothing
            is downloaded. A directory literally named ``byte`` is ``./byte``.

    Raises:
        DataError: the directory does not exist, holds none of :data:`TOKENIZER_FILES`, or
            ``transformers`` cannot read it.
        ConfigError: ``spec`` is not a string or path, or ``transformers`` is not installed.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise ConfigError(
            f"tokenizer must be 'byte' or the path of a local tokenizer directory; got {spec!r}"
        )
    if spec == "byte":
        return byte_tokenizer()
    path = Path(spec.removeprefix("hf:")).expanduser()
    if not path.exists():
        raise DataError(
            f"tokenizer directory {str(path)!r} does not exist; give 'byte' or a directory "
            f"saved with save_pretrained (holding e.g. {' or '.join(TOKENIZER_FILES[:2])})"
        )
    if not path.is_dir():
        raise DataError(
            f"tokenizer {str(path)!r} is a file; give the directory that holds "
            f"{' or '.join(TOKENIZER_FILES[:2])}"
        )
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"{str(path)!r} holds no tokenizer files; expected one of {', '.join(TOKENIZER_FILES)}"
        )
    transformers = require_transformers()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot load the tokenizer in {str(path)!r}: {exc}") from None
