"""Text datasets for causal language models: plain text files, prompt/completion records, and
the Python standard library's source as a corpus that every machine has.

``load_text_data(name, ...)`` looks ``name`` up in :data:`TEXT_DATASETS` and returns
:class:`TextData`: train/val/test datasets whose items are
``{"input_ids": LongTensor[l], "labels": LongTensor[l]}`` (``l <= seq_len``), the tokenizer,
and the ``collate`` function that pads items into the batch the text task expects
(see :func:`distill.data.collate.collate_text`). Labels are *not* shifted: position ``i``'s
label is token ``i`` itself, ``-100`` where no loss applies; the task shifts once.

How each set is split:

- ``text`` and ``python-stdlib`` (packed corpora): each file is one document; documents are
  tokenized without special tokens, each followed by the tokenizer's eos, concatenated and cut
  into blocks of ``seq_len`` tokens (labels = input ids). The final block of a split is kept
  when it has at least 2 tokens, shorter than the others (the collate function pads it).
  With ``split_by="auto"`` the files themselves are split when there are enough of them for
  every split to get one (e.g. 3 files for train/val/test at the default fractions): no
  document then appears in two splits, and each split is packed on its own (the fractions
  then count files, not tokens, so a split's share of tokens varies with file sizes).
  Otherwise the blocks of the whole corpus are split. ``"file"`` and ``"block"`` force either
  rule.
- ``jsonl``: records are split.

Every split takes a seeded random share: ``ceil(n * val_fraction)`` units for validation and
``ceil(n * test_fraction)`` for test (at least one each; no test split when
``test_fraction == 0``), the rest for training. Within a split, units keep their corpus order
(files in the order given, each directory or glob sorted), so ``subset=N`` keeps the first
``N`` training items and the same seed gives the same splits on every run.
"""

from __future__ import annotations

import functools
import glob
import inspect
import json
import math
import os
import sysconfig
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.bundle import validate_val_fraction
from distill.data.collate import IGNORE_INDEX, collate_text
from distill.data.tokenizers import encode_plain, load_tokenizer
from distill.errors import ConfigError, DataError, did_you_mean

__all__ = [
    "TEXT_DATASETS",
    "PromptCompletionDataset",
    "TextData",
    "TokenBlocks",
    "load_jsonl",
    "load_python_stdlib",
    "load_text_data",
    "load_text_files",
    "python_stdlib_files",
]

FileSpec = str | os.PathLike | Sequence[str | os.PathLike]

SPLIT_RULES = ("auto", "file", "block")


@dataclass
class TextData:
    """The splits of a text dataset, with what is needed to batch and decode them.

    Attributes:
        name: the dataset's name (``text``, ``jsonl``, ``python-stdlib``).
        train, val: datasets of dict items ``{"input_ids", "labels"}``: two 1-D int64
            tensors of one length, at most ``seq_len``.
        test: the same, or ``None`` when ``test_fraction`` was 0.
        tokenizer: the ``transformers`` tokenizer that made the ids.
        collate: pads a list of items into ``{"input_ids", "attention_mask", "labels"}``
            ``[N, L]`` (plus any other key stacked); picklable, for ``DataLoader`` workers.
        vocab_size: ``len(tokenizer)``, the number of ids, special tokens included.
        pad_id: the id ``collate`` pads with: the tokenizer's pad token, else its eos.
        seq_len: the longest sequence an item may have.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset | None
    tokenizer: Any
    collate: Callable[[Sequence[dict]], dict[str, torch.Tensor]]
    vocab_size: int
    pad_id: int
    seq_len: int

    #: What the items are (a task says which kind it needs).
    kind: ClassVar[str] = "text"


class TokenBlocks(Dataset):
    """Blocks of one token stream: item ``i`` is ``tokens[starts[i] : starts[i] + lengths[i]]``.

    Items are ``{"input_ids": ids, "labels": ids.clone()}``, int64 ``[lengths[i]]``. The stream
    is kept once in a narrow integer type; items are copied out as int64 when read.
    """

    def __init__(self, tokens: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor) -> None:
        if starts.shape != lengths.shape or starts.dim() != 1:
            raise ValueError(
                f"starts and lengths must be 1-D of one shape; got {list(starts.shape)} and "
                f"{list(lengths.shape)}"
            )
        self.tokens = tokens
        self.starts = starts.long()
        self.lengths = lengths.long()

    def __len__(self) -> int:
        return self.starts.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start, length = int(self.starts[index]), int(self.lengths[index])
        ids = self.tokens[start : start + length].long()
        return {"input_ids": ids, "labels": ids.clone()}

    def select(self, indices: torch.Tensor | Sequence[int]) -> TokenBlocks:
        """The blocks at ``indices``, in that order, sharing this stream."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        return TokenBlocks(self.tokens, self.starts[indices], self.lengths[indices])


