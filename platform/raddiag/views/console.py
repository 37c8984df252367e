"""Terminal views: rich tables, progress bars and result summaries of every ``raddiag`` verb.

Each function takes the console to print on (the CLI's, the demo's, a test's recording console) and
a result the core computed; none computes anything. User-supplied text (case ids, paths, reasons,
label names from a file) goes through :func:`plain`, so it can never inject markup or terminal
escapes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from raddiag.config import RadDiagConfig
    from raddiag.metrics import MetricReport

#: A progress callback: (done, total) -> None; what the core's long loops accept.
ProgressFn = Callable[[int, "int | None"], None]


def new_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr), for callers that were given none."""
    return Console(stderr=stderr)


def plain(value: Any, limit: int = 300) -> Text:
    """User-supplied text (case ids, paths, reasons) as an inert rich ``Text``: no markup is
    interpreted (``[/oops]``, ``[link=...]``), control characters (ANSI/OSC escapes) are shown as
    ``?``, and long values are cut."""
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "?", str(value))
    return Text(text if len(text) <= limit else text[: limit - 1] + "…")


@contextmanager
def progress_bar(console: Console, description: str, total: int | None = None, visible: bool = True) -> Iterator[ProgressFn]:
    """A progress bar (description, bar, done/total, elapsed) while the block runs; yields the
    callback to hand to the core: ``update(done, total)`` (a hidden bar shows at its first update)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                  transient=False) as progress:
        task = progress.add_task(description, total=total, visible=visible)

        def update(done: int, total: int | None = None) -> None:
            progress.update(task, completed=done, total=total, visible=True)

        yield update


# ---- synth / ingest / verify ----------------------------------------------------------------------


def manifest(console: Console, manifest: Any, url: str) -> None:
    """One line: the store, its version, case/scan counts, splits and disorder labels by group."""
    groups = manifest.labels[manifest.labels["level"] == "disorder"]["group"].value_counts().to_dict()
    console.print(
        f"store [bold]{escape(plain(url).plain)}[/] version [bold]{manifest.version}[/]: {manifest.info['n_cases']} cases, "
        f"{manifest.info['n_scans']} scans, splits {manifest.info['splits']}, disorder labels by group {groups}"
    )


def rejected(console: Console, rejected: Any, limit: int = 50) -> None:
    """The quarantined inputs of an ingest (source, case, item, reason), the first ``limit`` of them."""
    if rejected.empty:
        return
    table = Table(title=f"rejected ({len(rejected)}; stored as versions/<version>/rejected.parquet)")
    for column in ("source", "case_id", "item", "reason"):
        table.add_column(column, overflow="fold")
    for row in rejected.head(limit).itertuples(index=False):
        table.add_row(plain(row.source), plain(row.case_id), plain(row.item), plain(row.reason))
    console.print(table)
    if len(rejected) > limit:
        console.print(f"... and {len(rejected) - limit} more")


def ingested(console: Console, result: Any, url: str) -> None:
    """The summary of a finished ingest and the manifest it published."""
    console.print(
        f"ingested {result.n_cases} cases, {result.n_scans} scans in {result.seconds:.1f} s "
        f"({result.scans_per_second:.1f} scans/s); rejected {len(result.rejected)}"
    )
    manifest(console, result.manifest, url)


def verification(console: Console, report: Any) -> None:
    """The notes and problems of ``raddiag verify``, one per line."""
    for note in report.notes:
        console.print(f"note: {note}", soft_wrap=True)
    for problem in report.problems:
        console.print(f"[red]problem[/]: {problem}", highlight=False, soft_wrap=True)


# ---- train / sweep / ablate ----------------------------------------------------------------------


def headline(metrics: dict[str, Any], prefix: str = "val_") -> dict[str, float]:
    """The headline metrics (:func:`raddiag.metrics.headline_keys`) of a run's ``metrics``, rounded."""
    from raddiag.metrics import headline_keys

    return {f"{prefix}{key}": round(metrics[f"{prefix}{key}"], 4) for key in headline_keys()
            if isinstance(metrics.get(f"{prefix}{key}"), float)}


def trained(console: Console, result: Any, source: str = "") -> None:
    """A finished training run: its MLflow run, headline validation metrics and checkpoint."""
    origin = f" (from {source})" if source else ""
    console.print(f"run {result.run_id}{origin}: {headline(result.metrics)}\ncheckpoint: {result.checkpoint_path}")


