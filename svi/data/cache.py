"""A latent cache: every clip encoded once (VAE latents, the condition `y`, text and CLIP tokens).

Training on raw videos decodes, resizes and runs three frozen encoders on every step; at full scale
the VAE alone costs more than a LoRA step of the 14B DiT. ``svi-prepare`` encodes a dataset once into
this cache, and ``data=cache`` trains on it with the transformer as the only model in memory.

Layout of a cache folder::

    index.json                    settings (backbone, condition, geometry, dims, source listing),
                                  the finished shards and the metadata of every clip
    shard_00000.safetensors       the tensors of the clips of videos [0, videos_per_shard)
    shard_00001.safetensors       ...

A shard stacks its clips: ``latents`` (n, 16, T, h, w), ``y`` (n, 20, T, h, w), ``image``
(n, 257, image_dim) when the backbone attends to CLIP tokens, the condition type's encoded extra
inputs as ``extra.<name>`` (n, ...) (`Condition.encode_extras`), and the text states of the real tokens
only, concatenated: ``text`` (sum of lengths, text_dim) with ``text_lengths`` (n,). Text is zero-padded
back to ``text_len`` when read, which gives exactly what ``WanStack.encode_text`` returns.

Clip ``k`` of video ``i`` is the clip ``VideoClipDataset`` draws for item ``i`` in epoch ``k`` (same
stride, start, crop, reference frame and condition draws), so ``clips_per_video = E`` caches exactly
what E epochs of ``data=folders`` would see, and :class:`CachedLatents` in epoch ``e`` serves draw
``e mod E``.

Preparation is resumable: shards are written atomically (temporary file, then rename) and the index
is rewritten after each one, so a rerun with the same ``out`` skips the shards the index lists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from svi.data.video import VideoClipDataset, VideoReadError, collate_clips

CACHE_FORMAT = "svi-latent-cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CacheMismatchError(ValueError):
    """A cache was built for another condition, geometry, backbone or source than the one asked for."""


# ----------------------------------------------------------------------------------------------
# What a cache was built for
# ----------------------------------------------------------------------------------------------

def describe_condition(spec: dict[str, Any]) -> str:
    """One line of a condition's `spec()`: its name, type and settings."""
    short = {"num_motion_frames": "K"}
    rest = ", ".join(f"{short.get(k, k)}={v}" for k, v in spec.items() if k not in ("name", "type"))
    return f"'{spec['name']}' ({spec['type']}: {rest})"


def stack_dims(stack) -> dict[str, Any]:
    """The model sizes a cached tensor depends on."""
    cfg = stack.transformer.config
    return {"latent_channels": int(cfg.out_channels), "text_len": int(stack.text_len),
            "text_dim": int(cfg.text_dim), "image_dim": int(cfg.image_dim) if stack.uses_clip else None}


def _real_text(text: Tensor) -> list[Tensor]:
    """(B, L, D) zero-padded states -> per prompt the rows up to the last non-zero one.

    Lossless: `encode_text` zeroes the rows after the real tokens, so the rows dropped here are
    exactly zero and padding with zeros restores the tensor bit for bit.
    """
    out = []
    for states in text:  # (L, D)
        nonzero = states.ne(0).any(dim=1).nonzero()
        n = int(nonzero[-1]) + 1 if len(nonzero) else 0
        out.append(states[:n])
    return out


