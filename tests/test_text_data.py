"""Text datasets, tokenizers and collation for causal language models (distill.data.text)."""

from __future__ import annotations

import json
import math
import pickle
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from distill.data.collate import collate_text
from distill.data.text import (
    TEXT_DATASETS,
    load_jsonl,
    load_python_stdlib,
    load_text_data,
    load_text_files,
    python_stdlib_files,
)
from distill.data.tokenizers import (
    BYTE_BOS_ID,
    BYTE_CHAT_TEMPLATE,
    BYTE_EOS_ID,
    BYTE_PAD_ID,
    byte_tokenizer,
    encode_plain,
    is_byte_tokenizer,
    load_tokenizer,
    require_transformers,
)
from distill.errors import ConfigError, DataError

transformers = pytest.importorskip("transformers")

EOS = BYTE_EOS_ID
SAMPLES = [
    "plain ASCII text, with punctuation!\n",
    "accentué: déjà vu, naïve, Ærø, ß\n",
    "日本語のテキスト 🙂🚀 and 中文 👍🏽\r\n",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


@pytest.fixture(scope="module")
def merge_tok_dir(tmp_path_factory):
    """A saved tokenizer that is not the byte one: byte-level BPE plus the merge ``a b -> ab``
    (id 256), eos ``</s>`` (257), no pad token and no chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    symbols = set(pre_tokenizers.ByteLevel.alphabet())
    probe = byte_tokenizer()
    vocab = {s: probe.convert_tokens_to_ids(s) for s in symbols}
    vocab["ab"] = 256
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("</s>", special=True)])
    other = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    path = tmp_path_factory.mktemp("merge-tokenizer")
    other.save_pretrained(path)
    return path


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


def items(dataset) -> list[dict]:
    return [dataset[i] for i in range(len(dataset))]


def stream(dataset) -> list[int]:
    """All input ids of a packed split, in order."""
    return [t for item in items(dataset) for t in item["input_ids"].tolist()]


def all_blocks(data) -> list[list[int]]:
    """Input ids of every item of every split."""
    splits = (data.train, data.val, data.test)
    return [it["input_ids"].tolist() for s in splits if s is not None for it in items(s)]


def doc_ids(text: str) -> list[int]:
    return list(text.encode("utf-8")) + [EOS]


# ----------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_ids_are_bytes_and_round_trip(tok):
    assert len(tok) == 259
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (256, 257, 258)
    assert (BYTE_PAD_ID, BYTE_BOS_ID, BYTE_EOS_ID) == (256, 257, 258)
    for text in SAMPLES:
        ids = tok(text)["input_ids"]  # add_special_tokens=True adds nothing
        assert ids == list(text.encode("utf-8"))
        assert tok.decode(ids) == text
    assert tok.decode([BYTE_BOS_ID, 104, 105, BYTE_EOS_ID]) == "<|bos|>hi<|eos|>"
    assert tok.decode([BYTE_BOS_ID, 104, 105, BYTE_EOS_ID], skip_special_tokens=True) == "hi"


def test_byte_tokenizer_covers_every_byte_of_utf8(tok):
    # Every code point below U+0800, one for each 3-byte lead (E0..EF) and 4-byte lead (F0..F4).
    three = [max(lead << 12, 0x800) for lead in range(16)]
    four = [0x10000, 0x40000, 0x80000, 0xC0000, 0x100000]
    text = "".join(map(chr, [*range(0x800), *three, *four])) + "中🙂"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    # Every byte that UTF-8 can produce: all but C0, C1 and F5..FF.
    assert set(ids) == set(range(256)) - {0xC0, 0xC1, *range(0xF5, 0x100)}
    assert tok.decode(ids) == text


def test_byte_tokenizer_saves_and_loads_with_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(loaded) == 259
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (256, 257, 258)
    assert loaded.chat_template == BYTE_CHAT_TEMPLATE
    for text in SAMPLES:
        assert loaded(text)["input_ids"] == list(text.encode("utf-8"))
        assert loaded.decode(loaded(text)["input_ids"]) == text
    via_spec = load_tokenizer(str(tmp_path))
    assert is_byte_tokenizer(via_spec) and is_byte_tokenizer(loaded) and is_byte_tokenizer(tok)
    assert load_tokenizer(f"hf:{tmp_path}")("é")["input_ids"] == [195, 169]


def test_byte_fast_path_matches_the_tokenizer(tok):
    texts = [*SAMPLES, "a literal <|eos|> and <|pad|> stay text\n", "x" * 5000]
    fast = encode_plain(tok, texts)
    slow = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert [f.tolist() for f in fast] == slow
    at = texts[4].index("<|eos|>")
    assert fast[4].tolist()[at : at + 7] == list(b"<|eos|>")


def test_other_tokenizer_directory(merge_tok_dir):
    other = load_tokenizer(merge_tok_dir)
    assert not is_byte_tokenizer(other)
    assert [ids.tolist() for ids in encode_plain(other, ["abcab", "</s>"])] == [
        [256, 99, 256],
        list(b"</s>"),
    ]


def test_load_tokenizer_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="does not exist") as info:
        load_tokenizer(str(missing))
    assert str(missing) in str(info.value) and "tokenizer.json" in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(DataError, match="holds no tokenizer files") as info:
        load_tokenizer(empty)
    assert str(empty) in str(info.value) and "tokenizer_config.json" in str(info.value)
    with pytest.raises(DataError, match="is a file"):
        load_tokenizer(empty / "config.json")
    broken = tmp_path / "broken"
    write(broken / "tokenizer.json", "{not json")
    with pytest.raises(DataError, match="cannot load the tokenizer"):
        load_tokenizer(broken)
    for bad in (None, 3, ""):
        with pytest.raises(ConfigError, match="tokenizer must be 'byte'"):
            load_tokenizer(bad)  # type: ignore[arg-type]


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    with pytest.raises(ConfigError, match="pip install transformers"):
        require_transformers()
    with pytest.raises(ConfigError, match="pip install transformers"):
        load_tokenizer("byte")


# ----------------------------------------------------------------------------- collate


def test_collate_pads_right_and_masks_labels():
    batch = collate_text(
        [
            {
                "input_ids": torch.tensor([5, 6, 7]),
                "labels": torch.tensor([-100, 6, 7]),
                "index": 4,
            },
            {"input_ids": torch.tensor([8]), "labels": torch.tensor([8]), "index": 9},
            {"input_ids": [1, 2], "labels": [1, -100], "index": 0},
        ],
        pad_id=256,
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    assert all(v.dtype == torch.int64 for v in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 256, 256], [1, 2, 256]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100], [1, -100, -100]]
    assert batch["index"].tolist() == [4, 9, 0]


def test_collate_without_labels_and_with_own_mask():
    batch = collate_text(
        [
            {"input_ids": torch.tensor([3, 4]), "attention_mask": torch.tensor([0, 1])},
            {"input_ids": torch.tensor([5, 6, 7]), "attention_mask": torch.tensor([1, 1, 1])},
        ]
    )
    assert batch["input_ids"].tolist() == [[3, 4, 0], [5, 6, 7]]
    assert batch["labels"].tolist() == [[3, 4, -100], [5, 6, 7]]
    assert batch["attention_mask"].tolist() == [[0, 1, 0], [1, 1, 1]]
    stacked = collate_text(
        [{"input_ids": [1], "x": torch.ones(2)}, {"input_ids": [2], "x": torch.zeros(2)}]
    )
    assert stacked["x"].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_collate_errors():
    with pytest.raises(DataError, match="at least one item"):
        collate_text([])
    with pytest.raises(DataError, match="item 1 must be a dict with 'input_ids'"):
        collate_text([{"input_ids": [1]}, {"labels": [1]}])
    with pytest.raises(DataError, match="same keys"):
        collate_text([{"input_ids": [1]}, {"input_ids": [1], "labels": [1]}])
    with pytest.raises(DataError, match="item 0: 'labels' has 1 positions but 'input_ids' has 2"):
        collate_text([{"input_ids": [1, 2], "labels": [1]}])
    with pytest.raises(DataError, match="1-D sequence of integers"):
        collate_text([{"input_ids": torch.zeros(2, 2, dtype=torch.long)}])
    with pytest.raises(DataError, match="1-D sequence of integers"):
        collate_text([{"input_ids": [0.5, 1.0]}])


# ----------------------------------------------------------------------------- text files


@pytest.fixture
def corpus(tmp_path):
    """Four documents of different lengths (one accented, one CJK/emoji) and an empty file."""
    texts = {
        "a.txt": "alpha beta gamma\n" * 3,
        "b.txt": "déjà vu\n",
        "c.txt": "中文 🙂 text " * 4,
        "d.txt": "the last one.",
        "e.txt": "",
    }
    for name, text in texts.items():
        write(tmp_path / "docs" / name, text)
    return tmp_path / "docs", texts


def expected_blocks(ids: list[int], seq_len: int) -> list[list[int]]:
    """Cut into seq_len pieces; a last piece shorter than 2 tokens is dropped."""
    blocks = [ids[i : i + seq_len] for i in range(0, len(ids), seq_len)]
    return [b for b in blocks if len(b) >= 2]


def test_packing_by_block(corpus, tok):
    root, texts = corpus
    seq_len = 7
    data = load_text_files(root, tokenizer=tok, seq_len=seq_len, split_by="block", seed=1)
    whole = [t for name in sorted(texts) if texts[name] for t in doc_ids(texts[name])]
    blocks = expected_blocks(whole, seq_len)
    n_val, n_test = math.ceil(len(blocks) * 0.1), math.ceil(len(blocks) * 0.1)
    assert (len(data.train), len(data.val), len(data.test)) == (
        len(blocks) - n_val - n_test,
        n_val,
        n_test,
    )
    assert len({tuple(b) for b in blocks}) == len(blocks)  # distinct, so each is findable
    assert sorted(all_blocks(data)) == sorted(blocks)  # every block in exactly one split
    for item in items(data.train):
        assert torch.equal(item["labels"], item["input_ids"])
        assert item["input_ids"].dtype == torch.int64
    # Training blocks keep corpus order.
    train = [tuple(i["input_ids"].tolist()) for i in items(data.train)]
    assert train == sorted(train, key=lambda b: blocks.index(list(b)))
    assert (data.name, data.vocab_size, data.pad_id, data.seq_len) == ("text", 259, 256, 7)


def split_into_documents(ids: list[int], texts: dict[str, str]) -> list[str]:
    """Names of the documents whose ids, one after the other, make up ``ids`` exactly (the
    last one's eos may be missing: a one-token final block is dropped)."""
    names, rest = [], ids
    while rest:
        match = [
            n
            for n in sorted(texts)
            if texts[n]
            and (
                rest[: len(doc_ids(texts[n]))] == doc_ids(texts[n])
                or rest == doc_ids(texts[n])[:-1]
            )
        ]
        assert match, f"not a sequence of whole documents: {rest}"
        names.append(match[0])
        rest = rest[len(doc_ids(texts[match[0]])) :]
    return names


def test_packing_by_file_keeps_documents_whole(corpus, tok):
    root, texts = corpus
    data = load_text_files(
        root, tokenizer=tok, seq_len=5, val_fraction=0.25, test_fraction=0.25, seed=0
    )
    seen = []
    for split in (data.train, data.val, data.test):
        names = split_into_documents(stream(split), texts)
        assert names == sorted(names)  # corpus order within a split
        # Each split is packed on its own: its blocks cut its own documents' ids.
        packed = [t for n in names for t in doc_ids(texts[n])]
        assert [i["input_ids"].tolist() for i in items(split)] == expected_blocks(packed, 5)
        seen.append(names)
    assert [len(names) for names in seen] == [2, 1, 1]  # 4 documents: e.txt is empty
    assert sorted(n for names in seen for n in names) == ["a.txt", "b.txt", "c.txt", "d.txt"]


def test_split_is_seeded(tmp_path, tok):
    for i in range(12):
        write(tmp_path / f"f{i:02d}.txt", f"document number {i}\n")
    load = lambda seed: load_text_files(tmp_path, tokenizer=tok, seq_len=8, seed=seed)  # noqa: E731
    first, again, other = load(0), load(0), load(1)
    for a, b in ((first.train, again.train), (first.val, again.val), (first.test, again.test)):
        assert stream(a) == stream(b)
    assert stream(first.val) != stream(other.val)
    assert len(stream(first.val)) > 0 and len(stream(first.test)) > 0


def test_subset_keeps_first_training_blocks(corpus, tok):
    root, _ = corpus
    full = load_text_files(root, tokenizer=tok, seq_len=4, split_by="block")
    small = load_text_files(root, tokenizer=tok, seq_len=4, split_by="block", subset=3)
    assert len(small.train) == 3
    assert [i["input_ids"].tolist() for i in items(small.train)] == [
        i["input_ids"].tolist() for i in items(full.train)[:3]
    ]
    assert stream(small.val) == stream(full.val)
    with pytest.raises(DataError, match=f"subset=10000 .* has {len(full.train)} items"):
        load_text_files(root, tokenizer=tok, seq_len=4, split_by="block", subset=10000)


def test_files_dirs_and_globs(tmp_path, tok):
    write(tmp_path / "x" / "b.txt", "bb")
    write(tmp_path / "x" / "sub" / "a.txt", "aa")
    write(tmp_path / "x" / "skip.md", "no")
    write(tmp_path / "y.text", "yy")
    # The directory gives x/b.txt then x/sub/a.txt (sorted); the repeated b.txt is read once;
    # then the glob's y.text. Stream: bb.aa.yy. (. = eos) -> blocks bb .a a. yy (. dropped).
    entries = [tmp_path / "x", str(tmp_path / "x" / "b.txt"), str(tmp_path / "y.*")]
    data = load_text_files(
        entries, tokenizer=tok, seq_len=2, split_by="block", val_fraction=0.25, test_fraction=0
    )
    assert data.test is None and (len(data.train), len(data.val)) == (3, 1)
    assert sorted(all_blocks(data)) == sorted([[98, 98], [EOS, 97], [97, EOS], [121, 121]])
    deep = load_text_files(
        str(tmp_path / "**" / "*.txt"), tokenizer=tok, seq_len=2, split_by="block", test_fraction=0
    )
    assert sorted(all_blocks(deep)) == sorted([[98, 98], [EOS, 97], [97, EOS]])


def test_final_short_block_is_kept_and_one_token_tail_dropped(tmp_path, tok):
    write(tmp_path / "one.txt", "abcdefg")  # 8 tokens with eos
    data = load_text_files(tmp_path, tokenizer=tok, seq_len=3, split_by="block", seed=0)
    assert sorted(all_blocks(data)) == [[97, 98, 99], [100, 101, 102], [103, EOS]]
    write(tmp_path / "one.txt", "abcdef")  # 7 tokens: the last block would be [eos] alone
    with pytest.raises(DataError, match="only 2 blocks of seq_len=3 tokens"):
        load_text_files(tmp_path, tokenizer=tok, seq_len=3, split_by="block")


def test_auto_splits_blocks_when_files_are_too_few(tmp_path, tok):
    write(tmp_path / "a.txt", "abcdefgh")
    write(tmp_path / "b.txt", "ijklmnop")
    auto = load_text_files(tmp_path, tokenizer=tok, seq_len=4, seed=5)
    by_block = load_text_files(tmp_path, tokenizer=tok, seq_len=4, seed=5, split_by="block")
    for a, b in (
        (auto.train, by_block.train),
        (auto.val, by_block.val),
        (auto.test, by_block.test),
    ):
        assert stream(a) == stream(b)
    assert sorted(all_blocks(auto)) == sorted(
        [list(b"abcd"), list(b"efgh"), [EOS, *b"ijk"], list(b"lmno"), [112, EOS]]
    )


def test_byte_order_mark_is_dropped(tmp_path, tok):
    write(tmp_path / "bom.txt", b"\xef\xbb\xbfhi there")
    data = load_text_files(tmp_path, tokenizer=tok, seq_len=2, split_by="block", test_fraction=0)
    assert sorted(all_blocks(data)) == sorted([[104, 105], [32, 116], [104, 101], [114, 101]])


def test_generic_tokenizer_packs_with_its_own_eos(tmp_path, merge_tok_dir):
    for name, text in (("1.txt", "ab"), ("2.txt", "abab"), ("3.txt", "abc")):
        write(tmp_path / name, text)
    data = load_text_files(tmp_path, tokenizer=str(merge_tok_dir), seq_len=8, split_by="file")
    assert sorted(all_blocks(data)) == sorted([[256, 257], [256, 256, 257], [256, 99, 257]])
    assert (data.pad_id, data.vocab_size) == (257, 258)  # no pad token: pads with eos


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"files": []}, ConfigError, "files must list"),
        ({"files": None}, ConfigError, "files must list"),
        ({"seq_len": 1}, ConfigError, "seq_len must be an integer >= 2.*got 1"),
        ({"seq_len": True}, ConfigError, "seq_len must be an integer >= 2.*got True"),
        ({"seq_len": 8.0}, ConfigError, "seq_len"),
        ({"val_fraction": 0}, ConfigError, "val_fraction"),
        ({"test_fraction": 1.0}, ConfigError, r"test_fraction must be a number in \[0, 1\)"),
        ({"test_fraction": -0.1}, ConfigError, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, ConfigError, "below 1"),
        ({"subset": 0}, ConfigError, "subset must be an integer >= 1"),
        ({"max_files": 0}, ConfigError, "max_files must be an integer >= 1"),
        ({"seed": "1"}, ConfigError, "seed must be an integer"),
        ({"split_by": "line"}, ConfigError, "split_by='line' is not supported"),
    ],
)
def test_text_option_errors(corpus, tok, kwargs, error, pattern):
    root, _ = corpus
    options = {"files": root, "tokenizer": tok, "seq_len": 4, **kwargs}
    with pytest.raises(error, match=pattern):
        load_text_files(**options)


