"""A training driver's label-table step: built (map + embed, what every run did before the cache) vs reused
from the local label-table cache (raddiag.knowledge.cache), each in a fresh interpreter as a driver is.

    PYTHONPATH=platform .venv/bin/python bench/label_cache.py --reps 2 --output label_cache.json

Vocabularies: the tiny synthetic store's 8 coded labels (what the tests and the demo train on), 12 RP3D names
without codes (curated and text-matched rows), and the real 5,569-name RP3D vocabulary with no codes. The two
modes alternate within each rep (this machine is noisy); both use one warm TF-IDF cache. Seconds are wall time
of the whole interpreter (imports included); peak RSS is the worker's own VmHWM.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOCAB = REPO.parent / "shared" / "rp3d-demo" / "disorder_label_dict.json"
FEW = [
    "Meningioma",
    "Pneumothorax",
    "Renal cell carcinoma",
    "Bezold abscess",
    "Pancoast syndrome",
    "Hip dislocation",
    "Zebra stripe sign of the kidney",
    "Spoke wheel sign (meningioma)",
    "Acetabular labral tear",
    "Normal",
    "Testicular lymphoma",
    "Amyotrophic lateral sclerosis",
]

WORKER = """
import json, sys, time
start = time.perf_counter()


def peak_mb():  # this address space's high-water mark (ru_maxrss would carry the parent's across fork + exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


from raddiag.config import KEConfig
names, codes, mode, cache = json.loads(sys.stdin.read())
cfg = KEConfig(cache_dir=cache)
if mode == "build":
    from raddiag.knowledge.labels import embed_labels
    table = embed_labels(names, cfg, codes=codes)
else:
    from raddiag.knowledge.cache import cached_label_embeddings
    table, _, reused = cached_label_embeddings(names, cfg, codes)
    assert reused, "the cache was not warm"
print(json.dumps({"seconds": time.perf_counter() - start, "rows": len(table),
                  "peak_mb": peak_mb(),
                  "icd_imported": "simple_icd_10_cm" in sys.modules, "sklearn_imported": "sklearn" in sys.modules}))
"""


def vocabularies() -> dict[str, tuple[list[str], list[str | None] | None]]:
    from raddiag.config import load_config
    from raddiag.storage.store import Store
    from raddiag.storage.synth import generate

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"store.url={tmp}/store", "synth.n_cases=60", "synth.n_labels=8", "synth.image_size=16", "synth.max_depth=4"])
        manifest = generate(cfg.synth, Store(cfg.store.url))
        out["tiny synthetic, 8 coded"] = (manifest.label_names("disorder"), manifest.label_codes("disorder"))
    out["12 RP3D names, no codes"] = (FEW, None)
    if VOCAB.is_file():
        out["RP3D 5,569 names, no codes"] = (list(json.loads(VOCAB.read_text())), None)
    return out


def run(names: list[str], codes: list[str | None] | None, mode: str, cache: str) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER], input=json.dumps([names, codes, mode, cache]), capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    from raddiag.config import KEConfig
    from raddiag.knowledge.cache import cached_label_embeddings

    results: dict = {"reps": args.reps, "vocabularies": {}}
    with tempfile.TemporaryDirectory() as cache:
        for name, (names, codes) in vocabularies().items():
            cached_label_embeddings(names, KEConfig(cache_dir=cache), codes)  # warm: TF-IDF fit and this table
            rows = {"build": [], "reuse": []}
            for _ in range(args.reps):
                for mode in ("build", "reuse"):
                    rows[mode].append(run(names, codes, mode, cache))
            summary = {
                mode: {
                    "seconds": [round(r["seconds"], 2) for r in rs],
                    "peak_mb": round(max(r["peak_mb"] for r in rs)),
                    "icd_imported": rs[0]["icd_imported"],
                    "sklearn_imported": rs[0]["sklearn_imported"],
                }
                for mode, rs in rows.items()
            }
            best = {mode: min(s["seconds"]) for mode, s in summary.items()}
            summary["labels"] = len(names)
            summary["speed-up (best of reps)"] = round(best["build"] / best["reuse"], 1)
            results["vocabularies"][name] = summary
            print(
                f"{name:32s} build {summary['build']['seconds']} s  reuse {summary['reuse']['seconds']} s  "
                f"x{summary['speed-up (best of reps)']}  peak MB {summary['build']['peak_mb']} / {summary['reuse']['peak_mb']}"
            )
    results["when"] = time.strftime("%Y-%m-%d %H:%M")
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
