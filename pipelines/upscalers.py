"""Model upscalers for the hires fix (ESRGAN, Real-ESRGAN, SwinIR, … whatever spandrel
recognises from a .pth/.safetensors state dict), offered only when their weights are on disk
(catalog.upscaler_models). One is kept loaded at a time.

A model scales by a fixed factor (×2, ×4): it runs as many times as the target needs (as
A1111 does), then Lanczos brings the result to the exact final size, covered and
centre-cropped like the other upscalers."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .core.errors import GenerationError, ModelLoadError

MAX_PASSES = 4  # a ×2 model reaches ×16: more would only be a mistake in the request


class UpscalerCache:
    def __init__(self):
        self._loaded: tuple[Path, object] | None = None

    def get(self, path: Path, device: torch.device):
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = None
            self._loaded = (path, load_upscaler(path, device))
        return self._loaded[1]

    def clear(self) -> None:
        self._loaded = None


def load_upscaler(path: Path, device: torch.device):
    try:
        from spandrel import ImageModelDescriptor, ModelLoader
    except ImportError as error:  # listed only when weights exist; the package is in requirements.txt
        raise ModelLoadError("Model upscalers need the spandrel package (pip install -r requirements.txt).") from error
    try:
        model = ModelLoader(device=device).load_from_file(str(path))
    except Exception as error:  # spandrel raises many kinds for files it does not recognise
        raise ModelLoadError(f"The upscaler {path.stem!r} could not be loaded: not an upscaler architecture this app "
                             "recognises.") from error
    if not isinstance(model, ImageModelDescriptor) or model.scale < 2:
        raise ModelLoadError(f"The model {path.stem!r} is not an image upscaler.")
    return model.eval()


@torch.no_grad()
def upscale_with_model(model, image: Image.Image, width: int, height: int) -> Image.Image:
    """image → (width, height): the model as many times as needed, then Lanczos + centre crop."""
    device = next(model.model.parameters()).device
    need = max(width / image.width, height / image.height)
    passes = max(1, min(MAX_PASSES, math.ceil(math.log(max(need, 1.0)) / math.log(model.scale) - 1e-9)))
    if model.scale ** MAX_PASSES < need:
        raise GenerationError(f"Upscaling ×{need:.1f} is more than this upscaler does in {MAX_PASSES} passes.")
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None].to(device)
    for _ in range(passes):
        x = model(x).clamp(0, 1)
    out = Image.fromarray((x[0].permute(1, 2, 0).float().cpu().numpy() * 255 + 0.5).astype(np.uint8))
    return ImageOps.fit(out, (width, height), Image.LANCZOS)
