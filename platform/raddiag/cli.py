"""``raddiag <verb>``: the command line. Every verb reads the same typed config (``--config`` YAML
files, later ones win, then ``--set key=value`` overrides). Errors print one line and exit non-zero
(2 for misuse: bad config, bad arguments)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from raddiag.config import ConfigError, RadDiagConfig, load_config

app = typer.Typer(
    name="raddiag",
    help="RadDiag platform: ingest radiology data into a Zarr store, train and sweep on Ray, track and promote in MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Optional[list[Path]], typer.Option("--config", "-c", help="YAML config file(s) from jobs/; later files win.")
]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a config key: --set train.lr=3e-4")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray/MLflow logs.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _show_version(value: bool) -> None:
    if value:
        from raddiag import __version__

        print(f"raddiag {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """RadDiag platform: ingest radiology data into a Zarr store, train and sweep on Ray, track and promote in MLflow."""


class UserError(Exception):
    """An error caused by the user's input: :func:`main` prints ``Error: <message>``, exits ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = code


def _config(config: list[Path] | None, overrides: list[str] | None) -> RadDiagConfig:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        raise UserError(str(exc), code=2) from None


@app.command()
def synth(config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Write a synthetic RP3D-like long-tailed dataset (2D + 3D scans, ICD-10-CM labels) to the store."""
    from raddiag.storage.synth import synth_store
    from raddiag.views import console as show

    cfg = _config(config, set_)
    with show.progress_bar(console, "synthesising cases", cfg.synth.n_cases) as update:
        manifest = synth_store(cfg, update)
    show.manifest(console, manifest, cfg.store.url)


IngestSources = Annotated[
    list[Path], typer.Argument(help="RP3D-DiagDS .json file(s) and/or case-table .csv file(s) (case_id,path,modality,plane,labels,split).")
]


@app.command()
def ingest(
    sources: IngestSources,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Resolve scan paths against this folder (default: ingest.data_root, else each source's folder).")] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Label vocabulary (JSON name->index or one name per line); unknown labels are quarantined.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="auto (by suffix) | rp3d | table.")] = "auto",
    store_url: Annotated[Optional[str], typer.Option("--store", help="Store URL (default: store.url).")] = None,
    workers: Annotated[int, typer.Option(help="Cases processed concurrently (threads on this machine).")] = 2,
    on_ray: Annotated[bool, typer.Option("--ray", help="Process cases as Ray tasks across the cluster (ray.address / $RAY_ADDRESS, else a local Ray); sources must be readable on the workers.")] = False,
    task_cpus: Annotated[float, typer.Option(help="--ray: CPUs per ingest task (a task processes a few cases).")] = 1.0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Ingest RP3D json or a case table (npy, NIfTI, DICOM, PNG/JPEG) into the store, de-identified.

    Bad input is quarantined with a reason (the `rejected` table) and the rest is ingested. Re-running
    on the same input publishes the same version. Exit code 1 only when nothing could be ingested,
    2 on misuse (missing source, bad option, DICOM without a de-identification key).
    """
    from raddiag.runtime import init_ray
    from raddiag.storage.deid import DeidKeyMissing
    from raddiag.storage.ingest import IngestError, load_vocabulary, run_ingest
    from raddiag.storage.preprocess import Plan
    from raddiag.storage.readers import Limits
    from raddiag.views import console as show

    cfg = _config(config, set_)
    if fmt not in ("auto", "rp3d", "table"):
        raise UserError(f"--format {fmt!r}: expected auto, rp3d or table", code=2)
    if workers < 1:
        raise UserError("--workers must be >= 1", code=2)
    if task_cpus <= 0:
        raise UserError("--task-cpus must be > 0", code=2)
    ing = cfg.ingest
    root = data_root or (Path(ing.data_root) if ing.data_root else None)
    if root is not None and not root.is_dir():
        raise UserError(f"--data-root {root}: not a directory", code=2)
    vocab_path = labels or (Path(ing.labels) if ing.labels else None)
    url = store_url or cfg.store.url
    store = cfg.store.ref().with_url(url).open()
    plan = Plan(ing.image_size, ing.max_depth, ing.dtype, tuple(ing.ct_window) if ing.ct_window else None)
    limits = Limits(max_side=ing.max_side, max_depth=max(ing.max_side, 4096), max_voxels=ing.max_voxels, max_bytes=ing.memory_mb * 2**20 // (1 if on_ray else workers))
    try:
        vocabulary = load_vocabulary(vocab_path) if vocab_path else None
        with show.progress_bar(console, "ingesting cases") as update:
            result = run_ingest(
                list(sources), store, data_root=root, vocabulary=vocabulary, plan=plan, limits=limits,
                val_fraction=ing.val_fraction, test_fraction=ing.test_fraction, seed=ing.seed,
                keep_flagged=ing.keep_flagged, trust_pixels=tuple(ing.trust_pixels), key_env=ing.deid_key_env, fmt=fmt, workers=workers,
                progress=update,
                on_ray=(lambda: init_ray(cfg.ray, verbose)) if on_ray else None, task_cpus=task_cpus,
            )
    except (IngestError, DeidKeyMissing) as exc:
        raise UserError(str(exc), code=2) from None
    show.rejected(console, result.rejected)
    if result.manifest is None:
        raise UserError(f"nothing could be ingested from {', '.join(map(str, sources))} ({len(result.rejected)} rejected)")
    show.ingested(console, result, url)


@app.command()
def verify(
    url: Annotated[Optional[str], typer.Argument(help="Store URL (local path, file:// or s3://bucket/prefix); default store.url.")] = None,
    endpoint_url: Annotated[Optional[str], typer.Option("--endpoint-url", help="S3 endpoint (default store.endpoint_url).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Verify a store: recompute every scan checksum and check manifest/array consistency; exit 1 on any problem."""
    from raddiag.storage.ref import StoreRef
    from raddiag.storage.verify import verify_store
    from raddiag.views import console as show

    cfg = _config(config, set_)
    target = url or cfg.store.url
    with console.status(f"verifying {target}"):
        report = verify_store(StoreRef(target, endpoint_url or cfg.store.endpoint_url).open())
    show.verification(console, report)
    summary = f"{target} version {report.version or '?'}: {report.n_cases} cases, {report.n_scans} scans checked"
    if report.problems:
        raise UserError(f"{summary}; {len(report.problems)} problem(s)")
    console.print(f"{summary}; no problems")


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would run (store, model, schedule, tracking); start nothing.")] = False,
) -> None:
    """Train one model with Ray Train (DDP) and track it in MLflow; re-running the same name resumes."""
    from raddiag.train.trainer import TrainRefused, run_train
    from raddiag.views import console as show

    cfg = _config(config, set_)
    if dry_run:
        _dry_run(cfg, "train")
        return
    try:
        with console.status(f"training {cfg.train.name} ({cfg.train.num_workers} workers, {cfg.train.epochs} epochs)"):
            result = run_train(cfg, verbose)
    except TrainRefused as exc:  # no store, or a name that holds another run: before Ray started
        raise UserError(str(exc), code=2) from None
    if result.already_complete:
        show.already_complete(console, cfg.train.name, result)
        return
    show.trained(console, result)


@app.command()
def sweep(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the sweep named sweep.name after its driver died.")] = False,
    verbose: VerboseOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would run (store, search space, budget); start nothing.")] = False,
) -> None:
    """Run a Ray Tune + Optuna (TPE) + ASHA sweep; each trial is a TorchTrainer and a child MLflow run."""
    from raddiag.tune.sweep import run_sweep
    from raddiag.views import console as show

    cfg = _config(config, set_)
    if dry_run:
        _dry_run(cfg, "sweep")
        return
    with console.status(show.sweep_status(cfg, resume)):
        result = run_sweep(cfg, verbose, resume)
    show.trials(console, result, cfg.sweep.metric)


def _dry_run(cfg: RadDiagConfig, verb: str) -> None:
    """``--dry-run``: the plan, from the config and the store's manifest; nothing starts."""
    from raddiag.discover import plan_summary
    from raddiag.views import console as show

    show.plan(plan_summary(cfg, verb), verb)


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/raddiag@champion or runs:/<run_id>/raddiag-classifier.")] = "",
    split: Annotated[str, typer.Option(help="Split of the store to evaluate on.")] = "test",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for 95% CIs (0 = none).")] = 0,
    output: Annotated[Optional[Path], typer.Option(help="Write the report as JSON here.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evaluate a model on a split: AUC/AP/F1/MCC/R@FPR by head/medium/tail, as a table and JSON."""
    from raddiag.evaluate import evaluate_model
    from raddiag.views import console as show

    cfg = _config(config, set_)
    if split not in ("train", "val", "test"):
        raise UserError(f"--split {split!r}: expected train, val or test", code=2)
    uri = _model_uri(cfg, model)
    result = evaluate_model(uri, cfg, split, n_bootstrap=bootstrap)
    show.evaluation(console, result.report, f"{uri} on {split} ({result.n_cases} cases, dataset {result.dataset_version})")
    if output:
        output.write_text(json.dumps({"model": uri, "split": split, "dataset_version": result.dataset_version, **result.report.to_json()}, indent=2))
        console.print(f"report written to {output}")


@app.command()
def promote(
    sweep_name: Annotated[str, typer.Option("--sweep", help="Name of the sweep whose best trial to promote.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say which run/version would be promoted and how it compares; write nothing to MLflow.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register a sweep's best model; move @champion only if it beats the current one on the test split."""
    from raddiag.registry import PromotionError
    from raddiag.registry import promote as do_promote
    from raddiag.views import console as show

    cfg = _config(config, set_)
    try:
        result = do_promote(cfg, sweep_name, dry_run=dry_run)
    except PromotionError as exc:
        raise UserError(str(exc)) from None
    show.promotion(console, result)


def _model_uri(cfg: RadDiagConfig, model: str) -> str:
    """``--model`` or the registered model's ``@champion``, checked against the tracking server:
    a local sqlite database that does not exist is not created (running outside the project
    folder), and a registered model or alias that is not there is named with the URI searched."""
    from raddiag import tracking

    uri = model or f"models:/{cfg.tracking.registered_model}@champion"
    tracking_uri = cfg.tracking.resolved_uri()
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).exists():
        raise UserError(
            f"no MLflow database at {tracking_uri.removeprefix('sqlite:///')} (run from the project folder, "
            "or set tracking.tracking_uri / MLFLOW_TRACKING_URI)", code=2,
        )
    tracking.setup(cfg.tracking)
    if uri.startswith("models:/"):
        name, _, alias = uri.removeprefix("models:/").partition("@")
        client = tracking.client(tracking_uri)
        try:
            if alias:
                client.get_model_version_by_alias(name, alias)
            else:
                client.get_registered_model(name.split("/")[0])
        except Exception as exc:
            if not known_failure(exc):
                raise
            raise UserError(f"{uri}: not found in the MLflow registry at {tracking_uri} (promote a model first: raddiag promote)") from None
    return uri


def _read_case(case: Path) -> list[dict[str, Any]]:
    """The case folder's scans, read before any model is loaded (bad input: one line, exit 2)."""
    from raddiag.predict import load_case_folder

    try:
        return load_case_folder(case)
    except ValueError as exc:
        raise UserError(str(exc), code=2) from None


@app.command()
def predict(
    case: Annotated[Path, typer.Argument(help="A case folder (.npy / .nii / .nii.gz / .dcm / .png / .jpg scans).")],
    model: Annotated[str, typer.Option(help="Model URI.")] = "",
    top_k: Annotated[int, typer.Option(help="How many labels to show.")] = 5,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Predict the top-k labels of one case folder with a registered model (default @champion)."""
    from raddiag.predict import predict_case

    cfg = _config(config, set_)
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: expected a positive number of labels", code=2)
    scans = _read_case(case)
    uri = _model_uri(cfg, model)
    ranked = predict_case(uri, case, top_k, scans=scans)
    if as_json:
        print(json.dumps({"model": uri, "case": str(case), "top_k": ranked}, indent=2))
        return
    from raddiag.views import console as show

    show.ranked(console, ranked, f"{case.name} — {uri}")


@app.command()
def score(
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the Parquet parts: a local path or s3://bucket/prefix.")],
    model: Annotated[str, typer.Option(help="Model URI (default: models:/<registered_model>@champion).")] = "",
    split: Annotated[str, typer.Option(help="Split of the store to score.")] = "test",
    actors: Annotated[int, typer.Option(help="Ray Data actors, each loading the model once.")] = 2,
    cpus_per_actor: Annotated[float, typer.Option(help="CPUs reserved per actor (torch threads).")] = 1.0,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per actor.")] = False,
    batch_size: Annotated[int, typer.Option(help="Cases per forward pass.")] = 8,
    chunk_cases: Annotated[int, typer.Option(help="Cases per Parquet part (the unit of resume).")] = 64,
    embeddings: Annotated[bool, typer.Option("--embeddings", help="Also write each case's fused embedding.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Batch-score a store split on Ray Data (an actor pool) into Parquet; re-run to resume."""
    from raddiag.score import ScoreError, run_score
    from raddiag.views import console as show

    cfg = _config(config, set_)
    if split not in ("train", "val", "test"):
        raise UserError(f"--split {split!r}: expected train, val or test", code=2)
    if actors < 1 or batch_size < 1 or chunk_cases < 1 or cpus_per_actor <= 0:
        raise UserError("--actors, --batch-size and --chunk-cases must be >= 1 and --cpus-per-actor > 0", code=2)
    uri = _model_uri(cfg, model)
    try:
        with show.progress_bar(console, f"scoring {split}") as update:
            result = run_score(
                cfg, uri, split, output, actors=actors, cpus_per_actor=cpus_per_actor, use_gpu=gpu, batch_size=batch_size,
                chunk_cases=chunk_cases, embeddings=embeddings, verbose=verbose, progress=update,
            )
    except ScoreError as exc:
        raise UserError(str(exc), code=2) from None
    show.scored(console, result, split, output)


@app.command()
def embed(
    output: Annotated[str, typer.Option("--output", "-o", help="Folder for the Parquet parts: a local path or s3://bucket/prefix.")],
    model: Annotated[str, typer.Option(help="Model URI (default: models:/<registered_model>@champion).")] = "",
    split: Annotated[str, typer.Option(help="Split of the store to embed.")] = "test",
    actors: Annotated[int, typer.Option(help="Ray Data actors, each loading the model once.")] = 2,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per actor.")] = False,
    batch_size: Annotated[int, typer.Option(help="Cases per forward pass.")] = 8,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Feature extraction: each case's fused embedding (column ``embedding``) for a store split, as Parquet
    (``raddiag score --embeddings``; read it back with ``raddiag.score.read_scores``)."""
    score(output=output, model=model, split=split, actors=actors, cpus_per_actor=1.0, gpu=gpu, batch_size=batch_size,
          chunk_cases=64, embeddings=True, config=config, set_=set_, verbose=verbose)


@app.command()
def finetune(
    model: Annotated[str, typer.Option(help="Source model URI (default: models:/<registered_model>@champion).")] = "",
    head: Annotated[Optional[str], typer.Option(help="Head for the new labels: mlp (new head) or ke (embed the new names); default: the source's.")] = None,
    fraction: Annotated[Optional[float], typer.Option(help="Fine-tune on this fraction of the training split (stratified, seeded by train.fraction_seed): data-efficiency runs.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Fine-tune a registered model on another store with its own label set (new head or KE names)."""
    from raddiag.finetune import finetune as do_finetune

    cfg = _config(config, set_ if fraction is None else [*(set_ or []), f"train.fraction={fraction}"])
    if head not in (None, "mlp", "ke"):
        raise UserError(f"--head {head!r}: expected mlp or ke", code=2)
    uri = _model_uri(cfg, model)
    from raddiag.train.trainer import TrainRefused

    try:
        with console.status(f"fine-tuning {uri} on {cfg.store.url} as {cfg.train.name}"):
            result = do_finetune(cfg, uri, head, verbose)
    except TrainRefused as exc:
        raise UserError(str(exc), code=2) from None
    from raddiag.views import console as show

    show.trained(console, result, source=uri)


@app.command("import-checkpoint")
def import_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="Official RadDiag weights: pytorch_model.bin, *.safetensors, or the folder holding them.")],
    labels: Annotated[Path, typer.Option("--labels", help="The label dictionary the checkpoint was trained with (JSON name->index, e.g. disorder_label_dict.json, or one name per line).")],
    preset: Annotated[str, typer.Option(help="Architecture preset the weights belong to.")] = "rp3d_reference",
    name: Annotated[str, typer.Option("--name", help="Registered model name (default: tracking.registered_model).")] = "",
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Map an official RadDiag checkpoint onto our network and register it in MLflow (then finetune/score/predict from it)."""
    from raddiag.reference import PRESETS, CheckpointError, resolve_checkpoint
    from raddiag.reference import import_checkpoint as do_import

    if preset not in PRESETS:
        raise UserError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}", code=2)
    try:
        cfg = load_config(config, set_, base=PRESETS[preset])
    except ConfigError as exc:
        raise UserError(str(exc), code=2) from None
    names, _ = _read_label_file(labels)
    try:
        resolve_checkpoint(checkpoint)
        with console.status(f"mapping {checkpoint.name} onto the {preset} preset"):
            result = do_import(cfg, checkpoint, names, name or cfg.tracking.registered_model, preset)
    except CheckpointError as exc:
        raise UserError(str(exc), code=2) from None
    if as_json:
        print(json.dumps({"model": result.uri, "run_id": result.run_id, "mapped": result.mapped, "num_labels": result.num_labels,
                          "sha256": result.sha256, "unused": [list(row) for row in result.unused]}, indent=2))
        return
    from raddiag.views import console as show

    show.imported(console, result)


@app.command()
def zeroshot(
    case: Annotated[Path, typer.Argument(help="A case folder of scans (as for predict).")],
    labels: Annotated[Optional[str], typer.Option(help='New label names separated by ";".')] = None,
    labels_file: Annotated[Optional[Path], typer.Option(help="A file with one label name per line.")] = None,
    model: Annotated[str, typer.Option(help="Model URI of a KE-trained model.")] = "",
    top_k: Annotated[int, typer.Option(help="How many labels to show.")] = 10,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score label names the model never saw (knowledge-enhanced head) and normal/abnormal for a case."""
    from raddiag.finetune import read_label_list, zeroshot_case

    cfg = _config(config, set_)
    if top_k < 1:
        raise UserError(f"--top-k {top_k}: expected a positive number of labels", code=2)
    scans = _read_case(case)
    try:
        names = read_label_list(labels, labels_file)
    except FileNotFoundError as exc:
        raise UserError(str(exc), code=2) from None
    if not names:
        raise UserError("zeroshot: give label names with --labels or --labels-file", code=2)
    uri = _model_uri(cfg, model)
    try:
        result = zeroshot_case(uri, case, names, top_k, scans=scans)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if as_json:
        print(json.dumps({"model": uri, "case": str(case), **result}, indent=2))
        return
    from raddiag.views import console as show

    abnormal = result["abnormal_probability"]
    suffix = f" — P(abnormal) {abnormal:.3f}" if abnormal is not None else ""
    show.ranked(console, result["labels"], f"{case.name} — zero-shot with {uri}{suffix}")


@app.command()
def demo(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """The whole chain on embedded defaults: synth → Zarr store → Ray Data → Tune sweep → MLflow → @champion → test table."""
    from raddiag.demo import run_demo

    run_demo(_config(config, set_), verbose, console)


@app.command()
def ablate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    output: Annotated[Optional[Path], typer.Option(help="Also write the table as JSON here (a .md beside it).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Keep the runs that already have scores, train the rest, tabulate.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Train named arms × seeds as one Ray Tune grid (child MLflow runs under one parent) and print the
    paper-shaped table: AUC/AP/F1 by head/medium/tail with 95% CIs and paired differences between arms."""
    from raddiag.tune.ablate import AblationError, arm_configs, run_ablation
    from raddiag.views import console as show

    cfg = _config(config, set_)
    try:
        arms = arm_configs(cfg)
    except ConfigError as exc:
        raise UserError(str(exc), code=2) from None
    runs = len(arms) * len(cfg.ablation.seeds)
    console.print(
        f"ablation {cfg.ablation.name}: {len(arms)} arms ({', '.join(arms)}) x seeds {cfg.ablation.seeds} = {runs} runs, "
        f"{cfg.ablation.max_concurrent_trials} at a time"
    )
    try:
        with show.progress_bar(console, "synthesising cases (no store yet)", cfg.synth.n_cases, visible=False) as synth_progress:
            with console.status(f"training {runs} runs with Ray Tune (results under {cfg.train.storage_path})"):
                result = run_ablation(cfg, verbose, progress=synth_progress, resume=resume)
    except AblationError as exc:
        raise UserError(str(exc)) from None
    show.ablation(console, result)
    if output:
        output.write_text(json.dumps({**result.table.to_json(), "train_seconds_per_run": result.seconds_per_arm, "runs": result.runs}, indent=2))
        output.with_suffix(".md").write_text(result.markdown + "\n")
        console.print(f"table written to {output} and {output.with_suffix('.md')}")


@app.command()
def submit(
    jobspec: Annotated[Path, typer.Argument(help="Job spec YAML (with 'entrypoint'), or a config YAML from jobs/.")],
    address: Annotated[str, typer.Option(help="Ray Jobs API (dashboard) URL; default $RAY_API_SERVER_ADDRESS or http://127.0.0.1:8265.")] = "",
    verb: Annotated[Optional[str], typer.Option(help="For a config YAML: the verb to run (default: the file name).")] = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", "-e", help="Extra job env var NAME=VALUE (no secrets).")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the job's logs until it ends.")] = True,
    set_: SetOpt = None,
) -> None:
    """Submit a job to a Ray cluster (Ray Jobs API), follow its logs, exit with the job's status.

    With token authentication (Ray's default) set RAY_AUTH_MODE=token and the cluster's token
    (RAY_AUTH_TOKEN, or ~/.ray/auth_token from `ray get-auth-token`)."""
    from raddiag.submit import default_address, exit_status, load_job_spec, submit_job

    extra = {}
    for item in env or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UserError(f"--env {item!r}: expected NAME=VALUE", code=2)
        extra[name] = value
    try:
        spec = load_job_spec(jobspec, verb, set_)
        outcome = submit_job(spec, address or default_address(), extra_env=extra, follow=wait, echo=lambda line: print(line, flush=True))
    except ConfigError as exc:
        raise UserError(str(exc), code=2) from None
    except ConnectionError as exc:
        raise UserError(f"Ray Jobs API at {address or default_address()}: cannot connect ({exc})") from None
    if not wait:
        console.print(f"job {outcome.job_id}: {outcome.status} (follow with `ray job logs -f {outcome.job_id}`)")
        return
    console.print(f"job {outcome.job_id}: {outcome.status}" + (f" (exit code {outcome.exit_code})" if outcome.exit_code else ""))
    code = exit_status(outcome)
    if code:
        raise typer.Exit(code)


@app.command()
def report(
    sweep_name: Annotated[str, typer.Argument(help="Name of the sweep (sweep.name) to report on.")],
    output: Annotated[Optional[Path], typer.Option(help="HTML file to write (default: <sweep>-report.html).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Render a self-contained HTML report of a sweep from MLflow: leaderboard, parameter importance,
    parallel coordinates, long-tail curves and ROC by group of the best trial."""
    from raddiag.report import build_report

    cfg = _config(config, set_)
    path = output or Path(f"{sweep_name}-report.html")
    summary = build_report(cfg, sweep_name, path)
    console.print(f"report of sweep {sweep_name} ({summary['n_trials']} trials, best {summary['best_run_id']}) written to {path}")


# ---- raddiag runs | sweeps | models | config show ------------------------------------------------------


def _print_rows(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    from raddiag.views import console as show

    show.rows(console, rows, columns, title, as_json)


def _listing(fn: Any, *args: Any) -> Any:
    from raddiag.discover import NothingThere

    try:
        return fn(*args)
    except NothingThere as exc:
        raise UserError(str(exc), code=2) from None


@app.command()
def runs(
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """List the newest MLflow runs of tracking.experiment with their key validation metrics."""
    _run_listing(config, set_, limit, as_json, sweeps_only=False)


@app.command()
def sweeps(
    limit: Annotated[int, typer.Option(help="How many sweeps, newest first.")] = 20,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """List the sweeps (parent runs) of tracking.experiment: trials, best run, status."""
    rows = _run_listing(config, set_, limit, as_json, sweeps_only=True)
    if rows and not as_json:
        from raddiag.views import console as show

        show.next_steps_after_sweeps(console, rows[0]["sweep"])


def _run_listing(config: Any, set_: Any, limit: int, as_json: bool, sweeps_only: bool) -> list[dict[str, Any]]:
    from raddiag.discover import list_runs

    cfg = _config(config, set_)
    what = "sweeps" if sweeps_only else "runs"
    if limit < 1:
        raise UserError(f"--limit {limit}: expected a positive number of {what}", code=2)
    rows = _listing(list_runs, cfg, limit, sweeps_only)
    columns = ["sweep", "status", "started", "trials", "best_run_id", "run_id"] if sweeps_only else [
        "name", "kind", "status", "started", "run_id", "metrics"]
    _print_rows(rows, columns, f"{what} of {cfg.tracking.experiment}", as_json)
    return rows


@app.command()
def models(as_json: JsonOpt = False, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """List the registered model versions with their aliases (e.g. @champion) and origin."""
    from raddiag.discover import list_models

    cfg = _config(config, set_)
    rows = _listing(list_models, cfg)
    _print_rows(rows, ["name", "version", "aliases", "created", "origin", "run_id"], "registered models", as_json)


config_app = typer.Typer(help="The typed config every verb reads (defaults <- --config files <- --set).", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    keys: Annotated[bool, typer.Option("--keys", help="List every key with its type, default and help instead.")] = False,
    as_json: JsonOpt = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the resolved config as YAML (what a verb would run with), or every key with its help."""
    from raddiag.discover import config_keys, resolved_yaml

    cfg = _config(config, set_)
    if keys:
        _print_rows(config_keys(), ["key", "type", "default", "help"], "config keys", as_json)
        return
    print(json.dumps(cfg.model_dump(mode="json"), indent=2) if as_json else resolved_yaml(cfg), end="" if not as_json else "\n")


# ---- raddiag knowledge build | evaluate -------------------------------------------------------------

knowledge_app = typer.Typer(help="Knowledge enhancement: label text embeddings from ICD-10-CM (build, evaluate).",
                            no_args_is_help=True)
app.add_typer(knowledge_app, name="knowledge")


def _read_label_file(path: Path) -> tuple[list[str], list[str | None]]:
    """Names (+ optional ICD-10-CM codes): JSON {name: index} or [name | {name, code}], or text lines
    ``name`` / ``name<TAB>code``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"--labels {path}: {exc.strerror}", code=2) from None
    names: list[str] = []
    codes: list[str | None] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--labels {path}: invalid JSON ({exc.msg}, line {exc.lineno})", code=2) from None
        if isinstance(data, dict):
            data = [name for name, _ in sorted(data.items(), key=lambda item: (item[1], item[0]))]
        if not isinstance(data, list):
            raise UserError(f"--labels {path}: expected a JSON object name->index or a list", code=2)
        for item in data:
            if isinstance(item, dict) and item.get("name"):
                names.append(str(item["name"]))
                codes.append(item.get("code") or None)
            elif isinstance(item, str) and item.strip():
                names.append(item.strip())
                codes.append(None)
            else:
                raise UserError(f"--labels {path}: entries must be names or {{name, code}} objects, got {item!r}", code=2)
    else:
        for line in text.splitlines():
            name, _, code = line.partition("\t")
            if name.strip():
                names.append(name.strip())
                codes.append(code.strip() or None)
    if not names:
        raise UserError(f"--labels {path}: no label names", code=2)
    return names, codes


@knowledge_app.command("build")
def knowledge_build(
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Label names (JSON name->index or [{name, code}], or lines name<TAB>code); default: the store's labels at data.label_level.")] = None,
    track: Annotated[bool, typer.Option("--track/--no-track", help="Log the build to MLflow (tracking.*).")] = True,
    show: Annotated[int, typer.Option("--show", help="Rows of the label -> code table to print (text-matched first).")] = 20,
    mapping: Annotated[Optional[Path], typer.Option("--mapping", help="A reviewed label -> ICD-10-CM CSV (name, code) that wins over data and text (= model.ke.mapping).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Embed the label vocabulary with the model.ke encoder into a versioned table in the store
    (knowledge/<version>/), cached by content hash and logged to MLflow. Codes come from a reviewed
    --mapping first, then the data (each disorder's most frequent code), then text matching at
    model.ke.match_threshold; the whole mapping is written as mapping.csv to review and feed back."""
    from raddiag.knowledge import build_knowledge
    from raddiag.storage.store import storage_options
    from raddiag.views.console import knowledge_table

    if mapping is not None:
        if not mapping.is_file():
            raise UserError(f"--mapping {mapping}: no such file", code=2)
        set_ = [*(set_ or []), f"model.ke.mapping={mapping.resolve()}"]
    cfg = _config(config, set_)
    if labels is not None:
        names, codes = _read_label_file(labels)
    else:
        manifest = cfg.store.ref().manifest()
        names, codes = manifest.label_names(cfg.data.label_level), manifest.label_codes(cfg.data.label_level)
    tracking_uri = None
    if track:
        from raddiag import tracking

        tracking.setup(cfg.tracking)
        tracking_uri = cfg.tracking.resolved_uri()
    try:
        with console.status(f"building the knowledge table of {len(names)} labels (encoder {cfg.model.ke.encoder})"):
            table = build_knowledge(names, cfg.model.ke, codes, cfg.store.url, storage_options(cfg.store.endpoint_url), tracking_uri,
                                    cfg.tracking.experiment)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        raise UserError(str(exc), code=2) from None
    knowledge_table(console, table, len(names), show)


@knowledge_app.command("evaluate")
def knowledge_evaluate(
    steps: Annotated[int, typer.Option("--steps", help="Training steps of the trained encoder (default: model.ke.text_train_steps).")] = 0,
    fraction: Annotated[float, typer.Option("--fraction", help="Share of inclusion terms held out as queries.")] = 0.1,
    output: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here.")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train the ICD text encoder without held-out inclusion terms and compare it with character
    n-gram TF-IDF baselines in the same run: synonym R@1/R@10 and hierarchy consistency (CPU, minutes)."""
    from raddiag.knowledge.evaluate import beats_baseline, compare_encoders
    from raddiag.views import console as show

    cfg = _config(config, set_)
    if steps < 0 or not 0 < fraction < 1:
        raise UserError("--steps must be >= 0 and --fraction in (0, 1)", code=2)
    ke = cfg.model.ke
    with console.status(f"training + evaluating the text encoder (d={ke.dim}, {steps or ke.text_train_steps} steps)"):
        results = compare_encoders(ke.dim, steps or ke.text_train_steps, fraction)
    show.knowledge_encoders(console, results, beats_baseline(results))
    if output:
        output.write_text(json.dumps(results, indent=2))
        console.print(f"results written to {output}")


#: Failures that are the user's to fix, by (module prefix, class name): printed as one line, exit 1.
#: Matched by name so that ``main`` imports none of these modules (mlflow alone costs ~2 s), and
#: ``raddiag --help`` stays fast.
KNOWN_FAILURES = {
    ("raddiag.storage.store", "StoreError"), ("raddiag.registry", "PromotionError"), ("raddiag.config", "ConfigError"),
    ("mlflow.exceptions", "MlflowException"), ("raddiag.tune.sweep", "SweepError"), ("raddiag.score", "ScoreError"),
    ("raddiag.serve.bundle", "ModelLoadError"),
}


def known_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is (a subclass of) one of :data:`KNOWN_FAILURES`."""
    return any((cls.__module__, cls.__name__) in KNOWN_FAILURES for cls in type(exc).__mro__)


def main() -> None:
    """Console-script entry: known failures (missing store, refused promotion) print one line."""
    from raddiag.runtime import quiet

    quiet(verbose=bool({"-v", "--verbose"} & set(sys.argv[1:])))  # before mlflow configures logging
    try:
        app()
    except UserError as exc:
        err.print(f"Error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not known_failure(exc):
            raise
        err.print(f"Error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
