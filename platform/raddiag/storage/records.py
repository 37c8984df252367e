"""Case records of one split in columnar form: what a training worker holds for its metadata.

:meth:`Manifest.case_records <raddiag.storage.store.Manifest.case_records>` returns a
:class:`CaseRecords`: a read-only sequence whose items are the plain case dicts (``case_id``,
``anatomy``, ``disorders``, ``icd10``, ``scans: [{scan_id, modality, plane, depth, height, width,
key_slice}]``), built on access from numpy columns — labels and scans as CSR index arrays, the
repeated strings (anatomies, label names, modalities, planes) once each in a vocabulary. At RP3D
size (40,936 cases, 195,010 scans) that is a few tens of MB instead of ~90 MB of dicts, it is built
without a Python loop over the scans, and it pickles as a handful of arrays (Ray ships it cheaply).
Slicing and :meth:`CaseRecords.take` give another ``CaseRecords``; label and anatomy columns are
available without building dicts (:meth:`CaseRecords.label_pairs`, :meth:`CaseRecords.anatomy_codes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

#: The per-scan fields of a record, in order (after ``scan_id``, ``modality``, ``plane``).
INT_SCAN_FIELDS = ("depth", "height", "width", "key_slice")


def _codes(values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
    """(int32 codes, vocabulary) of ``values``; the vocabulary keeps the original objects (None too)."""
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int32, count=len(values))
    return codes, list(index)


def _csr(lists: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """(offsets (n + 1,), codes, vocabulary) of a column of lists."""
    lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    codes, vocabulary = _codes(list(chain.from_iterable(lists)))
    return offsets, codes, vocabulary


class CaseRecords(Sequence):
    """Read-only case records of one split (see the module docstring); ``records[i]`` is a dict."""

    __slots__ = ("_case_ids", "_anatomy", "_anatomies", "_labels", "_scan_offsets", "_scan_ids", "_modality", "_modalities",
                 "_plane", "_planes", "_ints")

    def __init__(self, case_ids: np.ndarray, anatomy: np.ndarray, anatomies: list[Any], labels: dict[str, tuple[np.ndarray, np.ndarray, list[Any]]],
                 scan_offsets: np.ndarray, scan_ids: np.ndarray, modality: np.ndarray, modalities: list[Any], plane: np.ndarray,
                 planes: list[Any], ints: np.ndarray) -> None:
        self._case_ids, self._anatomy, self._anatomies = case_ids, anatomy, anatomies
        self._labels = labels  # "disorders" / "icd10" -> (offsets, codes, vocabulary)
        self._scan_offsets, self._scan_ids = scan_offsets, scan_ids
        self._modality, self._modalities, self._plane, self._planes = modality, modalities, plane, planes
        self._ints = ints  # (n_scans, 4) int64: INT_SCAN_FIELDS

    @classmethod
    def from_frames(cls, cases: pd.DataFrame, scans: pd.DataFrame) -> CaseRecords:
        """Records of the ``cases`` rows, in their order, each with its rows of ``scans`` in their
        order (``scans`` may hold other cases' scans too; they are skipped)."""
        case_ids = cases["case_id"].to_numpy(dtype=object)
        keys = pd.Index(pd.unique(case_ids))  # a case id listed twice gets the same scans twice
        owner = keys.get_indexer(scans["case_id"].to_numpy(dtype=object))
        kept = np.flatnonzero(owner >= 0)
        by_key = kept[np.argsort(owner[kept], kind="stable")]  # each case's scans, in the frame's order
        per_key = np.bincount(owner[kept], minlength=len(keys))
        key_offsets = np.concatenate([[0], np.cumsum(per_key)])
        # Scans laid out case by case in the records' order (duplicates of a case repeat its scans).
        case_key = keys.get_indexer(case_ids)
        counts = per_key[case_key]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = by_key[np.repeat(key_offsets[case_key], counts) + np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], counts)]
        modality, modalities = _codes(scans["modality"].to_numpy(dtype=object)[rows])
        plane, planes = _codes(scans["plane"].to_numpy(dtype=object)[rows])
        ints = np.stack([scans[name].to_numpy()[rows].astype(np.int64) for name in INT_SCAN_FIELDS], axis=1) if len(rows) else np.zeros((0, 4), np.int64)
        anatomy, anatomies = _codes(cases["anatomy"].to_numpy(dtype=object))
        labels = {field: _csr(cases[field].tolist()) for field in ("disorders", "icd10")}
        return cls(case_ids, anatomy, anatomies, labels, offsets, scans["scan_id"].to_numpy(dtype=object)[rows], modality, modalities,
                   plane, planes, np.ascontiguousarray(ints))

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]]) -> CaseRecords:
        """The columnar form of plain records (the inverse of ``list(records)``)."""
        cases = pd.DataFrame({"case_id": [r["case_id"] for r in records], "anatomy": [r["anatomy"] for r in records],
                              "disorders": [list(r["disorders"]) for r in records], "icd10": [list(r["icd10"]) for r in records]},
                             dtype=object)  # object columns keep None as None
        scans = pd.DataFrame([{"case_id": r["case_id"], **s} for r in records for s in r["scans"]],
                             columns=["case_id", "scan_id", "modality", "plane", *INT_SCAN_FIELDS], dtype=object)
        # by position, not by case id: records may repeat a case id with other scans
        out = cls.from_frames(cases.assign(case_id=np.arange(len(records))), scans.assign(case_id=np.repeat(np.arange(len(records)), [len(r["scans"]) for r in records])))
        out._case_ids = np.array([r["case_id"] for r in records], dtype=object)
        return out

    # ---- the sequence ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._case_ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return self.take(np.arange(len(self))[index])
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"case record index {index} out of range for {len(self)} records")
        return self._record(i)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self._record(i)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CaseRecords | list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CaseRecords({len(self)} cases, {len(self._scan_ids)} scans)"

    def _record(self, i: int) -> dict[str, Any]:
        lo, hi = int(self._scan_offsets[i]), int(self._scan_offsets[i + 1])
        modalities, planes = self._modalities, self._planes
        scans = [
            {"scan_id": scan_id, "modality": modalities[m], "plane": planes[p], "depth": d, "height": h, "width": w, "key_slice": k}
            for scan_id, m, p, (d, h, w, k) in zip(self._scan_ids[lo:hi].tolist(), self._modality[lo:hi].tolist(), self._plane[lo:hi].tolist(),
                                                   self._ints[lo:hi].tolist(), strict=True)
        ]
        return {"case_id": self._case_ids[i], "anatomy": self._anatomies[self._anatomy[i]], "disorders": self._labels_of("disorders", i),
                "icd10": self._labels_of("icd10", i), "scans": scans}

    def _labels_of(self, field: str, i: int) -> list[Any]:
        offsets, codes, vocabulary = self._labels[field]
        return [vocabulary[c] for c in codes[offsets[i] : offsets[i + 1]].tolist()]

    def take(self, indices: Sequence[int] | np.ndarray) -> CaseRecords:
        """The records at ``indices`` (any order, repeats allowed), as another ``CaseRecords``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"case record indices out of range for {len(self)} records")
        idx = np.where(idx < 0, idx + len(self), idx)

        def gather(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            counts = offsets[idx + 1] - offsets[idx]
            new = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            at = np.repeat(offsets[idx], counts) + np.arange(int(new[-1])) - np.repeat(new[:-1], counts)
            return new, at

        scan_offsets, at = gather(self._scan_offsets)
        labels = {}
        for field, (offsets, codes, vocabulary) in self._labels.items():
            new, where = gather(offsets)
            labels[field] = (new, codes[where], vocabulary)
        return CaseRecords(self._case_ids[idx], self._anatomy[idx], self._anatomies, labels, scan_offsets, self._scan_ids[at],
                           self._modality[at], self._modalities, self._plane[at], self._planes, self._ints[at])

    # ---- columns without dicts ---------------------------------------------------------------
    def label_pairs(self, field: str, label_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(case row, class) of every label of ``field`` (``disorders``/``icd10``) found in
        ``label_names``, in record order and label order within a record; others are skipped."""
        offsets, codes, vocabulary = self._labels[field]
        index = {name: j for j, name in enumerate(label_names)}
        column = np.array([index.get(name, -1) for name in vocabulary], dtype=np.int64)
        classes = column[codes] if codes.size else np.zeros(0, np.int64)
        rows = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(offsets))
        known = classes >= 0
        return rows[known], classes[known]

    def anatomy_names(self) -> list[Any]:
        """Each case's ``anatomy`` (the record's value)."""
        return [self._anatomies[c] for c in self._anatomy.tolist()]

    def nbytes(self) -> int:
        """Bytes of the arrays and of the strings they point to (vocabularies and ids)."""
        import sys

        arrays = [self._case_ids, self._anatomy, self._scan_offsets, self._scan_ids, self._modality, self._plane, self._ints]
        arrays += [a for offsets, codes, _ in self._labels.values() for a in (offsets, codes)]
        strings = list(self._case_ids) + list(self._scan_ids) + self._anatomies + self._modalities + self._planes
        strings += [v for _, _, vocabulary in self._labels.values() for v in vocabulary]
        return sum(a.nbytes for a in arrays) + sum(sys.getsizeof(s) for s in strings)
