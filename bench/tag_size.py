"""Size of collector/tag.js: its readable source, and the minified form the collector serves,
raw and gzipped at level 9.

    python bench/tag_size.py

Exits non-zero when the gzipped tag is over its 4 KB budget.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import rjsmin

TAG = Path(__file__).resolve().parents[1] / "collector" / "tag.js"
BUDGET_BYTES = 4096


def main() -> int:
    source = TAG.read_bytes()
    served = rjsmin.jsmin(source.decode()).encode()
    for label, body in (("source", source), ("served", served)):
        gzipped = len(gzip.compress(body, compresslevel=9, mtime=0))
        print(f"collector/tag.js {label:6}  raw {len(body):,} B  gzipped {gzipped:,} B  "
              f"({gzipped / BUDGET_BYTES:.0%} of the {BUDGET_BYTES:,} B budget)")
    return 0 if len(gzip.compress(served, compresslevel=9, mtime=0)) <= BUDGET_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(main())
