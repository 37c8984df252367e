"""``raddiag score``: batch inference over a store split on Ray Data, written to Parquet.

The split's cases are cut into chunks of ``chunk_cases``. A Ray Data actor pool (``actors``
actors, each loading the model once — on a GPU when asked) scores one chunk per call and writes it
as ``part-<chunk>.parquet`` itself (atomically: a temporary file renamed locally, one PUT on S3),
so a chunk is either wholly written or absent. Columns: ``case_id``, ``split``, ``scores``
(list<float32>, one per label in the model's label order), ``labels`` (list<uint8>, the store's
truth) and, with ``embeddings``, ``embedding`` (list<float32>, the fused case embedding).

``_job.json`` is written before any chunk: the model URI (an ``@alias`` resolved to its version,
so a moved champion cannot mix two models in one output), the dataset version, the split, the
chunking and the label names. Running the same job again skips the chunks that exist (resume); a
different job refuses the folder. ``_SUCCESS.json`` is written last.

:func:`score_records` is the one in-process scoring function: the actors call it, and so does
``raddiag evaluate`` (``evaluate.score_split``), so both produce the same scores.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, fields
from typing import Any, Callable

import numpy as np

from raddiag.config import RadDiagConfig
from raddiag.serve.bundle import ModelBundle
from raddiag.storage.ref import StoreRef

JOB_FILE = "_job.json"
SUCCESS_FILE = "_SUCCESS.json"


class ScoreError(RuntimeError):
    """A scoring job that cannot run as asked (the message names the input and the fix)."""


@dataclass
class ScoreResult:
    output: str
    model_uri: str
    split: str
    n_cases: int
    n_chunks: int
    skipped_chunks: int
    seconds: float
    cases_per_s: float  # new cases / wall seconds, Ray Data and actor start-up included
    actor_seconds: float = 0.0  # summed time actors spent scoring and writing chunks
    kept_cases: int = 0  # cases of chunks an earlier run had written (resume)

    @property
    def cases_per_actor_s(self) -> float:
        """Steady-state throughput of one actor (start-up excluded)."""
        scored = self.n_cases - self.kept_cases
        return scored / self.actor_seconds if self.actor_seconds > 0 else 0.0


@dataclass
class Scores:
    case_ids: list[str]
    scores: np.ndarray  # (n, C) float32
    labels: np.ndarray  # (n, C) uint8
    embedding: np.ndarray | None  # (n, E) float32
    label_names: list[str]


def _forward(network: Any, batch: dict[str, np.ndarray], device: Any, embeddings: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (and embeddings) of one assembled batch, as the pyfunc model computes them."""
    import torch

    with torch.no_grad():
        out = network(
            torch.as_tensor(batch["images"], dtype=torch.float32, device=device),
            torch.as_tensor(np.asarray(batch["scan_mask"]).astype(bool), device=device),
            torch.as_tensor(np.asarray(batch["slice_mask"]).astype(bool), device=device),
            torch.as_tensor(np.asarray(batch["modality_ids"]).astype(np.int64), device=device),
        )
        probs = torch.sigmoid(out["logits"].float()).cpu().numpy().astype(np.float32)
        emb = out["embedding"].float().cpu().numpy().astype(np.float32) if embeddings else None
    return probs, emb


def score_records(
    bundle: ModelBundle,
    records: list[dict[str, Any]],
    *,
    batch_size: int = 8,
    device: Any = "cpu",
    embeddings: bool = False,
) -> Scores:
    """Score ``records`` (case records of the store ``bundle`` is on, see
    :meth:`ModelBundle.on_store`) in order with ``bundle``'s network (eval mode, on ``device``)."""
    from raddiag.data.pipeline import local_batches

    probs, truth, embs = [], [], []
    for batch in local_batches(records, bundle.config, bundle.label_names, batch_size):
        p, e = _forward(bundle.network, batch, device, embeddings)
        probs.append(p)
        truth.append(np.asarray(batch["labels"]).astype(np.uint8))
        if e is not None:
            embs.append(e)
    n_labels = len(bundle.label_names)
    return Scores(
        case_ids=[r["case_id"] for r in records],
        scores=np.concatenate(probs) if probs else np.zeros((0, n_labels), np.float32),
        labels=np.concatenate(truth) if truth else np.zeros((0, n_labels), np.uint8),
        embedding=np.concatenate(embs) if embs else None,
        label_names=bundle.label_names,
    )


