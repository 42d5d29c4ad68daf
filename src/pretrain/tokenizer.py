"""Byte-level BPE tokenizers: train one with Hugging Face ``tokenizers``, or load a tokenizer.json.

The trained tokenizer follows GPT-2's byte-level BPE (Radford et al., 2019) with Llama 3's
pre-tokenization regex (meta-llama/llama3 ``llama/tokenizer.py``, ``pat_str``): text is split by
the regex, each piece is mapped byte by byte onto 256 printable symbols, and BPE merges are
learned over those symbols. Every byte is in the base alphabet, so every string encodes, and
there is no normalizer, so ``decode(encode(s)) == s`` for any Unicode string.

Special tokens are reserved at the start of the vocabulary (see :data:`SPECIAL_TOKENS`). Text
that happens to contain one of them literally (``"<|eos|>"`` in a web page) is encoded as plain
text, never as the special id: objectives insert special ids by id.

A tokenizer directory holds ``tokenizer.json`` (the Hugging Face format) and
``tokenizer_meta.json`` (special token ids, the tokenizer hash, and for trained tokenizers the
hash of the training corpus and settings).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from pretrain import __version__
from pretrain.atomic import atomic_write_json, atomic_write_text
from pretrain.data.readers import ReadReport, iter_documents, no_documents_error

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "tokenizer_meta.json"

BOS, EOS, PAD, MASK, SEP, CLS = "<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>", "<|sep|>", "<|cls|>"
NUM_SENTINELS = 100
SENTINELS = tuple(f"<|extra_id_{i}|>" for i in range(NUM_SENTINELS))
MODE_TOKENS = ("[R]", "[S]", "[X]")  # UL2 mode tokens (Tay et al., 2022, §3.1.2)
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, MASK, SEP, CLS, *SENTINELS, *MODE_TOKENS)

# Llama 3 pre-tokenization (meta-llama/llama3 llama/tokenizer.py, pat_str).
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BYTES = 256


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the reserved special tokens of one tokenizer."""

    bos: int
    eos: int
    pad: int
    mask: int
    sep: int
    cls: int
    sentinels: tuple[int, ...]
    modes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bos": self.bos,
            "eos": self.eos,
            "pad": self.pad,
            "mask": self.mask,
            "sep": self.sep,
            "cls": self.cls,
            "sentinels": list(self.sentinels),
            "modes": dict(self.modes),
        }


class Tokenizer:
    """A Hugging Face ``tokenizers`` tokenizer plus the special token ids this package uses."""

    def __init__(self, backend: HFTokenizer, meta: dict[str, Any] | None = None):
        self.added_special_tokens = _ensure_special_tokens(backend)
        self.backend = backend
        self.hash = tokenizer_hash(backend)
        # Literal special-token strings in text are encoded as ordinary text.
        self.backend.encode_special_tokens = True
        self.meta = dict(meta or {})
        ids = {tok: backend.token_to_id(tok) for tok in SPECIAL_TOKENS}
        self.special = SpecialTokenIds(
            bos=ids[BOS],
            eos=ids[EOS],
            pad=ids[PAD],
            mask=ids[MASK],
            sep=ids[SEP],
            cls=ids[CLS],
            sentinels=tuple(ids[s] for s in SENTINELS),
            modes={m: ids[m] for m in MODE_TOKENS},
        )

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def to_meta(self) -> dict[str, Any]:
        meta = dict(self.meta)
        meta.update(
            {
                "format_version": 1,
                "pretrain_version": __version__,
                "tokenizer_hash": self.hash,
                "vocab_size": self.vocab_size,
                "special_tokens": self.special.to_dict(),
                "added_special_tokens": list(self.added_special_tokens),
            }
        )
        return meta

    def save(self, out_dir: str | os.PathLike, overwrite: bool = True) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_meta.json`` into ``out_dir``.

        With ``overwrite=False`` a directory that already holds a tokenizer is refused
        (:func:`check_output_dir`). The default replaces it: a run directory's copy of its
        tokenizer is rewritten on every start.
        """
        check_output_dir(out_dir, overwrite)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / TOKENIZER_FILE, self.backend.to_str(pretty=True))
        atomic_write_json(out / META_FILE, self.to_meta())
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load from a directory holding ``tokenizer.json`` or from the file itself.

        A tokenizer.json from elsewhere (GPT-2, Llama, ...) loads too; special tokens of this
        package that it lacks are appended to its vocabulary and reported.
        """
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.exists():
            raise FileNotFoundError(f"{file}: no tokenizer.json here")
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as e:
            raise ValueError(f"{file}: not a valid Hugging Face tokenizer.json: {e}") from e
        meta_file = file.parent / META_FILE
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        tok = cls(backend, meta={k: meta[k] for k in ("training",) if k in meta})
        if tok.added_special_tokens:
            log.warning(
                "%s: added or marked %d special tokens it lacked (%s ... %s), ids %d..%d",
                file,
                len(tok.added_special_tokens),
                tok.added_special_tokens[0],
                tok.added_special_tokens[-1],
                backend.token_to_id(tok.added_special_tokens[0]),
                backend.token_to_id(tok.added_special_tokens[-1]),
            )
        return tok


def check_output_dir(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to write a tokenizer into ``out_dir`` when it holds one, unless ``overwrite``:
    shards tokenized with the old one carry its hash, and would no longer load with the
    directory they were made from. Call it before training, so no training time is lost."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: --out must be a directory, this is a file")
    held = [name for name in (TOKENIZER_FILE, META_FILE) if (out / name).exists()]
    if held and not overwrite:
        raise ValueError(
            f"{out} already holds a tokenizer ({held[0]}); shards tokenized with it would no "
            "longer match: choose another --out, or pass --overwrite to replace it"
        )


