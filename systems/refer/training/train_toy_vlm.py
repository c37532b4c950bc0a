"""Train the toy VLM (``toy_vlm.pt`` + ``toy_vlm.json``) on synthetic-scene region captions.

    python systems/refer/training/train_toy_vlm.py [--scenes 600] [--steps 600] [--batch 128] [--seed 0]

By default it replaces the packaged ``visionlens_refer/weights/toy_vlm.pt`` and its manifest.

Contrastive (InfoNCE, temperature 0.07, captions that are the same string count as positives):
local feature <-> attribute caption, context feature <-> surrounding caption, and the fused
feature (0.5 / 0.5) <-> attribute caption. Referring expressions are never seen in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from visionlens.checks import count
from visionlens.io import write_json
from visionlens_refer.lgd.captions import random_captions
from visionlens_refer.lgd.synthetic import make_scenes
from visionlens_refer.lgd.toy_vlm import WEIGHTS, ToyVLM, region_crops

SCRIPT = "systems/refer/training/train_toy_vlm.py"

VARIANTS = 4


def region_dataset(split: str, n_scenes: int, seed: int, chunk: int = 64):
    """Crops of every entity of ``n_scenes`` scenes and ``VARIANTS`` random caption pairs each."""
    local, context, att, sur = [], [], [], []
    rng = np.random.default_rng((seed, 99))
    for start in range(0, n_scenes, chunk):
        for image, entities in make_scenes(split, range(start, min(n_scenes, start + chunk)), seed):
            masks = torch.from_numpy(np.stack([e.mask for e in entities]))
            lo, co = region_crops(image, masks)
            local.append((lo * 255).round().to(torch.uint8))
            context.append((co * 255).round().to(torch.uint8))
            for i in range(len(entities)):
                pairs = [random_captions(entities, i, rng) for _ in range(VARIANTS)]
                att.append([a for a, _ in pairs])
                sur.append([s for _, s in pairs])
    return torch.cat(local), torch.cat(context), att, sur


def info_nce(feats: torch.Tensor, texts: torch.Tensor, strings: list[str], temperature: float = 0.07) -> torch.Tensor:
    logits = feats @ texts.T / temperature
    same = torch.tensor([[a == b for b in strings] for a in strings], dtype=torch.float32)
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * logits.log_softmax(1), 1).mean() + torch.sum(-target * logits.log_softmax(0), 0).mean())


def loss_terms(model: ToyVLM, lo, co, att: list[str], sur: list[str]) -> torch.Tensor:
    f_g, f_l = model.encode_crops(lo.float() / 255, co.float() / 255)
    fused = F.normalize(0.5 * f_g + 0.5 * f_l, dim=-1)
    t_att, t_sur = model.encode_text(att), model.encode_text(sur)
    return info_nce(f_l, t_att, att) + info_nce(f_g, t_sur, sur) + info_nce(fused, t_att, att)


@torch.no_grad()
def retrieval_accuracy(model: ToyVLM, lo, co, att: list[str], sur: list[str], batch: int = 128) -> dict:
    """Share of regions whose own caption ranks first among ``batch`` in-batch captions."""
    hits = {"attribute": [], "surrounding": []}
    for s in range(0, len(att) - batch + 1, batch):
        f_g, f_l = model.encode_crops(lo[s:s + batch].float() / 255, co[s:s + batch].float() / 255)
        for key, feats, texts in (("attribute", f_l, att[s:s + batch]), ("surrounding", f_g, sur[s:s + batch])):
            sim = feats @ model.encode_text(texts).T
            best = sim.argmax(1)
            hits[key] += [texts[int(b)] == texts[i] for i, b in enumerate(best)]
    return {k: float(np.mean(v)) for k, v in hits.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=count(), default=600)
    ap.add_argument("--val-scenes", type=count(), default=150)
    ap.add_argument("--steps", type=count(), default=600)
    ap.add_argument("--batch", type=count(minimum=2), default=128)
    ap.add_argument("--seed", type=count(minimum=0), default=0)
    ap.add_argument("--out", default=str(WEIGHTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.time()
    lo, co, att, sur = region_dataset("train", args.scenes, args.seed)
    vlo, vco, vatt, vsur = region_dataset("val", args.val_scenes, args.seed)
    t_data = time.time() - t0
    model = ToyVLM()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    losses = []
    for step in range(args.steps):
        idx = torch.randint(len(att), (args.batch,), generator=gen)
        var = torch.randint(VARIANTS, (args.batch,), generator=gen)
        a = [att[int(i)][int(v)] for i, v in zip(idx, var)]
        s = [sur[int(i)][int(v)] for i, v in zip(idx, var)]
        loss = loss_terms(model, lo[idx], co[idx], a, s)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d} loss {np.mean(losses[-100:]):.3f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    val = retrieval_accuracy(model, vlo, vco, [v[0] for v in vatt], [v[0] for v in vsur])
    torch.save({"dim": 32, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}}, args.out)
    manifest = {
        "name": "toy-vlm", "architecture": "ToyVLM (2 x 3-conv CNN on 4x24x24 crops, bag-of-words text, 32-d)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": f"python {SCRIPT} " + " ".join(sys.argv[1:] if argv is None else argv), "script": SCRIPT,
        "seed": args.seed, "steps": args.steps, "batch": args.batch,
        "data": {"train_scenes": args.scenes, "train_regions": len(att), "val_scenes": args.val_scenes,
                 "val_regions": len(vatt), "source": "visionlens_refer.lgd.synthetic.make_scenes (world seed 0)"},
        "metrics": {"final_train_loss_mean_last100": float(np.mean(losses[-100:])),
                    "val_in_batch_retrieval_top1_of_128": val},
        "wall_time_s": round(time.time() - t0, 1), "data_time_s": round(t_data, 1),
        "machine": "shared 2-core CPU, torch.set_num_threads(1)",
    }
    write_json(manifest, str(args.out).rsplit(".", 1)[0] + ".json")
    print(json.dumps(manifest["metrics"]), f"wall {manifest['wall_time_s']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
