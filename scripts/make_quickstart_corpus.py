"""Build the quickstart corpus bundled in the package from ../shared/corpora.

    python scripts/make_quickstart_corpus.py ../shared/corpora src/pretrain/assets

Public-domain text only: Tiny Shakespeare and three Project Gutenberg novels, cut into
chunks of about 8 KB at blank lines so the train/val split (by document) is fine-grained.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

BOOKS = {
    "books/1342": "Pride and Prejudice",
    "books/1661": "Sherlock Holmes",
    "books/84": "Frankenstein",
}
CHUNK_CHARS = 8000


def chunks(text: str) -> list[str]:
    out, current = [], []
    size = 0
    for para in text.split("\n\n"):
        current.append(para)
        size += len(para) + 2
        if size >= CHUNK_CHARS:
            out.append("\n\n".join(current))
            current, size = [], 0
    if current:
        out.append("\n\n".join(current))
    return [c for c in out if c.strip()]


def main(corpora: Path, assets: Path) -> None:
    docs = []
    shakespeare = (corpora / "tinyshakespeare.txt").read_text()
    docs += [("shakespeare", c) for c in chunks(shakespeare)]
    with gzip.open(corpora / "books.jsonl.gz", "rt") as f:
        for line in f:
            rec = json.loads(line)
            if rec["id"] in BOOKS:
                docs += [(rec["id"], c) for c in chunks(rec["text"])]
    out = assets / "quickstart.jsonl.gz"
    with gzip.GzipFile(out, "wb", mtime=0) as f:
        for i, (origin, text) in enumerate(docs):
            f.write((json.dumps({"id": f"{origin}#{i:04d}", "text": text}) + "\n").encode())
    print(f"wrote {len(docs)} documents to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
