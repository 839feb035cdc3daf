"""svi-generate: a long video from an image and a prompt schedule, clip by clip. Only wiring lives here.

    svi-generate image=cat.jpg prompts=prompts.txt num_clips=10 lora.path=svi-shot.safetensors
    svi-generate backbone=tiny image=cat.png prompts=p.txt num_clips=3 flow.num_inference_steps=3 out=DIR
    svi-generate ... out=DIR resume=true                       # continue after an interruption
    svi-generate ... out=DIR resume=true num_clips=20          # extend a finished run with more clips
    svi-generate video=old.mp4 prompts=p.txt num_clips=5 out=DIR   # continue an existing video
    svi-generate -m ... sampler=svi,base handoff=pixel,latent  # a sweep
    svi-generate sampler=miga image=cat.png prompts=p.txt num_frames_total=161   # FIFO / MIGA (docs/samplers.md)

Everything that can be checked without weights (image, prompt file, schedule, frame count, LoRA file,
resume state and config hash) is checked before the backbone is loaded.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

import svi.config  # noqa: F401  (registers the typed schemas before composition)
import svi.sampling.config  # noqa: F401
from svi.backbones.lowmem import LowMemSpec, place_stack
from svi.backbones.official import merge_lora, read_lora
from svi.conditions import Condition
from svi.paths import CONF_DIR
from svi.sampling.base import Chunk, GenerationRequest
from svi.sampling.media import InputVideo, from_uint8, load_image, mux_audio
from svi.sampling.schedule import build_schedule
from svi.sampling.parallel import broadcast_from_rank0, init_cfg_parallel
from svi.sampling.session import CountingSession, OutputSession, file_sha256
from svi.sampling.svi_clip import SVIClipSampler

log = logging.getLogger("svi.generate")


def _out_dir(cfg: DictConfig) -> Path:
    if cfg.out:
        return Path(cfg.out).expanduser()
    if cfg.resume:
        raise ValueError("resume=true needs out=DIR: the directory of the generation to continue")
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    raise ValueError("out=DIR is required outside the svi-generate command")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def hashed_config(cfg: DictConfig, request: GenerationRequest, lora_sha: str | None,
                  extendable: bool = False) -> dict:
    """What decides the frames: resume refuses to continue when any of it changed (input files by content).

    For an `extendable` sampler the schedule is left out: each committed clip stores its own entry, and a
    resume compares those (`OutputSession`), so `num_clips` may grow."""
    c = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    keep = {k: c[k] for k in ("backbone", "condition", "sampler", "flow", "num_frames", "handoff", "quantize",
                              "inputs")}
    if c["num_frames_total"] is not None:
        keep["num_frames_total"] = c["num_frames_total"]
    keep["size"], keep["fps"] = [request.height, request.width], request.fps
    keep["inputs_sha256"] = {k: file_sha256(v) for k, v in request.inputs.items()
                             if isinstance(v, str) and Path(v).expanduser().is_file()}
    image = _image_path(cfg)
    keep["image_sha256"] = file_sha256(image) if image else None
    if cfg.video:
        keep["video_sha256"] = file_sha256(Path(cfg.video).expanduser())
    keep["lora"] = {"sha256": lora_sha, "scale": cfg.lora.scale} if lora_sha else None  # sha: "high+low" for 2 experts
    if cfg.lowmem.fp8:  # fp8 storage changes the numbers (offloading does not); only when set, as above
        keep["fp8"] = True
    if lora_sha and cfg.lora.expert:  # only when set, so the hashes of earlier runs stay valid
        keep["lora"]["expert"] = cfg.lora.expert
    if not extendable:
        keep["schedule"] = [clip.to_dict() for clip in request.schedule]
    return keep


def _image_path(cfg: DictConfig) -> str | None:
    """`image=`; with `video=` it may be left out (the video's first frame is then the reference)."""
    if cfg.video and OmegaConf.is_missing(cfg, "image"):
        return None
    return cfg.image


def _open_video(cfg: DictConfig, sampler, resize: str, fps: float) -> InputVideo:
    """The video `video=` continues, checked before any compute."""
    if not isinstance(sampler, SVIClipSampler):
        raise ValueError(f"video= continues a video through the clip hand-off of sampler=svi or sampler=base; "
                         f"sampler={sampler.name} cannot start from one")
    if cfg.num_frames_total is not None:
        raise ValueError("video= counts the new clips with num_clips; num_frames_total is not supported with it")
    K = sampler.num_motion_frames
    video = InputVideo(cfg.video, K + 1, cfg.height, cfg.width, resize, cfg.max_width)
    if abs(video.fps - fps) > 0.01:
        warnings.warn(f"video={cfg.video} runs at {video.fps:g} fps, the output at {fps:g}: its frames are "
                      f"copied one for one (not resampled), so its part plays at {fps:g} fps")
    return video


def generate(cfg: DictConfig, on_commit: Callable | None = None) -> dict:
    """Generate (or continue) one long video; returns a summary. `on_commit(chunk, state_path)` per clip.

    Under torchrun (WORLD_SIZE > 1) the processes share the guidance branches of every step (CFG-parallel,
    `svi.sampling.parallel`); only rank 0 writes `out` and calls `on_commit`."""
    parallel, device, created = init_cfg_parallel(_device(cfg.device))
    try:
        return _generate(cfg, on_commit, parallel, device)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _generate(cfg: DictConfig, on_commit: Callable | None, parallel, device: torch.device) -> dict:
    writer = parallel is None or parallel.rank == 0
    out = _out_dir(cfg)
    condition = instantiate(cfg.condition)
    sampler = instantiate(cfg.sampler, condition=condition, progress=cfg.progress)

    resize = getattr(cfg.image_resize, "value", cfg.image_resize)
    image_path = _image_path(cfg)
    fps = condition.frame_rate or cfg.fps  # talk runs at its audio features' 25 fps
    video = _open_video(cfg, sampler, resize, fps) if cfg.video else None
    if video is not None:  # its frames set the size; the reference is image= (stretched to it) or frame 0
        height, width = video.height, video.width
        image = load_image(image_path, height, width, "stretch") if image_path else \
            from_uint8(torch.from_numpy(video.first)).squeeze(2)
    elif image_path:
        image = load_image(image_path, cfg.height, cfg.width, resize, cfg.max_width)  # (1, 3, H, W)
        height, width = image.shape[-2:]
    else:  # text-to-video backbones only (checked once the backbone is loaded)
        image, height, width = None, cfg.height, cfg.width
    first_only = cfg.use_first_prompt_only
    if first_only is None:
        first_only = not condition.prompt_per_clip
    inputs = OmegaConf.to_container(cfg.inputs, resolve=True)
    num_clips = cfg.num_clips
    if cfg.num_frames_total is not None:
        if cfg.num_clips is not None:
            raise ValueError(f"set either num_clips={cfg.num_clips} or num_frames_total={cfg.num_frames_total}, "
                             f"not both: the length follows from one of them")
        if cfg.num_frames_total < 1:
            raise ValueError(f"num_frames_total must be >= 1 frame, got {cfg.num_frames_total}")
        num_clips = sampler.clips_for_frames(cfg.num_frames_total, cfg.num_frames)
    elif num_clips is None:  # a condition type's inputs may decide (talk: the audio's length)
        num_clips = condition.clips_from_inputs(inputs, cfg.num_frames, fps)
    schedule = build_schedule(cfg.prompts, num_clips=num_clips, base_seed=cfg.seed, cfg=cfg.cfg,
                              negative_prompt=cfg.negative_prompt, use_first_prompt_only=first_only,
                              prompt_repeat_times=cfg.prompt_repeat_times, same_seed=cfg.same_seed,
                              seed_stride=cfg.seed_stride, extra_fields=condition.extra_fields)
    condition.check_schedule(schedule, inputs)
    request = GenerationRequest(image=image, schedule=schedule, num_frames=cfg.num_frames, height=height, width=width,
                                inputs=inputs, fps=fps, total_frames=cfg.num_frames_total)
    sampler.validate(request)

    loras, lora_sha = {}, None  # expert name -> LoRA (Wan 2.2 A14B: transformer = high noise, transformer_2 = low)
    if (cfg.lora.path or cfg.lora.path_low) and not sampler.use_lora:
        warnings.warn(f"sampler={sampler.name} runs the backbone without LoRA: lora.path is ignored")
    elif cfg.lora.path or cfg.lora.path_low:
        files = expert_lora_files(cfg.lora.path, cfg.lora.path_low,
                                  two_experts="transformer_2" in (cfg.backbone.get("components") or []))
        # two experts: each file gives its own expert's part (a diffusers file may hold both); one DiT: lora.expert
        experts = {"transformer": "high", "transformer_2": "low"} if len(files) == 2 else {"transformer": cfg.lora.expert}
        loras = {name: read_lora(f, experts[name]) for name, f in files.items()}
        lora_sha = "+".join(file_sha256(_lora_file(str(f))) for f in files.values())
    lora = loras.get("transformer")

    session = (OutputSession if writer else CountingSession)(
        out, hashed_config(cfg, request, lora_sha, sampler.extendable), fps=fps, save_latents=cfg.save_latents,
        schedule=[clip.to_dict() for clip in schedule] if sampler.extendable else None)
    if parallel is None:
        point = session.start(resume=cfg.resume)
    else:  # rank 0 opens (and checks) the directory; the others continue from what it found
        found = None
        if writer:
            try:
                found = (session.start(resume=cfg.resume), session.frames_total, session.tail)
            except Exception as err:  # every process must learn of it, or the others would wait forever
                found = err
        point, frames_total, tail = broadcast_from_rank0(found)
        if not writer:
            session.follow(point.chunks_done, frames_total, tail)
    prefix = int(video is not None)  # chunk 0 holds the existing video
    total = sampler.num_chunks(request) + prefix
    summary = {"out": str(out), "video": str(session.video_path), "clips_done": point.chunks_done,
               "clips_total": total, "frames": point.frames_total, "config_hash": session.hash}
    soundtrack = condition.soundtrack(inputs)
    if point.chunks_done >= total:
        log.info(f"[svi] nothing to do: {out} already holds all {total} clips ({session.video_path})")
        if soundtrack and writer:
            mux_audio(session.video_path, soundtrack)
        return summary
    if point.chunks_done:
        log.info(f"[svi] resuming {out} after clip {point.chunks_done} of {total}")

    stack = instantiate(cfg.backbone)
    if not stack.is_i2v and not getattr(sampler, "supports_t2v", False):
        raise ValueError(f"sampler={sampler.name} needs an image-to-video backbone; this one is text-to-video "
                         f"(use sampler=fifo or sampler=miga)")
    step = 2 * getattr(stack, "spatial_compression", 8)  # VAE x patch: 16 for Wan 2.1, 32 for Wan2.2-TI2V-5B
    if height % step or width % step:
        raise ValueError(f"this backbone needs height and width that are multiples of {step}, got {height}x{width}: "
                         f"set height/width (and max_width) accordingly")
    if stack.is_i2v and image is None:
        raise ValueError("an image-to-video backbone needs image=PATH (the first frame and reference)")
    if sampler.use_lora:  # the condition type's adapters (none for shot and film), then what the file holds
        condition.attach(stack.transformer)
    lowmem = LowMemSpec(**OmegaConf.to_container(cfg.lowmem, enum_to_str=True))
    if lowmem.offload == "none":
        stack = stack.to(device)
    if "transformer_2" in loras:  # the low-noise expert's LoRA
        n2 = merge_lora(stack.transformer_2, loras["transformer_2"], cfg.lora.scale, device=device)
        log.info(f"[svi] merged {loras['transformer_2'].format} LoRA into the low-noise expert ({n2} modules)")
    if lora is not None:
        n = merge_lora(stack.transformer, lora, cfg.lora.scale, device=device)
        used = set(condition.load_adapter_tensors(lora.extras))
        unused = sorted(set(lora.extras) - used)
        log.info(f"[svi] merged {lora.format} LoRA {cfg.lora.path} (rank {lora.rank}, {n} modules"
                 + (f", {len(used)} adapter tensors of condition '{condition.name}'" if used else "") + ")")
        if unused:
            warnings.warn(f"{cfg.lora.path}: {len(unused)} tensor(s) belong to no module of condition "
                          f"'{condition.name}' and are not used, e.g. {unused[:4]}")
    place_stack(stack, device, lowmem)  # after the merge: fp8 rounds W + BA once; offloading hooks last
    sampler.bind(stack)
    if parallel is not None:
        sampler.denoiser.parallel = parallel
        if type(sampler.denoiser.condition).guide is not Condition.guide:
            warnings.warn(f"condition '{condition.name}' overrides guide(): every process runs all its branches "
                          f"(no CFG-parallel speed-up); override guidance_branches/combine_guidance instead")
        log.info(f"[svi] CFG-parallel over {parallel.world_size} processes (this is rank {parallel.rank})")
    if video is not None and point.chunks_done == 0:  # chunk 0: the existing video, its last K as the tail
        motion = video.motion(sampler.num_motion_frames)
        frames = video.frames() if writer else np.empty((video.num_frames, 1, 1, 3), np.uint8)  # counted only
        session.commit(Chunk(index=-1, frames=frames, cursor=0, tail=len(motion),
                             carry={"motion": torch.from_numpy(motion)},
                             info={"source": "video", "video": str(video.path), "video_frames": video.num_frames}))
        point.chunks_done, point.carry = 1, {"motion": torch.from_numpy(motion)}
        log.info(f"[svi] {video.path}: {video.num_frames} frames written as chunk 0; the new clips continue "
                 f"from its last {len(motion)}")

    bar = tqdm(total=total, initial=point.chunks_done, desc="clips", unit="clip",
               disable=not (cfg.progress and writer))
    new = 0
    for chunk in sampler.stream(request, start=point.cursor, carry=point.carry):
        if cfg.num_frames_total is not None:  # the exact length: the last chunk is cut
            n = len(chunk.frames)
            chunk.frames = chunk.frames[:max(0, cfg.num_frames_total - session.frames_total)]
            chunk.tail = max(0, chunk.tail - (n - len(chunk.frames)))
        state = session.commit(chunk)
        new += 1
        bar.update(1)
        if on_commit is not None and writer:
            on_commit(chunk, state)
        if cfg.stop_after is not None and new >= cfg.stop_after and session.done < total:
            log.info(f"[svi] stop_after={cfg.stop_after}: stopping after clip {session.done} of {total}; "
                     f"continue with out={out} resume=true")
            break
    bar.close()
    if soundtrack and session.done and writer:
        mux_audio(session.video_path, soundtrack)  # the video's frames are copied, not re-encoded
    summary.update(clips_done=session.done, frames=session.video_frames)
    log.info(f"[svi] {session.done}/{total} clips, {session.video_frames} frames -> {session.video_path}")
    return summary


def expert_lora_files(path: str | None, path_low: str | None, two_experts: bool) -> dict[str, Path]:
    """Which LoRA file goes into which expert, checked before any weight is loaded.

    One DiT: `lora.path` (a file, or one of our adapter folders). Two experts (Wan2.2-A14B): `lora.path` the
    high-noise expert's file and `lora.path_low` the low-noise one's (SVI 2.0 Pro ships such pairs), or
    `lora.path` a folder holding `high_noise/` and `low_noise/` (what svi-train exports) and no `path_low`.
    """
    from svi.backbones.lora import EXPERT_DIRS

    root = Path(path).expanduser() if path else None
    split = root is not None and root.is_dir() and all((root / d).is_dir() for d in EXPERT_DIRS.values())
    if not two_experts:
        if path_low or split:
            raise ValueError(f"lora.path_low / a high_noise+low_noise adapter folder is for a two-expert backbone "
                             f"(Wan2.2-A14B); this backbone has one DiT: pass its LoRA as lora.path alone")
        return {"transformer": root}
    if split and not path_low:
        return {name: root / d for name, d in EXPERT_DIRS.items()}
    if not (path and path_low):
        raise ValueError("a two-expert backbone (Wan2.2-A14B) needs a LoRA per expert: lora.path=HIGH_NOISE_FILE "
                         "lora.path_low=LOW_NOISE_FILE, or lora.path=DIR with high_noise/ and low_noise/ (svi-train's "
                         f"adapter export); got lora.path={path} lora.path_low={path_low}")
    return {"transformer": root, "transformer_2": Path(path_low).expanduser()}


def _lora_file(path: str) -> Path:
    from svi.backbones.lora import ADAPTER_FILE

    p = Path(path).expanduser()
    return p / ADAPTER_FILE if p.is_dir() else p


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    generate(cfg)


if __name__ == "__main__":
    main()
