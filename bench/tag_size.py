"""Size of collector/tag.js: raw, and gzipped at level 9 as the collector serves it.

    python bench/tag_size.py

Exits non-zero when the gzipped tag is over its 4 KB budget.
"""

from __future__ import annotations

import gzip
from pathlib import Path

TAG = Path(__file__).resolve().parents[1] / "collector" / "tag.js"
BUDGET_BYTES = 4096


def main() -> int:
    raw = TAG.read_bytes()
    gzipped = len(gzip.compress(raw, compresslevel=9, mtime=0))
    print(f"collector/tag.js  raw {len(raw):,} B  gzipped {gzipped:,} B  "
          f"({gzipped / len(raw):.0%} of raw, {gzipped / BUDGET_BYTES:.0%} of the {BUDGET_BYTES:,} B budget)")
    return 0 if gzipped <= BUDGET_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(main())