class PromptCompletionDataset(Dataset):
    """Token sequences whose first ``prompt_lengths[i]`` tokens take no loss.

    Items are ``{"input_ids": ids, "labels": labels}`` (int64, same length) with
    ``labels[j] = -100`` for ``j < prompt_lengths[i]`` and ``labels[j] = ids[j]`` after.
    """

    def __init__(self, sequences: Sequence[torch.Tensor], prompt_lengths: Sequence[int]) -> None:
        if len(sequences) != len(prompt_lengths):
            raise ValueError(
                f"got {len(sequences)} sequences but {len(prompt_lengths)} prompt lengths"
            )
        self.sequences = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
        self.prompt_lengths = [int(n) for n in prompt_lengths]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.sequences[index]
        labels = ids.clone()
        labels[: self.prompt_lengths[index]] = IGNORE_INDEX
        return {"input_ids": ids.clone(), "labels": labels}

    def select(self, indices: Sequence[int]) -> PromptCompletionDataset:
        """The records at ``indices``, in that order."""
        return PromptCompletionDataset(
            [self.sequences[i] for i in indices], [self.prompt_lengths[i] for i in indices]
        )


# ----------------------------------------------------------------------------- validation


def _check_int(value: object, field: str, minimum: int, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{field} must be an integer >= {minimum} ({hint}); got {value!r}")
    return value


@dataclass(frozen=True)
class _Options:
    """The checked options every loader shares."""

    seq_len: int
    seed: int
    val_fraction: float
    test_fraction: float
    subset: int | None
    split_by: str = "auto"


def _check_options(
    seq_len: object,
    seed: object,
    val_fraction: object,
    test_fraction: object,
    subset: object,
    max_files: object = None,
    split_by: object = "auto",
) -> _Options:
    checked_len = _check_int(seq_len, "seq_len", 2, "the tokens in a block or sequence")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer; got {seed!r}")
    val_fraction = validate_val_fraction(val_fraction)
    if (
        isinstance(test_fraction, bool)
        or not isinstance(test_fraction, int | float)
        or not 0.0 <= test_fraction < 1.0
    ):
        raise ConfigError(
            "test_fraction must be a number in [0, 1) (0 for no test split, e.g. 0.1); "
            f"got {test_fraction!r}"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"val_fraction + test_fraction must be below 1 to leave data for training; got "
            f"{val_fraction} + {test_fraction}"
        )
    if subset is not None:
        subset = _check_int(subset, "subset", 1, "the number of training items to keep, or null")
    if max_files is not None:
        _check_int(max_files, "max_files", 1, "the number of files to read, or null")
    if split_by not in SPLIT_RULES:
        allowed = ", ".join(repr(r) for r in SPLIT_RULES)
        raise ConfigError(f"split_by={split_by!r} is not supported; allowed values: {allowed}")
    return _Options(checked_len, seed, val_fraction, float(test_fraction), subset, str(split_by))


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) counts for ``n`` units: ``ceil(n * fraction)``, at least 1 each."""
    # round() first so that e.g. 30 * 0.1 never rounds up to 4 through float noise.
    n_val = max(math.ceil(round(n * val_fraction, 9)), 1)
    n_test = max(math.ceil(round(n * test_fraction, 9)), 1) if test_fraction > 0 else 0
    return n - n_val - n_test, n_val, n_test


def _split_three(n: int, opts: _Options, unit: str) -> tuple[list[int], list[int], list[int]]:
    """Seeded split of ``range(n)`` into sorted (train, val, test) index lists."""
    n_train, n_val, n_test = _split_counts(n, opts.val_fraction, opts.test_fraction)
    if n_train < 1:
        needed = n - n_train + 1
        raise DataError(
            f"only {n} {unit} to split into train/val{'/test' if n_test else ''} with "
            f"val_fraction={opts.val_fraction} and test_fraction={opts.test_fraction}; at "
            f"least {needed} are needed"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(opts.seed)).tolist()
    val = sorted(order[:n_val])
    test = sorted(order[n_val : n_val + n_test])
    train = sorted(order[n_val + n_test :])
    return train, val, test


def _keep_first(dataset: Any, subset: int | None, name: str) -> Any:
    if subset is None:
        return dataset
    if subset > len(dataset):
        raise DataError(
            f"subset={subset} is out of range for dataset {name!r}: its training split has "
            f"{len(dataset)} items"
        )
    return dataset.select(range(subset))


def _resolve_tokenizer(tokenizer: Any) -> Any:
    return load_tokenizer(tokenizer) if isinstance(tokenizer, str | os.PathLike) else tokenizer


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    return 0


def _eos_id(tokenizer: Any, name: str) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConfigError(
            f"dataset {name!r} ends every document with the tokenizer's eos token, but "
            f"{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has none; use a "
            "tokenizer with an eos_token (e.g. 'byte')"
        )
    return int(eos)


def _text_data(name: str, tokenizer: Any, opts: _Options, splits: Sequence[Any]) -> TextData:
    train, val, test = splits
    pad_id = _pad_id(tokenizer)
    return TextData(
        name=name,
        train=_keep_first(train, opts.subset, name),
        val=val,
        test=test if opts.test_fraction > 0 else None,
        tokenizer=tokenizer,
        collate=functools.partial(collate_text, pad_id=pad_id),
        vocab_size=len(tokenizer),
        pad_id=pad_id,
        seq_len=opts.seq_len,
    )


# ----------------------------------------------------------------------------- files


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _resolve_files(files: object, suffix: str, field: str = "files") -> list[Path]:
    """The files that ``files`` names, in order, without repeats.

    Each entry is a file (any name), a directory (every ``*{suffix}`` file under it, at any
    depth, sorted by path) or a glob pattern (``**`` allowed; matching files sorted).
    """
    if isinstance(files, str | os.PathLike):
        files = [files]
    if not isinstance(files, Sequence) or not files:
        raise ConfigError(
            f"{field} must list text files, directories or glob patterns (e.g. "
            f"['corpus/*{suffix}']); got {files!r}"
        )
    found: list[Path] = []
    for entry in files:
        if not isinstance(entry, str | os.PathLike) or not os.fspath(entry):
            raise ConfigError(f"{field}: each entry must be a path or glob; got {entry!r}")
        text = os.path.expanduser(os.fspath(entry))
        path = Path(text)
        if path.is_dir():
            matches = sorted(p for p in path.rglob(f"*{suffix}") if p.is_file())
            if not matches:
                raise DataError(f"{field}: directory {text!r} holds no *{suffix} files")
        elif path.is_file():
            matches = [path]
        elif _has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise DataError(f"{field}: pattern {text!r} matches no file")
        else:
            raise DataError(f"{field}: {text!r} does not exist")
        found.extend(matches)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _read_utf8(path: Path) -> str:
    """The file's text (UTF-8, a leading byte-order mark dropped, line ends kept as they are)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start} is {data[exc.start]:#04x}); convert it "
            "to UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