def test_text_file_errors(tmp_path, tok):
    (tmp_path / "none").mkdir()
    write(tmp_path / "none" / "notes.md", "x")
    with pytest.raises(DataError, match="directory .*none' holds no \\*.txt files"):
        load_text_files(tmp_path / "none", tokenizer=tok)
    with pytest.raises(DataError, match="pattern .*zz\\*.txt' matches no file"):
        load_text_files(str(tmp_path / "zz*.txt"), tokenizer=tok)
    with pytest.raises(DataError, match="missing.txt' does not exist"):
        load_text_files(str(tmp_path / "missing.txt"), tokenizer=tok)
    write(tmp_path / "empty" / "a.txt", "")
    write(tmp_path / "empty" / "b.txt", "")
    with pytest.raises(DataError, match="all 2 files are empty"):
        load_text_files(tmp_path / "empty", tokenizer=tok)
    write(tmp_path / "latin" / "l.txt", "caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="l.txt: not UTF-8 text \\(byte 3 is 0xe9\\)"):
        load_text_files(tmp_path / "latin", tokenizer=tok)
    write(tmp_path / "two" / "a.txt", "aaaa")
    write(tmp_path / "two" / "b.txt", "bbbb")
    with pytest.raises(DataError, match="only 2 non-empty files to split into train/val/test"):
        load_text_files(tmp_path / "two", tokenizer=tok, split_by="file")
    with pytest.raises(ConfigError, match="each entry must be a path"):
        load_text_files([tmp_path / "two", 3], tokenizer=tok)  # type: ignore[list-item]


# ----------------------------------------------------------------------------- jsonl


def write_jsonl(path: Path, records: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    return write(path, "\n".join(lines) + "\n")


def all_items(data) -> list[dict]:
    return [it for s in (data.train, data.val, data.test) if s is not None for it in items(s)]


def test_jsonl_prompt_completion_masks_the_prompt(tmp_path, tok):
    records = [{"prompt": f"Q{i}: é?", "completion": f" A{i}"} for i in range(10)]
    path = write_jsonl(tmp_path / "qa.jsonl", records)
    data = load_jsonl(path, tokenizer=tok, seq_len=32, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 1, 1)
    got = sorted((it["input_ids"].tolist(), it["labels"].tolist()) for it in all_items(data))
    want = []
    for r in records:
        prompt, completion = list(r["prompt"].encode()), list(r["completion"].encode()) + [EOS]
        want.append((prompt + completion, [-100] * len(prompt) + completion))
    assert got == sorted(want)
    assert want[0][1] == [-100] * 7 + [32, 65, 48, EOS]


def test_jsonl_chat_uses_the_template(tmp_path, tok):
    chat = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello 🙂"},
        ]
    }
    path = write_jsonl(tmp_path / "chat.jsonl", [chat] * 3)
    data = load_jsonl(path, tokenizer=tok, seq_len=128, val_fraction=0.3, test_fraction=0.3)
    item = data.train[0]
    prompt = "<|system|>\nBe brief.<|eos|><|user|>\nHi<|eos|><|assistant|>\n"
    assert (
        tok.apply_chat_template(chat["messages"][:-1], tokenize=False, add_generation_prompt=True)
        == "<|bos|>" + prompt
    )
    prompt_ids = [BYTE_BOS_ID]
    for part in prompt.split("<|eos|>")[:-1]:
        prompt_ids += list(part.encode()) + [EOS]
    prompt_ids += list(prompt.split("<|eos|>")[-1].encode())
    completion_ids = list("Hello 🙂".encode()) + [EOS]
    assert item["input_ids"].tolist() == prompt_ids + completion_ids
    assert item["labels"].tolist() == [-100] * len(prompt_ids) + completion_ids