def already_complete(console: Console, name: str, result: Any) -> None:
    """A training run asked for again after it finished: where it is, and how to train on."""
    from raddiag.serve.bundle import run_model_uri

    console.print(
        f"train.name {name!r} is already complete ({result.already_complete}), nothing trained: "
        f"MLflow run {result.run_id}, model {run_model_uri(result.run_id)}, checkpoint {result.checkpoint_path} "
        "(raise train.epochs to train on, or choose another train.name)",
        soft_wrap=True, highlight=False, markup=False,
    )


def sweep_status(cfg: RadDiagConfig, resume: bool = False) -> str:
    """The status line shown while a sweep runs: its name and budget."""
    action = "resuming" if resume else "running"
    budget = (f"a budget of {cfg.sweep.max_trial_epochs} trial-epochs" if cfg.sweep.max_trial_epochs
              else f"{cfg.sweep.num_samples} trials x {cfg.train.epochs} epochs")
    return f"{action} sweep {cfg.sweep.name}: {budget}"


def trials(console: Console, result: Any, metric: str) -> None:
    """The sweep's trials, best first (``*`` marks the best run), with their sampled parameters."""
    table = Table(title=f"sweep {result.name} — {metric} (best over epochs)")
    for column in ("trial", "status", "epochs", metric, "sampled parameters"):
        table.add_column(column)
    for trial in sorted(result.trials, key=lambda t: -(t["value"] if t["value"] == t["value"] else -1)):
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(trial["params"].items()))
        mark = " *" if trial["run_id"] == result.best_run_id else ""
        table.add_row(trial["trial_id"] + mark, trial["status"], str(trial["epochs"]), f"{trial['value']:.4f}", params)
    console.print(table)


def plan(plan: dict[str, Any], verb: str) -> None:
    """``--dry-run``: the plan as YAML on stdout, what was not done on stderr."""
    import sys

    import yaml

    print(yaml.safe_dump(plan, sort_keys=False, allow_unicode=True), end="")
    print(f"dry run: nothing started (drop --dry-run to {verb})", file=sys.stderr)


def ablation(console: Console, result: Any) -> None:
    """The paper-shaped ablation table (markdown) and where its runs are."""
    console.print(result.markdown, highlight=False, soft_wrap=True)
    console.print(f"train seconds per run, by arm: {result.seconds_per_arm}")
    console.print(f"MLflow parent run {result.parent_run_id} (artifacts ablation.json, ablation.md)")


# ---- evaluation / promotion ----------------------------------------------------------------------


def metric_table(report: MetricReport, title: str = "RadDiag evaluation", variant: str = "paper") -> Table:
    """A table shaped like the paper's: rows head/medium/tail/all, one column per metric of the
    table :data:`raddiag.metrics.METRIC_SPECS` shown in ``variant``, in percent (2 decimals), each
    with its 95% CI ``lo–hi`` on two more lines when bootstrapped; ``Classes`` is evaluated/total
    classes of the group.

    ``variant``: ``paper`` (nearest-point R@x, in-split F1 threshold), ``interp`` (interpolated
    R@x) or ``honest`` (F1/MCC/R@x at validation thresholds; needs validation scores).
    """
    from raddiag.metrics import GROUPS, TABLE_VARIANTS, specs_for

    if variant not in TABLE_VARIANTS:
        raise ValueError(f"table variant must be {', '.join(TABLE_VARIANTS[:-1])} or {TABLE_VARIANTS[-1]}; got {variant!r}")
    specs = specs_for(variant)
    if any(spec.validation for spec in specs) and not any(spec.validation and spec.name in report.metrics for spec in specs):
        raise ValueError(f"the {variant} table needs validation scores (evaluate_scores(val_true=..., val_score=...))")
    table = Table(
        title=title,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,  # fits an 80-column terminal with CIs
    )
    table.add_column("Group", no_wrap=True)
    table.add_column("Classes", justify="right", no_wrap=True)
    for spec in specs:
        table.add_column(spec.label + ("\n(val thr)" if spec.validation else ""), justify="right", overflow="fold", min_width=6)
    for group in GROUPS + ("all",):
        count = report.counts[group]
        cells = [group, f"{count['n_evaluated']}/{count['n_classes']}"]
        for spec in specs:
            value = report.summary[group].get(spec.name, math.nan)
            text = "-" if not math.isfinite(value) else spec.format(value)
            if spec.name in report.ci.get(group, {}) and math.isfinite(value):
                lo, hi = report.ci[group][spec.name]
                if math.isfinite(lo) and math.isfinite(hi):
                    text += f"\n{spec.format(lo)}–\n{spec.format(hi)}"
            cells.append(text)
        table.add_row(*cells)
    skipped = sum(report.counts[g]["n_skipped"] for g in GROUPS)
    table.caption = (
        f"{report.n_cases} cases; {skipped} class(es) skipped (no positive or no negative case in the split); "
        + (report.grouping or f"head >= {report.head_min}, medium {report.medium_min}-{report.head_min - 1}, tail < {report.medium_min} training cases")
        + (f"; 95% CI: {report.n_bootstrap} bootstrap resamples of cases, median-centred pivotal intervals" if report.ci else "")
    )
    return table