# ----------------------------------------------------------------------------- packed corpora


def _pack(documents: Sequence[np.ndarray], eos_id: int, seq_len: int, vocab: int) -> TokenBlocks:
    """Each document followed by eos, concatenated and cut into blocks of ``seq_len`` tokens.

    The last block keeps what is left when that is at least 2 tokens, and is dropped otherwise.
    """
    eos = np.array([eos_id], dtype=np.int64)
    pieces = [piece for doc in documents for piece in (doc, eos)]
    dtype = np.int16 if vocab <= np.iinfo(np.int16).max + 1 else np.int32
    stream = np.concatenate(pieces).astype(dtype) if pieces else np.zeros(0, dtype=dtype)
    n = stream.shape[0]
    starts = torch.arange(0, n, seq_len, dtype=torch.long)
    lengths = (n - starts).clamp(max=seq_len)
    keep = lengths >= 2
    return TokenBlocks(torch.from_numpy(stream), starts[keep], lengths[keep])


def _packed_corpus(
    name: str,
    paths: Sequence[Path],
    texts: Sequence[str],
    tokenizer: Any,
    opts: _Options,
) -> TextData:
    eos_id = _eos_id(tokenizer, name)
    vocab = len(tokenizer)
    documents = [ids for ids in encode_plain(tokenizer, texts) if ids.shape[0] > 0]
    if not documents:
        shown = ", ".join(str(p) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        raise DataError(f"dataset {name!r}: all {len(paths)} files are empty ({shown})")

    seq_len = opts.seq_len
    n_train, _, _ = _split_counts(len(documents), opts.val_fraction, opts.test_fraction)
    if opts.split_by == "file" or (opts.split_by == "auto" and n_train >= 1):
        parts = _split_three(len(documents), opts, "non-empty files")
        splits = [_pack([documents[i] for i in part], eos_id, seq_len, vocab) for part in parts]
    else:
        blocks = _pack(documents, eos_id, seq_len, vocab)
        parts = _split_three(len(blocks), opts, f"blocks of seq_len={seq_len} tokens")
        splits = [blocks.select(part) for part in parts]
    return _text_data(name, tokenizer, opts, splits)


def load_text_files(
    files: FileSpec,
    *,
    tokenizer: Any = "byte",
    seq_len: int = 256,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    subset: int | None = None,
    max_files: int | None = None,
    split_by: str = "auto",
) -> TextData:
    """Plain UTF-8 text files, packed into blocks of ``seq_len`` tokens.

    Args:
        files: files, directories (every ``*.txt`` under them, sorted) or glob patterns; one
            path or a list. Each file is one document.
        tokenizer: ``"byte"``, a local tokenizer directory, or a tokenizer object.
        seq_len: tokens per block (at least 2).
        seed: seeds the split.
        val_fraction: share of files (or blocks) for validation, in (0, 1).
        test_fraction: share for test, in [0, 1); 0 for no test split.
        subset: keep only the first ``subset`` training blocks.
        max_files: read only the first ``max_files`` files.
        split_by: ``"auto"``, ``"file"`` or ``"block"`` (see the module's description).

    Returns:
        :class:`TextData` of :class:`TokenBlocks`; labels equal the input ids.
    """
    opts = _check_options(seq_len, seed, val_fraction, test_fraction, subset, max_files, split_by)
    paths = _resolve_files(files, ".txt")[:max_files]
    tokenizer = _resolve_tokenizer(tokenizer)
    texts = [_read_utf8(p) for p in paths]
    return _packed_corpus("text", paths, texts, tokenizer, opts)


def _is_excluded_dir(name: str) -> bool:
    return (
        name in ("test", "tests", "site-packages", "dist-packages", "__pycache__")
        or name.startswith(("test_", "config-"))
        or name.endswith(("_test", "_tests"))
    )


def python_stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """The standard library's ``.py`` files, sorted by their path relative to ``root``.

    ``root`` defaults to ``sysconfig.get_paths()["stdlib"]`` of the running Python. Left out:
    everything under a directory named ``test`` or ``tests``, or named ``test_*``, ``*_test``
    or ``*_tests`` (``test/``, ``idlelib/idle_test/``, ``tkinter/test/``, ``lib2to3/tests/``, ...;
    ``unittest/`` itself is kept, its ``unittest/test/`` is not); ``site-packages`` and
    ``dist-packages``; ``__pycache__``; files named ``test_*.py``; and the build configuration
    written at install time, which differs between machines (``_sysconfigdata*.py`` and
    ``config-*/``). Symbolic links to directories are not followed. Files that are not UTF-8
    are left out by :func:`load_python_stdlib`, not here.
    """
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"]).expanduser()
    if not base.is_dir():
        raise DataError(f"python-stdlib: {str(base)!r} is not a directory")
    found: list[tuple[str, Path]] = []
    for directory, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not _is_excluded_dir(d)]
        for filename in filenames:
            if not filename.endswith(".py") or filename.startswith(("test_", "_sysconfigdata")):
                continue
            path = Path(directory, filename)
            found.append((path.relative_to(base).as_posix(), path))
    return [path for _, path in sorted(found)]


