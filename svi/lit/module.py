"""ERFTModule: the LoRA-wrapped Wan DiT and the error-recycling loss.

The module owns the forward pass and the loss; it never changes the replay memory. It reads errors
through a read-only handle (`error_memory`, set by `ErrorReplayCallback` in `setup`) and returns the
errors it measured, detached, from `training_step`; the callback decides what to store. Everything
random (timestep, noise, injection coins, which error) comes from one CPU generator whose state is
saved in the checkpoint, so a resumed run continues the same random stream.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict
from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor, nn

from svi.backbones.lora import LoraSpec, attach_lora, init_lora_from
from svi.config import as_dataclass
from svi.erft import (ImageErrorRequest, InjectionConfig, WindowImageError, draw_injection, erft_step,
                      gate_on_memory, modulate_rows, sample_errors)
from svi.flow import FlowConfig, inference_sigmas, loss_weights, nearest_grid_index, to_timesteps, training_sigmas
from svi.utils.cadence import logs_this_step
from svi.utils.rank_state import gather_per_rank, own_rank_state


class ERFTModule(L.LightningModule):
    """Error-Recycling Fine-Tuning of a Wan I2V DiT (docs/method.md).

    Args:
        backbone: a `WanStack` (frozen; LoRA is attached here).
        condition: a `Condition` (svi/conditions/) that builds `y` and may attach adapters.
        lora, injection, flow: dicts / configs of `LoraSpec`, `InjectionConfig`, `FlowConfig`.
        image_error: where E_img comes from, an `ImageErrorSource` (or its config with `_target_`);
            None: the paper's `WindowImageError`.
        num_grids: N_test, the number of inference timesteps errors are bucketed by.
        optimizer: a partial optimizer (`_partial_: true`), completed with the trainable params.
        scheduler: an optional partial LR scheduler (e.g. `svi.lit.schedule.warmup_cosine`), per step.
        seed: base seed of the module's random stream (offset by the rank).
        gradient_checkpointing: recompute transformer blocks in backward (full-size models).
        offload_activations: keep the tensors saved for backward in (pinned) CPU memory, as the official
            scripts do (`torch.autograd.graph.save_on_cpu`); with gradient checkpointing these are the
            block inputs.
    """

    def __init__(self, backbone: nn.Module, condition, lora: Any = None, injection: Any = None, flow: Any = None,
                 num_grids: int = 50, optimizer: Callable | None = None, seed: int = 0,
                 gradient_checkpointing: bool = False, scheduler: Callable | None = None, image_error: Any = None,
                 offload_activations: bool = False):
        super().__init__()
        self.stack = backbone
        self.condition = condition
        self.lora_spec = as_dataclass(LoraSpec, lora)
        self.injection = as_dataclass(InjectionConfig, injection)
        self.flow = as_dataclass(FlowConfig, flow)
        self.image_error = _instantiate(image_error) if image_error is not None else WindowImageError()
        # Plain python values only: checkpoints are loaded with torch.load(weights_only=True).
        self.save_hyperparameters({"lora": asdict(self.lora_spec), "injection": asdict(self.injection),
                                   "flow": asdict(self.flow), "num_grids": num_grids, "seed": seed,
                                   "condition": repr(condition), "image_error": type(self.image_error).__name__,
                                   "gradient_checkpointing": gradient_checkpointing,
                                   "offload_activations": offload_activations})
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler  # optional partial: optimizer -> LR scheduler stepped every step
        self.seed = seed
        self.offload_activations = offload_activations

        experts = [dit for _, dit in getattr(self.stack, "experts", [("transformer", self.stack.transformer)])]
        for dit in experts:  # Wan 2.2 A14B: one LoRA per expert; each step trains the expert its timestep picks
            attach_lora(dit, self.lora_spec)
        # Condition adapters are attached after LoRA: peft's add_adapter freezes everything else.
        self.adapters = condition.attach(self.stack.transformer) or nn.ModuleList()
        if len(experts) > 1 and (len(self.adapters) or self.lora_spec.init_path):
            raise ValueError(f"condition '{condition.name}' adapters and lora.init_path are not supported on a "
                             f"two-expert backbone (Wan2.2-A14B): use condition=shot or film and a zero-initialised LoRA")
        if self.lora_spec.init_path:  # start from an existing LoRA (official Dance: UniAnimate-DiT's) and its adapters
            start = init_lora_from(self.stack.transformer, self.lora_spec.init_path, self.lora_spec)
            condition.load_adapter_tensors(start.extras)
        if gradient_checkpointing:
            for dit in experts:
                dit.enable_gradient_checkpointing()

        sigmas = training_sigmas(self.flow.num_train_timesteps, self.flow.shift)  # (1000,) descending
        self.register_buffer("train_sigmas", sigmas, persistent=False)
        self.register_buffer("train_weights", loss_weights(self.flow.loss_weight, sigmas), persistent=False)
        grid = to_timesteps(inference_sigmas(num_grids, self.flow.shift))  # (N_test,)
        self.register_buffer("grid_timesteps", grid, persistent=False)
        if self.injection.enabled:
            self.image_error.bind(self.stack, condition, self.flow, grid / 1000.0)

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
        """Bring a batch to latent form: `latents` (B,C,T,h,w), `y` (B,4+C,T,h,w), `text`, `image`, `extras`.

        Latent batches (synthetic data, latent caches) pass through; raw clips (`video` (B,3,F,H,W),
        `ref_image` (B,3,H,W), `caption`, the condition's raw `extras` and `draws`) are encoded with the
        frozen VAE / text / image encoders by the condition (`Condition.encode_clip`).
        """
        if "latents" in batch:
            return batch
        if "video" not in batch:
            raise ValueError(f"a training batch needs 'latents' (+ 'y', 'text') or raw 'video' + 'ref_image' + "
                             f"'caption'; got keys {sorted(batch)}")
        encoded = self.condition.encode_clip(self.stack, batch["video"], batch["ref_image"], batch["caption"],
                                             extras=batch.get("extras"), draws=batch.get("draws"))
        return {**batch, **encoded}

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        b = self.condition.training_inputs(self.prepare_batch(batch), self.generator)
        x0 = b["latents"].float()  # (B, C, T, h, w) clean X_vid
        y = b["y"].float()  # (B, 4 + C, T, h, w)
        B, g, dev = x0.shape[0], self.generator, x0.device
        if self.injection.enabled and self.injection.y_error_num > x0.shape[2]:
            raise ValueError(f"injection.y_error_num={self.injection.y_error_num} exceeds the {x0.shape[2]} latent "
                             f"frames of the training clips; lower it or train on longer clips (data.num_frames)")

        idx = torch.randint(0, len(self.train_sigmas), (B,), generator=g)  # uniform over the shifted grid
        sigma = self.train_sigmas.cpu()[idx]  # (B,)
        grid = nearest_grid_index(to_timesteps(sigma), self.grid_timesteps.cpu())  # (B,) bucket n
        noise = torch.randn(x0.shape, generator=g).to(dev)

        memory = self.error_memory
        inj = gate_on_memory(draw_injection(self.injection, B, g), memory, grid, self.image_error.ready(memory))
        e_vid, e_noi = sample_errors(memory, grid, inj, x0, self.injection, g)

        t = to_timesteps(sigma).to(dev)
        text, image, extras = b["text"], b.get("image"), b.get("extras") or {}

        def denoise(x_s: Tensor, y_in: Tensor) -> Tensor:
            return self.stack.velocity(x_s, y_in, t, text, image)

        def velocity(x_s: Tensor, y_in: Tensor, tt: Tensor) -> Tensor:  # no-grad passes of image-error sources
            with torch.no_grad():
                return self.stack.velocity(x_s, y_in, tt.to(dev), text, image)

        offload = torch.autograd.graph.save_on_cpu(pin_memory=x0.is_cuda) if self.offload_activations \
            else contextlib.nullcontext()
        with self.condition.forward_context(extras):
            e_img = self.image_error(ImageErrorRequest(x0=x0, y=y, select=inj.img.to(dev), grid=grid,
                                                       num_frames=self.injection.y_error_num, memory=memory,
                                                       velocity=velocity, generator=g, batch=b)) \
                if bool(inj.img.any()) else x0.new_zeros(B, x0.shape[1], self.injection.y_error_num, *x0.shape[3:])
            e_img = modulate_rows(e_img, inj.img, self.injection.error_modulate_factor, g)
            with offload:  # a latent-conditioned backbone (Wan 2.2 TI2V) leaves its given frames out of the loss
                res = erft_step(denoise, x0, noise, y, sigma.to(dev), e_vid, e_noi, e_img,
                                loss_mask=_loss_frame_mask(self.stack, y))
        weights = self.train_weights[idx.to(dev)]
        loss = (weights * res.loss).mean()

        log = dict(on_step=True, on_epoch=False, batch_size=B)
        self.log("train/loss", loss, prog_bar=True, **log)
        self.log("train/loss_unweighted", res.loss.mean(), **log)
        self.log("train/sigma", sigma.mean().item(), **log)
        out = {"loss": loss}
        clean = inj.clean(self.injection.clean_flag)
        if self.injection.enabled and logs_this_step(self._trainer):  # only on steps whose logs are written
            for name in ("vid", "noi", "img"):
                self.log(f"erft/inject/{name}", getattr(inj, name).float().mean().item(), **log)
            self.log("erft/inject/clean", clean.float().mean().item(), **log)
            self.log("erft/err_rms/vid", res.e_vid.pow(2).mean().sqrt(), **log)  # tensors: no GPU sync here
            self.log("erft/err_rms/noi", res.e_noi.pow(2).mean().sqrt(), **log)
        if self.injection.enabled:
            # Detached errors for the callback; ints (not bools) so every backend can all-gather them.
            out["erft"] = {"e_vid": res.e_vid, "e_noi": res.e_noi, "grid": grid.to(dev),
                           "clean": clean.long().to(dev)}
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


def _loss_frame_mask(stack, y: Tensor) -> Tensor | None:
    """(B, 1, T, 1, 1): 0 on latent frames the backbone takes as given (Wan 2.2 TI2V), None for the others."""
    fn = getattr(stack, "loss_frame_mask", None)
    return fn(y) if fn is not None else None


def _instantiate(node: Any) -> Any:
    """An object, or a config with `_target_` (a module built from python rather than by Hydra)."""
    if isinstance(node, dict) or hasattr(node, "keys"):
        from hydra.utils import instantiate

        return instantiate(node)
    return node
