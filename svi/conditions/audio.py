"""Speech for the talk condition: reading any common audio file, mono at 16 kHz, loudness-normalised, and
the frame-aligned audio features of a wav2vec2 model (`Wav2Vec2Features`, the official choice).

Reading uses libsndfile (`soundfile`: wav, flac, ogg, mp3, ...) and falls back to the ffmpeg that ships
with imageio-ffmpeg for containers it does not know (m4a, mp4, ...); resampling uses `soxr`; the loudness
normalisation to -23 LUFS (`pyloudnorm`, ITU-R BS.1770) is the official pipeline's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLE_RATE = 16000  # wav2vec2's rate
WAV2VEC2_ENV = "SVI_WAV2VEC2_DIR"


class AudioReadError(ValueError):
    """An audio file cannot be used; the message names the file and the fix."""


def audio_info(path: str | Path) -> tuple[float, int]:
    """(duration in seconds, sample rate) of an audio file, without decoding it all when libsndfile reads it."""
    import soundfile

    path = Path(path).expanduser()
    if not path.is_file():
        raise AudioReadError(f"audio file {path} does not exist")
    try:
        info = soundfile.info(str(path))
        duration, rate = float(info.duration), int(info.samplerate)
    except Exception:  # not a format libsndfile knows: decode it through ffmpeg
        samples = _ffmpeg_decode(path, SAMPLE_RATE)
        duration, rate = len(samples) / SAMPLE_RATE, SAMPLE_RATE
    if duration <= 0:
        raise AudioReadError(f"audio file {path} is empty (0 s of sound)")
    return duration, rate


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, start: float = 0.0,
               stop: float | None = None) -> np.ndarray:
    """Seconds [start, stop) of an audio file, mono (channels averaged), at `sample_rate`, float32 (n,).

    Outside the file (start < 0, stop past the end) is silence, so a window may reach over either end.
    """
    import soundfile
    import soxr

    path = Path(path).expanduser()
    if not path.is_file():
        raise AudioReadError(f"audio file {path} does not exist")
    try:
        with soundfile.SoundFile(str(path)) as f:
            rate = f.samplerate
            first = max(0, int(round(start * rate)))
            f.seek(min(first, f.frames))
            count = -1 if stop is None else max(0, int(round(stop * rate)) - first)
            data = f.read(count, dtype="float32", always_2d=True)
    except AudioReadError:
        raise
    except Exception:  # a container libsndfile does not read: the whole file through ffmpeg
        rate = sample_rate
        whole = _ffmpeg_decode(path, rate)
        first = max(0, int(round(start * rate)))
        last = len(whole) if stop is None else max(first, int(round(stop * rate)))
        data = whole[first:last, None]
    mono = data.mean(axis=1) if data.size else np.zeros(0, np.float32)
    if rate != sample_rate and len(mono):
        mono = soxr.resample(mono, rate, sample_rate)
    lead = max(0, int(round(-start * sample_rate)))  # silence before the file's start
    out = np.concatenate([np.zeros(lead, np.float32), mono.astype(np.float32)])
    if stop is not None:
        want = int(round((stop - start) * sample_rate))
        out = np.pad(out, (0, max(0, want - len(out))))[:want]  # silence after the file's end
    return out


def _ffmpeg_decode(path: Path, sample_rate: int) -> np.ndarray:
    """The whole file as float32 mono at `sample_rate` through ffmpeg; AudioReadError when it cannot."""
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", "-ac", "1", "-ar",
           str(sample_rate), "-f", "f32le", "-"]
    result = subprocess.run(cmd, capture_output=True)
    if result.returncode != 0 or not result.stdout:
        reason = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio stream"]
        raise AudioReadError(f"audio file {path} cannot be read ({reason[0][:160]}); give a WAV, FLAC, MP3 or any "
                             f"file with an audio stream ffmpeg decodes")
    return np.frombuffer(result.stdout, dtype=np.float32).copy()


def loudness_gain(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, target_lufs: float = -23.0) -> float:
    """The factor that brings `samples` to `target_lufs` integrated loudness (1.0 for near-silence, as the
    official pipeline leaves a file whose measured loudness is not finite or beyond 100 LU alone)."""
    import pyloudnorm

    if len(samples) < int(0.4 * sample_rate):  # shorter than one BS.1770 gating block: no measurement
        return 1.0
    loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(samples.astype(np.float64))
    if not np.isfinite(loudness) or abs(loudness) > 100:
        return 1.0
    return float(10.0 ** ((target_lufs - loudness) / 20.0))


def stretch(samples: np.ndarray, length: int) -> np.ndarray:
    """Resample `samples` to exactly `length` samples (a clip at another frame rate than the features')."""
    import soxr

    if len(samples) == length:
        return samples
    if len(samples) == 0:
        return np.zeros(length, np.float32)
    out = soxr.resample(samples, len(samples), length)
    return np.pad(out, (0, max(0, length - len(out))))[:length].astype(np.float32)


class Wav2Vec2Features:
    """Frame-aligned speech features from a local wav2vec2 model: (B, n) samples -> (B, frames, layers, dim).

    As MultiTalk's encoder (the official SVI-Talk features): the convolutional features are linearly
    interpolated to one vector per video frame *before* the transformer encoder, and every encoder layer's
    output is kept (`hidden_states[1:]`: 12 x 768 for a base model). The waveform is normalised to zero
    mean and unit variance first, as `Wav2Vec2FeatureExtractor` does. Loaded from `path` (or
    `$SVI_WAV2VEC2_DIR`) on first use; never downloaded.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, path: str | None = None):
        self.path = path
        self.model = None

    def directory(self) -> Path:
        path = self.path or os.environ.get(WAV2VEC2_ENV)
        if not path:
            raise FileNotFoundError(f"no wav2vec2 model given: set {WAV2VEC2_ENV} or condition.audio_encoder.path to "
                                    f"a local directory of a Wav2Vec2 model (config.json + weights, e.g. "
                                    f"chinese-wav2vec2-base, the official choice)")
        root = Path(path).expanduser()
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"wav2vec2 directory {root} (from {WAV2VEC2_ENV} / condition.audio_encoder.path) "
                                    f"has no config.json: give the directory of a saved Wav2Vec2 model")
        return root

    def check(self) -> None:
        """Fail early (before any compute) when the model directory is missing."""
        self.directory()

    def load(self, device) -> None:
        from transformers import Wav2Vec2Model

        if self.model is None:
            self.model = Wav2Vec2Model.from_pretrained(self.directory(), local_files_only=True).eval()
            self.model.requires_grad_(False)
        self.model.to(device)

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, dim) of one frame's features."""
        if self.model is None:
            self.load("cpu")
        return self.model.config.num_hidden_layers, self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, samples: Tensor, num_frames: int) -> Tensor:
        self.load(samples.device)
        x = samples.float()
        x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, unbiased=False, keepdim=True) + 1e-7)

        def to_frames(module, args, conv: Tensor) -> Tensor:  # (B, C, n_conv) -> (B, C, num_frames)
            return F.interpolate(conv.float(), size=num_frames, mode="linear", align_corners=True).to(conv.dtype)

        hook = self.model.feature_extractor.register_forward_hook(to_frames)  # the model's own forward otherwise
        try:
            states = self.model(x.to(self.model.dtype), output_hidden_states=True).hidden_states[1:]
        finally:
            hook.remove()
        return torch.stack(states, dim=2).float()  # (B, frames, layers, dim)
