"""``raddiag demo``: the whole chain on embedded defaults, end to end, in a few minutes on a laptop.

synth -> Zarr store + manifest -> (Ray Data inside each trial) -> Tune sweep (Optuna TPE + ASHA,
TorchTrainer DDP per trial, child MLflow runs) -> best model registered, ``@champion`` decided on
the test split -> test table, where to look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from raddiag.config import RadDiagConfig


@dataclass
class DemoResult:
    sweep: Any
    promotion: Any
    seconds: float


def run_demo(cfg: RadDiagConfig, verbose: bool = False, console: Console | None = None) -> DemoResult:
    from raddiag.cli import _print_manifest, _print_promotion, _print_trials, run_sweep_with_progress, synth_store
    from raddiag.registry import promote

    console = console or Console()
    started = time.perf_counter()
    if cfg.sweep.name == "raddiag-sweep":
        cfg = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"name": time.strftime("demo-%Y%m%d-%H%M%S")})})
    console.rule("[bold]1/4 synthesise a long-tailed multi-scan dataset into the Zarr store")
    manifest = synth_store(cfg)
    _print_manifest(manifest, cfg.store.url)
    console.rule(f"[bold]2/4 sweep {cfg.sweep.name}: Ray Tune + Optuna + ASHA, TorchTrainer x{cfg.train.num_workers} per trial")
    result = run_sweep_with_progress(cfg, verbose)
    _print_trials(result, cfg)
    console.rule("[bold]3/4 register the best trial, decide @champion on the test split")
    promotion = promote(cfg, result.name)
    _print_promotion(promotion)
    console.rule("[bold]4/4 where things are")
    uri = cfg.tracking.resolved_uri()
    seconds = time.perf_counter() - started
    console.print(
        f"store:        {Path(cfg.store.url).resolve() if '://' not in cfg.store.url else cfg.store.url}\n"
        f"ray results:  {Path(cfg.train.storage_path).resolve()}/{result.name}*\n"
        f"mlflow:       {uri} (experiment {cfg.tracking.experiment!r}, parent run {result.parent_run_id})\n"
        f"model:        models:/{promotion.model_name}/{promotion.version} (@{promotion.decision})\n"
        f"see the runs: mlflow ui --backend-store-uri {uri}\n"
        f"done in {seconds:.0f} s"
    )
    return DemoResult(sweep=result, promotion=promotion, seconds=seconds)