def resolve_model_uri(uri: str, tracking_uri: str) -> str:
    """``models:/name@alias`` → ``models:/name/<version>`` (what the alias points at now)."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    from raddiag import tracking

    name, alias = uri.removeprefix("models:/").split("@", 1)
    version = tracking.client(tracking_uri).get_model_version_by_alias(name, alias)
    return f"models:/{name}/{version.version}"


def _fs(output: str, endpoint_url: str | None) -> tuple[Any, str]:
    """(filesystem, root) of an output folder, its URL read as a store URL is (:class:`StoreRef`)."""
    from raddiag.storage.ref import StoreRef

    return StoreRef(output, endpoint_url).filesystem()


def _write_atomic(fs: Any, path: str, payload: bytes) -> None:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(tmp, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
    else:  # a single PUT is atomic on S3
        with fs.open(path, "wb") as handle:
            handle.write(payload)


def part_name(chunk: int) -> str:
    return f"part-{chunk:05d}.parquet"


def _parquet_bytes(scores: Scores, split: str, job: ScoreJob) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "case_id": pa.array(scores.case_ids, pa.string()),
        "split": pa.array([split] * len(scores.case_ids), pa.string()),
        "scores": pa.FixedSizeListArray.from_arrays(pa.array(scores.scores.ravel(), pa.float32()), scores.scores.shape[1]),
        "labels": pa.FixedSizeListArray.from_arrays(pa.array(scores.labels.ravel(), pa.uint8()), scores.labels.shape[1]),
    }
    if scores.embedding is not None:
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(
            pa.array(scores.embedding.ravel(), pa.float32()), scores.embedding.shape[1]
        )
    table = pa.table(columns).replace_schema_metadata(
        {"raddiag.model_uri": job.model_uri, "raddiag.dataset_version": job.dataset_version}
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


@dataclass(frozen=True)
class ScoreJob:
    """A scoring job, checked before Ray starts (:func:`plan_job`). Each actor gets it (a few
    hundred bytes); ``_job.json`` records it without ``tracking_uri`` and ``store`` (no server
    address in the output)."""

    model_uri: str  # an @alias resolved to its version: every actor loads the same model
    requested_model_uri: str
    tracking_uri: str
    dataset_version: str
    split: str
    n_cases: int
    chunk_cases: int
    batch_size: int
    embeddings: bool
    label_names: list[str]
    output: str
    store: StoreRef  # read by the actors; its endpoint also serves an s3:// output

    #: what makes a folder hold "the same job" (resume) rather than another one
    IDENTITY = ("model_uri", "dataset_version", "split", "n_cases", "chunk_cases", "embeddings", "label_names")

    def record(self) -> dict[str, Any]:
        """The ``_job.json`` content."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("tracking_uri", "store")}