def has_honest(report: MetricReport) -> bool:
    """Whether ``report`` holds the honest (validation-threshold) variant."""
    return any(spec.validation and spec.name in report.metrics for spec in _specs())


def _specs() -> tuple[Any, ...]:
    from raddiag.metrics import METRIC_SPECS

    return METRIC_SPECS


def evaluation(console: Console, report: MetricReport, title: str,
               honest_title: str = "honest variant: F1 / MCC / R@FPR at thresholds chosen on validation") -> None:
    """The paper-shaped table of ``report``, and its honest variant when validation scores were given."""
    console.print(metric_table(report, title))
    if has_honest(report):
        console.print(metric_table(report, honest_title, variant="honest"))


def print_report(report: MetricReport, title: str = "RadDiag evaluation", json_path: str | Path | None = None,
                 console: Console | None = None) -> None:
    """Print the paper-shaped table (and the honest one when available) and write
    :meth:`~raddiag.metrics.MetricReport.to_json` to ``json_path``."""
    console = console or new_console()
    evaluation(console, report, title, f"{title} - thresholds chosen on validation")
    if json_path is not None:
        path = Path(json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_json(), indent=2))
        console.print(f"metrics written to {path}")


def promotion(console: Console, result: Any) -> None:
    """``raddiag promote``: the candidate's test table, then what was (or would be) registered and
    which alias it got, against the champion."""
    if result.evaluation is not None:
        console.print(metric_table(result.evaluation.report, f"test split — {result.evaluation.n_cases} cases"))
    nothing = f"nothing written to MLflow ({result.tracking_uri})" if result.dry_run else "nothing changed"
    if result.unchanged:
        console.print(
            f"run {result.run_id} is {result.model_name} v{result.version}, already @champion "
            f"(test {result.metric} {result.candidate_value:.4f}): {nothing}", soft_wrap=True, highlight=False, markup=False,
        )
        return
    candidate = f"test {result.metric} {result.candidate_value:.4f} ({result.candidate_source})"
    against = (
        f"champion v{result.champion_version} {result.champion_value:.4f} ({result.champion_source})" if result.champion_version else "no champion yet"
    )
    decision = result.decision.removeprefix("dry-run:")
    if result.dry_run:
        action = (
            f"would reuse {result.model_name} v{result.version} (run {result.run_id}, registered before)" if result.reused
            else f"would register run {result.run_id} as a new version of {result.model_name}"
        )
        console.print(f"dry run, {nothing}: {action}; {candidate} vs {against} → would set @{decision}", soft_wrap=True, highlight=False, markup=False)
        return
    how = "registered before, reused" if result.reused else "registered"
    console.print(f"{result.model_name} v{result.version} ({how}; run {result.run_id}): {candidate} vs {against} → @{decision}",
                  soft_wrap=True, highlight=False, markup=False)


# ---- predict / score / zeroshot / import-checkpoint -----------------------------------------------


def scored(console: Console, result: Any, split: str, output: str) -> None:
    """``raddiag score``: cases scored, throughput, parts kept from an earlier run, where they went."""
    resumed = f", {result.skipped_chunks} parts kept from an earlier run" if result.skipped_chunks else ""
    console.print(
        f"{result.n_cases} cases of {split} scored with {result.model_uri} in {result.seconds:.1f} s "
        f"({result.cases_per_s:.1f} cases/s{resumed}) → {output}"
    )


def ranked(console: Console, rows: list[dict[str, Any]], title: str) -> None:
    """Labels with their probabilities, as ranked by the model."""
    table = Table(title=title)
    table.add_column("label")
    table.add_column("probability", justify="right")
    for row in rows:
        table.add_row(row["label"], f"{row['probability']:.3f}")
    console.print(table)