def load_python_stdlib(
    *,
    root: str | os.PathLike | None = None,
    tokenizer: Any = "byte",
    seq_len: int = 256,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    subset: int | None = None,
    max_files: int | None = None,
    split_by: str = "auto",
) -> TextData:
    """The running Python's standard library source as a packed corpus (about 12 MB, 730 files
    for CPython 3.11), available on every machine with no download.

    The files are those of :func:`python_stdlib_files`, minus any that are not UTF-8, in sorted
    order; ``max_files`` keeps the first ones (a fast corpus for tests and demos). Then as
    :func:`load_text_files`: each file is a document, split by file (with enough files), packed
    into blocks of ``seq_len``. The corpus, and so the split, depends only on the installed
    Python's files.
    """
    opts = _check_options(seq_len, seed, val_fraction, test_fraction, subset, max_files, split_by)
    tokenizer = _resolve_tokenizer(tokenizer)
    paths, texts = [], []
    for path in python_stdlib_files(root):
        if max_files is not None and len(paths) == max_files:
            break
        try:
            texts.append(path.read_bytes().decode("utf-8").removeprefix("\ufeff"))
        except (UnicodeDecodeError, OSError):
            continue
        paths.append(path)
    if not paths:
        raise DataError(f"python-stdlib: no readable .py files under {root or 'the stdlib'}")
    return _packed_corpus("python-stdlib", paths, texts, tokenizer, opts)


