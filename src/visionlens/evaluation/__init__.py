"""The evaluation harness behind ``visionlens evaluate``: models x methods x metrics on a data set,
resumable per-image results and a report card. One module per job:

- :mod:`.data`: data specs (``world[:split]``, ``samples``, a folder with labels.csv) and batches;
- :mod:`.store`: results files (``results.jsonl``, one per shard), their lock, resuming, settings;
- :mod:`.explainers`: how a method explains a batch per kind of model (:class:`ExplainedBatch`);
- :mod:`.scoring`: the metrics of one batch, one loop over the registry
  (:data:`visionlens.metrics.METRICS`, each entry with its ``compute``);
- :mod:`.report`: aggregation, confidence intervals, the report card, Markdown tables;
- :mod:`.run`: the loop, :func:`evaluate`.
"""

from __future__ import annotations

from .data import Batch, data_items, ground_truth, image_batch, image_bytes, image_key, load_batch, parse_data, scoring_batch
from .explainers import (ClassifierExplainer, EmbeddingReference, ExplainedBatch, KNNExplainer, RetrievalExplainer,
                         build_explainers, make_explainer)
from .report import aggregate, ci95, markdown_table, save_examples, write_report_card
from .run import evaluate
from .scoring import batch_metrics, metric_context
from .store import (RESULTS, SETTINGS, iter_records, parse_shard, read_folder_results, read_results, result_files,
                    results_file, run_settings, settle_settings, shard_bounds)

__all__ = ["evaluate", "read_results", "read_folder_results", "iter_records", "ci95", "markdown_table", "aggregate",
           "write_report_card", "save_examples", "EmbeddingReference", "RetrievalExplainer", "KNNExplainer",
           "ClassifierExplainer", "ExplainedBatch", "make_explainer", "build_explainers", "batch_metrics",
           "metric_context", "Batch", "data_items", "ground_truth", "image_batch", "image_bytes", "image_key",
           "load_batch", "parse_data", "scoring_batch", "RESULTS", "SETTINGS", "parse_shard", "result_files",
           "results_file", "run_settings", "settle_settings", "shard_bounds"]
