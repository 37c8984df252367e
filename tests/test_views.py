"""raddiag.views.console renders the results the core returns, on a recording console: what each
verb prints (summaries, tables, progress) and that user text stays inert (no markup, no escapes)."""

from __future__ import annotations

import io
import json
from types import SimpleNamespace as NS

import numpy as np
import pandas as pd
from rich.console import Console

from raddiag.config import load_config
from raddiag.views import console as show


def _console() -> Console:
    return Console(file=io.StringIO(), width=200, record=True, color_system=None)


def test_progress_bar_reports_what_the_core_calls_back() -> None:
    console = _console()
    with show.progress_bar(console, "synthesising cases", 3) as update:
        for done in range(1, 4):
            update(done, 3)
    text = console.export_text()
    assert "synthesising cases" in text and "3/3" in text
    hidden = _console()
    with show.progress_bar(hidden, "synthesising cases (no store yet)", 5, visible=False):
        pass  # never called back: the store existed, nothing to show
    assert "no store yet" not in hidden.export_text()


def test_run_summaries_show_headline_metrics_and_where_things_are() -> None:
    console = _console()
    metrics = {"val_auc_head": 0.81234, "val_auc_medium": 0.7, "val_auc_tail": 0.6, "val_auc_macro": 0.7, "val_ap_macro": 0.5,
               "val_auc_head_lo": 0.7}
    show.trained(console, NS(run_id="r1", metrics=metrics, checkpoint_path="/ckpt"), source="models:/m@champion")
    text = console.export_text()
    assert "run r1 (from models:/m@champion): {'val_auc_head': 0.8123, 'val_auc_medium': 0.7, 'val_auc_tail': 0.6, 'val_auc_macro': 0.7}" in text
    assert "val_ap_macro" not in text and "checkpoint: /ckpt" in text
    show.scored(console, NS(n_cases=10, model_uri="models:/m/1", seconds=2.0, cases_per_s=5.0, skipped_chunks=2), "test", "out/")
    assert "10 cases of test scored with models:/m/1 in 2.0 s (5.0 cases/s, 2 parts kept from an earlier run) → out/" in console.export_text()
    cfg = load_config(None, ["sweep.max_trial_epochs=12"])
    assert show.sweep_status(cfg, resume=True) == f"resuming sweep {cfg.sweep.name}: a budget of 12 trial-epochs"


def test_tables_render_user_text_inert() -> None:
    console = _console()
    show.ranked(console, [{"label": "Pneumonia", "probability": 0.91234}], "case — model")
    show.imported(console, NS(unused=[("[bold]x\x1b]8;;", 3, "not in our network")], mapped=10, uri="models:/m/1", num_labels=4,
                              sha256="ab" * 32, run_id="r"))
    rejected = pd.DataFrame({"source": ["a.csv"], "case_id": ["[/oops]"], "item": ["x.npy"], "reason": ["unreadable"]})
    show.rejected(console, rejected)
    text = console.export_text()
    assert "Pneumonia" in text and "0.912" in text and "[bold]x?]8;;" in text and "[/oops]" in text and "\x1b" not in text
    assert "registered models:/m/1 (4 labels, sha256 abababababab…, run r)" in text


def test_listing_as_table_or_json(capsys) -> None:
    rows = [{"name": "t1", "metrics": {"val_auc_macro": 0.81}, "aliases": ["champion", "x"]}]
    show.rows(_console(), rows, ["name", "metrics", "aliases"], "runs", as_json=True)
    assert json.loads(capsys.readouterr().out) == rows
    console = _console()
    show.rows(console, rows, ["name", "metrics", "aliases"], "runs")
    text = console.export_text()
    assert "auc_macro 0.8100" in text and "champion, x" in text


def test_sweep_trials_and_promotion() -> None:
    console = _console()
    trials = [{"trial_id": "trial-a", "status": "TERMINATED", "epochs": 2, "value": 0.7, "params": {"train.lr": 0.00123}, "run_id": "r1"},
              {"trial_id": "trial-b", "status": "TERMINATED", "epochs": 1, "value": float("nan"), "params": {}, "run_id": "r2"}]
    show.trials(console, NS(name="sw", trials=trials, best_run_id="r1"), "val_auc_macro")
    promotion = NS(evaluation=None, dry_run=True, tracking_uri="sqlite:///x.db", unchanged=False, metric="auc_macro",
                   candidate_value=0.8, candidate_source="evaluated now", champion_version="1", champion_value=0.75,
                   champion_source="logged", decision="dry-run:champion", reused=False, run_id="r1", model_name="raddiag", version=None)
    show.promotion(console, promotion)
    text = console.export_text()
    assert text.index("trial-a *") < text.index("trial-b") and "train.lr=0.00123" in text  # best first, marked
    assert ("dry run, nothing written to MLflow (sqlite:///x.db): would register run r1 as a new version of raddiag; "
            "test auc_macro 0.8000 (evaluated now) vs champion v1 0.7500 (logged) → would set @champion") in text


def test_knowledge_views() -> None:
    console = _console()
    mappings = [NS(name="Zebra", source="unmatched", code=None, score=0.2, description="Zebra", matched_text="stripes",
                   alternatives="L90.5 (0.18) Scar conditions"),
                NS(name="PE", source="matched", code="I26", score=0.95, description="Pulmonary embolism", matched_text="pe",
                   alternatives="")]
    table = NS(mappings=mappings, version="k1", embeddings=np.zeros((2, 8)), meta={"mapping_counts": {"matched": 1}, "cached": True},
               uri="s/knowledge/k1")
    show.knowledge_table(console, table, 2, show=1)
    show.knowledge_encoders(console, {"tfidf": {"synonym_r1": 0.5, "synonym_r10": 0.9, "hierarchy": 0.7}}, {})
    text = console.export_text()
    assert "Zebra" in text and "I26" not in text  # the unmatched label first, one row shown
    assert "L90.5 (0.18)" in text  # with the alternatives a reviewer picks from
    assert "knowledge table k1 (cached): s/knowledge/k1" in text and "(baseline)" in text