# ----------------------------------------------------------------------------- jsonl


@dataclass
class _Record:
    where: str  # "file:line"
    prompt: str | None = None
    completion: str | None = None
    messages: list[dict] | None = None


def _parse_record(value: object, where: str) -> _Record:
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: a record must be a JSON object with 'prompt' and 'completion' or with "
            f"'messages'; got {type(value).__name__}"
        )
    has_pair = "prompt" in value or "completion" in value
    if has_pair and "messages" in value:
        raise DataError(
            f"{where}: a record has either 'prompt'/'completion' or 'messages', not both"
        )
    if "messages" in value:
        messages = value["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list; got {messages!r}")
        for i, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)
            ):
                raise DataError(
                    f"{where}: messages[{i}] must be an object with string 'role' and "
                    f"'content'; got {message!r}"
                )
        if messages[-1]["role"] != "assistant":
            raise DataError(
                f"{where}: the last message is the completion and must have role 'assistant'; "
                f"got {messages[-1]['role']!r}"
            )
        return _Record(where, messages=messages)
    for key in ("prompt", "completion"):
        if not isinstance(value.get(key), str):
            got = repr(value[key]) if key in value else f"no {key!r} (keys: {sorted(value)})"
            raise DataError(
                f"{where}: a record needs string 'prompt' and 'completion' (or 'messages'); "
                f"{key!r}: {got}"
            )
    return _Record(where, prompt=value["prompt"], completion=value["completion"])


