"""Request bodies as A1111 declares them (names and defaults), for validation and /docs.

Unknown keys are accepted (clients send their extensions' fields) and ignored; what each
known key does here is decided by the table in fields.py."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Txt2ImgBody(_Body):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(None, description="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M' (GET /sdapi/v1/samplers)")
    scheduler: str | None = Field(None, description="schedule type: 'Automatic' or 'Karras' (GET /sdapi/v1/schedulers)")
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = Field(None, description="DDIM η (0 deterministic, 1 DDPM-like); used by DDIM")
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(
        None, description="sd_model_checkpoint (switches the model), eta_ddim; CLIP_stop_at_last_layers and sd_vae at their defaults")
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    script_name: str | None = Field(None, description="SD Studio extras: 'repaint' (script_args [r, j]) or 'cfg off'")
    script_args: list = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = Field({}, description="{'controlnet': {'args': [unit, …]}} as the ControlNet extension")
    infotext: str | None = None
    cfg: bool | None = Field(None, description="SD Studio extra: false = CFG off (one UNet pass per step, no negative prompt)")


class Img2ImgBody(Txt2ImgBody):
    init_images: list[str] | None = Field(None, description="base64 images; the first one is used")
    resize_mode: int | str = Field(0, description="0 just resize, 1 crop and resize, 2 resize and fill")
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, description="base64 mask (white = inpaint): turns img2img into inpainting")
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int | str = Field(0, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool | int = Field(True, description="true: only the masked area (+ padding), at full size")
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int | bool = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float = 0.75
    repaint_r: int | None = Field(None, description="SD Studio extra: RePaint resamplings per step")
    repaint_j: int | None = Field(None, description="SD Studio extra: RePaint jump length")
    inpaint_mode: str | None = Field(None, description="SD Studio extra: 'RePaint' (any model) or 'inpainting model'")
    inpaint_model: str | None = Field(None, description="SD Studio extra: the 9-channel UNet for 'inpainting model'")


class PngInfoBody(_Body):
    image: str


class DetectBody(_Body):
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = []
    controlnet_images: list[str] | None = None  # the name some clients use
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
