"""Command: PYTHONPATH=platform python bench/packed_bytes.py
Bytes per case through the object store, padded vs packed: measured on a synthetic store at the paper's
data shape (4 scans x 32 slices x 256^2), whole validation split, through BlockAssembler (what read tasks emit)."""
import json
import tempfile

from raddiag.config import load_config
from raddiag.data.pipeline import BlockAssembler, epoch_items
from raddiag.data.read import SliceReader
from raddiag.storage.store import Store
from raddiag.storage.synth import generate

tmp = tempfile.mkdtemp()
cfg = load_config(None, [f"store.url={tmp}/store", "synth.n_cases=40", "synth.n_labels=8", "synth.image_size=256", "synth.max_depth=64",
                         "data.image_size=256", "data.depth=32", "data.n_image=4"])
manifest = generate(cfg.synth, Store(cfg.store.url))
names = manifest.label_names()
out = {}
for split in ("val", "train"):
    records = manifest.case_records(split)
    items = epoch_items(records, cfg, names, train=False, epoch=0)
    asm = BlockAssembler(cfg.model_dump(mode="json"), names, None, train=False, epoch=0)
    reader = SliceReader(cfg.store.url)
    padded = packed = real = cases = 0
    for start in range(0, len(items), 4):
        chunk = items[start:start + 4]
        a = asm(chunk, reader)
        b = asm(chunk, reader, packed=True)
        padded += sum(v.nbytes for v in a.values())
        packed += sum(v.nbytes for v in b.values())
        real += int(a["slice_mask"].sum())
        cases += len(chunk)
    reader.close()
    out[split] = {"cases": cases, "padded_bytes_per_case": padded / cases, "packed_bytes_per_case": packed / cases,
                  "real_slices_per_case": real / cases, "slots_per_case": 4 * 32, "ratio": padded / packed}
print(json.dumps(out, indent=2))
