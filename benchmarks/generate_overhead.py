"""Per-clip time of our SVI sampler vs a plain diffusers WanImageToVideoPipeline call, same tiny model.

    python benchmarks/generate_overhead.py               # 10 steps, 17 frames x 64x64, cfg 5, 6 clips each
    python benchmarks/generate_overhead.py --steps 20 --clips 8

Both do the same work per clip: VAE-encode the condition (first frame + zeros, i.e. our K = 1,
ref_pad_num = 0), CLIP-encode the image, `steps` Euler steps with two transformer calls each (CFG),
decode. Prompt embeddings are computed once for both. Runs alternate (ours, theirs, ours, ...) so load
drift on a shared machine hits both alike; the first clip of each is a warm-up and not counted.
Also reported: the cost of writing a clip (mp4 segment + state + stream-copy concat of video.mp4).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--clips", type=int, default=6)
    args = ap.parse_args()

    from omegaconf import OmegaConf

    from svi.backbones import build_tiny_wan
    from svi.conditions import Condition
    from svi.paths import CONF_DIR
    from svi.sampling import OutputSession, SVIClipSampler
    from svi.sampling.svi_clip import clip_noise
    sys.path.insert(0, str(Path(__file__).parent))
    from wan_pipeline import one_clip_request, reference_pipeline

    F, H, W = 17, 64, 64
    cfg = OmegaConf.to_container(OmegaConf.load(f"{CONF_DIR}/backbone/tiny.yaml"), resolve=True)
    stack = build_tiny_wan(**{k: v for k, v in cfg.items() if k != "_target_"})
    tmp = Path(tempfile.mkdtemp())
    request, pil = one_clip_request(H, W, F, tmp)
    schedule = request.schedule
    sampler = SVIClipSampler(Condition("k1", num_motion_frames=1, ref_pad_num=0), stack=stack,
                             flow={"num_inference_steps": args.steps, "shift": 5.0}, progress=False)

    pipe = reference_pipeline(stack, shift=5.0)
    text = stack.encode_text([schedule[0].prompt])
    negative = stack.encode_text([schedule[0].negative_prompt])
    T = 1 + (F - 1) // 4

    def ours() -> float:
        t = time.perf_counter()
        (chunk,) = list(sampler.stream(request))
        ours.chunk = chunk
        return time.perf_counter() - t

    def theirs() -> float:
        t = time.perf_counter()
        pipe(image=pil, prompt_embeds=text, negative_prompt_embeds=negative, height=H, width=W, num_frames=F,
             num_inference_steps=args.steps, guidance_scale=5.0, latents=clip_noise(0, (1, 16, T, H // 8, W // 8)),
             output_type="np")
        return time.perf_counter() - t

    session = OutputSession(tmp / "out", {"bench": 1}, fps=16)
    session.start(resume=False)

    def write() -> float:
        t = time.perf_counter()
        session.commit(ours.chunk)
        return time.perf_counter() - t

    a, b, w = [], [], []
    with torch.no_grad():
        for i in range(args.clips + 1):
            ta, tb = ours(), theirs()
            tw = write()
            if i:  # the first round warms both up
                a.append(ta), b.append(tb), w.append(tw)
    ma, mb, mw = statistics.median(a), statistics.median(b), statistics.median(w)
    print(f"tiny backbone, {F} frames x {H}x{W}, {args.steps} Euler steps, cfg 5, torch threads "
          f"{torch.get_num_threads()}, median of {args.clips} clips after a warm-up")
    print(f"  {'':47s} {'median':>8s} {'min':>8s}")
    print(f"  svi sampler (SVIClipSampler.stream, one clip) : {ma * 1000:8.1f} {min(a) * 1000:8.1f} ms/clip")
    print(f"  diffusers WanImageToVideoPipeline.__call__     : {mb * 1000:8.1f} {min(b) * 1000:8.1f} ms/clip")
    print(f"  ratio ours / diffusers                         : {ma / mb:8.3f} {min(a) / min(b):8.3f}")
    print(f"  writing a clip (segment + state + concat, {args.clips} clips): {mw * 1000:8.1f} ms/clip (median)")


if __name__ == "__main__":
    sys.exit(main())