def test_jsonl_truncates_from_the_right_and_drops_empty_completions(tmp_path, tok):
    records = [{"prompt": "ab", "completion": "cdefgh"}] * 9
    records.insert(3, {"prompt": "x" * 10, "completion": "y"})  # line 4: no room for "y"
    path = write_jsonl(tmp_path / "t.jsonl", records)
    with pytest.warns(
        UserWarning, match=r"dropped 1 record\(s\) .*seq_len=5 \(first: .*t.jsonl:4\)"
    ):
        data = load_jsonl(path, tokenizer=tok, seq_len=5, seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (7, 1, 1)
    for it in all_items(data):
        assert it["input_ids"].tolist() == list(b"abcde")
        assert it["labels"].tolist() == [-100, -100, 99, 100, 101]


def test_jsonl_all_prompts_too_long(tmp_path, tok):
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "x" * 9, "completion": "y"}] * 3)
    with pytest.raises(DataError, match="prompt fills seq_len=8 tokens"):
        load_jsonl(path, tokenizer=tok, seq_len=8, val_fraction=0.3, test_fraction=0.3)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ('{"prompt": "a", "completion": ', "bad.jsonl:2: not valid JSON"),
        ("[1, 2]", "bad.jsonl:2: a record must be a JSON object.*got list"),
        (
            '{"prompt": "a"}',
            "bad.jsonl:2: .*'completion': no 'completion' \\(keys: \\['prompt'\\]\\)",
        ),
        ('{"prompt": "a", "completion": 3}', "bad.jsonl:2: .*'completion': 3"),
        ('{"text": "a"}', "bad.jsonl:2: a record needs string 'prompt'"),
        ('{"messages": []}', "bad.jsonl:2: 'messages' must be a non-empty list"),
        ('{"messages": [{"role": "user"}]}', "bad.jsonl:2: messages\\[0\\] must be an object"),
        (
            '{"messages": [{"role": "user", "content": "hi"}]}',
            "bad.jsonl:2: the last message .* role 'assistant'; got 'user'",
        ),
        (
            '{"prompt": "a", "completion": "b", "messages": []}',
            "bad.jsonl:2: a record has either",
        ),
    ],
)
def test_jsonl_bad_lines_name_file_and_line(tmp_path, tok, line, pattern):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "c"}, line, ""])
    with pytest.raises(DataError, match=pattern):
        load_jsonl(path, tokenizer=tok)


