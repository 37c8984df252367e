"""The dataset store: Zarr v3 scans + Parquet manifest + ``dataset.json``, at a local path or ``s3://``.

Layout (documented in ``storage/README.md``)::

    <url>/dataset.json                         current version + metadata (written last: the publish)
    <url>/scans.zarr/<scan_id>                 one uint8 (or uint16) array per scan, shape (D, H, W),
                                               chunk = 1 slice, shards of <= 8 MiB raw (one per scan
                                               at training resolution)
    <url>/versions/<version>/cases.parquet     case_id, split, anatomy, disorders, icd10, source
    <url>/versions/<version>/scans.parquet     scan_id, case_id, modality, plane, ..., key_slice, checksum
    <url>/versions/<version>/labels.parquet    name, level, code, train_count, group
    <url>/versions/<version>/rejected.parquet  (ingest only) source, case_id, item, reason

Scan ids are content hashes, so writing the same scan twice is a no-op (idempotent ingest), and a
version is the hash of its manifest. A reader resolves ``dataset.json`` once and reads only the
version it names: it sees the old version or the new one, never a half-written one.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from raddiag import __version__
from raddiag.storage.records import CaseRecords
from raddiag.storage.ref import StoreRef, storage_options

CASE_COLUMNS = ["case_id", "split", "anatomy", "disorders", "icd10", "source"]
SCAN_COLUMNS = [
    "scan_id", "case_id", "modality", "plane", "aux_modality", "depth", "height", "width",
    "orig_shape", "spacing", "key_slice", "checksum",
]
LABEL_COLUMNS = ["name", "level", "code", "train_count", "group"]
#: Scan columns added after format 1.0 (ingest fills them; other writers get these defaults).
OPTIONAL_SCAN_COLUMNS: dict[str, Any] = {
    "dtype": "uint8", "flags": [], "patient_key": "", "study_key": "", "series_key": "",
}
REJECTED_COLUMNS = ["source", "case_id", "item", "reason"]
#: The columns :meth:`Manifest.case_records` reads: what a training worker needs of each table
#: (``Store.manifest(columns=RECORD_COLUMNS)``; checksums, source paths and keys stay on storage).
RECORD_COLUMNS: dict[str, list[str]] = {
    "cases": ["case_id", "split", "anatomy", "disorders", "icd10"],
    "scans": ["scan_id", "case_id", "modality", "plane", "depth", "height", "width", "key_slice"],
}
SPLITS = ("train", "val", "test")
STORE_FORMAT = "raddiag-store/1.1"
STORED_DTYPES = ("uint8", "uint16")


@dataclass(frozen=True)
class Layout:
    """How scan arrays are written (readers take everything from each array's own Zarr metadata).

    ``chunk_depth`` slices per chunk (the unit a reader fetches); shards group chunks into objects of
    at most ``shard_bytes`` uncompressed; ``codec``/``clevel``/``shuffle`` configure Blosc. The
    default was chosen by ``bench/store_speed.py`` (see ``storage/README.md``).
    """

    chunk_depth: int = 1
    shard_bytes: int = 8 * 2**20
    codec: str = "zstd"
    clevel: int = 3
    shuffle: str = "bitshuffle"

    def describe(self) -> dict[str, Any]:
        return {
            "chunks": f"{self.chunk_depth} slice(s)",
            "shards": f"<= {self.shard_bytes // 2**20} MiB raw",
            "codec": f"blosc {self.codec}-{self.clevel} {self.shuffle}",
        }

    def shard_depth(self, depth: int, height: int, width: int, itemsize: int) -> int:
        """Slices per shard: as many chunks as fit in ``shard_bytes``, at most the whole scan."""
        per_chunk = self.chunk_depth * height * width * itemsize
        chunks = max(1, self.shard_bytes // max(per_chunk, 1))
        wanted = min(depth, chunks * self.chunk_depth)
        return -(-wanted // self.chunk_depth) * self.chunk_depth


class StoreError(RuntimeError):
    """A store that cannot be opened or is inconsistent; the message names the URL and the problem."""


def scan_checksum(volume: np.ndarray) -> str:
    """sha256 of a stored volume's bytes and shape (+ dtype unless uint8): the scan's identity."""
    digest = hashlib.sha256(repr(volume.shape).encode())
    if volume.dtype != np.uint8:
        digest.update(str(volume.dtype).encode())
    digest.update(np.ascontiguousarray(volume).tobytes())
    return digest.hexdigest()


def to_uint8(volume: np.ndarray) -> np.ndarray:
    """Per-scan min-max to [0, 255] uint8; a constant volume maps to zeros."""
    vol = np.asarray(volume, dtype=np.float32)
    lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        return np.zeros(vol.shape, dtype=np.uint8)
    return np.round((vol - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@dataclass
class Manifest:
    """The three manifest tables of one dataset version, plus ``dataset.json`` metadata."""

    cases: pd.DataFrame
    scans: pd.DataFrame
    labels: pd.DataFrame
    info: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.info["version"])

    def label_names(self, level: str = "disorder") -> list[str]:
        return self.labels.loc[self.labels["level"] == level, "name"].tolist()

    def train_counts(self, level: str = "disorder") -> np.ndarray:
        return self.labels.loc[self.labels["level"] == level, "train_count"].to_numpy(dtype=np.int64)

    def label_codes(self, level: str = "disorder") -> list[str | None]:
        codes = self.labels.loc[self.labels["level"] == level, "code"].tolist()
        return [c if isinstance(c, str) and c else None for c in codes]

    def case_records(self, split: str) -> CaseRecords:
        """The case records of ``split`` with their scans, sorted by case_id (scans by scan_id).

        Each record: case_id, anatomy, disorders, icd10, scans: [{scan_id, modality, plane, depth,
        height, width, key_slice}]. A columnar, read-only sequence of those dicts
        (:class:`~raddiag.storage.records.CaseRecords`): small to hold in every worker and to ship to
        Ray tasks; ``list(...)`` gives plain dicts.
        """
        cases = self.cases[self.cases["split"] == split].sort_values("case_id")
        scans = self.scans[self.scans["case_id"].isin(cases["case_id"])]
        return CaseRecords.from_frames(cases, scans.sort_values(["case_id", "scan_id"]))


class Store:
    """A dataset store at ``url``. Cheap to construct; open one per process/task (not fork-safe)."""

    def __init__(self, url: str, endpoint_url: str | None = None, layout: Layout | None = None) -> None:
        self.ref = StoreRef(url, endpoint_url)
        self.url = self.ref.url
        self.endpoint_url = endpoint_url
        self.layout = layout or Layout()
        self.options = storage_options(endpoint_url)
        self.fs, self.root = self.ref.filesystem()
        self._zarr_group: Any = None

    # ---- paths -------------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def scans_url(self) -> str:
        return f"{self.url}/scans.zarr"

    # ---- zarr --------------------------------------------------------------------------------
    def _zarr_store(self) -> Any:
        from zarr.storage import FsspecStore, LocalStore

        if self.ref.is_remote:
            return FsspecStore.from_url(self.scans_url, storage_options=self.options)
        return LocalStore(self.scans_url)

    def group(self) -> Any:
        """The scans group, created on first use (each Store has its own filesystem/event loop)."""
        if self._zarr_group is None:
            import zarr

            self._zarr_group = zarr.open_group(self._zarr_store(), mode="a", zarr_format=3)
        return self._zarr_group

    def has_scan(self, scan_id: str) -> bool:
        return scan_id in self.group()

    def write_scan(self, volume: np.ndarray) -> tuple[str, str]:
        """Store a uint8 or uint16 (D, H, W) volume; returns (scan_id, checksum). Idempotent by content.

        Object stores have no rename, so an array counts as present only once its ``checksum``
        attribute (written after the data) is set: a write killed half-way is redone on re-run.
        """
        from zarr.codecs import BloscCodec

        if volume.dtype.name not in STORED_DTYPES or volume.ndim != 3:
            raise StoreError(f"write_scan: expected a uint8 or uint16 (D, H, W) volume, got {volume.dtype} {volume.shape}")
        checksum = scan_checksum(volume)
        scan_id = checksum[:24]
        if self.has_complete_scan(scan_id):
            return scan_id, checksum
        depth, height, width = volume.shape
        layout = self.layout
        chunk_depth = min(layout.chunk_depth, depth)
        shard_depth = Layout(chunk_depth, layout.shard_bytes).shard_depth(depth, height, width, volume.dtype.itemsize)
        array = self.group().create_array(
            name=scan_id,
            shape=volume.shape,
            dtype=volume.dtype.name,
            chunks=(chunk_depth, height, width),
            shards=(shard_depth, height, width),
            compressors=BloscCodec(cname=layout.codec, clevel=layout.clevel, shuffle=layout.shuffle),
            overwrite=True,
        )
        array[...] = volume
        array.attrs["checksum"] = checksum
        return scan_id, checksum

    def has_complete_scan(self, scan_id: str) -> bool:
        group = self.group()
        if scan_id not in group:
            return False
        return "checksum" in group[scan_id].attrs

    def array_names(self) -> list[str]:
        """Every scan array in the group (complete or not), sorted."""
        return sorted(self.group().array_keys())

    def read_slices(
        self, scan_id: str, indices: np.ndarray | list[int] | None = None, native: bool = False
    ) -> np.ndarray:
        """Read slices ``indices`` (default: all) of a scan as uint8 (len(indices), H, W).

        A few slices: only their chunks are fetched (one chunk = one slice inside the scan's shard).
        A sample of at least a quarter of the scan reads the whole scan in one call instead,
        which measured 3-5x faster than one ranged read per slice (``bench/store_speed.py``). A uint16 scan is returned as uint8 (its top byte) unless ``native``, so training code sees
        one dtype; ``native=True`` returns the stored dtype.
        """
        array = self.group()[scan_id]
        if indices is None:
            out = np.asarray(array[...])
        else:
            idx = np.asarray(indices, dtype=np.int64)
            if idx.size == 0:
                out = np.zeros((0, *array.shape[1:]), dtype=array.dtype)
            else:
                lo, hi = int(idx.min()), int(idx.max()) + 1
                if hi - lo == idx.size and np.all(np.diff(idx) == 1):
                    out = np.asarray(array[lo:hi])
                elif 4 * idx.size >= array.shape[0]:  # a big sample: one whole-shard read beats many ranged reads
                    out = np.asarray(array[...])[idx]
                else:
                    out = np.asarray(array.get_orthogonal_selection((idx, slice(None), slice(None))))
        if out.dtype == np.uint16 and not native:
            return (out >> 8).astype(np.uint8)
        return out

    # ---- manifest ----------------------------------------------------------------------------
    def _write_bytes_atomic(self, path: str, payload: bytes) -> None:
        if self.ref.is_remote:  # a single PUT is atomic on S3
            with self.fs.open(path, "wb") as handle:
                handle.write(payload)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def publish(
        self,
        cases: pd.DataFrame,
        scans: pd.DataFrame,
        labels: pd.DataFrame,
        source: str,
        rejected: pd.DataFrame | None = None,
        extra_info: dict[str, Any] | None = None,
    ) -> Manifest:
        """Write a manifest version and then point ``dataset.json`` at it (the atomic step).

        ``rejected`` (ingest's quarantine table) is stored beside the version; ``extra_info`` (e.g.
        the preprocessing plan) is added to ``dataset.json``. Neither changes the version hash.
        """
        scans = scans.copy()
        for column, default in OPTIONAL_SCAN_COLUMNS.items():
            if column not in scans.columns:
                scans[column] = [copy.copy(default) for _ in range(len(scans))]
        cases = cases[CASE_COLUMNS].sort_values("case_id").reset_index(drop=True)
        scans = scans[SCAN_COLUMNS + list(OPTIONAL_SCAN_COLUMNS)].sort_values(["case_id", "scan_id"]).reset_index(drop=True)
        labels = labels[LABEL_COLUMNS].reset_index(drop=True)
        version = manifest_version(cases, scans, labels)
        tables = [("cases", cases), ("scans", scans), ("labels", labels)]
        if rejected is not None:
            tables.append(("rejected", rejected.reindex(columns=REJECTED_COLUMNS).astype(str).reset_index(drop=True)))
        for name, frame in tables:
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            self._write_bytes_atomic(self._path("versions", version, f"{name}.parquet"), buffer.getvalue())
        previous = self.info_or_none()
        created = (
            previous["created"]
            if previous and previous.get("version") == version
            else datetime.now(timezone.utc).isoformat(timespec="seconds")
        )
        info = {
            "version": version,
            "format": STORE_FORMAT,
            "created": created,
            "source": source,
            "tool": f"raddiag {__version__}",
            "n_cases": int(len(cases)),
            "n_scans": int(len(scans)),
            "splits": {s: int((cases["split"] == s).sum()) for s in SPLITS},
            "storage": {"dtype": sorted(set(scans["dtype"])) or ["uint8"], **self.layout.describe()},
            **(extra_info or {}),
        }
        self._write_bytes_atomic(self._path("dataset.json"), json.dumps(info, indent=2).encode())
        return Manifest(cases, scans, labels, info)

    def rejected(self, version: str | None = None) -> pd.DataFrame:
        """The quarantine table of ``version`` (default: current); empty when none was written."""
        version = version or self.manifest().version
        try:
            with self.fs.open(self._path("versions", version, "rejected.parquet"), "rb") as handle:
                return pd.read_parquet(io.BytesIO(handle.read()))
        except FileNotFoundError:
            return pd.DataFrame(columns=REJECTED_COLUMNS)

    def info_or_none(self) -> dict[str, Any] | None:
        try:
            with self.fs.open(self._path("dataset.json"), "rb") as handle:
                return json.loads(handle.read())
        except FileNotFoundError:
            return None

    def manifest(self, columns: dict[str, list[str]] | None = None) -> Manifest:
        """The current version's manifest. Raises :class:`StoreError` naming the URL if absent.

        ``columns`` limits what is read of the named tables (e.g. :data:`RECORD_COLUMNS`: a
        worker that only builds case records skips checksums, paths and keys — at RP3D size the
        scans table shrinks several-fold); a table not named is read whole."""
        info = self.info_or_none()
        if info is None:
            raise StoreError(f"{self.url}: no dataset.json — not a raddiag store (run `raddiag synth` or `raddiag ingest`)")
        frames = []
        for name in ("cases", "scans", "labels"):
            path = self._path("versions", info["version"], f"{name}.parquet")
            try:
                with self.fs.open(path, "rb") as handle:
                    frames.append(pd.read_parquet(io.BytesIO(handle.read()), columns=(columns or {}).get(name)))
            except FileNotFoundError:
                raise StoreError(f"{self.url}: dataset.json names version {info['version']} but {name}.parquet is missing") from None
        return Manifest(frames[0], frames[1], frames[2], info)


def manifest_version(cases: pd.DataFrame, scans: pd.DataFrame, labels: pd.DataFrame) -> str:
    """Content hash of the manifest tables (16 hex chars): same content, same version."""
    digest = hashlib.sha256()
    for frame in (cases, scans, labels):
        digest.update(frame.to_json(orient="records").encode())
    return digest.hexdigest()[:16]


def label_group(count: int, head: int = 100, tail: int = 30) -> str:
    """head >= 100 training cases, medium 30-99, tail < 30 (the paper's grouping)."""
    return "head" if count >= head else "medium" if count >= tail else "tail"


def label_table(cases: pd.DataFrame, disorder_names: list[str], icd_codes: dict[str, str | None]) -> pd.DataFrame:
    """Label vocabulary with train counts and groups, at disorder and ICD-10-CM levels.

    ``icd_codes`` maps each disorder name to its ICD-10-CM 3-character code (or None).
    """
    train = cases[cases["split"] == "train"]
    disorder_counts: dict[str, int] = {name: 0 for name in disorder_names}
    icd_counts: dict[str, int] = {}
    for code in sorted({c for c in icd_codes.values() if c}):
        icd_counts[code] = 0
    for row in train.itertuples(index=False):
        for name in set(row.disorders):
            if name in disorder_counts:
                disorder_counts[name] += 1
        for code in set(row.icd10):
            icd_counts[code] = icd_counts.get(code, 0) + 1
    rows = [
        {"name": n, "level": "disorder", "code": icd_codes.get(n) or "", "train_count": c, "group": label_group(c)}
        for n, c in disorder_counts.items()
    ]
    rows += [
        {"name": code, "level": "icd", "code": code, "train_count": c, "group": label_group(c)}
        for code, c in icd_counts.items()
    ]
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)