def _ensure_special_tokens(backend: HFTokenizer) -> list[str]:
    """Add the special tokens a tokenizer lacks, and mark as special the ones it holds as
    ordinary tokens (a foreign tokenizer.json), so that text never encodes to them and
    decoding can skip them. Returns the tokens added or marked."""
    special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    fix = [t for t in SPECIAL_TOKENS if t not in special]
    if fix:
        backend.add_special_tokens([AddedToken(t, special=True) for t in fix])
    return fix


def tokenizer_hash(backend: HFTokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON: equal for equal tokenizers, however saved.

    A post-processor that adds nothing to a single text (transformers writes one into every
    ``tokenizer.json`` it saves, so an exported tokenizer has it) counts as none: it changes
    no encoding, and the shards made with the original stay usable with the export.
    """
    spec = json.loads(backend.to_str())
    if _adds_nothing(spec.get("post_processor")):
        spec["post_processor"] = None
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _adds_nothing(post_processor: dict[str, Any] | None) -> bool:
    """A ``TemplateProcessing`` whose single-text template is the text alone."""
    return (
        isinstance(post_processor, dict)
        and post_processor.get("type") == "TemplateProcessing"
        and not post_processor.get("special_tokens")
        and post_processor.get("single") == [{"Sequence": {"id": "A", "type_id": 0}}]
    )


def build_untrained_bpe() -> HFTokenizer:
    """An empty byte-level BPE with Llama 3 pre-tokenization and no normalizer."""
    backend = HFTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` entries (special tokens and bytes included).

    The training corpus is hashed as it streams by; the hash and the settings are kept in the
    tokenizer's metadata so a run can tell which data and settings made its tokenizer.
    """
    if min_frequency < 0:
        raise ValueError(f"--min-frequency must be >= 0, got {min_frequency}")
    smallest = NUM_BYTES + len(SPECIAL_TOKENS)
    if vocab_size < smallest:
        raise ValueError(
            f"--vocab-size {vocab_size} is too small: the {NUM_BYTES} byte symbols and "
            f"{len(SPECIAL_TOKENS)} special tokens alone need {smallest}"
        )
    backend = build_untrained_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    corpus = _HashingIterator(texts)
    backend.train_from_iterator(corpus, trainer=trainer)
    settings = {
        "algorithm": "byte-level BPE",
        "pre_tokenizer": "llama3",
        "vocab_size": vocab_size,
        "min_frequency": min_frequency,
    }
    training = {
        "corpus_sha256": corpus.digest(),
        "num_documents": corpus.num_documents,
        "num_bytes": corpus.num_bytes,
        "settings": settings,
        "settings_sha256": hashlib.sha256(
            json.dumps(settings, sort_keys=True).encode("utf-8")
        ).hexdigest(),
    }
    return Tokenizer(backend, meta={"training": training})


class _HashingIterator:
    """Passes texts through while hashing them (length-prefixed, so boundaries count)."""

    def __init__(self, texts: Iterable[str]):
        self._texts = texts
        self._sha = hashlib.sha256()
        self.num_documents = 0
        self.num_bytes = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            data = text.encode("utf-8")
            self._sha.update(len(data).to_bytes(8, "little"))
            self._sha.update(data)
            self.num_documents += 1
            self.num_bytes += len(data)
            yield text

    def digest(self) -> str:
        return self._sha.hexdigest()


def train_tokenizer_from_files(
    inputs: list[str],
    vocab_size: int,
    min_frequency: int = 2,
    text_field: str = "text",
    strict: bool = False,
) -> tuple[Tokenizer, ReadReport]:
    """Read documents from files (any format :mod:`pretrain.data.readers` knows) and train."""
    report = ReadReport(strict=strict)
    texts = (d["text"] for d in iter_documents(inputs, report, text_field=text_field))
    tokenizer = train_tokenizer(texts, vocab_size, min_frequency)
    if report.num_kept == 0:
        raise no_documents_error(inputs, report)
    if tokenizer.vocab_size < vocab_size:
        log.warning(
            "the tokenizer has %d entries, not the %d asked for: the text has no more pairs "
            "seen at least %d times (more text, or a lower --min-frequency, gives more)",
            tokenizer.vocab_size,
            vocab_size,
            min_frequency,
        )
    tokenizer.meta["training"]["inputs"] = list(inputs)
    tokenizer.meta["training"]["read_report"] = report.to_dict()
    return tokenizer, report


def token_byte_lengths(tokenizer: Tokenizer) -> list[int] | None:
    """UTF-8 bytes each token id stands for (0 for special tokens); None if not byte-level.

    In a byte-level BPE each character of a token's string is one byte (GPT-2's
    ``bytes_to_unicode`` alphabet), so the length of the string is the byte count. An added
    token that is not special (whitespace runs in GPT-NeoX's tokenizer.json) is matched in the
    raw text, so its content is the text it stands for.
    """
    spec = json.loads(tokenizer.backend.to_str())
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        return None
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    lengths = [0] * tokenizer.vocab_size
    for token, i in tokenizer.backend.get_vocab(with_added_tokens=False).items():
        if i not in added and i < len(lengths):
            lengths[i] = len(token)
    for i, token in added.items():
        if not token.get("special", True) and i < len(lengths):
            lengths[i] = len(token["content"].encode("utf-8"))
    return lengths