def test_jsonl_other_errors(tmp_path, tok, merge_tok_dir):
    empty = write(tmp_path / "empty.jsonl", "\n\n")
    with pytest.raises(DataError, match="no records in .*empty.jsonl"):
        load_jsonl(empty, tokenizer=tok)
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write_jsonl(tmp_path / "chat.jsonl", [chat] * 3)
    with pytest.raises(
        DataError, match="chat.jsonl:1: a 'messages' record needs a tokenizer with a chat template"
    ):
        load_jsonl(path, tokenizer=str(merge_tok_dir))
    with pytest.raises(DataError, match="only 2 records to split"):
        load_jsonl(write_jsonl(tmp_path / "two.jsonl", [chat] * 2), tokenizer=tok)


# ----------------------------------------------------------------------------- python-stdlib


def test_python_stdlib_exclusions_and_order(tmp_path, tok):
    kept = [
        "__future__.py",
        "doctest.py",
        "email/mime/text.py",
        "email/utils.py",
        "unittest/case.py",
        "zoneinfo/_common.py",
    ]
    left_out = [
        "test/test_os.py",
        "test/support/__init__.py",
        "email/tests/x.py",
        "idlelib/idle_test/htest.py",
        "tkinter/test/test_ttk/a.py",
        "unittest/test/test_case.py",
        "lib2to3/test_data/x.py",
        "ctypes/macholib_tests/y.py",
        "site-packages/pkg/mod.py",
        "dist-packages/pkg/mod.py",
        "config-3.11-x86_64-linux-gnu/python-config.py",
        "_sysconfigdata__linux_x86_64-linux-gnu.py",
        "test_something.py",
        "__pycache__/os.py",
        "notes.txt",
    ]
    for rel in kept + left_out:
        write(tmp_path / rel, f"# {rel}\n")
    files = [p.relative_to(tmp_path).as_posix() for p in python_stdlib_files(tmp_path)]
    assert files == kept


