"""The demo model family's architectures (diffusers / transformers classes, SD 1.5 layout,
small widths) and how they are written to assets/models/.

Sizes are chosen so every fp16 file stays < 16 MB and the family ≤ 64 MB:
VAE 3.9 M params, text encoder 7.1 M (6.3 M of it the 49408-token embedding the real CLIP
vocabulary needs), UNet 5.9 M, each ControlNet 3.0 M.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "assets" / "tokenizer"
MODELS_DIR = ROOT / "assets" / "models"
BASE, INPAINT = "demo", "demo-inpaint"
CONTROLNETS = {"canny": "demo-controlnet-canny", "pose": "demo-controlnet-pose"}

# SD 1.x noise schedule: β_t on a scaled-linear ramp, β = linspace(√0.00085, √0.012, 1000)².
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# Shipped sampler: DDIM on SD 1.x's settings. Not PNDM: its 4th-order PLMS extrapolation of ε
# diverges on this model above CFG ~2.5 (held-out colour probe 1.00 at CFG 2, 0.30 at CFG 5),
# while DDIM, Euler and DPM++ stay at 1.00 up to CFG 7.5. clip_sample must be off (DDIM's default
# clips x̂_0 to [−1, 1]; these latents span about ±4.5); skip_prk_steps is kept for PNDM users,
# as SD 1.5's own scheduler_config.json keeps clip_sample for DDIM users.
SCHEDULER_CONFIG = dict(SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                        prediction_type="epsilon", timestep_spacing="leading")
SCHEDULER_EXTRA = dict(skip_prk_steps=True)

TEXT_HIDDEN = 128

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamples: f = 8 as SD, 128² → 16²
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 128, 128), layers_per_block=1, norm_num_groups=32, sample_size=128,
)

TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN, num_hidden_layers=4,
    num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_HIDDEN, hidden_act="quick_gelu",
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)

UNET_CONFIG = dict(
    sample_size=16, in_channels=4, out_channels=4,
    block_out_channels=(64, 128, 128), layers_per_block=1,
    # cross-attention at 16² and 8² (and in the 4² mid block): words bind to places.
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_HIDDEN, attention_head_dim=32, norm_num_groups=32,
)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(**VAE_CONFIG)


def build_text_encoder() -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def build_unet(in_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(**dict(UNET_CONFIG, in_channels=in_channels))


def load_tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


def inpaint_unet_from(base: UNet2DConditionModel) -> UNet2DConditionModel:
    """9-channel UNet [z_t, mask, masked-image latent] from the base, as SD-inpainting was
    made: the extra 5 input channels of conv_in start at zero, so it begins as the base."""
    unet = UNet2DConditionModel.from_config(dict(base.config, in_channels=9))
    state = base.state_dict()
    weight = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([weight, weight.new_zeros(weight.shape[0], 5, *weight.shape[2:])], dim=1)
    unet.load_state_dict(state)
    return unet


def load(cls, folder: Path, device="cpu"):
    """Load a component saved in fp16 as fp32 (for training or CPU use)."""
    return cls.from_pretrained(folder, torch_dtype=torch.float32).to(device)


def save_fp16(model, folder: Path) -> None:
    """Write an fp16 safetensors copy (default file name, so no `variant=`)."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    half = copy.deepcopy(model).to(torch.float16)
    for p in half.parameters():  # channels_last training leaves strided weights; files want contiguous
        p.data = p.data.contiguous()
    half.save_pretrained(folder, safe_serialization=True)


def save_pipeline(root: Path, vae, text_encoder, unet) -> None:
    """A full StableDiffusionPipeline folder: model_index.json, vae/, text_encoder/,
    tokenizer/, unet/, scheduler/ (no safety checker or feature extractor)."""
    root = Path(root)
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=load_tokenizer(), unet=unet,
                                   scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name, module in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet)):
        save_fp16(module, tmp / name)
    write_scheduler(tmp / "scheduler")
    shutil.rmtree(tmp / "tokenizer")  # ship the same vocab.json/merges.txt files as assets/tokenizer
    shutil.copytree(TOKENIZER_DIR, tmp / "tokenizer")
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)


def write_scheduler(folder: Path) -> None:
    """scheduler_config.json for DDIM, plus keys other SD schedulers read from the same file."""
    DDIMScheduler(**SCHEDULER_CONFIG).save_pretrained(folder)
    path = Path(folder) / "scheduler_config.json"
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **SCHEDULER_EXTRA), indent=2, sort_keys=True) + "\n")


def file_sizes(root: Path = MODELS_DIR) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(Path(root).rglob("*.safetensors"))}


def build_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """Trainable copy of the base encoder + zero convolutions; RGB control image at 128²."""
    return ControlNetModel.from_unet(unet, conditioning_channels=3)
