"""Print the report-card tables of `visionlens evaluate` output folders as Markdown (for docs/evaluation.md).

    python benchmarks/evaluation_tables.py OUT [OUT ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from visionlens.evaluation import markdown_table


def main(folders: list[str]) -> None:
    for folder in folders:
        folder = Path(folder)
        report = json.loads((folder / "report.json").read_text())
        manifest = json.loads((folder / "manifest.json").read_text())
        for model in dict.fromkeys(r["model"] for r in report["rows"]):
            n = max(r["n"] for r in report["rows"] if r["model"] == model)
            print(f"\n**{model}**, {manifest['command']['data']}, n = {n} images, device {manifest['device']}\n")
            print(markdown_table(report, model))
        for s in report["skipped"]:
            print(f"\nskipped `{s['method']}` on `{s['model']}`: {s['reason']}")
        print(f"\nseconds: {json.dumps(manifest['seconds_per_model_method_this_run'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
