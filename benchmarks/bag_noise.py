"""How noisy are temporal bags? The rate at which the temporal bags (default
settings; docs/method.md#bag-noise) put a different polyp in an anchor's bag, on a dataset's
train split.

    python -m polypindex.benchmarks.bag_noise --data var/data/synth --out var/bench/bag_noise.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from polypindex.model.coco import load_coco_split
from polypindex.model.config import FragmentConfig, TrackletConfig
from polypindex.training.datamodule import build_fragments
from polypindex.training.samplers import TemporalTemperatureBagSampler, bag_noise_rate


def measure(data: Path, split: str = "train", epochs: int = 50, seed: int = 0) -> dict[str, object]:
    tracklets = load_coco_split(data, split).tracklets(TrackletConfig())
    fragments = build_fragments(tracklets, FragmentConfig())
    sampler = TemporalTemperatureBagSampler(
        fragments.index, n_views=5, batch_size=60, max_epochs=epochs, seed=seed, small_videos="skip"
    )
    identity = np.asarray(fragments.index.identity)
    rows = []
    for epoch in sorted({0, epochs // 4, epochs // 2, 3 * epochs // 4, epochs - 1}):
        bags, _ = sampler.build_bags(epoch)
        rows.append(
            {
                "epoch": epoch,
                "temperature": sampler.temperature(epoch),
                "wrong_member_rate": bag_noise_rate(fragments.index, sampler, [epoch]),
                "bags_with_a_wrong_member": float(
                    np.mean([(identity[b[1:]] != identity[b[0]]).any() for b in bags])
                ),
            }
        )
    return {
        "data": str(data),
        "split": split,
        "tracklets": len(tracklets),
        "fragments": len(identity),
        "settings": "stride 4, fragment_length 8, n_views 5, t 0.3 -> 12 over 50 epochs (the defaults of docs/method.md#temporal-bags)",
        "by_epoch": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=Path("var/data/synth"))
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, default=Path("var/bench/bag_noise.json"))
    args = parser.parse_args()
    result = measure(args.data, args.split)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
