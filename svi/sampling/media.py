"""Pixels in and out: the input image, uint8 frames, mp4 segments and their stream-copy concatenation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


IMAGE_RESIZE = ("keep_aspect", "stretch")
QUANTIZE = ("truncate", "round")


def generation_size(image_size: tuple[int, int], height: int, width: int, resize: str = "keep_aspect",
                    max_width: int | None = None) -> tuple[int, int]:
    """(height, width) of a generation from an input image of `image_size` = (W, H).

    `keep_aspect` (the official script): the image keeps its aspect ratio; it is scaled down to
    `max_width` (default `width`) if wider, and both sides are rounded down to multiples of 16 (the VAE's
    8x and the DiT's 2x patches). `stretch`: exactly `height` x `width`.
    """
    if resize not in IMAGE_RESIZE:
        raise ValueError(f"image_resize must be one of {IMAGE_RESIZE}, got {resize!r}")
    if resize == "stretch":
        return height, width
    w, h = image_size
    cap = max_width or width
    if w > cap:
        w, h = cap, int(cap * h / w)
    h, w = (h // 16) * 16, (w // 16) * 16
    if h < 16 or w < 16:
        raise ValueError(f"the input image ({image_size[0]}x{image_size[1]}) is smaller than 16 px on a side "
                         f"after resizing to at most {cap} px wide; use a larger image")
    return h, w


def load_image(path: str | Path, height: int, width: int, resize: str = "stretch",
               max_width: int | None = None) -> Tensor:
    """An image file -> (1, 3, H, W) in [-1, 1] at `generation_size` (bicubic, as the official script)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"input image {path} does not exist (image=PATH)")
    try:
        with Image.open(path) as im:
            arr = fit_frames(np.array(im.convert("RGB"), dtype=np.uint8)[None], height, width, resize, max_width)
    except UnidentifiedImageError as err:
        raise ValueError(f"input image {path} is not an image file PIL can read") from err
    return from_uint8(torch.from_numpy(arr)).squeeze(2)


def fit_frames(frames: np.ndarray, height: int, width: int, resize: str = "stretch",
               max_width: int | None = None) -> np.ndarray:
    """(n, h, w, 3) uint8 -> (n, H, W, 3) uint8 at `generation_size` of their size (bicubic, as images)."""
    from PIL import Image

    h, w = generation_size((frames.shape[2], frames.shape[1]), height, width, resize, max_width)
    if frames.shape[1:3] == (h, w):
        return np.ascontiguousarray(frames)
    return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC), dtype=np.uint8)
                     for f in frames])


def _stream_fps(path: Path) -> float | None:
    """The frame rate the container declares (ffmpeg's), or None; decord's average is off for short videos."""
    try:
        import imageio_ffmpeg

        frames = imageio_ffmpeg.read_frames(str(path))
        meta = next(frames)
        frames.close()
        return float(meta["fps"])
    except Exception:
        return None


class InputVideo:
    """A video to continue (`video=PATH`): opened and checked before any compute, frames read on demand.

    Frames are sized like the input image (`fit_frames`); `motion(K)` gives the last K of them.
    """

    def __init__(self, path: str | Path, min_frames: int, height: int, width: int, resize: str = "keep_aspect",
                 max_width: int | None = None):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"video={self.path} does not exist: pass the video to continue")
        try:
            import decord

            reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
            n = len(reader)
            self.fps = _stream_fps(self.path) or float(reader.get_avg_fps())
            first = reader[0].asnumpy()[None] if n else None
        except Exception as err:  # decord raises its own error types for files it cannot open
            raise ValueError(f"video={self.path} cannot be read as a video ({type(err).__name__}: "
                             f"{str(err).strip()[:200]}); pass an mp4 or another file ffmpeg reads") from err
        if n == 0:
            raise ValueError(f"video={self.path} holds no frames; pass a video with frames")
        if n < min_frames:
            raise ValueError(f"video={self.path} has {n} frame(s), fewer than the {min_frames} a continuation "
                             f"needs (the condition's motion frames and at least one more); pass a longer video, "
                             f"or image= to start from a single frame")
        self.num_frames = n
        self._size = (height, width, resize, max_width)
        self.first = fit_frames(first, *self._size)  # (1, H, W, 3)
        self.height, self.width = self.first.shape[1:3]

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """The chosen frames (all by default), sized: (n, H, W, 3) uint8."""
        import decord

        reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
        indices = list(range(len(reader))) if indices is None else list(indices)
        return fit_frames(reader.get_batch(indices).asnumpy(), *self._size)

    def motion(self, k: int) -> np.ndarray:
        return self.frames(range(self.num_frames - k, self.num_frames))


def quantize_frames(video: Tensor, quantize: str = "truncate") -> Tensor:
    """(B, 3, F, H, W) in [-1, 1] -> (B, F, H, W, 3) uint8.

    `truncate` (the official pipeline: `((x + 1) * 127.5).clip(0, 255).astype(uint8)`) or `round` (as
    diffusers' postprocessing). The frames handed to the next clip are these, so the choice also decides
    the hand-off.
    """
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    x = (video.float().clamp(-1, 1) + 1) * 127.5
    x = (x.round() if quantize == "round" else x.floor()).to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1)


def to_uint8(video: Tensor, quantize: str = "truncate") -> np.ndarray:
    """(1, 3, F, H, W) in [-1, 1] -> (F, H, W, 3) uint8 numpy (`quantize_frames`)."""
    return quantize_frames(video[:1], quantize)[0].cpu().numpy()


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


def mux_audio(video: str | Path, audio: str | Path) -> None:
    """Give `video` the audio track of `audio`, cut or padded with silence to the video's length, in place.

    The video stream is copied packet by packet (no re-encoding); the audio is encoded as AAC. Atomic: a
    temporary file replaces the video only when ffmpeg succeeded.
    """
    import imageio_ffmpeg

    video = Path(video)
    tmp = video.with_name(video.stem + ".audio.tmp" + video.suffix)
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(video), "-i", str(audio),
           "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-af", "apad", "-shortest",
           "-f", "mp4", str(tmp)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg could not add the audio of {audio} to {video}: {result.stderr.strip()}")
        os.replace(tmp, video)
    finally:
        tmp.unlink(missing_ok=True)
