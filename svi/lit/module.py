"""ERFTModule: the LoRA-wrapped Wan DiT and the error-recycling loss.

The module owns the forward pass and the loss; it never changes the replay memory. It reads errors
through a read-only handle (`error_memory`, set by `ErrorReplayCallback` in `setup`) and returns the
errors it measured, detached, from `training_step`; the callback decides what to store. Everything
random (timestep, noise, injection coins, which error) comes from one CPU generator whose state is
saved in the checkpoint, so a resumed run continues the same random stream.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor, nn

from svi.backbones.lora import LoraSpec, attach_lora
from svi.config import as_dataclass
from svi.erft import (PER_SAMPLE_SOURCES, InjectionConfig, draw_injection, erft_step, gate_on_memory,
                      img_buckets, last_frames_error, rollout_image_error, sample_errors, self_image_error)
from svi.flow import (FlowConfig, inference_sigmas, loss_weights, nearest_grid_index, to_timesteps,
                      training_sigmas)
from svi.lit.cadence import logs_this_step
from svi.lit.rank_state import gather_per_rank, own_rank_state


class ERFTModule(L.LightningModule):
    """Error-Recycling Fine-Tuning of a Wan I2V DiT (SPEC §3).

    Args:
        backbone: a `WanStack` (frozen; LoRA is attached here).
        condition: an `I2VCondition` (or subclass) that builds `y` and may attach adapters.
        lora, injection, flow: dicts / configs of `LoraSpec`, `InjectionConfig`, `FlowConfig`.
        num_grids: N_test, the number of inference timesteps errors are bucketed by.
        optimizer: a partial optimizer (`_partial_: true`), completed with the trainable params.
        scheduler: an optional partial LR scheduler (e.g. `svi.lit.schedule.warmup_cosine`), per step.
        seed: base seed of the module's random stream (offset by the rank).
        gradient_checkpointing: recompute transformer blocks in backward (full-size models).
    """

    def __init__(self, backbone: nn.Module, condition, lora: Any = None, injection: Any = None, flow: Any = None,
                 num_grids: int = 50, optimizer: Callable | None = None, seed: int = 0,
                 gradient_checkpointing: bool = False, scheduler: Callable | None = None):
        super().__init__()
        self.stack = backbone
        self.condition = condition
        self.lora_spec = as_dataclass(LoraSpec, lora)
        self.injection = as_dataclass(InjectionConfig, injection)
        self.flow = as_dataclass(FlowConfig, flow)
        # Plain python values only: checkpoints are loaded with torch.load(weights_only=True).
        self.save_hyperparameters({"lora": asdict(self.lora_spec), "injection": asdict(self.injection),
                                   "flow": asdict(self.flow), "num_grids": num_grids, "seed": seed,
                                   "condition": repr(condition), "gradient_checkpointing": gradient_checkpointing})
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler  # optional partial: optimizer -> LR scheduler stepped every step
        self.seed = seed

        attach_lora(self.stack.transformer, self.lora_spec)
        # Condition adapters are attached after LoRA: peft's add_adapter freezes everything else.
        self.adapters = nn.ModuleList(condition.attach(self.stack.transformer))
        if gradient_checkpointing:
            self.stack.transformer.enable_gradient_checkpointing()

        sigmas = training_sigmas(self.flow.num_train_timesteps, self.flow.shift)  # (1000,) descending
        self.register_buffer("train_sigmas", sigmas, persistent=False)
        self.register_buffer("train_weights", loss_weights(self.flow.loss_weight, sigmas), persistent=False)
        grid = to_timesteps(inference_sigmas(num_grids, self.flow.shift))  # (N_test,)
        self.register_buffer("grid_timesteps", grid, persistent=False)
        self.img_from = img_buckets(self.injection, grid / 1000.0)  # buckets E_img may come from (None: all)
        self.img_map = (last_frames_error(self.stack, condition.num_motion_frames, self.injection.img_source)
                        if self.injection.enabled and self.injection.img_source != "window" else None)
        steps = self.injection.img_rollout_steps or self.flow.num_inference_steps
        self.register_buffer("rollout_sigmas", inference_sigmas(steps, self.flow.shift), persistent=False)

        self.generator = torch.Generator().manual_seed(seed)
        self.error_memory = None  # read-only handle, set by ErrorReplayCallback
        self.strict_loading = False  # checkpoints hold trainable tensors only

    # ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Different ranks must draw different noise and coins; the offset keeps runs reproducible.
        self.generator.manual_seed(self.seed + 1_000_003 * self.global_rank)

    def on_train_start(self) -> None:
        if self.injection.enabled and self.error_memory is None:
            warnings.warn("injection.enabled is true but no ErrorReplayCallback gave the module a memory: "
                          "nothing will be injected (add callbacks.error_replay)")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self):
        factory = self.optimizer_factory or (lambda params: torch.optim.AdamW(params, lr=1e-4))
        optimizer = factory(params=self.trainable_parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}}

    # ------------------------------------------------------------------------------------------
    def prepare_batch(self, batch: dict) -> dict:
        """Bring a batch to latent form: `latents` (B,16,T,h,w), `y` (B,20,T,h,w), `text`, `image`.

        Latent batches (synthetic data, latent caches) pass through; raw clips (`video` (B,3,F,H,W),
        `ref_image` (B,3,H,W), `caption`) are encoded with the frozen VAE / text / image encoders.
        """
        if "latents" in batch:
            return batch
        if "video" not in batch:
            raise ValueError(f"a training batch needs 'latents' (+ 'y', 'text') or raw 'video' + 'ref_image' + "
                             f"'caption'; got keys {sorted(batch)}")
        return {**batch, **self.condition.encode_clip(self.stack, batch["video"], batch["ref_image"], batch["caption"])}

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        b = self.prepare_batch(batch)
        x0 = b["latents"].float()  # (B, 16, T, h, w) clean X_vid
        B, g, dev = x0.shape[0], self.generator, x0.device

        idx = torch.randint(0, len(self.train_sigmas), (B,), generator=g)  # uniform over the shifted grid
        sigma = self.train_sigmas.cpu()[idx]  # (B,)
        grid = nearest_grid_index(to_timesteps(sigma), self.grid_timesteps.cpu())  # (B,) bucket n
        noise = torch.randn(x0.shape, generator=g).to(dev)

        source = self.injection.img_source
        per_sample = source in PER_SAMPLE_SOURCES
        inj = gate_on_memory(draw_injection(self.injection, B, g), self.error_memory, grid, self.img_from,
                             img_needs_memory=not per_sample)
        e_vid, e_noi, e_img = sample_errors(self.error_memory, grid, inj, x0, self.injection, g, self.img_from,
                                           None if per_sample else self.img_map)

        t = to_timesteps(sigma).to(dev)
        text, image = b["text"], b.get("image")

        def denoise(x_s: Tensor, y: Tensor) -> Tensor:
            return self.stack.velocity(x_s, y, t, text, image)

        with self.condition.forward_context(b):
            if per_sample and bool(inj.img.any()):  # per-sample E_img: no-grad passes on this batch
                vel = lambda x_s, y, tt: self.stack.velocity(x_s, y, tt.to(dev), text, image)  # noqa: E731
                if source == "self":  # one forward, one-step error at an E_img noise level
                    e_img = self_image_error(vel, x0, b["y"].float(), inj.img.to(dev), self.injection,
                                             self.grid_timesteps / 1000.0, self.img_map, g)
                else:  # rollout: the sampler's whole trajectory, the generated clip's error
                    e_img = rollout_image_error(vel, x0, b["y"].float(), inj.img.to(dev), self.injection,
                                                self.rollout_sigmas, self.img_map, g)
            res = erft_step(denoise, x0, noise, b["y"].float(), sigma.to(dev), e_vid, e_noi, e_img)
        weights = self.train_weights[idx.to(dev)]
        loss = (weights * res.loss).mean()

        log = dict(on_step=True, on_epoch=False, batch_size=B)
        self.log("train/loss", loss, prog_bar=True, **log)
        self.log("train/loss_unweighted", res.loss.mean(), **log)
        self.log("train/sigma", sigma.mean().item(), **log)
        out = {"loss": loss}
        if self.injection.enabled and logs_this_step(self._trainer):  # only on steps whose logs are written
            for name in ("vid", "noi", "img"):
                self.log(f"erft/inject/{name}", getattr(inj, name).float().mean().item(), **log)
            self.log("erft/inject/clean", inj.clean.float().mean().item(), **log)
            self.log("erft/err_rms/vid", res.e_vid.pow(2).mean().sqrt(), **log)  # tensors: no GPU sync here
            self.log("erft/err_rms/noi", res.e_noi.pow(2).mean().sqrt(), **log)
        if self.injection.enabled:
            # Detached errors for the callback; ints (not bools) so every backend can all-gather them.
            out["erft"] = {"e_vid": res.e_vid, "e_noi": res.e_noi, "grid": grid.to(dev),
                           "clean": inj.clean.long().to(dev)}
        return out

    # ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only trainable tensors of the model; optimizer, loops and callback states stay."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # Every rank's stream (collective; rank 0 writes the file), so each rank resumes its own.
        checkpoint["svi_generator_per_rank"] = gather_per_rank(self.generator.get_state())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        world = self._trainer.world_size if self._trainer is not None else 1
        state = own_rank_state(checkpoint.get("svi_generator_per_rank", []), self.global_rank, world)
        if state is not None:
            self.generator.set_state(state)
        else:  # another world size: fresh, distinct per-rank streams
            step = checkpoint.get("global_step", 0)
            self.generator.manual_seed(self.seed + 1_000_003 * self.global_rank + 7 * step)
