"""The name pools of ICD held-out lists 10 and 11 (#16), as they were drawn before either list was written.

Pool = the RP3D vocabulary names ranked 1501-3000 (``disorder_label_dict.json``, a name -> index dict) minus every
data-row name of the lists written before (dev, held-out, held-outs 2-9), shuffled with ``random.Random(23)``;
list A (held-out 10) = the even positions of the shuffled pool, list B (held-out 11) = the odd ones. Each list's
writer examined its pool in this order until 100 names were accepted; the names not examined stay available
for later lists in the same order.

    python bench/icd_heldout10_pool.py --out /tmp/h10   # writes pool_A.txt and pool_B.txt
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from icd_accuracy import LISTS, VOCAB, read_handcheck

EARLIER = ("dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "heldout7", "heldout8", "heldout9")
RANKS = range(1501, 3001)
SEED = 23


def pools() -> tuple[list[str], list[str]]:
    by_index = {index: name for name, index in json.loads(VOCAB.read_text()).items()}
    listed = {row.name.strip().lower() for name in EARLIER for row in read_handcheck(LISTS[name])}
    pool = [by_index[i] for i in RANKS if by_index[i].strip().lower() not in listed]
    random.Random(SEED).shuffle(pool)
    return pool[0::2], pool[1::2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/h10", help="folder for pool_A.txt and pool_B.txt")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for letter, pool in zip("AB", pools()):
        (out / f"pool_{letter}.txt").write_text("\n".join(pool) + "\n", encoding="utf-8")
        print(f"pool_{letter}: {len(pool)} names")


if __name__ == "__main__":
    main()