def test_python_stdlib_skips_files_that_are_not_utf8(tmp_path, tok):
    texts = {name: f"# {name}\n" for name in ("a.py", "b.py", "c.py")}
    for name, text in texts.items():
        write(tmp_path / name, text)
    write(tmp_path / "bad.py", "# caf\xe9\n".encode("latin-1"))
    data = load_python_stdlib(root=tmp_path, tokenizer=tok, seq_len=64)
    assert sorted(
        split_into_documents(stream(data.train), texts)
        + split_into_documents(stream(data.val), texts)
        + split_into_documents(stream(data.test), texts)
    ) == sorted(texts)
    only_bad = tmp_path / "only-bad"
    write(only_bad / "bad.py", "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="no readable .py files under .*only-bad"):
        load_python_stdlib(root=only_bad, tokenizer=tok)
    with pytest.raises(DataError, match="is not a directory"):
        load_python_stdlib(root=tmp_path / "a.py", tokenizer=tok)


def test_python_stdlib_of_the_running_python(tok):
    root = Path(sysconfig.get_paths()["stdlib"])
    files = python_stdlib_files()
    relative = [p.relative_to(root).as_posix() for p in files]
    assert relative == sorted(relative)
    assert "os.py" in relative and "unittest/case.py" in relative
    for rel in relative:
        dirs = rel.split("/")[:-1]
        assert not any(d in ("test", "tests", "site-packages") or d.endswith("_test") for d in dirs)
    data = load_python_stdlib(tokenizer=tok, seq_len=128, max_files=12, seed=3)
    again = load_python_stdlib(tokenizer=tok, seq_len=128, max_files=12, seed=3)
    for a, b in ((data.train, again.train), (data.val, again.val), (data.test, again.test)):
        assert stream(a) == stream(b)
    # The corpus is the first 12 files, each whole in exactly one split.
    texts = {rel: (root / rel).read_bytes().decode("utf-8") for rel in relative[:12]}
    found = [
        texts[n]
        for split in (data.train, data.val, data.test)
        for n in split_into_documents(stream(split), texts)
    ]
    assert sorted(found) == sorted(t for t in texts.values() if t)


# ----------------------------------------------------------------------------- entry point


def test_load_text_data_dispatches_and_checks_options(corpus, tok):
    root, _ = corpus
    assert set(TEXT_DATASETS) == {"text", "jsonl", "python-stdlib"}
    data = load_text_data("text", files=root, tokenizer=tok, seq_len=8)
    assert data.name == "text" and len(data.train) > 0
    with pytest.raises(
        ConfigError, match="unknown text dataset 'jsnl' \\(did you mean 'jsonl'\\?\\)"
    ):
        load_text_data("jsnl", files=root)
    with pytest.raises(
        ConfigError, match="takes no option 'seqlen' \\(did you mean 'seq_len'\\?\\)"
    ):
        load_text_data("text", files=root, seqlen=8)
    with pytest.raises(ConfigError, match="'python-stdlib' takes no option 'files'"):
        load_text_data("python-stdlib", files=root)
    with pytest.raises(ConfigError, match="'jsonl' needs files"):
        load_text_data("jsonl")


def test_collate_of_text_data_batches_a_dataloader(corpus, tok):
    root, _ = corpus
    data = load_text_files(root, tokenizer=tok, seq_len=6, split_by="block")
    collate = pickle.loads(pickle.dumps(data.collate))  # DataLoader workers pickle it
    indexed = [{**data.train[i], "index": i} for i in range(3)]
    batch = collate(indexed)
    assert batch["input_ids"].shape == batch["labels"].shape == (3, 6)
    assert batch["index"].tolist() == [0, 1, 2]
    loader = torch.utils.data.DataLoader(data.train, batch_size=4, collate_fn=data.collate)
    first = next(iter(loader))
    assert first["input_ids"].shape == (4, 6) and first["attention_mask"].all()
