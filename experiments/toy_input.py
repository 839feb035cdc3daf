"""Write one toy-world validation input for the experiments: image.png (frame 0), prompt.txt (its caption)
and scenes.jsonl (the world, so svi-evaluate renders the exact future as ground truth at any length).

    python experiments/toy_input.py --out outputs/experiments/x/input --size 64 --seed 0
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from svi.toy.world import caption, make_scene, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--size", type=int, default=64, help="height = width of the image (the backbone's native size)")
    parser.add_argument("--seed", type=int, default=0, help="which toy-world scene")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = make_scene(args.seed)
    Image.fromarray(render(scene, 0, 1, args.size, args.size)[0]).save(out / "image.png")
    (out / "prompt.txt").write_text(caption(scene) + "\n")
    (out / "scenes.jsonl").write_text(json.dumps({"film": False, "scene": scene.to_dict()}) + "\n")
    print(f"toy input (scene {args.seed}, {args.size}x{args.size}) -> {out}")


if __name__ == "__main__":
    main()
