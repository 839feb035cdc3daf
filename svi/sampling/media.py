"""Pixels in and out: the input image, uint8 frames, mp4 segments and their stream-copy concatenation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


def load_image(path: str | Path, height: int, width: int) -> Tensor:
    """An image file -> (1, 3, H, W) in [-1, 1], resized to (height, width) like the official script."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input image {path} does not exist (image=PATH)")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (width, height):
                im = im.resize((width, height), Image.Resampling.BICUBIC)
            arr = np.asarray(im, dtype=np.uint8).copy()
    except UnidentifiedImageError as err:
        raise ValueError(f"input image {path} is not an image file PIL can read") from err
    return from_uint8(torch.from_numpy(arr)[None]).squeeze(2)


def to_uint8(video: Tensor) -> np.ndarray:
    """(1, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 (rounded, as diffusers' postprocessing)."""
    x = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def from_uint8(frames: Tensor | np.ndarray) -> Tensor:
    """(K, H, W, 3) uint8 -> (1, 3, K, H, W) float in [-1, 1] (x / 127.5 - 1)."""
    frames = torch.as_tensor(frames)
    return (frames.permute(3, 0, 1, 2).float() / 127.5 - 1).unsqueeze(0)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 16) -> None:
    """(n, H, W, 3) uint8 -> an H.264 mp4 (one writer, closed before returning)."""
    import imageio.v2 as imageio

    writer = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=1,
                                ffmpeg_log_level="error", format="FFMPEG")
    try:
        for frame in frames:
            writer.append_data(np.ascontiguousarray(frame))
    finally:
        writer.close()


def concat_mp4(segments: Sequence[str | Path], out: str | Path) -> None:
    """Concatenate mp4 segments into `out` by stream copy (no re-encoding), atomically.

    Segments written by `write_mp4` share codec and parameters and each starts with a keyframe, so the
    concat demuxer copies their packets as they are; the cost is reading and writing the bytes once.
    """
    import imageio_ffmpeg

    out = Path(out)
    listing = out.with_name(out.name + ".list.txt")
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    quoted = (Path(s).resolve().as_posix().replace("'", "'\\''") for s in segments)  # concat-list quoting
    listing.write_text("".join(f"file '{q}'\n" for q in quoted), encoding="utf-8")
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
           "-i", str(listing), "-c", "copy", "-f", "mp4", str(tmp)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg could not concatenate {len(segments)} segments into {out}: "
                               f"{result.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        listing.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def read_mp4(path: str | Path) -> np.ndarray:
    """All frames of a video as (n, H, W, 3) uint8 (decord)."""
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
    return reader.get_batch(list(range(len(reader)))).asnumpy()
