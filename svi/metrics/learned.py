"""VBench-style metrics on learned features, from weights on local paths only (docs/evaluate.md).

    subject consistency     DINO ViT-B/16 CLS feature    shorter side -> 224 (bilinear, no antialias, no crop),
                                                          ImageNet mean/std, position embeddings interpolated
    background consistency  CLIP ViT-B/32 image embedding shorter side -> 224 (bicubic), centre crop 224,
                                                          CLIP mean/std
    aesthetic quality       LAION linear head on the L2-normalised CLIP ViT-L/14 image embedding, / 10

Consistency of a clip of frames f_1..f_n (L2-normalised features), VBench's formula:

    s_t = ½ [max(0, cos(f_{t-1}, f_t)) + max(0, cos(f_1, f_t))],  t = 2..n;   S = Σ_t s_t / (n - 1)

Each segment is scored as its own clip (VBench-Long scores fixed clips this way and averages them;
`metrics.segment_seconds=2` reproduces its 2 s clips). Because an in-clip score cannot see identity
drift over minutes, the long-range term max(0, cos(f_anchor, f_t)) against the video's first frame
is reported beside it (`*_anchor`).

Weights are loaded with transformers from a local directory (`local_files_only=True`); a metric whose
weights are not configured is unavailable, with the config key to set, and is never replaced by
another extractor. Loading fails loudly when the checkpoint does not cover the model (a CLIP vision
tower saved without its projection would otherwise get a random projection).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
ENV_VARS = {"dino": "SVI_DINO_DIR", "clip_b32": "SVI_CLIP_B32_DIR", "clip_l14": "SVI_CLIP_L14_DIR",
            "laion_head": "SVI_LAION_HEAD"}


class Unavailable(RuntimeError):
    """A metric cannot be computed here; the message says what to configure."""


def _need(path: str | None, key: str) -> Path:
    if not path:
        raise Unavailable(f"weights not configured: set metrics.extractors.{key}=PATH "
                          f"(or the environment variable {ENV_VARS.get(key, key.upper())})")
    p = Path(path).expanduser()
    if not p.exists():
        raise Unavailable(f"metrics.extractors.{key}={path} does not exist")
    return p


def _load(cls, path: Path, key: str, unused: tuple[str, ...] = (), **kwargs) -> nn.Module:
    """`cls.from_pretrained(path)` offline; weights under the `unused` prefixes may be absent (never read)."""
    try:
        model, info = cls.from_pretrained(str(path), local_files_only=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:
        raise Unavailable(f"metrics.extractors.{key}={path} is not a transformers model directory "
                          f"{cls.__name__} can load: {err}") from err
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(unused))
    if missing:
        raise Unavailable(f"metrics.extractors.{key}={path} lacks weights of {cls.__name__}: "
                          f"{missing[:4]} (a CLIP vision tower must include its projection)")
    return model.eval().requires_grad_(False)


def resize_shorter(x: Tensor, size: int, mode: str, antialias: bool) -> Tensor:
    """Resize so the shorter side is `size`, the longer side scaled and truncated (torchvision's Resize)."""
    h, w = x.shape[-2:]
    if h <= w:
        out = (size, int(size * w / h))
    else:
        out = (int(size * h / w), size)
    if out == (h, w):
        return x
    return F.interpolate(x, size=out, mode=mode, align_corners=False, antialias=antialias)


def centre_crop(x: Tensor, size: int) -> Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top : top + size, left : left + size]


def _normalise(x: Tensor, mean, std) -> Tensor:
    return (x - x.new_tensor(mean).view(1, 3, 1, 1)) / x.new_tensor(std).view(1, 3, 1, 1)