def _read_jsonl(paths: Sequence[Path]) -> list[_Record]:
    records = []
    for path in paths:
        for number, line in enumerate(_read_utf8(path).splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            records.append(_parse_record(value, where))
    return records


def _render_chat(tokenizer: Any, record: _Record) -> tuple[str, str]:
    """(prompt, completion) text of a chat: the template's rendering of all turns but the
    last, with the generation prompt, and the rest of the full conversation's rendering."""
    messages = record.messages or []
    try:
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=False, add_generation_prompt=True
        )
        full = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as exc:  # jinja2 errors, raise_exception() in templates
        raise DataError(f"{record.where}: the chat template failed: {exc}") from None
    if not full.startswith(prompt):
        raise DataError(
            f"{record.where}: the chat template renders the conversation without the assistant "
            "turn as something other than the start of the whole conversation, so the "
            "completion cannot be told apart; use 'prompt'/'completion' records"
        )
    return prompt, full[len(prompt) :]


def _tokenize_records(
    tokenizer: Any, records: Sequence[_Record], name: str
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each record, each part tokenized on its own."""
    prompts, completions, chat = [], [], []
    for record in records:
        if record.messages is not None:
            prompt, completion = _render_chat(tokenizer, record)
            chat.append(True)
        else:
            prompt, completion = record.prompt or "", record.completion or ""
            chat.append(False)
        prompts.append(prompt)
        completions.append(completion)

    def encode(texts: list[str], special: bool) -> list[list[int]]:
        if not texts:
            return []
        return tokenizer(
            texts, add_special_tokens=special, return_attention_mask=False, verbose=False
        )["input_ids"]

    # A rendered chat already holds its special tokens; a plain prompt gets the tokenizer's
    # usual ones (e.g. a leading bos) and a plain completion ends with eos.
    plain = [i for i, is_chat in enumerate(chat) if not is_chat]
    chats = [i for i, is_chat in enumerate(chat) if is_chat]
    prompt_ids: list[list[int]] = [[] for _ in records]
    completion_ids: list[list[int]] = [[] for _ in records]
    for i, ids in zip(plain, encode([prompts[i] for i in plain], True), strict=True):
        prompt_ids[i] = list(ids)
    for i, ids in zip(chats, encode([prompts[i] for i in chats], False), strict=True):
        prompt_ids[i] = list(ids)
    for i, ids in enumerate(encode(completions, False)):
        completion_ids[i] = list(ids)
    if plain:
        eos = _eos_id(tokenizer, name)
        for i in plain:
            completion_ids[i].append(eos)
    return list(zip(prompt_ids, completion_ids, strict=True))


def load_jsonl(
    files: FileSpec,
    *,
    tokenizer: Any = "byte",
    seq_len: int = 256,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    subset: int | None = None,
) -> TextData:
    """Prompt/completion records from JSON Lines files; the loss is on the completion only.

    Each non-blank line is one record, either

    - ``{"prompt": str, "completion": str}``: ``ids = tokenize(prompt) + tokenize(completion)
      + [eos]``, the prompt with the tokenizer's usual special tokens (e.g. a leading bos),
      the completion with none; nothing is inserted between them; or
    - ``{"messages": [{"role": ..., "content": ...}, ...]}``: a chat whose last message (role
      ``assistant``) is the completion. The prompt is the chat template's rendering of the
      other messages with the generation prompt; the completion is the rest of the whole
      conversation's rendering (the assistant's text and the template's end of turn).

    Prompt and completion are tokenized separately and concatenated, as they are when a model
    is prompted and then generates. Labels are ``-100`` over the prompt's tokens and equal the
    ids over the completion's. A sequence longer than ``seq_len`` is cut from the right (its
    start kept); a record left without a completion token after position 0 is dropped with a
    warning. Records are split (see the module's description).

    Args:
        files: ``.jsonl`` files, directories (every ``*.jsonl`` under them) or glob patterns.
        tokenizer, seq_len, seed, val_fraction, test_fraction: as in :func:`load_text_files`.
        subset: keep only the first ``subset`` training records.

    Returns:
        :class:`TextData` of :class:`PromptCompletionDataset`.
    """
    opts = _check_options(seq_len, seed, val_fraction, test_fraction, subset)
    paths = _resolve_files(files, ".jsonl")
    tokenizer = _resolve_tokenizer(tokenizer)
    records = _read_jsonl(paths)
    if not records:
        raise DataError(f"dataset 'jsonl': no records in {', '.join(str(p) for p in paths)}")
    chat = next((r for r in records if r.messages is not None), None)
    if chat is not None and not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise DataError(
            f"{chat.where}: a 'messages' record needs a tokenizer with a chat template, and "
            f"{name!r} has none; use 'prompt'/'completion' records or a tokenizer that defines "
            "chat_template"
        )
    parts = _split_three(len(records), opts, "records")

    splits = []
    dropped: list[str] = []
    for part, split in zip(parts, ("train", "val", "test"), strict=True):
        chosen = [records[i] for i in part]
        sequences, prompt_lengths = [], []
        for record, (prompt, completion) in zip(
            chosen, _tokenize_records(tokenizer, chosen, "jsonl"), strict=True
        ):
            ids = (prompt + completion)[:seq_len]
            if len(ids) <= max(len(prompt), 1):
                dropped.append(record.where)
                continue
            sequences.append(torch.tensor(ids, dtype=torch.long))
            prompt_lengths.append(len(prompt))
        if part and not sequences:
            raise DataError(
                f"dataset 'jsonl': every {split} record's prompt fills seq_len={seq_len} "
                "tokens, leaving no completion to learn; raise seq_len"
            )
        splits.append(PromptCompletionDataset(sequences, prompt_lengths))
    if dropped:
        warnings.warn(
            f"dataset 'jsonl': dropped {len(dropped)} record(s) whose prompt leaves no "
            f"completion token within seq_len={seq_len} (first: {dropped[0]})",
            stacklevel=2,
        )
    return _text_data("jsonl", tokenizer, opts, splits)


# ----------------------------------------------------------------------------- entry point

#: Text dataset name -> loader. Loaders take keyword options and return :class:`TextData`.
TEXT_DATASETS: dict[str, Callable[..., TextData]] = {
    "text": load_text_files,
    "jsonl": load_jsonl,
    "python-stdlib": load_python_stdlib,
}


def load_text_data(name: str, **options: Any) -> TextData:
    """Load the text dataset ``name`` (a key of :data:`TEXT_DATASETS`).

    ``options`` are the loader's keywords: ``files`` (``text``, ``jsonl``), ``root``
    (``python-stdlib``), ``tokenizer``, ``seq_len``, ``seed``, ``val_fraction``,
    ``test_fraction``, ``subset``, ``max_files`` and ``split_by`` (packed corpora).
    Unknown names and options raise :class:`ConfigError`.
    """
    if name not in TEXT_DATASETS:
        known = ", ".join(sorted(TEXT_DATASETS))
        raise ConfigError(
            f"unknown text dataset {name!r}{did_you_mean(str(name), TEXT_DATASETS)}; "
            f"available: {known}"
        )
    loader = TEXT_DATASETS[name]
    accepted = inspect.signature(loader).parameters
    for option in options:
        if option not in accepted:
            allowed = ", ".join(accepted)
            raise ConfigError(
                f"text dataset {name!r} takes no option {option!r}"
                f"{did_you_mean(option, accepted)}; its options: {allowed}"
            )
    if "files" in accepted and "files" not in options:
        raise ConfigError(f"text dataset {name!r} needs files: a list of files, dirs or globs")
    return loader(**options)
