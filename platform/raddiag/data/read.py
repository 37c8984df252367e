"""Reading sampled slices from the Zarr store: byte-range reads of exactly the chunks a sample needs.

A scan is a Zarr v3 array ``(D, H, W)`` with chunks of ``chunk_depth`` slices grouped into shards
(one object per scan at training resolution, see ``raddiag.storage.store``). zarr 3.1 reads a
partial shard with one *sequential* ranged request per chunk (32 round trips for a 32-slice sample)
or, as ``Store.read_slices`` does for big samples, the whole shard. :class:`SliceReader` instead:

1. reads each scan's ``zarr.json`` once (scan ids are content hashes, so metadata never changes);
2. reads the shard index (a suffix request), or the whole shard when every chunk is needed;
3. issues one ranged GET per run of adjacent needed chunks (runs closer than ``max_gap_bytes``
   merge), all scans of a batch concurrently, through zarr's async store API on zarr's event loop;
4. decodes the chunks (Blosc) in the calling thread, after all bytes have arrived.

Each reader opens its own store and filesystem (``skip_instance_cache``) in the process that uses
it: nothing holding an s3fs client is pickled or crosses a fork. Arrays whose layout differs from
the one described above (other codecs, index at the start) are read through zarr's own
``AsyncArray`` selection instead, so the reader is never wrong, only slower.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raddiag.storage.ref import StoreRef

_MISSING = 2**64 - 1  # index entry of a chunk that was never written (all fill value)


@dataclass(frozen=True)
class ScanLayout:
    """What a reader needs from one scan's ``zarr.json``."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    fill_value: Any
    shard_depth: int
    chunk_depth: int
    key_separator: str
    direct: bool  # False: layout not handled here, read through zarr's AsyncArray

    @property
    def chunks_per_shard(self) -> int:
        return self.shard_depth // self.chunk_depth

    def shard_key(self, scan_id: str, shard: int) -> str:
        sep = self.key_separator
        return f"{scan_id}/c{sep}{shard}{sep}0{sep}0"


def parse_layout(meta: dict[str, Any]) -> ScanLayout:
    """``zarr.json`` of a scan array -> :class:`ScanLayout` (``direct`` only for the layout we write)."""
    shape = tuple(int(s) for s in meta["shape"])
    dtype = np.dtype(meta["data_type"])
    shard_depth = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    encoding = meta.get("chunk_key_encoding", {})
    separator = encoding.get("configuration", {}).get("separator", "/")
    codecs = meta.get("codecs", [])
    direct = False
    chunk_depth = shard_depth
    if encoding.get("name") == "default" and len(codecs) == 1 and codecs[0]["name"] == "sharding_indexed":
        conf = codecs[0]["configuration"]
        chunk_depth = int(conf["chunk_shape"][0])
        inner = [c["name"] for c in conf["codecs"]]
        index = [c["name"] for c in conf["index_codecs"]]
        endian = conf["codecs"][0].get("configuration", {}).get("endian", "little")
        direct = (
            inner == ["bytes", "blosc"]
            and index == ["bytes", "crc32c"]
            and conf.get("index_location", "end") == "end"
            and (endian == "little" or dtype.itemsize == 1)
            and list(conf["chunk_shape"][1:]) == list(shape[1:])
            and list(meta["chunk_grid"]["configuration"]["chunk_shape"][1:]) == list(shape[1:])
            and shard_depth % chunk_depth == 0
        )
    return ScanLayout(shape, dtype.newbyteorder("<"), meta.get("fill_value", 0), shard_depth, chunk_depth, separator, direct)


@dataclass
class FetchedScan:
    """The fetched bytes of one scan sample: ``(chunk bytes, [(output row, row in chunk)])`` pairs."""

    layout: ScanLayout
    n_rows: int
    parts: list[tuple[bytes, list[tuple[int, int]]]] = field(default_factory=list)
    decoded: np.ndarray | None = None  # fallback path: already decoded by zarr


def _coalesce(ranges: list[tuple[int, int, int]], max_gap: int) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """``[(start, end, chunk)]`` sorted by start -> ``[(start, end, members)]`` merged across gaps <= max_gap."""
    runs: list[tuple[int, int, list[tuple[int, int, int]]]] = []
    for start, end, chunk in sorted(ranges):
        if runs and start - runs[-1][1] <= max_gap:
            run_start, _, members = runs[-1]
            runs[-1] = (run_start, max(end, runs[-1][1]), members + [(start, end, chunk)])
        else:
            runs.append((start, end, [(start, end, chunk)]))
    return runs


