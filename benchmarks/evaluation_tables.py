"""Print the report-card tables of `visionlens evaluate` output folders as Markdown (for docs/evaluation.md).

    python benchmarks/evaluation_tables.py OUT [OUT ...]
"""

from __future__ import annotations

import json

from visionlens.evaluation import markdown_table

import _cli


def main() -> None:
    ap = _cli.Parser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=_cli.folder, metavar="OUT",
                    help="`visionlens evaluate` output folders (report.json and manifest.json)")
    folders = ap.parse_args().folders
    for folder in folders:
        missing = [name for name in ("report.json", "manifest.json") if not (folder / name).is_file()]
        if missing:
            _cli.fail(f"{folder} has no {' or '.join(missing)}: not a finished `visionlens evaluate` folder")
    for folder in folders:
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
    _cli.run(main)
