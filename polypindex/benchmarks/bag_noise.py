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

from polypindex.model.data.coco import load_coco_split
from polypindex.model.data.config import FragmentConfig, TrackletConfig
from polypindex.training.datamodule import build_fragments
from polypindex.training.samplers import TemporalTemperatureBagSampler, bag_noise_rate


def measure(
    data: Path,
    split: str = "train",
    epochs: int = 50,
    seed: int = 0,
    fragment: FragmentConfig | None = None,
    n_views: int = 5,
    batch_size: int = 60,
    t_min: float = 0.3,
    t_max: float = 12.0,
    tracklet: TrackletConfig | None = None,
) -> dict[str, object]:
    """The bag noise of ``data``'s ``split`` under a bag schedule of ``epochs`` epochs.

    The defaults are docs/method.md#temporal-bags'; the noise sweep
    (:mod:`benchmarks.noise_sweep`) passes its own run's settings. Returns five epochs of
    the schedule (``by_epoch``) and ``mean_wrong_member_rate``, the rate pooled over every
    epoch of the schedule (what a run trains on, when each epoch uses its bags).
    """
    fragment = fragment or FragmentConfig()
    tracklets = load_coco_split(data, split).tracklets(tracklet or TrackletConfig())
    fragments = build_fragments(tracklets, fragment)
    sampler = TemporalTemperatureBagSampler(
        fragments.index,
        n_views=n_views,
        batch_size=batch_size,
        t_min=t_min,
        t_max=t_max,
        max_epochs=epochs,
        seed=seed,
        small_videos="skip",
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
        "settings": (
            f"stride {fragment.stride}, fragment_length {fragment.fragment_length}, n_views "
            f"{n_views}, t {t_min} -> {t_max} over {epochs} epochs"
        ),
        "by_epoch": rows,
        "mean_wrong_member_rate": bag_noise_rate(fragments.index, sampler, epochs),
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