class SliceReader:
    """Reads ``(scan_id, slice indices)`` samples of a store's scans as ``(K, H, W)`` arrays.

    ``bytes_fetched`` / ``requests`` count what was transferred from the store (metadata included).
    Not thread-safe; create one per Ray task (cheap) and call :meth:`close` when done.
    """

    def __init__(self, store: StoreRef | str, *, max_gap_bytes: int = 0, max_in_flight: int = 32) -> None:
        self.ref = store if isinstance(store, StoreRef) else StoreRef(store)
        self.url = self.ref.url
        self.max_gap_bytes = max_gap_bytes
        self.max_in_flight = max_in_flight
        self.bytes_fetched = 0
        self.requests = 0
        self._store: Any = None
        self._layouts: dict[str, ScanLayout] = {}
        # local stores are read with os.pread (see _read_local); remote ones through zarr's store
        self._local_root = None if self.ref.is_remote else os.path.join(self.url, "scans.zarr")

    # ---- store ---------------------------------------------------------------------------------
    def _zarr_store(self) -> Any:
        if self._store is None:
            from zarr.storage import FsspecStore, LocalStore

            root = f"{self.url}/scans.zarr"
            if self.ref.is_remote:  # a filesystem of its own, created here, in this process
                options = {**self.ref.storage_options(), "skip_instance_cache": True}
                self._store = FsspecStore.from_url(root, storage_options=options, read_only=True)
            else:
                self._store = LocalStore(root, read_only=True)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            from zarr.core.sync import sync

            fs = getattr(self._store, "fs", None)
            try:
                self._store.close()
                if fs is not None and hasattr(fs, "set_session"):
                    sync(_close_s3(fs))
            except Exception:  # closing is best effort; the process may be exiting
                pass
            self._store = None

    async def _get(self, key: str, byte_range: Any = None) -> bytes | None:
        if self._local_root is not None:
            data = self._read_local(key, byte_range)
        else:
            from zarr.core.buffer import default_buffer_prototype

            buffer = await self._zarr_store().get(key, prototype=default_buffer_prototype(), byte_range=byte_range)
            data = None if buffer is None else buffer.to_bytes()
        self.requests += 1
        if data is not None:
            self.bytes_fetched += len(data)
        return data

    def _read_local(self, key: str, byte_range: Any) -> bytes | None:
        """A local store's object, read with one ``pread`` in the calling coroutine: a page-cache
        read is microseconds, far less than zarr's ``LocalStore`` hop to a thread per request."""
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest

        try:
            fd = os.open(os.path.join(self._local_root, *key.split("/")), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            if isinstance(byte_range, RangeByteRequest):
                start, end = byte_range.start, min(byte_range.end, size)
            elif isinstance(byte_range, SuffixByteRequest):
                start, end = max(0, size - byte_range.suffix), size
            elif byte_range is None:
                start, end = 0, size
            else:  # OffsetByteRequest
                start, end = byte_range.offset, size
            return os.pread(fd, max(0, end - start), start)
        finally:
            os.close(fd)

    async def _layout(self, scan_id: str) -> ScanLayout:
        if scan_id not in self._layouts:
            raw = await self._get(f"{scan_id}/zarr.json")
            if raw is None:
                raise KeyError(f"store {self.url}: scan {scan_id} not found (is the manifest from another store?)")
            self._layouts[scan_id] = parse_layout(json.loads(raw))
        return self._layouts[scan_id]

    # ---- fetch (async, I/O only) ---------------------------------------------------------------
    def fetch(self, requests: list[tuple[str, np.ndarray]]) -> list[FetchedScan]:
        """Fetch the bytes of every ``(scan_id, indices)`` request concurrently (no decoding)."""
        from zarr.core.sync import sync

        return sync(self._fetch_all(requests))

    async def _fetch_all(self, requests: list[tuple[str, np.ndarray]]) -> list[FetchedScan]:
        gate = asyncio.Semaphore(self.max_in_flight)
        return list(await asyncio.gather(*(self._fetch_scan(scan_id, np.asarray(idx, dtype=np.int64), gate) for scan_id, idx in requests)))

    async def _fetch_scan(self, scan_id: str, indices: np.ndarray, gate: asyncio.Semaphore) -> FetchedScan:
        async with gate:
            layout = await self._layout(scan_id)
        fetched = FetchedScan(layout, len(indices))
        if len(indices) and (indices.min() < 0 or indices.max() >= layout.shape[0]):
            raise IndexError(f"scan {scan_id}: slice indices {indices.min()}..{indices.max()} outside depth {layout.shape[0]}")
        if not layout.direct:
            fetched.decoded = await self._fallback(scan_id, indices, gate)
            return fetched
        by_shard: dict[int, list[tuple[int, int]]] = {}
        for row, index in enumerate(indices.tolist()):
            by_shard.setdefault(index // layout.shard_depth, []).append((row, index % layout.shard_depth))
        await asyncio.gather(*(self._fetch_shard(scan_id, layout, shard, rows, fetched, gate) for shard, rows in by_shard.items()))
        return fetched

    async def _fetch_shard(
        self, scan_id: str, layout: ScanLayout, shard: int, rows: list[tuple[int, int]], fetched: FetchedScan, gate: asyncio.Semaphore
    ) -> None:
        from zarr.abc.store import RangeByteRequest, SuffixByteRequest

        key = layout.shard_key(scan_id, shard)
        n_chunks = layout.chunks_per_shard
        index_bytes = 16 * n_chunks + 4
        in_extent = min(n_chunks, -(-(layout.shape[0] - shard * layout.shard_depth) // layout.chunk_depth))
        wanted: dict[int, list[tuple[int, int]]] = {}
        for row, in_shard in rows:
            wanted.setdefault(in_shard // layout.chunk_depth, []).append((row, in_shard % layout.chunk_depth))
        async with gate:
            whole = len(wanted) == in_extent
            blob = await self._get(key) if whole else await self._get(key, SuffixByteRequest(index_bytes))
        if blob is None:  # the whole shard is fill value
            return
        table = np.frombuffer(blob[len(blob) - index_bytes : len(blob) - 4], dtype="<u8").reshape(n_chunks, 2)
        ranges = [
            (int(table[chunk, 0]), int(table[chunk, 0] + table[chunk, 1]), chunk)
            for chunk in wanted
            if int(table[chunk, 0]) != _MISSING
        ]
        if whole:
            for start, end, chunk in ranges:
                fetched.parts.append((blob[start:end], wanted[chunk]))
            return

        async def get_run(run_start: int, run_end: int, members: list[tuple[int, int, int]]) -> None:
            async with gate:
                data = await self._get(key, RangeByteRequest(run_start, run_end))
            assert data is not None, f"{key}: shard vanished while reading"
            for start, end, chunk in members:
                fetched.parts.append((data[start - run_start : end - run_start], wanted[chunk]))

        await asyncio.gather(*(get_run(*run) for run in _coalesce(ranges, self.max_gap_bytes)))

    async def _fallback(self, scan_id: str, indices: np.ndarray, gate: asyncio.Semaphore) -> np.ndarray:
        from zarr.api.asynchronous import open_array

        async with gate:
            array = await open_array(store=self._zarr_store(), path=scan_id, mode="r")
            out = await array.get_orthogonal_selection((indices, slice(None), slice(None)))
        out = np.asarray(out)
        self.bytes_fetched += out.nbytes  # decoded size: an upper bound of what was transferred
        return out

    # ---- decode (CPU) --------------------------------------------------------------------------
    @staticmethod
    def decode(fetched: FetchedScan, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one fetched sample into ``(K, H, W)`` of the stored dtype.

        ``out``: a C-contiguous ``(K, H, W)`` array of that dtype to decode into (e.g. a view of the
        batch buffer): one-slice chunks are decompressed straight into it, with no copy.
        """
        if fetched.decoded is not None:
            if out is None:
                return fetched.decoded
            out[...] = fetched.decoded
            return out
        from numcodecs.blosc import decompress

        layout = fetched.layout
        _, height, width = layout.shape
        if out is None:
            out = np.empty((fetched.n_rows, height, width), dtype=layout.dtype)
        covered = np.zeros(fetched.n_rows, dtype=bool)
        for data, rows in fetched.parts:
            if layout.chunk_depth == 1 and len(rows) == 1:
                decompress(data, out[rows[0][0]])
            else:
                chunk = np.frombuffer(decompress(data), dtype=layout.dtype).reshape(layout.chunk_depth, height, width)
                for row, in_chunk in rows:
                    out[row] = chunk[in_chunk]
            covered[[row for row, _ in rows]] = True
        if not covered.all():
            out[~covered] = layout.fill_value  # chunks never written: fill value
        return out

    def read(self, requests: list[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """``[(scan_id, indices)] -> [uint8 (len(indices), H, W)]`` (uint16 scans: their top byte)."""
        return self.read_into(requests, [None] * len(requests))

    def read_into(self, requests: list[tuple[str, np.ndarray]], outs: list[np.ndarray | None]) -> list[np.ndarray]:
        """Like :meth:`read`, decoding request ``i`` into ``outs[i]`` when it is a uint8 array of
        the scan's sample shape (the common case: a view of the batch buffer); returns the arrays."""
        result = []
        for fetched, out in zip(self.fetch(requests), outs):
            layout = fetched.layout
            fits = out is not None and layout.dtype == np.uint8 and out.shape == (fetched.n_rows, *layout.shape[1:])
            volume = self.decode(fetched, out if fits else None)
            result.append((volume >> 8).astype(np.uint8) if volume.dtype == np.uint16 else volume)
        return result


async def _close_s3(fs: Any) -> None:
    session = getattr(fs, "_s3", None)
    if session is not None:
        await session.__aexit__(None, None, None)