def _listing_digest(dataset: VideoClipDataset) -> str:
    """Fingerprint of what the dataset lists (paths relative to its root, captions, extras)."""
    h = hashlib.sha1()
    for r in dataset.records:
        row = [os.path.relpath(r.path, dataset.root), r.caption, sorted(r.extras.items())]
        h.update(json.dumps(row, ensure_ascii=False).encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# The index
# ----------------------------------------------------------------------------------------------

def _settings(stack, condition, dataset: VideoClipDataset, clips_per_video: int, videos_per_shard: int,
              dtype: str, backbone_name: str) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT, "version": CACHE_VERSION,
        "backbone": backbone_name,
        "dims": stack_dims(stack),
        "condition": condition.spec(),
        "geometry": {"num_frames": dataset.num_frames, "height": dataset.height, "width": dataset.width},
        "source": {"root": str(dataset.root), "layout": dataset.layout, "num_videos": len(dataset),
                   "listing_sha1": _listing_digest(dataset), "seed": dataset.seed,
                   "max_stride": dataset.max_stride, "min_frames": dataset.min_frames,
                   "ref_outside_clip": dataset.ref_outside_clip, "min_crop_scale": dataset.min_crop_scale},
        "clips_per_video": clips_per_video,
        "videos_per_shard": videos_per_shard,
        "dtype": dtype,
    }


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that must match to continue a preparation (the dataset may have moved)."""
    flat = {}
    for key, value in settings.items():
        if key in ("shards", "complete", "num_shards"):  # progress, not settings
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items() if (key, k) != ("source", "root")})
        else:
            flat[key] = value
    return flat


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    """The index of a cache folder; raises FileNotFoundError / ValueError with what is wrong."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        hint = "" if Path(root).is_dir() else " (the folder does not exist)"
        raise FileNotFoundError(f"{root} is not a latent cache: no {INDEX_NAME}{hint}. Build one with "
                                f"`svi-prepare data=folders data.root=VIDEOS out={root}`")
    index = json.loads(path.read_text())
    if index.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not an svi latent cache index (format {index.get('format')!r})")
    if index.get("version") != CACHE_VERSION:
        raise ValueError(f"{path} has cache version {index.get('version')}, this svi reads version "
                         f"{CACHE_VERSION}: rebuild it with svi-prepare")
    return index


def _file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def check_compatible(index: dict[str, Any], root: str | os.PathLike, *, condition=None,
                     num_frames: int | None = None, height: int | None = None, width: int | None = None,
                     backbone_name: str | None = None, dims: dict | None = None) -> None:
    """Refuse a cache built for another condition, clip geometry, backbone or model size.

    Each argument left None is not checked. The message names what the cache was built for and
    what training uses, and how to build a matching cache.
    """
    problems = []
    if condition is not None:
        want, have = condition.spec(), index["condition"]
        if want != have:
            problems.append(f"condition: cache {describe_condition(have)}, "
                            f"training {describe_condition(want)}")
    geometry = {"num_frames": num_frames, "height": height, "width": width}
    for key, want in geometry.items():
        have = index["geometry"][key]
        if want is not None and int(want) != have:
            problems.append(f"data.{key}: cache {have}, training {want}")
    if backbone_name is not None and backbone_name != index["backbone"]:
        problems.append(f"backbone: cache '{index['backbone']}', training '{backbone_name}'")
    for key, want in (dict(dims) if dims else {}).items():  # keys the cache does not record are not checked
        if key in index["dims"] and want != index["dims"][key]:
            problems.append(f"backbone.dims.{key}: cache {index['dims'][key]}, training {want}")
    if problems:
        g = index["geometry"]
        raise CacheMismatchError(
            f"the latent cache {root} does not fit this training run:\n  " + "\n  ".join(problems) +
            f"\nIt was built with backbone={index['backbone']} condition={index['condition']['name']} "
            f"({g['num_frames']} frames, {g['height']}x{g['width']}). Train with those settings, or build a "
            f"matching cache: svi-prepare data=folders data.root=VIDEOS backbone=... condition=... "
            f"out=NEW_CACHE")


# ----------------------------------------------------------------------------------------------
# Preparation
# ----------------------------------------------------------------------------------------------