class ChunkScorer:
    """Ray Data actor: loads the model once, then scores and writes one chunk per call. Its input
    rows and output batches are Ray Data's (``chunk``/``records`` in; ``chunk``, ``cases``,
    ``seconds`` arrays out)."""

    def __init__(self, job: ScoreJob, use_gpu: bool, threads: int) -> None:
        import mlflow
        import torch

        # explicitly, not only by environment: a reused Ray worker may have set another URI before
        os.environ["MLFLOW_TRACKING_URI"] = job.tracking_uri
        mlflow.set_tracking_uri(job.tracking_uri)
        mlflow.set_registry_uri(job.tracking_uri)
        self.job = job
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.bundle = ModelBundle.load(job.model_uri, job.tracking_uri).on_store(job.store)
        self.bundle.network.to(self.device).eval()
        self.fs, self.root = _fs(job.output, job.store.endpoint_url)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        chunks, cases, seconds = [], [], []
        for chunk, text in zip(batch["chunk"], batch["records"]):
            started = time.perf_counter()
            records = json.loads(str(text))
            scores = score_records(self.bundle, records, batch_size=self.job.batch_size, device=self.device, embeddings=self.job.embeddings)
            payload = _parquet_bytes(scores, self.job.split, self.job)
            _write_atomic(self.fs, f"{self.root}/{part_name(int(chunk))}", payload)
            chunks.append(int(chunk))
            cases.append(len(records))
            seconds.append(time.perf_counter() - started)
        return {"chunk": np.asarray(chunks), "cases": np.asarray(cases), "seconds": np.asarray(seconds)}


def plan_job(cfg: RadDiagConfig, model_uri: str, split: str, output: str, *, batch_size: int, chunk_cases: int, embeddings: bool) -> tuple[ScoreJob, list[list[dict[str, Any]]]]:
    """Check the inputs (before Ray starts) and cut the split into chunks: (job, chunks)."""
    if chunk_cases < 1 or batch_size < 1:
        raise ScoreError("score: --chunk-cases and --batch-size must be >= 1")
    from raddiag.storage.store import RECORD_COLUMNS

    store = cfg.store.ref()
    manifest = store.manifest(RECORD_COLUMNS)
    splits = sorted(set(manifest.cases["split"]))
    if split not in splits:
        raise ScoreError(f"score: split {split!r} is not in store {cfg.store.url} (it has {', '.join(splits)})")
    records = manifest.case_records(split)
    tracking_uri = cfg.tracking.resolved_uri()
    resolved = resolve_model_uri(model_uri, tracking_uri)
    bundle = ModelBundle.load(resolved, tracking_uri)  # fails here, once, for a bad URI or model
    names = bundle.label_names
    if names != manifest.label_names(bundle.label_level):
        raise ScoreError(
            f"model {model_uri}: its {len(names)} labels differ from the store's {len(manifest.label_names(bundle.label_level))} "
            f"({cfg.store.url}); fine-tune it on this store first"
        )
    job = ScoreJob(
        model_uri=resolved, requested_model_uri=model_uri, tracking_uri=tracking_uri, dataset_version=manifest.version,
        split=split, n_cases=len(records), chunk_cases=chunk_cases, batch_size=batch_size, embeddings=embeddings,
        label_names=names, output=output, store=store,
    )
    chunks = [list(records[i : i + chunk_cases]) for i in range(0, len(records), chunk_cases)]  # plain dicts: JSON to the actors
    return job, chunks


def _prepare_output(job: ScoreJob) -> tuple[Any, str, set[int]]:
    """Write or check ``_job.json``; the chunks already written (resume)."""
    fs, root = _fs(job.output, job.store.endpoint_url)
    job_path = f"{root}/{JOB_FILE}"
    record = job.record()
    if fs.exists(job_path):
        with fs.open(job_path, "rb") as handle:
            previous = json.loads(handle.read())
        differing = [k for k in ScoreJob.IDENTITY if previous.get(k) != record[k]]
        if differing:
            raise ScoreError(
                f"score: {job.output} holds another job (differs in {', '.join(differing)}); "
                "choose another --output or delete that folder"
            )
    else:
        fs.makedirs(root, exist_ok=True)
        stale = [p for p in fs.ls(root, detail=False) if os.path.basename(p).startswith("part-")]
        if stale:
            raise ScoreError(f"score: {job.output} has Parquet parts but no {JOB_FILE}; choose an empty --output")
        _write_atomic(fs, job_path, json.dumps(record, indent=1).encode())
    done = set()
    for path in fs.ls(root, detail=False):
        name = os.path.basename(path)
        if name.startswith("part-") and name.endswith(".parquet"):
            done.add(int(name[len("part-") : -len(".parquet")]))
    return fs, root, done