class DinoFeatures:
    """DINO (`ViTModel`) or DINOv2 (`Dinov2Model`) CLS token after the final norm, per frame."""

    key = "dino"

    def __init__(self, path: str | None, device: str | torch.device = "cpu", batch_size: int = 32):
        p = _need(path, self.key)
        model_type = json.loads((p / "config.json").read_text()).get("model_type") \
            if (p / "config.json").is_file() else None
        from transformers import Dinov2Model, ViTModel

        cls = {"vit": ViTModel, "dinov2": Dinov2Model}.get(model_type)
        if cls is None:
            raise Unavailable(f"metrics.extractors.dino={path}: expected a transformers ViT (DINO) or DINOv2 "
                              f"directory, found model_type {model_type!r}")
        # Only the CLS token of the last hidden state is read: ViT's pooler head is not needed.
        extra = {"add_pooling_layer": False} if cls is ViTModel else {}
        self.model = _load(cls, p, self.key, unused=("pooler.",), **extra).to(device)
        self.size = int(self.model.config.image_size)
        self.device, self.batch_size = torch.device(device), batch_size
        self._kwargs = {"interpolate_pos_encoding": True} \
            if "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters else {}

    def preprocess(self, x: Tensor) -> Tensor:
        return _normalise(resize_shorter(x, self.size, "bilinear", antialias=False), IMAGENET_MEAN, IMAGENET_STD)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Frames (n, 3, H, W) in [0, 1] -> L2-normalised features (n, d), float64."""
        out = []
        for chunk in x.split(self.batch_size):
            pixels = self.preprocess(chunk).to(self.device, self.model.dtype)
            hidden = self.model(pixel_values=pixels, **self._kwargs).last_hidden_state
            out.append(hidden[:, 0].double().cpu())
        return F.normalize(torch.cat(out), dim=-1)


class ClipFeatures:
    """CLIP image embedding (`encode_image`: pooled output through the visual projection), per frame."""

    def __init__(self, path: str | None, key: str = "clip_b32", device: str | torch.device = "cpu",
                 batch_size: int = 32):
        from transformers import CLIPVisionModelWithProjection

        self.key = key
        self.model = _load(CLIPVisionModelWithProjection, _need(path, key), key).to(device)
        self.size = int(self.model.config.image_size)
        self.device, self.batch_size = torch.device(device), batch_size

    def preprocess(self, x: Tensor) -> Tensor:
        x = centre_crop(resize_shorter(x, self.size, "bicubic", antialias=True), self.size).clamp(0, 1)
        return _normalise(x, CLIP_MEAN, CLIP_STD)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        out = []
        for chunk in x.split(self.batch_size):
            pixels = self.preprocess(chunk).to(self.device, self.model.dtype)
            out.append(self.model(pixel_values=pixels).image_embeds.double().cpu())
        return F.normalize(torch.cat(out), dim=-1)


class LaionAesthetic:
    """LAION aesthetic predictor: `nn.Linear(d, 1)` on the normalised CLIP ViT-L/14 embedding; score / 10."""

    def __init__(self, clip_path: str | None, head_path: str | None, device: str | torch.device = "cpu",
                 batch_size: int = 32):
        head_file = _need(head_path, "laion_head")  # check both before loading the large tower
        self.clip = ClipFeatures(clip_path, key="clip_l14", device=device, batch_size=batch_size)
        state = _read_state_dict(head_file)
        weight = state.get("weight")
        if weight is None or weight.ndim != 2 or weight.shape[0] != 1 or "bias" not in state:
            raise Unavailable(f"metrics.extractors.laion_head={head_path}: expected an nn.Linear(d, 1) state "
                              f"dict (weight, bias), got keys {sorted(state)}")
        self.head = nn.Linear(weight.shape[1], 1).double()
        self.head.load_state_dict({"weight": weight.double(), "bias": state["bias"].double()})

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Frames -> per-frame aesthetic score a_t = head(f_t) / 10 (n,)."""
        return self.head(self.clip(x)).squeeze(-1) / 10.0


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # Accept a bare Linear state dict or one saved from a wrapper (`layers.0.weight`, `head.weight`...).
    if "weight" not in state:
        keys = [k for k in state if k.endswith("weight") and state[k].ndim == 2]
        if len(keys) == 1:
            prefix = keys[0][: -len("weight")]
            state = {"weight": state[keys[0]], "bias": state.get(prefix + "bias")}
            state = {k: v for k, v in state.items() if v is not None}
    return state


# -- VBench formulas (pure) --------------------------------------------------------------------

def consistency_terms(features: Tensor) -> Tensor:
    """s_t for t = 2..n of one clip (n - 1,), from L2-normalised features (n, d)."""
    f = features.double()
    prev = (f[1:] * f[:-1]).sum(dim=1).clamp_min(0)
    first = (f[1:] * f[:1]).sum(dim=1).clamp_min(0)
    return 0.5 * (prev + first)


def anchor_similarity(features: Tensor, anchor: Tensor) -> Tensor:
    """max(0, cos(f_anchor, f_t)) per frame (n,)."""
    return (features.double() @ anchor.double().view(-1)).clamp_min(0)
