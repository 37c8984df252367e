"""``raddiag demo``: the whole chain on embedded defaults, end to end, in a few minutes on a laptop.

synth -> Zarr store + manifest -> (Ray Data inside each trial) -> Tune sweep (Optuna TPE + ASHA,
TorchTrainer DDP per trial, child MLflow runs) -> best model registered, ``@champion`` decided on
the test split -> test table, where to look.

The steps are the core's (:func:`~raddiag.storage.synth.synth_store`,
:func:`~raddiag.tune.sweep.run_sweep`, :func:`~raddiag.registry.promote`) and what is shown is
:mod:`raddiag.views.console`'s, the same as the ``synth``, ``sweep`` and ``promote`` verbs show.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from raddiag.config import RadDiagConfig

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class DemoResult:
    sweep: Any
    promotion: Any
    seconds: float


def run_demo(cfg: RadDiagConfig, verbose: bool = False, console: Console | None = None) -> DemoResult:
    from raddiag.registry import promote
    from raddiag.storage.synth import synth_store
    from raddiag.tune.sweep import run_sweep
    from raddiag.views import console as show

    console = console or show.new_console()
    started = time.perf_counter()
    if cfg.sweep.name == "raddiag-sweep":
        cfg = cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"name": time.strftime("demo-%Y%m%d-%H%M%S")})})
    console.rule("[bold]1/4 synthesise a long-tailed multi-scan dataset into the Zarr store")
    with show.progress_bar(console, "synthesising cases", cfg.synth.n_cases) as update:
        manifest = synth_store(cfg, update)
    show.manifest(console, manifest, cfg.store.url)
    console.rule(f"[bold]2/4 sweep {cfg.sweep.name}: Ray Tune + Optuna + ASHA, TorchTrainer x{cfg.train.num_workers} per trial")
    with console.status(show.sweep_status(cfg)):
        result = run_sweep(cfg, verbose)
    show.trials(console, result, cfg.sweep.metric)
    console.rule("[bold]3/4 register the best trial, decide @champion on the test split")
    promotion = promote(cfg, result.name)
    show.promotion(console, promotion)
    console.rule("[bold]4/4 where things are")
    seconds = time.perf_counter() - started
    show.demo_locations(console, cfg, result, promotion, seconds)
    return DemoResult(sweep=result, promotion=promotion, seconds=seconds)