def run_score(
    cfg: RadDiagConfig,
    model_uri: str,
    split: str,
    output: str,
    *,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    use_gpu: bool = False,
    batch_size: int = 8,
    chunk_cases: int = 64,
    embeddings: bool = False,
    verbose: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ScoreResult:
    """Score ``split`` of ``cfg``'s store with ``model_uri`` into ``output`` (see the module doc)."""
    if actors < 1:
        raise ScoreError("score: --actors must be >= 1")
    job, chunks = plan_job(cfg, model_uri, split, output, batch_size=batch_size, chunk_cases=chunk_cases, embeddings=embeddings)
    fs, root, done = _prepare_output(job)
    todo = [i for i in range(len(chunks)) if i not in done]
    started = time.perf_counter()
    scored = kept = sum(len(chunks[i]) for i in done)
    actor_seconds = 0.0
    if progress:
        progress(scored, job.n_cases)
    if todo:
        import ray.data

        from raddiag.runtime import init_ray

        init_ray(cfg.ray, verbose)
        items = [{"chunk": i, "records": json.dumps(chunks[i])} for i in todo]
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ChunkScorer,
            fn_constructor_kwargs={"job": job, "use_gpu": use_gpu, "threads": int(max(1, cpus_per_actor))},
            batch_size=1,
            concurrency=min(actors, len(items)),
            num_cpus=cpus_per_actor,
            num_gpus=1 if use_gpu else 0,
        )
        for row in dataset.iter_rows():
            scored += int(row["cases"])
            actor_seconds += float(row["seconds"])
            if progress:
                progress(scored, job.n_cases)
    seconds = time.perf_counter() - started
    new_cases = sum(len(chunks[i]) for i in todo)
    summary = {"n_cases": job.n_cases, "n_chunks": len(chunks), "skipped_chunks": len(done), "seconds": round(seconds, 3)}
    _write_atomic(fs, f"{root}/{SUCCESS_FILE}", json.dumps(summary).encode())
    return ScoreResult(
        output=output, model_uri=job.model_uri, split=split, n_cases=job.n_cases, n_chunks=len(chunks),
        skipped_chunks=len(done), seconds=seconds, cases_per_s=new_cases / seconds if new_cases and seconds > 0 else 0.0,
        actor_seconds=actor_seconds, kept_cases=kept,
    )


def read_scores(output: str, endpoint_url: str | None = None) -> Scores:
    """Every chunk of a finished ``score`` output, in case order (the split's case_id order)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = _fs(output, endpoint_url)
    if not fs.exists(f"{root}/{SUCCESS_FILE}"):
        raise ScoreError(f"score output {output}: no {SUCCESS_FILE} (the job has not finished; re-run it to resume)")
    with fs.open(f"{root}/{JOB_FILE}", "rb") as handle:
        job = json.loads(handle.read())
    parts = sorted(p for p in fs.ls(root, detail=False) if os.path.basename(p).startswith("part-"))
    tables = []
    for path in parts:
        with fs.open(path, "rb") as handle:
            tables.append(pq.read_table(io.BytesIO(handle.read())))
    table = pa.concat_tables(tables)
    n_labels = len(job["label_names"])

    def matrix(name: str, width: int, dtype: Any) -> np.ndarray:
        column = table.column(name).combine_chunks()
        return column.values.to_numpy(zero_copy_only=False).astype(dtype).reshape(-1, width)

    embedding = None
    if "embedding" in table.column_names:
        width = table.schema.field("embedding").type.list_size
        embedding = matrix("embedding", width, np.float32)
    return Scores(
        case_ids=table.column("case_id").to_pylist(),
        scores=matrix("scores", n_labels, np.float32),
        labels=matrix("labels", n_labels, np.uint8),
        embedding=embedding,
        label_names=job["label_names"],
    )
