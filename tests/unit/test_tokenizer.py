"""Tokenizer: lossless round trip, reserved special tokens, metadata, foreign tokenizer.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, pre_tokenizers, trainers

from pretrain.tokenizer import (
    META_FILE,
    MODE_TOKENS,
    SENTINELS,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    Tokenizer,
    build_untrained_bpe,
    check_output_dir,
    token_byte_lengths,
    train_tokenizer,
    train_tokenizer_from_files,
)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_decode_of_encode_is_identity_for_any_unicode(tokenizer: Tokenizer, text: str):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_every_byte_has_a_token_so_nothing_is_unknown(tokenizer: Tokenizer):
    vocab = tokenizer.backend.get_vocab()
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(vocab)
    assert len(pre_tokenizers.ByteLevel.alphabet()) == 256


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100))
def test_text_decoded_from_arbitrary_bytes_round_trips(tokenizer: Tokenizer, data: bytes):
    text = data.decode("utf-8", errors="replace")
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_tricky_strings_round_trip(tokenizer: Tokenizer):
    for text in ["", " ", "\r\n\t", "日本語のテキスト", "🙂👍🏽", "a\u0301", "x" * 5000, "<|eos|>"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_are_reserved_with_their_ids(tokenizer: Tokenizer):
    vocab = tokenizer.backend.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    sp = tokenizer.special
    assert (sp.bos, sp.eos, sp.pad, sp.mask, sp.sep, sp.cls) == (0, 1, 2, 3, 4, 5)
    assert len(sp.sentinels) == len(SENTINELS) == 100
    assert sp.sentinels[0] == vocab["<|extra_id_0|>"]
    assert sp.modes == {m: vocab[m] for m in MODE_TOKENS}
    assert tokenizer.vocab_size == 1024


def test_literal_special_token_text_is_not_a_special_id(tokenizer: Tokenizer):
    ids = tokenizer.encode("end <|eos|> [S] <|extra_id_3|>")
    reserved = set(range(len(SPECIAL_TOKENS)))
    assert not reserved & set(ids)


def test_saved_directory_loads_identically_with_metadata(tokenizer: Tokenizer, tmp_path: Path):
    tokenizer.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["tokenizer_hash"] == tokenizer.hash
    assert meta["special_tokens"]["eos"] == tokenizer.special.eos
    assert meta["training"]["settings"]["vocab_size"] == 1024
    assert len(meta["training"]["corpus_sha256"]) == 64
    again = Tokenizer.load(tmp_path)
    assert again.hash == tokenizer.hash
    text = "It is a truth universally acknowledged"
    assert again.encode(text) == tokenizer.encode(text)


def test_corpus_hash_depends_on_the_corpus_and_hash_on_the_tokenizer():
    texts = ["the cat sat on the mat " * 20, "a dog barked at the moon " * 20]
    a = train_tokenizer(texts, vocab_size=400)
    b = train_tokenizer(texts, vocab_size=400)
    c = train_tokenizer(texts[:1], vocab_size=400)
    assert a.meta["training"]["corpus_sha256"] == b.meta["training"]["corpus_sha256"]
    assert a.meta["training"]["corpus_sha256"] != c.meta["training"]["corpus_sha256"]
    assert a.hash == b.hash
    assert a.hash != c.hash


def test_vocab_size_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["text"], vocab_size=300)


def test_foreign_tokenizer_gets_missing_special_tokens_added_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    backend = build_untrained_bpe()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|eos|>"])
    backend.train_from_iterator(["hello there, general kenobi"] * 10, trainer=trainer)
    backend.save(str(tmp_path / "tokenizer.json"))
    before = backend.get_vocab_size()
    with caplog.at_level(logging.WARNING):
        tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert "<|eos|>" not in tok.added_special_tokens
    assert tok.special.eos == 1  # kept its existing id
    assert len(tok.added_special_tokens) == len(SPECIAL_TOKENS) - 1
    assert tok.vocab_size == before + len(SPECIAL_TOKENS) - 1
    assert "added or marked 108 special tokens" in caplog.text
    assert tok.decode(tok.encode("hello there")) == "hello there"


def test_our_special_string_held_as_an_ordinary_token_is_marked_special(tmp_path: Path):
    """A foreign tokenizer.json with ``<|mask|>`` as a plain added token: it keeps its id but
    becomes special, so the literal text is not encoded to it and decoding can skip it."""
    backend = build_untrained_bpe()
    trainer = trainers.BpeTrainer(vocab_size=300)
    backend.train_from_iterator(["hello there, general kenobi"] * 10, trainer=trainer)
    backend.add_tokens([AddedToken("<|mask|>", special=False)])
    mask_id = backend.token_to_id("<|mask|>")
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    assert tok.special.mask == mask_id and "<|mask|>" in tok.added_special_tokens
    assert mask_id not in tok.encode("a <|mask|> b")
    assert tok.decode([mask_id], skip_special_tokens=True) == ""


def test_byte_lengths_count_ordinary_added_tokens_by_their_text(tmp_path: Path):
    """GPT-NeoX adds whitespace runs as ordinary tokens: they stand for their bytes, and bits
    per byte must count them (only special tokens count 0)."""
    backend = build_untrained_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(["hello there, general kenobi"] * 10, trainer=trainer)
    backend.add_tokens([AddedToken("        ", special=False)])
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.load(tmp_path / "tokenizer.json")
    lengths = token_byte_lengths(tok)
    text = "hello        there <|mask|> é"
    ids = tok.encode(text)
    assert tok.backend.token_to_id("        ") in ids
    assert sum(lengths[i] for i in ids) == len(text.encode("utf-8"))
    assert lengths[tok.special.eos] == 0


def test_min_frequency_must_not_be_negative():
    with pytest.raises(ValueError, match="min-frequency must be >= 0"):
        train_tokenizer(["hello"], 1000, min_frequency=-5)


def test_missing_or_invalid_tokenizer_file_is_named(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid Hugging Face tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_training_on_nothing_names_the_paths_that_do_not_exist(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_text("")
    inputs = [str(tmp_path / "nope.jsonl"), str(tmp_path / "nomatch*.jsonl"),
              str(tmp_path / "empty.jsonl")]  # fmt: skip
    with pytest.raises(ValueError, match="no documents could be read") as e:
        train_tokenizer_from_files(inputs, vocab_size=400)
    assert "nope.jsonl: no such file or directory" in str(e.value)
    assert "nomatch*.jsonl: glob matched no files" in str(e.value)
    assert "empty.jsonl: holds no documents" in str(e.value)


def test_a_directory_holding_a_tokenizer_is_kept_unless_overwrite(
    tokenizer: Tokenizer, tmp_path: Path
):
    """Shards name the hash of the tokenizer they were made with: silently replacing it in
    its directory would strand them."""
    check_output_dir(tmp_path / "new", overwrite=False)  # absent or empty: fine
    other = train_tokenizer(["a few words of text", "more words"], vocab_size=400)
    other.save(tmp_path)
    with pytest.raises(ValueError, match="already holds a tokenizer.*--overwrite"):
        check_output_dir(tmp_path, overwrite=False)
    with pytest.raises(ValueError, match="already holds a tokenizer"):
        tokenizer.save(tmp_path, overwrite=False)
    assert Tokenizer.load(tmp_path).hash == other.hash  # untouched
    tokenizer.save(tmp_path, overwrite=True)
    assert Tokenizer.load(tmp_path).hash == tokenizer.hash
    with pytest.raises(ValueError, match="must be a directory"):
        check_output_dir(tmp_path / TOKENIZER_FILE, overwrite=True)