def prepare_cache(stack, condition, dataset: VideoClipDataset, out: str | os.PathLike, *,
                  clips_per_video: int = 4, videos_per_shard: int = 32, dtype: str = "float32",
                  backbone_name: str = "unknown", encode_batch_size: int = 1, progress: bool = True) -> dict:
    """Encode ``dataset`` into a cache at ``out``, continuing an interrupted preparation if there is one.

    Returns a summary: clips and videos written, shards written and reused, skipped videos with reasons.
    """
    from tqdm.auto import tqdm

    if clips_per_video < 1 or videos_per_shard < 1 or encode_batch_size < 1:
        raise ValueError(f"clips_per_video, videos_per_shard and encode_batch_size must be >= 1, got "
                         f"{clips_per_video}, {videos_per_shard}, {encode_batch_size}")
    if dtype not in _DTYPES:
        raise ValueError(f"cache dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(stack, condition, dataset, clips_per_video, videos_per_shard, dtype, backbone_name)
    num_shards = math.ceil(len(dataset) / videos_per_shard)
    shards: dict[str, Any] = {}
    if (out / INDEX_NAME).exists():
        old = read_index(out)
        a, b = _comparable(old), _comparable(settings)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            detail = "; ".join(f"{k}: {a.get(k)!r} there, {b.get(k)!r} now" for k in diff)
            raise CacheMismatchError(f"{out} holds a cache prepared with other settings ({detail}). "
                                     f"Use another `out`, or delete {out} to rebuild it")
        # Finished shards are those the index lists whose file is still there.
        shards = {k: v for k, v in old["shards"].items() if v["file"] is None or (out / v["file"]).is_file()}
    for leftover in out.glob("*.tmp"):  # from an interrupted write
        leftover.unlink()

    index = {**settings, "num_shards": num_shards, "shards": shards, "complete": False}
    _write_json_atomic(out / INDEX_NAME, index)
    previous_epoch = dataset.epoch
    written = reused = 0
    bar = tqdm(total=len(dataset), desc=f"svi-prepare {out.name}", unit="video", disable=not progress)
    try:
        for s in range(num_shards):
            key = f"{s:05d}"
            first, stop = s * videos_per_shard, min(len(dataset), (s + 1) * videos_per_shard)
            if key in shards:
                reused += 1
                bar.update(stop - first)
                continue
            shards[key] = _prepare_shard(stack, condition, dataset, out, key, range(first, stop),
                                         clips_per_video, _DTYPES[dtype], encode_batch_size, bar)
            written += 1
            _write_json_atomic(out / INDEX_NAME, index)  # the shard is now finished for a rerun
    finally:
        bar.close()
        dataset.set_epoch(previous_epoch)
    index["complete"] = True
    _write_json_atomic(out / INDEX_NAME, index)

    skipped = {p: r for v in shards.values() for p, r in v["skipped"].items()}
    clips = sum(len(v["clips"]) for v in shards.values())
    return {"out": str(out), "clips": clips, "videos": len(dataset) - len(skipped), "skipped": skipped,
            "shards": num_shards, "shards_written": written, "shards_reused": reused,
            "bytes": sum((out / v["file"]).stat().st_size for v in shards.values() if v["file"])}


def _prepare_shard(stack, condition, dataset: VideoClipDataset, out: Path, key: str, videos: range,
                   clips_per_video: int, dtype: torch.dtype, encode_batch_size: int, bar) -> dict:
    clips: list[dict] = []
    tensors: dict[str, list[Tensor]] = {"latents": [], "y": [], "text": [], "image": []}
    skipped: dict[str, str] = {}
    for i in videos:
        record = dataset.records[i]
        try:
            pixels, metas = _read_clips(dataset, i, clips_per_video)
        except VideoReadError as e:
            skipped[record.path] = str(e)
            bar.update(1)
            continue
        for b in range(0, len(pixels), encode_batch_size):
            chunk = collate_clips(pixels[b:b + encode_batch_size])  # video (n, 3, F, H, W), ref_image, ...
            enc = condition.encode_clip(stack, chunk["video"], chunk["ref_image"], chunk["caption"],
                                        extras=chunk["extras"], draws=chunk["draws"])
            tensors["latents"].append(enc["latents"].to("cpu", dtype))
            tensors["y"].append(enc["y"].to("cpu", dtype))
            texts = _real_text(enc["text"].to("cpu", dtype))
            tensors["text"].extend(texts)
            if enc["image"] is not None:
                tensors["image"].append(enc["image"].to("cpu", dtype))
            for name, value in enc["extras"].items():
                tensors.setdefault(f"extra.{name}", []).append(value.to("cpu", dtype))
            for meta, text in zip(metas[b:b + encode_batch_size], texts):
                meta["text_len"] = len(text)
        clips.extend(metas)
        bar.update(1)

    entry = {"file": None, "videos": [videos.start, videos.stop], "clips": clips, "skipped": skipped}
    if clips:
        data = {"latents": torch.cat(tensors["latents"]), "y": torch.cat(tensors["y"]),
                "text": torch.cat(tensors["text"]),
                "text_lengths": torch.tensor([len(t) for t in tensors["text"]], dtype=torch.long)}
        data.update({k: torch.cat(v) for k, v in tensors.items() if k.startswith("extra.")})
        if tensors["image"]:
            data["image"] = torch.cat(tensors["image"])
        entry["file"] = f"shard_{key}.safetensors"
        tmp = out / (entry["file"] + ".tmp")
        save_file({k: v.contiguous() for k, v in data.items()}, str(tmp))
        os.chmod(tmp, _file_mode())  # safetensors creates 0600 files; a cache is often shared
        os.replace(tmp, out / entry["file"])
    return entry


def _read_clips(dataset: VideoClipDataset, index: int, clips_per_video: int) -> tuple[list[dict], list[dict]]:
    """Draw k = 0..clips_per_video-1 of one video (draw k = the clip of epoch k), decoded from one open.

    Returns the clips as dataset items (`video`, `ref_image`, `caption`, the condition's `extras` and
    `draws`) and their metadata for the index.
    """
    record = dataset.records[index]
    reader, n, h, w = dataset._open(record.path)
    condition = dataset.condition
    items, metas = [], []
    for k in range(clips_per_video):
        dataset.set_epoch(k)
        params = dataset.draw_params(index, n, h, w)
        video, ref = dataset.load_clip(record.path, params, reader=reader)  # (3, F, H, W), (3, H, W)
        extras = condition.load_extras(record.extras, dataset.span(params, reader, h, w)) \
            if condition is not None else {}
        items.append({"video": video, "ref_image": ref, "caption": record.caption, "extras": extras,
                      "draws": dict(params.draws)})
        metas.append({"video": index, "draw": k, "path": record.path, "caption": record.caption,
                      "stride": params.stride, "start": params.start, "crop": list(params.crop),
                      "ref_index": params.ref_index, "short": params.short, "video_frames": n,
                      **({"draws": dict(params.draws)} if params.draws else {}),
                      **({"extras": record.extras} if record.extras else {})})
    return items, metas


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

class CachedLatents(Dataset):
    """Latent training items from a cache: ``latents``, ``y``, ``text``, ``image`` + the clip's metadata.

    ``sample="epoch"``: one item per video, draw ``epoch mod clips_per_video`` (the clip ``data=folders``
    would read in that epoch); ``sample="all"``: every cached clip is an item.
    """

    def __init__(self, root: str | os.PathLike, sample: str = "epoch", allow_incomplete: bool = False):
        if sample not in ("epoch", "all"):
            raise ValueError(f"sample must be 'epoch' or 'all', got {sample!r}")
        self.root, self.sample = Path(root), sample
        self.index = read_index(root)
        if not self.index["complete"] and not allow_incomplete:
            done = len(self.index["shards"])
            raise ValueError(f"the latent cache {root} is incomplete ({done} of {self.index['num_shards']} "
                             f"shards): rerun the same svi-prepare command to finish it, or set "
                             f"data.allow_incomplete=true")
        self.text_len = self.index["dims"]["text_len"]
        self.videos: list[list[tuple[str, int, int, dict]]] = []  # per video: (file, row, text offset, meta)
        for key in sorted(self.index["shards"]):
            entry = self.index["shards"][key]
            offset = 0
            for row, meta in enumerate(entry["clips"]):
                if meta["draw"] == 0:
                    self.videos.append([])
                self.videos[-1].append((entry["file"], row, offset, meta))
                offset += meta["text_len"]
        self.clips = [clip for video in self.videos for clip in video]
        if not self.clips:
            raise ValueError(f"the latent cache {root} holds no clips (every video was skipped?)")
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.videos) if self.sample == "epoch" else len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.sample == "epoch":
            video = self.videos[index]
            file, row, offset, meta = video[self.epoch % len(video)]
        else:
            file, row, offset, meta = self.clips[index]
        with safe_open(str(self.root / file), framework="pt") as f:
            item = {k: f.get_slice(k)[row:row + 1][0].float() for k in ("latents", "y")}  # (C, T, h, w)
            n = meta["text_len"]
            real = f.get_slice("text")[offset:offset + n].float()  # (n, text_dim)
            if "image" in f.keys():
                item["image"] = f.get_slice("image")[row:row + 1][0].float()  # (257, image_dim)
            item["extras"] = {k.removeprefix("extra."): f.get_slice(k)[row:row + 1][0].float()
                              for k in f.keys() if k.startswith("extra.")}
        pad = real.new_zeros(self.text_len - n, real.shape[1])
        item["text"] = torch.cat([real, pad])  # (text_len, text_dim), as WanStack.encode_text returns it
        item.update(caption=meta["caption"], path=meta["path"], index=meta["video"], draw=meta["draw"],
                    stride=meta["stride"], start=meta["start"], crop=tuple(meta["crop"]),
                    ref_index=meta["ref_index"], short=meta["short"], skipped=[], skip_reasons=[])
        return item