def imported(console: Console, result: Any) -> None:
    """``raddiag import-checkpoint``: the official tensors left unused (and why), then what was registered."""
    table = Table(title=f"official tensors not used ({sum(row[1] for row in result.unused)}); {result.mapped} mapped")
    for column in ("official key", "count", "why"):
        table.add_column(column)
    for pattern, count, why in result.unused:
        table.add_row(plain(pattern), str(count), why)
    console.print(table)
    console.print(f"registered {result.uri} ({result.num_labels} labels, sha256 {result.sha256[:12]}…, run {result.run_id})")


# ---- listings: runs / sweeps / models / config keys ----------------------------------------------


def rows(console: Console, rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool = False) -> None:
    """Plain rows (dicts) as a table (``columns`` in order; dict cells as ``name value`` pairs), or as JSON."""
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column.replace("_", " "), overflow="fold")  # long keys, URIs and ids wrap, never cut
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column, "")
            if isinstance(value, dict):
                value = "  ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(map(str, value))
            cells.append(plain(str(value)))
        table.add_row(*cells)
    console.print(table)


def next_steps_after_sweeps(console: Console, sweep: str) -> None:
    """What to do with the newest sweep."""
    console.print(f"next: raddiag report {plain(sweep)}  ·  raddiag promote --sweep {plain(sweep)}", highlight=False)


# ---- knowledge ------------------------------------------------------------------------------------

def knowledge_table(console: Console, table: Any, n_labels: int, show: int) -> None:
    """``raddiag knowledge build``: the first ``show`` label -> ICD-10-CM rows in review order (text-matched,
    weakest first, then curated ...), then where the table and its mapping are."""
    from raddiag.knowledge.labels import review_key

    mappings = sorted(table.mappings, key=review_key)[: max(show, 0)]
    view = Table(title=f"knowledge {table.version}: {n_labels} labels, dim {table.embeddings.shape[1]}, "
                       f"{table.meta['mapping_counts']}")
    for column in ("label", "source", "code", "score", "ICD-10-CM description", "text match or index path", "alternatives"):
        view.add_column(column)
    for m in mappings:
        view.add_row(m.name, m.source, m.code or "-", f"{m.score:.2f}", m.description if m.code else "-",
                     m.matched_text or "-", m.alternatives or "-")
    if mappings:
        console.print(view)
    cached = " (cached)" if table.meta.get("cached") else ""
    console.print(f"knowledge table {table.version}{cached}: {table.uri} (review {table.uri}/mapping.csv; correct it and pass it back with --mapping)")


def knowledge_encoders(console: Console, results: dict[str, dict[str, float]], wins: dict[str, bool]) -> None:
    """``raddiag knowledge evaluate``: synonym R@1/R@10 and hierarchy consistency per encoder."""
    view = Table(title="knowledge encoders: held-out ICD-10-CM inclusion terms -> descriptions")
    view.add_column("encoder", no_wrap=True)
    for column in ("synonym R@1", "synonym R@10", "hierarchy", "beats baseline", "train s"):
        view.add_column(column, justify="right")
    for name, m in results.items():
        view.add_row(name, f"{m['synonym_r1']:.3f}", f"{m['synonym_r10']:.3f}", f"{m['hierarchy']:.3f}",
                     {True: "yes", False: "no"}.get(wins.get(name), "(baseline)"),
                     f"{m['train_seconds']:.0f}" if "train_seconds" in m else "-")
    console.print(view)


# ---- demo -----------------------------------------------------------------------------------------


def demo_locations(console: Console, cfg: RadDiagConfig, sweep: Any, promotion: Any, seconds: float) -> None:
    """The demo's last step: where the store, Ray results, MLflow runs and the model are."""
    uri = cfg.tracking.resolved_uri()
    console.print(
        f"store:        {Path(cfg.store.url).resolve() if '://' not in cfg.store.url else cfg.store.url}\n"
        f"ray results:  {Path(cfg.train.storage_path).resolve()}/{sweep.name}*\n"
        f"mlflow:       {uri} (experiment {cfg.tracking.experiment!r}, parent run {sweep.parent_run_id})\n"
        f"model:        models:/{promotion.model_name}/{promotion.version} (@{promotion.decision})\n"
        f"see the runs: mlflow ui --backend-store-uri {uri}\n"
        f"done in {seconds:.0f} s"
    )
