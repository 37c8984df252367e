"""``raddiag ingest``: RP3D-DiagDS JSON and case-table CSV sources -> the Zarr/Parquet store.

Sources
- **RP3D-DiagDS JSON** (``train.json``/``test.json``/``demoData.json``): cases keyed by URL with
  ``Anatomy``, ``key_slice`` and ``Samples[]`` (``image_data_path``, ``image_key_path``,
  ``image_modality``/``image_modalitys``, ``plane_projection``, ``aux_modality``, ``articles``,
  ``icd10s``). Paths point at the authors' machine, so each is resolved against the data root: as
  given when it lies inside the root, else by its trailing components (``data/123742.npy``).
  A file name containing ``train``/``val``/``test`` gives the split.
- **Case table CSV**: ``case_id, path, modality, plane, labels, split`` (+ optional ``anatomy``,
  ``icd10``, ``aux_modality``, ``key_slice``); one row per scan file (``.npy``, NIfTI, PNG/JPEG,
  one ``.dcm``) or DICOM folder (every series in it becomes one scan). Labels are ``;``-separated.
  A DICOM row with an empty ``case_id`` gets ``dcm-<keyed hash of the study>``.

Every problem is quarantined with a reason in the ``rejected`` table and the rest is ingested.
Scan ids are content hashes and the version is the manifest's hash, so a re-run (also after a
SIGKILL) rewrites nothing already complete and publishes the same version.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from raddiag.schema import canonical_modality
from raddiag.storage import deid
from raddiag.storage.preprocess import Plan, prepare
from raddiag.storage.readers import (
    BadInput,
    Limits,
    check_values,
    group_series,
    read_dicom_headers,
    read_dicom_series,
    read_volume,
    suffix_of,
)
from raddiag.storage.splits import stratified_split
from raddiag.storage.store import REJECTED_COLUMNS, SPLITS, Manifest, Store, label_table

TABLE_COLUMNS = ("case_id", "path", "modality", "plane", "labels", "split")


class IngestError(ValueError):
    """A source that cannot be parsed at all or a misuse (exit code 2); names the input and the fix."""


@dataclass
class ScanSpec:
    """One scan named by a source (not read yet). ``item`` is how reports name it (no PHI)."""

    item: str
    path: Path | None
    modality: str = ""
    plane: str = ""
    aux_modality: str = ""
    key_slice: int | None = None
    key_path: Path | None = None
    problem: str = ""


@dataclass
class CaseSpec:
    case_id: str
    source: str
    split: str | None = None
    anatomy: str = ""
    disorders: list[str] = field(default_factory=list)
    icd10: list[str] = field(default_factory=list)
    scans: list[ScanSpec] = field(default_factory=list)


@dataclass
class IngestResult:
    manifest: Manifest | None
    rejected: pd.DataFrame
    n_cases: int
    n_scans: int
    seconds: float
    scans_per_second: float


#: Sanity limits on labels (a case beyond them is quarantined with the reason).
MAX_LABEL_CHARS = 256
MAX_LABELS_PER_CASE = 256
MAX_REASON_CHARS = 300


def _reject(source: str, case_id: str, item: str, reason: str) -> dict[str, str]:
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return {"source": source, "case_id": case_id[:MAX_LABEL_CHARS], "item": item[:1024], "reason": reason}


# ---- paths ------------------------------------------------------------------------------------------
def _usable(path: Path) -> tuple[Path | None, str]:
    """Only regular files and folders are read (a FIFO or device named ``x.npy`` would block)."""
    if not path.exists():
        return None, "missing file"
    if not (path.is_file() or path.is_dir()):
        return None, "not a regular file or folder"
    return path, ""


def resolve_in_root(raw: str, root: Path, relocate: bool = True) -> tuple[Path | None, str]:
    """Resolve a source path against the data root; returns (path, problem).

    Relative paths are joined to the root; an absolute path inside the root is used as is, else
    (``relocate``, the RP3D json: it names the authors' machine) its trailing components are looked
    up under the root; without ``relocate`` (a case table) it is refused. Anything whose real path
    (symlinks followed) leaves the root is refused; only regular files and folders are used.
    """
    root_real = os.path.realpath(root)
    given = Path(raw)

    def inside(path: Path) -> bool:
        real = os.path.realpath(path)
        return real == root_real or real.startswith(root_real + os.sep)

    if not given.is_absolute():
        candidate = root / given
        if not inside(candidate):
            return None, "path escapes the data root"
        return _usable(candidate)
    if inside(given):
        return _usable(given)
    if not relocate:
        return None, "absolute path outside the data root (give it relative to --data-root, or set ingest.data_root)"
    parts = [p for p in given.parts[1:] if p not in ("", ".")]
    if ".." in parts:
        return None, "path escapes the data root"
    for keep in range(min(len(parts), 4), 0, -1):
        candidate = root.joinpath(*parts[-keep:])
        if candidate.exists():
            return _usable(candidate) if inside(candidate) else (None, "path escapes the data root")
    return None, "missing file"


def _short(raw: str) -> str:
    """How a report names a source path: its last two components."""
    return "/".join(Path(raw).parts[-2:])


# ---- RP3D-DiagDS JSON --------------------------------------------------------------------------------
def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    duplicates = []
    for key, value in pairs:
        if key in out:
            duplicates.append(key)
        out[key] = value
    if duplicates:
        out["__duplicate_keys__"] = duplicates
    return out


def rp3d_case_id(key: str) -> str:
    """``https://radiopaedia.org//cases/segond-fracture-5?lang=us`` -> ``rp3d-segond-fracture-5``."""
    parsed = urlparse(key)
    if "/cases/" in parsed.path:
        slug = parsed.path.rstrip("/").rsplit("/", 1)[-1]
        if slug:
            return f"rp3d-{slug}"
    return key


def split_from_name(path: Path) -> str | None:
    name = path.name.lower()
    for split in SPLITS:
        if re.search(rf"(^|[^a-z]){split}", name):
            return split
    return None


def _at(values: Any, index: int, default: Any = "") -> Any:
    if isinstance(values, list):
        return values[index] if index < len(values) and values[index] is not None else default
    return values if values is not None else default


def parse_rp3d(json_path: Path, root: Path, split: str | None = None) -> tuple[list[CaseSpec], list[dict[str, str]]]:
    """Cases of an RP3D-DiagDS json (see module doc); malformed cases are rejected, not fatal."""
    source = json_path.name
    try:
        data = json.loads(json_path.read_text(), object_pairs_hook=_pairs_no_duplicates)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IngestError(f"{json_path}: not a readable RP3D json ({type(exc).__name__}: {str(exc)[:200]})") from None
    except RecursionError:
        raise IngestError(f"{json_path}: not a readable RP3D json (nested too deeply)") from None
    if not isinstance(data, dict):
        raise IngestError(f"{json_path}: expected an object of cases keyed by URL, got {type(data).__name__}")
    rejected = [_reject(source, rp3d_case_id(k), "", "duplicate case id in the json") for k in data.pop("__duplicate_keys__", [])]
    split = split or split_from_name(json_path)
    cases = []
    for key, case in data.items():
        case_id = rp3d_case_id(key)
        if not isinstance(case, dict) or not isinstance(case.get("Samples"), list):
            rejected.append(_reject(source, case_id, "", "malformed case: no Samples list"))
            continue
        try:
            cases.append(_rp3d_case(case, case_id, source, split, root))
        except _Malformed as exc:
            rejected.append(_reject(source, case_id, "", f"malformed case: {exc}"))
    return cases, rejected


class _Malformed(ValueError):
    """A field of one RP3D case has the wrong type or value (the case is quarantined)."""


def _strings(sample: dict[str, Any], field: str) -> list[str]:
    value = sample.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Malformed(f"{field} must be a list of strings")
    return value


def _key_slice_value(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not np.isfinite(value) or abs(value) > 2**31:
        raise _Malformed(f"key_slice {value!r} is not a slice index")
    return int(value)


def _rp3d_case(case: dict[str, Any], case_id: str, source: str, split: str | None, root: Path) -> CaseSpec:
    spec = CaseSpec(case_id=case_id, source=source, split=split, anatomy=str(case.get("Anatomy") or "")[:MAX_LABEL_CHARS])
    key_slices = case.get("key_slice") or []
    for sample_index, sample in enumerate(case["Samples"]):
        if not isinstance(sample, dict):
            continue
        for name in _strings(sample, "articles"):
            if name not in spec.disorders:
                spec.disorders.append(name)
        for code in _strings(sample, "icd10s"):
            if code not in spec.icd10:
                spec.icd10.append(code)
        modalities = sample.get("image_modality") or sample.get("image_modalitys") or []
        for image_index, raw in enumerate(_strings(sample, "image_data_path")):
            path, problem = resolve_in_root(str(raw), root)
            key_raw = _at(sample.get("image_key_path"), image_index, "")
            key_path = resolve_in_root(str(key_raw), root)[0] if key_raw else None
            json_key = _at(key_slices, sample_index, {})
            json_key = json_key.get(f"image_{image_index}") if isinstance(json_key, dict) else None
            spec.scans.append(
                ScanSpec(
                    item=_short(str(raw)),
                    path=path,
                    modality=str(_at(modalities, image_index, "") or ""),
                    plane=str(_at(sample.get("plane_projection"), image_index, "") or "").lower(),
                    aux_modality=str(_at(sample.get("aux_modality"), image_index, "") or ""),
                    key_slice=_key_slice_value(json_key),
                    key_path=key_path,
                    problem=problem,
                )
            )
    return spec


# ---- case table CSV ------------------------------------------------------------------------------------
def _split_labels(text: str) -> list[str]:
    """Label names of a table cell, separated by ``;`` (storage/README.md)."""
    return [part.strip() for part in (text or "").split(";") if part.strip()]


def parse_table(csv_path: Path, root: Path, key: Callable[[], bytes]) -> tuple[list[CaseSpec], list[dict[str, str]]]:
    """Cases of a case-table CSV (one row per scan; rows of one case must agree on split/labels)."""
    source = csv_path.name
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise IngestError(f"{csv_path}: not a readable CSV ({type(exc).__name__})") from None
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise IngestError(f"{csv_path}: missing column(s) {missing}; expected {', '.join(TABLE_COLUMNS)}")
    rejected: list[dict[str, str]] = []
    cases: dict[str, CaseSpec] = {}
    signature: dict[str, tuple] = {}
    conflicted: set[str] = set()
    for row in table.to_dict("records"):
        raw = row["path"].strip()
        path, problem = resolve_in_root(raw, root, relocate=False) if raw else (None, "empty path")
        case_id = row["case_id"].strip()
        if not case_id and path is not None and _is_dicom(path):
            try:
                case_id = _dicom_case_id(path, key)
            except BadInput as exc:
                rejected.append(_reject(source, "", raw, str(exc)))
                continue
        if not case_id:
            rejected.append(_reject(source, "", raw, "empty case_id"))
            continue
        split = row["split"].strip().lower() or None
        disorders = _split_labels(row["labels"])
        icd10 = _split_labels(row.get("icd10", ""))
        anatomy = row.get("anatomy", "").strip()
        sig = (split, tuple(disorders), tuple(icd10), anatomy)
        if case_id in signature and signature[case_id] != sig:
            conflicted.add(case_id)
        signature.setdefault(case_id, sig)
        spec = cases.setdefault(case_id, CaseSpec(case_id, source, split, anatomy, disorders, icd10))
        key_text = row.get("key_slice", "").strip()
        spec.scans.append(
            ScanSpec(
                item=raw,
                path=path,
                modality=row["modality"].strip(),
                plane=row["plane"].strip().lower(),
                aux_modality=row.get("aux_modality", "").strip(),
                key_slice=int(key_text) if re.fullmatch(r"-?[0-9]{1,9}", key_text) else None,
                problem=problem,
            )
        )
    for case_id in sorted(conflicted):
        del cases[case_id]
        rejected.append(_reject(source, case_id, "", "duplicate case id: rows disagree on split/labels/anatomy"))
    return list(cases.values()), rejected


def _is_dicom(path: Path) -> bool:
    return path.is_dir() or suffix_of(path) == ".dcm"


def _dicom_files(path: Path) -> list[Path]:
    """The regular files of a DICOM folder (or the file itself) that stay inside the folder."""
    if not path.is_dir():
        return [path]
    folder = os.path.realpath(path)
    return sorted(
        p for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and os.path.realpath(p).startswith(folder + os.sep)
    )


def _folder_headers(path: Path) -> tuple[list[tuple[Path, Any]], list[str]]:
    """Headers of the readable DICOM files of ``path``; what was skipped and why (a README, a
    .zip, a symlink leaving the folder must not reject the whole folder)."""
    if not path.is_dir():
        return read_dicom_headers([path]), []
    skipped = [f"{p.name}: symlink or special file leaving the folder, skipped" for p in sorted(path.iterdir())
               if not p.name.startswith(".") and p not in set(_dicom_files(path))]
    headers = []
    for file in _dicom_files(path):
        try:
            headers.extend(read_dicom_headers([file]))
        except BadInput as exc:
            skipped.append(f"{exc}, skipped")
    if not headers:
        raise BadInput("no readable DICOM file in the folder" + (f" ({skipped[0]})" if skipped else ""))
    return headers, skipped


def _dicom_case_id(path: Path, key: Callable[[], bytes]) -> str:
    headers, _ = _folder_headers(path)
    study = str(getattr(headers[0][1], "StudyInstanceUID", "") or "")
    if not study:
        raise BadInput("DICOM without StudyInstanceUID and no case_id given")
    return f"dcm-{deid.keyed_hash(study, key(), 'study')}"


# ---- vocabulary ------------------------------------------------------------------------------------------
def load_vocabulary(path: Path) -> list[str]:
    """A JSON object name->index (RP3D ``disorder_label_dict.json``), a JSON list, or one name per line."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise IngestError(f"label vocabulary {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict):
            return [name for name, _ in sorted(data.items(), key=lambda item: (item[1], item[0]))]
        if isinstance(data, list):
            return [str(name) for name in data]
        raise IngestError(f"label vocabulary {path}: expected a JSON object or list")
    return [line.strip() for line in text.splitlines() if line.strip()]


#: ICD-10-CM category (``S73``) or sub-category (``S73.0``, ``S72.001A``); the full table (simple-icd-10-cm)
#: takes ~10 s to load, too slow for every ingest, so codes are checked by form.
ICD10_PATTERN = re.compile(r"[A-TV-Z][0-9][0-9A-Z](\.[0-9A-TV-Z]{1,4})?")


def _unknown_icd(codes: list[str]) -> list[str]:
    return [code for code in codes if not ICD10_PATTERN.fullmatch(code)]


# ---- scans -------------------------------------------------------------------------------------------------
@dataclass
class _Context:
    store: Store
    plan: Plan
    limits: Limits
    keep_flagged: bool
    key: Callable[[], bytes]
    trust_pixels: tuple[str, ...] = ()

    def blocking_flags(self, flags: list[str]) -> list[str]:
        """The flags that quarantine a scan (``burned_in_risk:<kind>`` of a trusted kind excepted)."""
        if self.keep_flagged:
            return []
        return [f for f in flags if not (f.startswith("burned_in_risk:") and f.split(":", 1)[1] in self.trust_pixels)]


@dataclass(frozen=True)
class _Key:
    """The de-identification key, read from ``$env`` where it is used (picklable: a Ray ingest task
    reads it from its own node's environment; the secret itself never travels in a task)."""

    env: str

    def __call__(self) -> bytes:
        return deid.deid_key(self.env)


CaseResult = tuple[list[dict[str, Any]], list[dict[str, str]]]


def _ingest_chunk(ctx: _Context, cases: list[CaseSpec]) -> list[CaseResult]:
    return [_ingest_case(ctx, case) for case in cases]


def map_cases_on_ray(ctx: _Context, cases: list[CaseSpec], progress: Callable[[int], None] | None = None,
                     *, chunk: int = 8, task_cpus: float = 1.0, max_in_flight: int = 64) -> list[CaseResult]:
    """``_ingest_case`` over ``cases`` as Ray tasks of ``chunk`` cases (each writes its scans to the
    store itself and returns only the manifest rows), results in input order. Ray must be up; the
    source files must be readable where the tasks run (a shared volume), and DICOM input needs the
    de-identification key in the workers' environment."""
    import ray

    remote = ray.remote(num_cpus=task_cpus, max_retries=2)(_ingest_chunk)
    shared = ray.put(ctx)
    chunks = [cases[i : i + chunk] for i in range(0, len(cases), chunk)]
    results: list[list[CaseResult] | None] = [None] * len(chunks)
    pending: dict[Any, int] = {}
    next_chunk = done = 0
    while next_chunk < len(chunks) or pending:
        while next_chunk < len(chunks) and len(pending) < max_in_flight:
            pending[remote.remote(shared, chunks[next_chunk])] = next_chunk
            next_chunk += 1
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            index = pending.pop(ref)
            try:
                results[index] = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, deid.DeidKeyMissing):
                    raise IngestError(f"Ray ingest workers: {cause} (in the cluster's environment)") from None
                raise
            done += len(chunks[index])
            if progress:
                progress(done)
    return [result for chunk_results in results for result in chunk_results or []]


def _read_key_slice(spec: ScanSpec) -> int | None:
    if spec.key_path is not None:
        try:
            value = np.load(spec.key_path, allow_pickle=False)
            if value.dtype.kind in "iu" and value.size == 1:
                return int(value.reshape(-1)[0])
        except (OSError, ValueError):
            pass
    return spec.key_slice


def _scan_row(case_id: str, stored: np.ndarray, key: int, scan_id: str, checksum: str, original: tuple, spacing: list[float], **meta: Any) -> dict[str, Any]:
    depth, height, width = stored.shape
    return {
        "scan_id": scan_id, "case_id": case_id, "modality": canonical_modality(meta.get("modality")),
        "plane": meta.get("plane", ""), "aux_modality": meta.get("aux_modality", ""),
        "depth": depth, "height": height, "width": width, "orig_shape": [int(s) for s in original],
        "spacing": [float(s) for s in spacing], "key_slice": int(key), "checksum": checksum,
        "dtype": stored.dtype.name, "flags": list(meta.get("flags", [])),
        "patient_key": meta.get("patient_key", ""), "study_key": meta.get("study_key", ""),
        "series_key": meta.get("series_key", ""),
    }


def _store_volume(ctx: _Context, case_id: str, data: np.ndarray, key_slice: int | None, spacing: list[float], meta: dict[str, Any]) -> dict[str, Any]:
    key = data.shape[0] // 2 if key_slice is None else key_slice
    if not 0 <= key < data.shape[0]:
        key = int(np.clip(key, 0, data.shape[0] - 1))
    stored, stored_key = prepare(data, key, ctx.plan, is_ct=canonical_modality(meta.get("modality")) == "CT")
    scan_id, checksum = ctx.store.write_scan(stored)
    return _scan_row(case_id, stored, stored_key, scan_id, checksum, data.shape, spacing, **meta)


def _ingest_scan(ctx: _Context, case: CaseSpec, spec: ScanSpec) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Rows of the scans stored for ``spec`` and rejections (one DICOM folder may hold many series)."""
    if spec.problem or spec.path is None:
        return [], [_reject(case.source, case.case_id, spec.item, spec.problem or "missing file")]
    base = {"modality": spec.modality, "plane": spec.plane, "aux_modality": spec.aux_modality}
    try:
        if not _is_dicom(spec.path):
            volume = read_volume(spec.path, ctx.limits)
            return [_store_volume(ctx, case.case_id, volume.data, _read_key_slice(spec), volume.spacing, base)], []
        headers, skipped = _folder_headers(spec.path)
        rejected = [_reject(case.source, case.case_id, spec.item, reason) for reason in skipped]
        rows = []
        series = group_series(headers)
        for number, paths in enumerate(series.values()):
            item = spec.item if len(series) == 1 else f"{spec.item} (series {number + 1} of {len(series)})"
            try:
                data, headers = read_dicom_series(paths, ctx.limits)
                meta = deid.deidentify(headers, ctx.key(), data.shape[0]).stored()
                if blocking := ctx.blocking_flags(meta["flags"]):
                    raise BadInput(
                        f"flagged {'+'.join(blocking)}: pixels may carry PHI "
                        "(ingest.trust_pixels=[US,colour] or ingest.keep_flagged=true keeps it)"
                    )
                check_values(data)
                meta.update({k: v for k, v in base.items() if v})
                rows.append(_store_volume(ctx, case.case_id, data, spec.key_slice, meta.pop("spacing"), meta))
            except BadInput as exc:
                rejected.append(_reject(case.source, case.case_id, item, str(exc)))
        return rows, rejected
    except BadInput as exc:
        return [], [_reject(case.source, case.case_id, spec.item, str(exc))]


def _ingest_case(ctx: _Context, case: CaseSpec) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    rows, rejected = [], []
    for spec in case.scans:
        try:
            scan_rows, scan_rejected = _ingest_scan(ctx, case, spec)
        except (OSError, MemoryError) as exc:  # per scan: unreadable file, too large to hold
            scan_rows, scan_rejected = [], [_reject(case.source, case.case_id, spec.item, f"cannot read the scan ({type(exc).__name__})")]
        except Exception as exc:  # a reader bug must cost one scan, not the run (no message: it may quote PHI)
            scan_rows, scan_rejected = [], [_reject(case.source, case.case_id, spec.item, f"unexpected error reading the scan ({type(exc).__name__})")]
        rows.extend(scan_rows)
        rejected.extend(scan_rejected)
    unique = {(r["scan_id"]): r for r in rows}
    if len(unique) < len(rows):
        rejected.append(_reject(case.source, case.case_id, "", f"{len(rows) - len(unique)} duplicate scan(s) in the case dropped"))
    return list(unique.values()), rejected


# ---- the run -------------------------------------------------------------------------------------------------
def collect_sources(
    sources: list[Path], root: Path | None, key: Callable[[], bytes], fmt: str = "auto"
) -> tuple[list[CaseSpec], list[dict[str, str]]]:
    """Parse every source (``rp3d`` json or ``table`` csv, by suffix when ``fmt`` is auto)."""
    cases: list[CaseSpec] = []
    rejected: list[dict[str, str]] = []
    for source in sources:
        if not source.is_file():
            raise IngestError(f"{source}: no such source file (expected an RP3D .json or a case-table .csv)")
        kind = fmt if fmt != "auto" else {".json": "rp3d", ".csv": "table"}.get(source.suffix.lower(), "")
        base = root or source.parent
        if kind == "rp3d":
            parsed, problems = parse_rp3d(source, base)
        elif kind == "table":
            parsed, problems = parse_table(source, base, key)
        else:
            raise IngestError(f"{source}: unknown source format (use a .json RP3D file, a .csv case table, or --format)")
        cases.extend(parsed)
        rejected.extend(problems)
    return cases, rejected


def _screen_cases(cases: list[CaseSpec], vocabulary: list[str] | None) -> tuple[list[CaseSpec], list[dict[str, str]]]:
    """Duplicate case ids, unknown labels/ICD codes, bad splits, label-less cases: rejected whole."""
    known = set(vocabulary) if vocabulary is not None else None
    seen: dict[str, str] = {}
    kept, rejected = [], []
    for case in cases:
        reason = ""
        if case.case_id in seen:
            reason = f"duplicate case id (first defined in {seen[case.case_id]})"
        elif not case.disorders:
            reason = "no disorder labels (label a normal case 'Normal')"
        elif len(case.disorders) + len(case.icd10) > MAX_LABELS_PER_CASE:
            reason = f"{len(case.disorders) + len(case.icd10)} labels on one case (at most {MAX_LABELS_PER_CASE})"
        elif any(len(n) > MAX_LABEL_CHARS for n in [*case.disorders, *case.icd10]):
            reason = f"a label name longer than {MAX_LABEL_CHARS} characters"
        elif known is not None and (unknown := [n for n in case.disorders if n not in known]):
            reason = f"unknown label name(s) {unknown} (not in the label vocabulary)"
        elif bad := _unknown_icd(case.icd10):
            reason = f"unknown ICD-10-CM code(s) {bad}"
        elif case.split is not None and case.split not in SPLITS:
            reason = f"unknown split {case.split!r} (expected train, val, test or empty)"
        elif not case.scans:
            reason = "no scans listed"
        seen.setdefault(case.case_id, case.source)
        if reason:
            rejected.append(_reject(case.source, case.case_id, "", reason))
        else:
            kept.append(case)
    return kept, rejected


def _labels(cases: pd.DataFrame, vocabulary: list[str] | None) -> pd.DataFrame:
    counts: dict[str, int] = {}
    pairs: dict[str, dict[str, int]] = {}  # name -> code -> cases carrying both
    for row in cases.itertuples(index=False):
        for name in row.disorders:
            counts[name] = counts.get(name, 0) + 1
            by_code = pairs.setdefault(name, {})
            for code in row.icd10:
                by_code[code] = by_code.get(code, 0) + 1
    if vocabulary is not None:
        rank = {name: index for index, name in enumerate(vocabulary)}
        names = sorted(counts, key=lambda n: (rank[n], n))
    else:
        names = sorted(counts, key=lambda n: (n != "Normal", -counts[n], n))
    codes: dict[str, str | None] = {}
    for name in names:
        best = sorted((-c, code) for code, c in pairs.get(name, {}).items())
        codes[name] = best[0][1] if best and name != "Normal" else None
    return label_table(cases, names, codes)


def run_ingest(
    sources: list[Path],
    store: Store,
    *,
    data_root: Path | None = None,
    vocabulary: list[str] | None = None,
    plan: Plan = Plan(),
    limits: Limits = Limits(),
    val_fraction: float = 0.15,
    test_fraction: float = 0.25,
    seed: int = 0,
    keep_flagged: bool = False,
    trust_pixels: tuple[str, ...] = (),
    key_env: str = deid.DEFAULT_KEY_ENV,
    fmt: str = "auto",
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    on_ray: Callable[[], None] | None = None,
    task_cpus: float = 1.0,
) -> IngestResult:
    """Ingest ``sources`` into ``store`` and publish (only when at least one case survived).

    Cases run in ``workers`` threads here, or, with ``on_ray`` (a callable that brings Ray up; it
    is called only after the sources were read and screened), as Ray tasks of a few cases each
    across the cluster (:func:`map_cases_on_ray`). Both give the same version for the same input."""
    started = time.perf_counter()
    key = _Key(key_env)  # read lazily: only DICOM input needs it
    cases, rejected = collect_sources(sources, data_root, key, fmt)
    if any(spec.path is not None and _is_dicom(spec.path) for case in cases for spec in case.scans):
        key()  # fail fast (a misuse), before any pixel is read
    cases, problems = _screen_cases(sorted(cases, key=lambda c: (c.case_id, c.source)), vocabulary)
    rejected.extend(problems)
    ctx = _Context(store, plan, limits, keep_flagged, key, tuple(trust_pixels))
    store.group()  # create the group once, before worker threads write arrays
    case_rows, scan_rows = [], []
    if on_ray is not None:
        on_ray()
        outcomes: Iterable[CaseResult] = map_cases_on_ray(
            ctx, cases, (lambda done: progress(done, len(cases))) if progress else None, task_cpus=task_cpus
        )
        pool = None
    else:
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        outcomes = pool.map(lambda c: _ingest_case(ctx, c), cases)
    done = 0
    with pool or contextlib.nullcontext():
        for case, (rows, scan_rejected) in zip(cases, outcomes):
            rejected.extend(scan_rejected)
            done += 1
            if progress and on_ray is None:
                progress(done, len(cases))
            if not rows:
                rejected.append(_reject(case.source, case.case_id, "", "no usable scan"))
                continue
            scan_rows.extend(rows)
            case_rows.append(
                {"case_id": case.case_id, "split": case.split, "anatomy": case.anatomy, "disorders": case.disorders,
                 "icd10": case.icd10, "source": case.source}
            )
    rejected_frame = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    seconds = time.perf_counter() - started
    if not case_rows:
        return IngestResult(None, rejected_frame, 0, 0, seconds, 0.0)
    cases_frame = pd.DataFrame(case_rows)
    unsplit = [i for i, s in enumerate(cases_frame["split"]) if not isinstance(s, str)]
    if unsplit:
        assigned = stratified_split([cases_frame.at[i, "disorders"] for i in unsplit], val_fraction, test_fraction, seed)
        for index, split in zip(unsplit, assigned):
            cases_frame.at[index, "split"] = split
    scans_frame = pd.DataFrame(scan_rows)
    names = ", ".join(f"{s.name}" for s in sources)
    manifest = store.publish(
        cases_frame, scans_frame, _labels(cases_frame, vocabulary), source=f"raddiag ingest {names}",
        rejected=rejected_frame,
        extra_info={"plan": plan.to_dict(), "preprocessing": plan.describe(), "rejected": int(len(rejected_frame))},
    )
    return IngestResult(manifest, rejected_frame, len(case_rows), len(scan_rows), seconds, len(scan_rows) / max(seconds, 1e-9))
