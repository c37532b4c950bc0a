"""Gallery retrieval with explanations: embed a gallery once (streamed in batches, cached), rank it
for each query, and explain each query/match pair with SFAM (and the baselines).

The cache is one ``.pt`` file per model in ``cache_dir`` (default ``$VISIONLENS_HOME/embeddings``),
holding for each image its absolute path, modification time and size and its embedding; an image
whose file changed is embedded again. It is written atomically. Only ``batch_size`` images are in
memory at a time, so galleries larger than memory work (the embeddings, ``N × D`` floats, are kept).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .assets import cache_dir as _home
from .core.progress import Progress
from .core.similarity import check_metric, rank
from .data.images import load_image, written_by_visionlens
from .errors import ImageLoadError, InputError, display
from .models.zoo import ZooModel
from .viz.colormaps import check_cmap
from .viz.labels import signed_method
from .viz.overlay import overlay
from .io import save_atomic, versions, write_json
from .outputs import check_out_dir, earlier_outputs, file_names, safe_name, staged_out_dir, unique_stems
from .pipeline import naming_flat_maps

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_gallery(gallery: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files of a folder (recursive, sorted) or a list of files; an empty gallery is an error."""
    if isinstance(gallery, (str, Path)):
        root = Path(gallery)
        if not root.is_dir():
            raise InputError(f"gallery folder {root} does not exist or is not a folder")
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        ours = written_by_visionlens(paths)  # an earlier run's outputs inside the gallery are not gallery images
        paths = [p for p in paths if os.path.realpath(p) not in ours]
        if not paths:
            raise InputError(f"gallery folder {root} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return paths
    paths = [Path(p) for p in gallery]
    if not paths:
        raise InputError("the gallery is empty; give a folder or a list of image files")
    return paths


def model_key(model: ZooModel) -> str:
    """A cache key: the model name, its preprocessing and a digest of its parameters and buffers."""
    h = hashlib.sha256(repr((model.name, model.preprocess, type(model.module).__name__, repr(model.module))).encode())
    for name, t in model.module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return f"{model.name}-{h.hexdigest()[:16]}"


def _stat(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _check_cache_folder(folder: Path) -> None:
    """One :class:`InputError` line, before any embedding, for a cache folder that cannot be one."""
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise InputError(f"the embedding cache folder {display(folder)} cannot be made: {display(part)} is a "
                                 "file; give --cache-dir a folder (or --no-cache)")
            if not os.access(part, os.W_OK):
                raise InputError(f"the embedding cache folder {display(part)} is not writable; give --cache-dir a "
                                 "folder you can write (or --no-cache)")
            return


class EmbeddingCache:
    """``{(abs path, mtime_ns, size): embedding}`` in one file per model key, written atomically."""

    def __init__(self, folder: str | Path | None, key: str):
        self.path = None if folder is None else Path(folder) / f"{key}.pt"
        if folder is not None:
            _check_cache_folder(Path(folder))
        self.entries: dict[tuple[str, int, int], torch.Tensor] = {}
        if self.path is not None and self.path.is_file():
            try:
                data = torch.load(self.path, map_location="cpu", weights_only=True)
                self.entries = {(p, int(m), int(s)): e for p, m, s, e in
                                zip(data["paths"], data["mtimes"].tolist(), data["sizes"].tolist(), data["embeddings"])}
            except Exception as err:  # a corrupt cache is rebuilt, never trusted
                print(f"warning: ignoring unreadable embedding cache {self.path} ({type(err).__name__})", file=sys.stderr)
                self.entries = {}

    def get(self, key):
        return self.entries.get(key)

    def put(self, key, embedding: torch.Tensor) -> None:
        self.entries[key] = embedding

    def save(self) -> None:
        if self.path is None or not self.entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.entries)
        data = {
            "paths": [k[0] for k in keys],
            "mtimes": torch.tensor([k[1] for k in keys], dtype=torch.long),
            "sizes": torch.tensor([k[2] for k in keys], dtype=torch.long),
            "embeddings": torch.stack([self.entries[k] for k in keys]),
        }
        save_atomic(lambda tmp: torch.save(data, tmp), self.path)


class Gallery:
    """Embeddings of a gallery: ``paths`` (the readable images, in order), ``embeddings`` ``(N, D)``,
    ``failures`` (unreadable images: ``{"file", "error"}``), ``cached`` (how many came from the cache)."""

    def __init__(self, paths: list[Path], embeddings: torch.Tensor, failures: list[dict], cached: int):
        self.paths, self.embeddings, self.failures, self.cached = paths, embeddings, failures, cached

    def __len__(self) -> int:
        return len(self.paths)


def embed_gallery(
    gallery: str | Path | Sequence[str | Path],
    model: ZooModel,
    embed,
    batch_size: int = 32,
    cache: str | Path | None = "default",
    progress: bool = True,
) -> Gallery:
    """Embed every gallery image with ``embed`` (``(B, C, H, W) -> (B, D)``), streaming
    ``batch_size`` images at a time; unreadable images are skipped and reported."""
    paths = list_gallery(gallery)
    folder = (_home() / "embeddings") if cache == "default" else cache
    store = EmbeddingCache(folder, model_key(model))
    kept, rows, failures, cached = [], {}, [], 0
    todo: list[tuple[int, Path, tuple]] = []
    for path in paths:
        try:
            key = _stat(path)
        except OSError as err:
            failures.append({"file": str(path), "error": f"{path}: cannot be read ({err.strerror or err})"})
            continue
        hit = store.get(key)
        if hit is not None:
            rows[len(kept)] = hit
            cached += 1
        else:
            todo.append((len(kept), path, key))
        kept.append(path)
    bar = Progress(len(todo), label=f"embedding gallery ({model.name})", enabled=progress and len(todo) > 3)
    bad: set[int] = set()
    for start in range(0, len(todo), batch_size):
        chunk, tensors = [], []
        for pos, path, key in todo[start:start + batch_size]:
            try:
                tensors.append(model.preprocess(load_image(path)))
                chunk.append((pos, key))
            except ImageLoadError as err:
                failures.append({"file": str(path), "error": str(err)})
                print(f"error: {err}", file=sys.stderr)
                bad.add(pos)
            bar.update()
        if chunk:
            emb = embed(torch.stack(tensors)).detach().float().cpu()
            for (pos, key), e in zip(chunk, emb):
                rows[pos] = e.clone()
                store.put(key, rows[pos])
    store.save()
    good = [i for i in range(len(kept)) if i not in bad]
    if not good:
        raise InputError(f"no readable image in the gallery ({len(failures)} failed); check the files")
    return Gallery([kept[i] for i in good], torch.stack([rows[i] for i in good]), failures, cached)


# ----- outputs


def _save_png(img: Image.Image, dest: Path) -> None:
    save_atomic(lambda t: img.save(t, format="PNG"), dest)


def _save_npz(arrays: dict, dest: Path) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    save_atomic(write, dest)


def similarity_methods(model: ZooModel, methods: Sequence[str], layer, metric: str, **sfam_options):
    """The named similarity explainers (SFAM, the baselines on the similarity, NAFlow's similarity flow) for ``model``."""
    from .methods import SIMILARITY_METHODS
    from .methods.naflow import SimilarityNAFlow
    from .methods.registry import unknown_method
    from .methods.sfam import SFAM

    known = SIMILARITY_METHODS
    out = {}
    for m in methods:
        if m not in known:
            raise InputError(unknown_method(m, known, what="similarity method"))
        cls = known[m]
        out[m] = cls(model.module, layer, metric, **sfam_options) if cls in (SFAM, SimilarityNAFlow) else cls(model.module, layer, metric)
    return out


def pair_files(prefix: str, methods: Sequence[str]) -> dict:
    """The names of one pair's outputs: both views, an overlay per method and image, the npz."""
    return {"query_view": f"{prefix}.query.png", "match_view": f"{prefix}.match.png",
            "query_overlays": {m: f"{prefix}.query.{safe_name(m)}.png" for m in methods},
            "match_overlays": {m: f"{prefix}.match.{safe_name(m)}.png" for m in methods}, "maps": f"{prefix}.npz"}


def _pair_outputs(out: Path, prefix: str, views: tuple[Image.Image, Image.Image], results: dict, i: int,
                  cmap: str | None = None) -> dict:
    """Write both views, one overlay per method and image, and the npz of one pair."""
    qv, rv = views
    files = pair_files(prefix, list(results))
    _save_png(qv, out / files["query_view"])
    _save_png(rv, out / files["match_view"])
    arrays = {}
    for m, pair in results.items():
        qmap, rmap = pair.query.maps[i].cpu().numpy(), pair.reference.maps[i].cpu().numpy()
        signed = signed_method(m)  # drawn from the raw map, zero at the diverging colormap's centre
        qshow, rshow = (pair.query.raw[i].cpu().numpy(), pair.reference.raw[i].cpu().numpy()) if signed else (qmap, rmap)
        _save_png(overlay(qv, qshow, cmap=cmap, signed=signed), out / files["query_overlays"][m])
        _save_png(overlay(rv, rshow, cmap=cmap, signed=signed), out / files["match_overlays"][m])
        arrays |= {f"{m}_query_map": qmap, f"{m}_match_map": rmap,
                   f"{m}_query_raw": pair.query.raw[i].cpu().numpy(), f"{m}_match_raw": pair.reference.raw[i].cpu().numpy()}
        if pair.query.weights is not None:
            arrays |= {f"{m}_weights": pair.query.weights[i].cpu().numpy(), f"{m}_cis": pair.query.cis[i].cpu().numpy()}
    _save_npz(arrays, out / files["maps"])
    return files


def explain_pairs(methods: dict, xa: torch.Tensor, xb: torch.Tensor, batch_size: int,
                  names: tuple[Sequence[str], Sequence[str]] | None = None) -> dict:
    """Pair explanations for all rows, ``batch_size`` pairs at a time; returns per method a list of
    PairExplanation chunks. ``names``: the files of ``xa`` and ``xb`` per row, named by a flat-map warning."""
    results = {m: [] for m in methods}
    for s in range(0, xa.shape[0], batch_size):
        with naming_flat_maps(_pair_names(names, s, s + batch_size) if names else []):
            for m, method in methods.items():
                results[m].append(method.pair(xa[s:s + batch_size], xb[s:s + batch_size]))
    return results


def _pair_names(names: tuple[Sequence[str], Sequence[str]], start: int, stop: int) -> list[str]:
    """The images of a pair batch (each ``a`` against its ``b``, then each ``b`` against its ``a``), by file."""
    a, b = (list(n[start:stop]) for n in names)
    return [f"{x} (against {y})" for x, y in zip(a, b)] + [f"{y} (against {x})" for x, y in zip(a, b)]


def _refuse_inputs_in(out: Path, inputs: Sequence, names: Sequence[str]) -> None:
    """An :class:`InputError` when an output name would replace one of the inputs."""
    targets = {os.path.abspath(out / n) for n in names}
    for p in inputs:
        if os.path.abspath(p) in targets:
            raise InputError(f"{display(p)} is an input and would be replaced by an output; choose another --out")


def explain_pair_files(
    a: str | Path, b: str | Path, model: ZooModel, out_dir: str | Path = "visionlens-pair", metric: str = "cosine",
    layer=None, methods: Sequence[str] = ("sfam",), cmap: str | None = None, **sfam_options,
) -> dict:
    """Explain the similarity of two image files both ways; write views, overlays, npz,
    ``summary.json`` and ``index.html`` to ``out_dir``; return the summary."""
    from .viz.pairs import write_pair_report

    check_metric(metric)
    cmap = check_cmap(cmap) if cmap is not None else None
    explainers = similarity_methods(model, methods, layer, metric, **sfam_options)
    views = [model.preprocess.view(load_image(p)) for p in (a, b)]  # ImageLoadError names the file
    out = Path(out_dir)
    planned = file_names(pair_files("pair", list(methods)))
    check_out_dir(out, planned + ["summary.json", "index.html"])
    _refuse_inputs_in(out, [a, b], planned)
    xa, xb = (model.preprocess.normalize(v)[None] for v in views)
    with naming_flat_maps(_pair_names(([display(a)], [display(b)]), 0, 1)):
        results = {m: ex.pair(xa, xb) for m, ex in explainers.items()}
    with staged_out_dir(out, earlier=earlier_outputs(out, [a, b])) as stage:  # an interrupted run leaves ``out`` as it was
        files = _pair_outputs(stage, "pair", tuple(views), results, 0, cmap)
        first = next(iter(results.values()))
        summary = {
            "model": model.name, "model_source": model.describe(), "metric": metric, "methods": list(methods),
            "layer": {m: r.query.layer for m, r in results.items()},
            "sfam_options": {k: v for k, v in sfam_options.items()},
            "query": str(a), "reference": str(b), "similarity": float(first.scores[0]),
            "files": files, "device": str(model.device), "versions": versions(),
        }
        write_json(summary, stage / "summary.json")
        write_pair_report(stage / "index.html", f"visionlens pair: {model.name}, {metric}", [{
            "query": str(a), "methods": list(methods),
            "rows": [{"file": str(b), "rank": None, "score": summary["similarity"], **files}],
            "failures": [],
        }], cmap=cmap)
    return summary


def _own_gallery_index(queries: Sequence[Path], gallery: Sequence[Path]) -> list[int | None]:
    """For each query, the index of the same file in the gallery (``None`` when it is not there)."""
    where = {os.path.realpath(p): i for i, p in enumerate(gallery)}
    return [where.get(os.path.realpath(q)) for q in queries]


def retrieve_files(
    queries: Sequence[str | Path], gallery: str | Path | Sequence[str | Path], model: ZooModel, top: int = 5,
    out_dir: str | Path = "visionlens-retrieve", metric: str = "cosine", layer=None, methods: Sequence[str] = ("sfam",),
    batch_size: int = 16, cache: str | Path | None = "default", progress: bool = True, exclude_query: bool = True,
    cmap: str | None = None, **sfam_options,
) -> dict:
    """Rank ``gallery`` for each query, explain the top ``top`` matches (query and match maps) and
    write them with ``summary.json`` and ``index.html``. A query that is itself in the gallery is
    left out of its own ranking unless ``exclude_query=False`` (each query's record says whether it
    was). Unreadable gallery images are skipped and listed in ``summary["failures"]``; an
    unreadable query stops with an :class:`ImageLoadError`."""
    from .viz.pairs import write_pair_report

    check_metric(metric)
    if top < 1:
        raise InputError(f"--top must be at least 1, got {top}")
    cmap = check_cmap(cmap) if cmap is not None else None
    queries = [Path(q) for q in queries]
    if not queries:
        raise InputError("no query image given")
    explainers = similarity_methods(model, methods, layer, metric, **sfam_options)
    embedder = next(iter(explainers.values()))
    qviews = [model.preprocess.view(load_image(q)) for q in queries]
    xq = torch.stack([model.preprocess.normalize(v) for v in qviews])
    out = Path(out_dir)
    planned = lambda stem, k: [n for j in range(k) for n in file_names(pair_files(f"{stem}.top{j + 1:02d}", list(methods)))]  # noqa: E731
    check_out_dir(out, [n for stem in unique_stems(queries, lambda st: planned(st, top), taken=queries, out=out)
                        for n in planned(stem, top)] + ["summary.json", "index.html"])  # before the gallery's embedding
    gal = embed_gallery(gallery, model, embedder.embed, batch_size=batch_size, cache=cache, progress=progress)
    qemb = embedder.embed(xq).float().cpu()
    own = _own_gallery_index(queries, gal.paths) if exclude_query else [None] * len(queries)
    k = min(top, len(gal) - any(j is not None for j in own))
    if k < 1:
        raise InputError("the gallery holds only the query itself; add images or pass --no-exclude-query")
    order, scores = rank(qemb, gal.embeddings, metric, k=k, exclude=own)
    names_of = lambda stem: planned(stem, k)  # noqa: E731
    stems = unique_stems(queries, names_of, taken=[*queries, *gal.paths], out=out)
    check_out_dir(out, [n for stem in stems for n in names_of(stem)] + ["summary.json", "index.html"])
    earlier = earlier_outputs(out, [*queries, *gal.paths])
    with staged_out_dir(out, earlier=earlier) as stage:  # an interrupted run leaves ``out`` as it was
        sections, records = [], []
        for qi, (qpath, qstem) in enumerate(zip(queries, stems)):
            rows, mviews, xs = [], [], []
            for j, gi in enumerate(order[qi].tolist()):
                mviews.append(model.preprocess.view(load_image(gal.paths[gi])))
                xs.append(model.preprocess.normalize(mviews[-1]))
            xm = torch.stack(xs)
            matches = [display(gal.paths[gi]) for gi in order[qi].tolist()]
            results = explain_pairs(explainers, xq[qi:qi + 1].expand(len(xs), -1, -1, -1), xm, batch_size,
                                    names=([display(qpath)] * len(xs), matches))
            for j, gi in enumerate(order[qi].tolist()):
                chunk, i = divmod(j, batch_size)
                pair_results = {m: r[chunk] for m, r in results.items()}
                files = _pair_outputs(stage, f"{qstem}.top{j + 1:02d}", (qviews[qi], mviews[j]), pair_results, i, cmap)
                rows.append({"rank": j + 1, "file": str(gal.paths[gi]), "score": float(scores[qi, j]),
                             "explained_score": float(next(iter(pair_results.values())).scores[i]), **files})
            records.append({"query": str(qpath), "excluded_from_gallery": own[qi] is not None, "matches": rows})
            sections.append({"query": str(qpath), "methods": list(methods), "rows": rows, "failures": gal.failures if qi == 0 else []})
        summary = {
            "model": model.name, "model_source": model.describe(), "metric": metric, "methods": list(methods), "top": top,
            "layer": {m: ex.resolve(xq[:1])[0] for m, ex in explainers.items()},
            "sfam_options": dict(sfam_options),
            "gallery": {"source": str(gallery) if isinstance(gallery, (str, Path)) else "list", "images": len(gal),
                        "from_cache": gal.cached, "embedding_dim": int(gal.embeddings.shape[1])},
            "queries": records, "failures": gal.failures, "device": str(model.device), "versions": versions(),
        }
        write_json(summary, stage / "summary.json")
        write_pair_report(stage / "index.html", f"visionlens retrieval: {model.name}, {metric}, top {top}", sections, cmap=cmap)
    return summary


__all__ = ["EmbeddingCache", "Gallery", "embed_gallery", "explain_pair_files", "explain_pairs", "list_gallery",
           "model_key", "retrieve_files", "similarity_methods"]
