"""Extra modules loaded on demand next to a base model: ControlNets (cached, size-capped) and
the 9-channel inpainting UNet. Each is checked against the base so that a model made for
another architecture is a clear error, not a shape crash halfway through sampling."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from .core.errors import ModelLoadError
from .loading import ModelSource, load_module, resolve_source

CONTROLNET_WHAT_TO_PASS = "Pass a ControlNet folder (containing config.json), a single .safetensors file, or a Hub id."
INPAINT_WHAT_TO_PASS = ("Pass an inpainting UNet: a diffusers pipeline folder or UNet folder (config.json with "
                        "in_channels 9), a single .safetensors file, or a Hub id.")


def _architecture_mismatch(module_config, unet_config, keys) -> list[str]:
    return [f"{key} {module_config.get(key)} vs the base model's {unet_config.get(key)}"
            for key in keys if module_config.get(key) != unet_config.get(key)]


def check_controlnet(controlnet, unet, name: str) -> None:
    """A ControlNet adds residuals into the UNet's skip connections and mid block: widths,
    depths and the text-embedding size must match the base (SD 1.x and 2.x differ here)."""
    keys = ("block_out_channels", "layers_per_block", "cross_attention_dim")
    problems = _architecture_mismatch(dict(controlnet.config), dict(unet.config), keys)
    if problems:
        raise ModelLoadError(f"ControlNet {name!r} was made for another base architecture ({'; '.join(problems)}). "
                             "Use a ControlNet trained for the loaded base model.")


def check_inpaint_unet(unet, base_unet, name: str) -> None:
    """SD-inpainting's UNet reads [z_t (4), mask (1), masked-image latent (4)] = 9 channels."""
    if unet.config.in_channels != 9:
        raise ModelLoadError(f"{name!r} is not an inpainting model: its UNet takes {unet.config.in_channels} input "
                             "channels, an inpainting UNet takes 9 ([latent, mask, masked-image latent]). "
                             "Use RePaint mode with this model instead, or load an SD inpainting checkpoint.")
    problems = _architecture_mismatch(dict(unet.config), dict(base_unet.config), ("cross_attention_dim", "out_channels"))
    if problems:
        raise ModelLoadError(f"Inpainting model {name!r} does not fit the loaded base model ({'; '.join(problems)}).")


class ControlNetCache:
    """Least-recently-used ControlNets on the manager's device, at most `capacity` of them."""

    def __init__(self, capacity: int = 4):
        self.capacity = max(1, capacity)
        self._models: OrderedDict[str, ControlNetModel] = OrderedDict()

    def get(self, source_text: str, unet, device: torch.device, dtype: torch.dtype, allow_download: bool,
            variant: str | None = None) -> ControlNetModel:
        source = resolve_source(source_text, "config.json", "a ControlNet", CONTROLNET_WHAT_TO_PASS)
        key = source.location
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = load_module(ControlNetModel, source, dtype, allow_download, "a ControlNet", variant)
        check_controlnet(model, unet, source.name)
        model.to(device).eval()
        self._models[key] = model
        while len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return model

    def loaded(self) -> list[ControlNetModel]:
        return list(self._models.values())

    def clear(self) -> None:
        self._models.clear()


def load_inpaint_unet(source_text: str, base_unet, device: torch.device, dtype: torch.dtype, allow_download: bool,
                      single_file_config: str | None, variant: str | None = None) -> tuple[UNet2DConditionModel, ModelSource]:
    """A 9-channel UNet from a UNet folder, a pipeline folder (its unet/), an SD-inpainting
    single file (built from single_file_config's UNet config with 9 input channels) or a Hub id."""
    path = Path((source_text or "").strip()).expanduser()
    if path.is_dir() and (path / "unet" / "config.json").is_file():
        source, kwargs = ModelSource("folder", str(path)), {"subfolder": "unet"}
    else:
        source = resolve_source(source_text, "config.json", "a UNet", INPAINT_WHAT_TO_PASS)
        kwargs = {"subfolder": "unet"} if source.kind == "hub" else {}
        if source.kind == "single_file":
            if not single_file_config:
                raise ModelLoadError(f"{source.location!r} is a single file: pass --single-file-config with a diffusers "
                                     "folder of its architecture (assets/configs/sd15 serves SD 1.x).")
            kwargs = {"config": single_file_config, "subfolder": "unet", "in_channels": 9}
    unet = load_module(UNet2DConditionModel, source, dtype, allow_download, "an inpainting UNet", variant, **kwargs)
    check_inpaint_unet(unet, base_unet, source.name)
    return unet.to(device).eval(), source
