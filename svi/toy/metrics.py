"""Drift against the toy world's ground truth and invariants, per generated frame.

The world is its own oracle (`svi.toy.world`): for frame t we know the true frame, the true static
background and where every sprite is. Per frame (8-bit RGB, H x W):

* `bg_rmse`   RMSE to the true background on pixels away from every true sprite (dilated by `margin`)
              and from generated pixels of the scene's sprite colours (a surviving sprite off the true
              trajectory is not corruption); `bg_psnr` is the same in dB. The background never changes, so any error here is drift.
* `col_shift` L2 distance between the mean background colour generated and true (8-bit units).
* `hf_ratio`  Laplacian energy of the generated background / the true one, each plus the energy of
              8-bit rounding noise (`HF_FLOOR`), so flat backgrounds do not divide by ~0 (1 = same
              sharpness; below 1 = blur, above 1 = noise).
* `objects`   how many of the scene's sprite colours are present: >= `present_fraction` of the true
              sprite area among pixels within `colour_tol` of that colour (in a voiced world, of the sprite's
              own area before the sound scales it). `object_loss` = true count - objects.
* `speed`     mean centroid speed (px/frame) of the present sprite colours; `gt_speed` the true one.
* `psnr_gt`   full-frame PSNR against the true continuation (saturates once trajectories diverge).
* `world_rmse` full-frame RMSE to the nearest valid world frame: the true background with every sprite
              drawn true to shape and colour where the generated frame has it (colour centroid), or, if it
              is missing, on its true trajectory. Background corruption, smears, lost or discoloured
              sprites all count; a sprite that survives off the true trajectory does not.
* `pose_err`  mean distance (px) of the present sprites' centres from where the world puts them: the toy
              pose error of a dance world (whose positions the pose video gives).
* `ref_dist`, `ref_dist_true`  mean distance (px) of the present sprites' centres (`pose_err`'s) from where the
              shot's first frame, the Shot reference, has them, and the same for those sprites' true centres: a
              `ref_dist` well below `ref_dist_true` says the generated sprites are held back towards the reference.
* `size`, `size_true`  the top sprite's half-extent (px) as generated (from its coverage) and as the world
              has it, in a voiced world (NaN otherwise): `toy_sync` correlates the two over a video.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from svi.toy.world import (SPRITE_COLOURS, _background, _brightness, _draw_sprites, _shot_of, render, sprite_centres,
                           sprite_gaps, sprite_sizes)

# Laplacian energy of uniform 8-bit rounding noise: the stencil's squared weights sum to 20, times 1/12.
HF_FLOOR = 20.0 / 12.0
FRAME_METRICS = ("bg_rmse", "bg_psnr", "col_shift", "hf_ratio", "objects", "object_loss", "psnr_gt", "world_rmse",
                 "pose_err", "ref_dist", "ref_dist_true", "size", "size_true")


def _sprite_masks(scene, t: int, height: int, width: int, margin: float = 0.0) -> np.ndarray:
    """(n_sprites, H, W) bool: pixels within `margin` px of each sprite at frame t."""
    centres = sprite_centres(scene, [t], height, width)[0]
    yy, xx = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    out = []
    for sprite, size, (cx, cy) in zip(scene.sprites, sprite_sizes(scene, [t])[0], centres):
        r = size * min(height, width)
        dx, dy = xx - cx, yy - cy
        dist = np.sqrt(dx * dx + dy * dy) if sprite.shape == "disc" else np.maximum(np.abs(dx), np.abs(dy))
        out.append(dist <= r + margin)
    return np.stack(out)


def _generated_sprites(g: np.ndarray, scene, colour_tol: float) -> np.ndarray:
    """(H, W) bool: pixels of the generated frame within `colour_tol` of one of the scene's sprite colours,
    dilated by one pixel (anti-aliased edges)."""
    colours = np.array([SPRITE_COLOURS[s.colour] for s in scene.sprites], dtype=np.float64)  # (n, 3)
    hit = (np.linalg.norm(g[None] - colours[:, None, None], axis=-1) < colour_tol).any(axis=0)
    return F.max_pool2d(torch.from_numpy(hit).float()[None, None], 3, stride=1, padding=1)[0, 0].numpy() > 0


def _coverage(g: np.ndarray, bg: np.ndarray, colour: np.ndarray, match: np.ndarray) -> np.ndarray:
    """(H, W) estimated coverage of a sprite: the projection of generated - background onto colour -
    background, in [0, 1], around its colour-matched pixels. Exact for an anti-aliased sprite drawn by the world."""
    near = F.max_pool2d(torch.from_numpy(match).float()[None, None], 3, stride=1, padding=1)[0, 0].numpy() > 0
    d = colour - bg  # (H, W, 3)
    return np.clip(((g - bg) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-6), 0.0, 1.0) * near


def _coverage_centroid(g: np.ndarray, bg: np.ndarray, colour: np.ndarray, match: np.ndarray) -> np.ndarray:
    """Sub-pixel (x, y) centre of a sprite: pixel centres weighted by its estimated coverage (`_coverage`)."""
    alpha = _coverage(g, bg, colour, match)
    ys, xs = np.mgrid[: g.shape[0], : g.shape[1]]
    total = max(float(alpha.sum()), 1e-6)
    return np.array([((xs + 0.5) * alpha).sum() / total, ((ys + 0.5) * alpha).sum() / total])


def _nearest_world_rmse(g: np.ndarray, bg: np.ndarray, scene, t: int, centres: np.ndarray, found: np.ndarray) -> float:
    """RMSE of frame `g` to the world frame with the sprites at `centres`. Where found sprites touch, one
    occludes the other and biases its coverage centroid: each is then refined by a +-1 px grid search (0.5 px steps)."""
    def rmse(c: np.ndarray) -> float:
        frame = bg.copy()  # drawn as the world draws its frames
        _draw_sprites(frame, scene, t, c)
        return math.sqrt(float(((g - np.clip(np.rint(frame), 0, 255)) ** 2).mean()))

    H, W = g.shape[:2]
    radii = np.array([s.size * min(H, W) for s in scene.sprites])
    gap = sprite_gaps(centres, radii)
    touching = [j for j in np.nonzero(found)[0] if any(gap[j, k] < 2.0 for k in np.nonzero(found)[0] if k != j)]
    best, centres = rmse(centres), centres.copy()
    offsets = np.arange(-1.0, 1.01, 0.5)
    for j in touching:
        start, keep = centres[j].copy(), centres[j].copy()
        for dx in offsets:
            for dy in offsets:
                centres[j] = start + (dx, dy)
                e = rmse(centres)
                if e < best:
                    best, keep = e, centres[j].copy()
        centres[j] = keep
    return best


def _laplacian_energy(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared Laplacian response (luma) over `mask` (interior pixels only)."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    x = x.float()
    luma = (x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114).view(1, 1, *x.shape[:2])
    lap = F.conv2d(luma, k)[0, 0]
    m = mask[1:-1, 1:-1]
    return float(lap[m].pow(2).mean()) if m.any() else float("nan")


def frame_metrics(world, frames: np.ndarray, start: int, margin: float = 1.5, colour_tol: float = 70.0,
                  present_fraction: float = 0.3) -> dict[str, np.ndarray]:
    """frames uint8 (N, H, W, 3) generated for world frames [start, start + N) -> metric arrays (N,) and
    per-sprite centroids for speeds."""
    N, H, W, _ = frames.shape
    truth = render(world, start, N, H, W).astype(np.float64)
    out = {k: np.full(N, np.nan) for k in FRAME_METRICS}
    centroids = []
    backgrounds: dict[int, np.ndarray] = {}
    ref_centres: dict[int, np.ndarray] = {}
    for i in range(N):
        t = start + i
        scene, local_t, shot = _shot_of(world, t)
        if shot not in backgrounds:  # the texture (and the reference's sprites) are fixed per shot: once each
            backgrounds[shot] = _background(scene.background, H, W)
            ref_centres[shot] = sprite_centres(scene, [0], H, W)[0]  # the shot's first frame (the Shot reference)
        bg_float = backgrounds[shot] * _brightness(scene, local_t)
        bg = np.clip(np.rint(bg_float), 0, 255)
        true_masks = _sprite_masks(scene, local_t, H, W)
        g = frames[i].astype(np.float64)
        # Background pixels: away from the true sprites and from generated sprite-coloured pixels (a sprite
        # that survives but has left the true trajectory is not background corruption).
        keep = ~(_sprite_masks(scene, local_t, H, W, margin).any(axis=0) | _generated_sprites(g, scene, colour_tol))
        diff = (g - bg)[keep]
        rmse = math.sqrt(float((diff ** 2).mean())) if keep.any() else float("nan")
        out["bg_rmse"][i] = rmse
        out["bg_psnr"][i] = 20 * math.log10(255.0 / max(rmse, 1e-3))
        out["col_shift"][i] = float(np.linalg.norm(g[keep].mean(0) - bg[keep].mean(0))) if keep.any() else np.nan
        gt_keep = torch.from_numpy(keep)
        hf_true = _laplacian_energy(torch.from_numpy(bg), gt_keep)
        out["hf_ratio"][i] = (_laplacian_energy(torch.from_numpy(g), gt_keep) + HF_FLOOR) / (hf_true + HF_FLOOR)
        present, cents = 0, []
        true_centres = sprite_centres(scene, [local_t], H, W)[0]
        reposed = true_centres.copy()  # missing sprites stay on their true path
        found = np.zeros(len(scene.sprites), dtype=bool)
        for j, (sprite, m) in enumerate(zip(scene.sprites, true_masks)):
            colour = np.array(SPRITE_COLOURS[sprite.colour], dtype=np.float64)
            match = np.linalg.norm(g - colour, axis=-1) < colour_tol
            area = max(int(m.sum()), 1)
            if scene.voice is not None:  # presence must not depend on the true size the sound gives it, or the
                r = sprite.size * min(H, W)  # present frames would be picked by that size (a biased toy sync)
                area = math.pi * r * r if sprite.shape == "disc" else 4 * r * r
            ok = match.sum() >= present_fraction * area
            present += int(ok)
            if ok:
                ys, xs = np.nonzero(match)
                cents.append((xs.mean(), ys.mean()))
                reposed[j], found[j] = _coverage_centroid(g, bg_float, colour, match), True
                if j == len(scene.sprites) - 1 and scene.voice is not None:  # the voiced (top) sprite's size
                    area = float(_coverage(g, bg_float, colour, match).sum())
                    out["size"][i] = math.sqrt(area / math.pi) if sprite.shape == "disc" else math.sqrt(area) / 2
            else:
                cents.append((np.nan, np.nan))
        centroids.append(cents)
        if found.any():
            out["pose_err"][i] = float(np.linalg.norm(reposed[found] - true_centres[found], axis=-1).mean())
            ref = ref_centres[shot][found]
            out["ref_dist"][i] = float(np.linalg.norm(reposed[found] - ref, axis=-1).mean())
            out["ref_dist_true"][i] = float(np.linalg.norm(true_centres[found] - ref, axis=-1).mean())
        if scene.voice is not None:
            out["size_true"][i] = float(sprite_sizes(scene, [local_t])[0, -1] * min(H, W))
        out["objects"][i] = present
        out["object_loss"][i] = len(scene.sprites) - present
        out["world_rmse"][i] = _nearest_world_rmse(g, bg_float, scene, local_t, reposed, found)
        mse = float(((g - truth[i]) ** 2).mean())
        out["psnr_gt"][i] = 10 * math.log10(255.0 ** 2 / max(mse, 1e-6))
    c = np.asarray(centroids, dtype=np.float64)  # (N, n_sprites, 2)
    step = np.linalg.norm(np.diff(c, axis=0), axis=-1)  # (N-1, n); NaN where a sprite is missing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames with no sprite present: NaN speed
        out["speed"] = np.concatenate([[np.nan], np.nanmean(step, axis=1)]) if N > 1 else np.full(N, np.nan)
    return out


def correlation(a: np.ndarray, b: np.ndarray, min_frames: int = 8) -> float:
    """Pearson correlation over the frames where both are finite (NaN with fewer than `min_frames`; 0 when
    either is constant there: a size that never changes follows nothing)."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < min_frames:
        return float("nan")
    if np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return 0.0
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def clip_means(per_frame: dict[str, np.ndarray], frames_per_clip: int) -> dict[str, np.ndarray]:
    """Average each per-frame metric over consecutive clips of `frames_per_clip` frames -> (num_clips,)."""
    out = {}
    for k, v in per_frame.items():
        n = len(v) // frames_per_clip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out[k] = np.nanmean(v[: n * frames_per_clip].reshape(n, frames_per_clip), axis=1)
    return out
