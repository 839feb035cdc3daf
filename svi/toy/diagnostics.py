"""Are the errors ERFT recycles the size of the errors a chained rollout meets?

ERFT adds E_img, a stored video error, to the condition latent of the motion frames. At inference the
condition carries the hand-off error: the latent of the previous clip's generated motion frames minus
the latent the world's true frames would give. The toy world knows the true frames, so both can be put
side by side in the same (normalised) latent units:

* `handoff_errors`: per video and clip, the RMS of the hand-off error over the condition latent frames
  the motion frames touch (clip 0 starts from true frames: no error);
* `bank_error_rms`: per timestep bucket, the RMS of the video errors a fine-tune's replay memory holds
  (what `img_source=window` draws E_img from), read from its Lightning checkpoint.

`experiments/toy_demo/handoff_errors.py` prints and plots both for a demo run.

And one question about the sprites a rollout loses: are they lost where the world's sprites touch (one
occluding the other)? `first_touch_clip` and `first_loss_clip` give the two clips per video and
`loss_at_touch` compares how often they coincide with what shuffling the touches across videos gives
(`experiments/toy_still/touch.py`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from svi.toy.world import max_sizes, render, sprite_centres, sprite_gaps
from svi.sampling.media import from_uint8
from svi.sampling.svi_clip import motion_latent_frames

REPLAY_CALLBACK = "ErrorReplayCallback"


@torch.no_grad()
def handoff_errors(stack, condition, videos: np.ndarray, worlds: list, num_frames: int,
                   latent_frames: int | None = None) -> np.ndarray:
    """(videos, clips) RMS of each clip's condition-latent error against the true motion frames.

    `videos` uint8 (B, K + C (F - K), H, W, 3) as `rollout` writes them (frames 0..K-1 true); clip c was
    conditioned on frames pos-K .. pos-1, pos = K + c (F - K). The error is taken over the first
    `latent_frames` latent frames of y (default: those the K motion frames touch, where E_img goes with
    the paper's `y_error_num`); the reference frame is the world's frame 0 in both, so it cancels.
    """
    K = int(condition.num_motion_frames)
    new = num_frames - K
    B, N, H, W = videos.shape[:4]
    if len(worlds) != B:
        raise ValueError(f"{B} videos but {len(worlds)} worlds")
    if (N - K) % new:
        raise ValueError(f"a rollout of {N} frames is not K = {K} true frames plus whole clips of {new} new frames")
    n_lat = int(latent_frames or motion_latent_frames(K))
    ref = torch.cat([from_uint8(render(w, 0, 1, H, W))[:, :, 0] for w in worlds])  # (B, 3, H, W)
    out = np.zeros((B, (N - K) // new), dtype=np.float64)
    for c in range(1, out.shape[1]):
        pos = K + c * new
        gen = torch.cat([from_uint8(v[pos - K : pos]) for v in videos])  # (B, 3, K, H, W)
        true = torch.cat([from_uint8(render(w, pos - K, K, H, W)) for w in worlds])
        e = (condition.build_y(stack, gen, ref, num_frames) - condition.build_y(stack, true, ref, num_frames))
        e = e[:, 4:, :n_lat]  # the condition latent channels (the mask is the same)
        out[:, c] = e.pow(2).flatten(1).mean(1).sqrt().double().numpy()
    return out


def read_checkpoint(checkpoint: str | Path) -> dict:
    """An `svi-train` Lightning checkpoint, loaded on the CPU."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} (an svi-train run keeps it as checkpoints/last.ckpt)")
    return torch.load(path, map_location="cpu", weights_only=False)


def replay_memory_state(checkpoint: str | Path | dict) -> dict:
    """The replay memory's state dict ({"vid": ..., "noi": ...}) from an `svi-train` checkpoint (a path, or one
    already read with `read_checkpoint`)."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    state = ckpt.get("callbacks", {}).get(REPLAY_CALLBACK)
    if state is None or "memory" not in state:
        where = "the checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
        raise ValueError(f"{where} holds no replay memory: was it an ERFT run (not ablation=no_erft)?")
    return state["memory"]


def bank_error_rms(memory_state: dict, bank: str = "vid") -> tuple[np.ndarray, np.ndarray]:
    """Per bucket: the RMS of the stored errors (NaN where empty) and how many there are."""
    from svi.erft.memory import ErrorBank

    rows = ErrorBank.stored_rows(memory_state[bank])
    rms = np.full(len(rows), np.nan)
    counts = np.array([len(r) for r in rows])
    for b, r in enumerate(rows):
        if r:
            rms[b] = torch.stack(r).float().pow(2).mean().sqrt().item()
    return rms, counts


def pooled_rms(rms: np.ndarray, counts: np.ndarray) -> float:
    """RMS over every stored error (what a draw from all buckets averages to, counts as weights)."""
    keep = counts > 0
    return float(np.sqrt(np.sum(rms[keep] ** 2 * counts[keep]) / counts[keep].sum())) if keep.any() else float("nan")


def first_touch_clip(world, num_clips: int, new_frames: int, start: int, height: int, width: int,
                     gap: float = 1.0) -> int:
    """The first clip (0-based; -1 if none) with a frame where two of the world's sprites come within `gap`
    px of each other, edge to edge (each sprite as the disc of its largest half-extent). Clip c holds
    frames start + c new_frames .. start + (c + 1) new_frames - 1, as a rollout's new frames."""
    frames = np.arange(start, start + num_clips * new_frames)
    c = sprite_centres(world, frames, height, width)  # (T, n, 2)
    touch = (sprite_gaps(c, max_sizes(world) * min(height, width)) < gap).any(axis=(-2, -1))
    hits = np.nonzero(touch.reshape(num_clips, new_frames).any(axis=1))[0]
    return int(hits[0]) if len(hits) else -1


def first_loss_clip(objects: np.ndarray, below: float) -> int:
    """The first clip (-1 if none) whose mean count of sprites present (`objects`, per clip) is below `below`."""
    hits = np.nonzero(np.asarray(objects, dtype=np.float64) < below)[0]
    return int(hits[0]) if len(hits) else -1


def loss_at_touch(lost, touched, window: int = 1, shuffles: int = 2000, seed: int = 0) -> dict:
    """How often a video's first sprite loss comes 0..`window` clips after its first touch, against chance.

    `lost`, `touched`: per video, the clips of `first_loss_clip` and `first_touch_clip` (-1 = never). Over
    the videos with both, returns the fraction that coincide (`observed`), the same fraction with the touch
    clips shuffled across those videos (`shuffled`: the mean, `shuffled_q975`: its 97.5 % quantile), and `n`.
    """
    lost, touched = np.asarray(lost), np.asarray(touched)
    if lost.shape != touched.shape:
        raise ValueError(f"one loss clip and one touch clip per video: got {lost.shape} and {touched.shape}")
    keep = (lost >= 0) & (touched >= 0)
    a, b = lost[keep], touched[keep]
    if not len(a):
        return {"observed": float("nan"), "shuffled": float("nan"), "shuffled_q975": float("nan"), "n": 0}

    def hit(bb):
        return float(np.mean((a - bb >= 0) & (a - bb <= window)))

    rng = np.random.default_rng(seed)
    null = np.array([hit(rng.permutation(b)) for _ in range(shuffles)])
    return {"observed": hit(b), "shuffled": float(null.mean()), "shuffled_q975": float(np.quantile(null, 0.975)),
            "n": int(len(a))}
