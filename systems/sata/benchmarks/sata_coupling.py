"""How much does an image's output depend on its batch? world-vit, plain vs per-image SATA vs the
reference's batch-coupled SATA, on clean and corrupted test images.

    python systems/sata/benchmarks/sata_coupling.py [--n 96] [--batch 16]

For each variant: the largest |logit(in a class-sorted batch) - logit(alone)|, and the share of
images whose prediction differs between a class-sorted batch, a shuffled batch and batch size 1.
"""

from __future__ import annotations

import argparse

import torch

import visionlens
from visionlens.data.world import World
from visionlens.models.world_eval import normalise
from visionlens_sata.corruptions import corrupt
from visionlens_sata.evaluate import predict, protocol_order, variants


@torch.no_grad()
def logits_in_order(model, x, order, batch):
    out = torch.empty(len(x), 10)
    for s in range(0, len(order), batch):
        idx = order[s:s + batch]
        out[idx] = model(x[idx])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vit = visionlens.load_model("world-vit").module
    batch = World().batch("test", range(args.n))
    labels = batch["label"]
    models = variants(vit)
    for name, images in (("clean", batch["image"]), ("gaussian_noise s5", corrupt(batch["image"], "gaussian_noise", 5))):
        x = normalise(images)
        sorted_order = protocol_order(labels, "sorted", 0)
        shuffled_order = protocol_order(labels, "shuffled", 0)
        print(f"{name}:")
        for vname in ("plain", "sata", "sata-reference-coupled"):
            m = models[vname]
            in_sorted = logits_in_order(m, x, sorted_order, args.batch)
            alone = logits_in_order(m, x, torch.arange(len(x)), 1)
            p_sorted = in_sorted.argmax(1)
            p_shuffled, _ = predict(m, x, shuffled_order, args.batch)
            p_alone = alone.argmax(1)
            print(f"  {vname:24s} max |logit sorted - alone| {float((in_sorted - alone).abs().max()):.2e}  "
                  f"pred differs sorted/alone {float((p_sorted != p_alone).float().mean()):.3f}  "
                  f"shuffled/alone {float((p_shuffled != p_alone).float().mean()):.3f}  "
                  f"acc sorted {float((p_sorted == labels).float().mean()):.3f} shuffled "
                  f"{float((p_shuffled == labels).float().mean()):.3f} alone {float((p_alone == labels).float().mean()):.3f}")


if __name__ == "__main__":
    main()
