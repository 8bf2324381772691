"""Single-file (original LDM layout) export: tests/ldm_checkpoint.py.

The reader on the other side is diffusers' own loader (`from_single_file` and the
convert_ldm_* functions it uses), the same code path the app takes for a user's `.safetensors`.
Everything runs offline: the network is switched off for each test, not just the Hub flag.
"""
from __future__ import annotations

import json
import socket
from collections import Counter

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    infer_diffusers_model_type,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from ldm_checkpoint import save_single_file, to_ldm_state_dict
from tiny_sd import ROOT, save_tiny_model, tiny_pipeline, tiny_text_encoder, tiny_unet, tiny_vae

SD15_CONFIGS = ROOT / "assets" / "configs" / "sd15"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Hub offline flag on, and any TCP connect / DNS lookup fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def refuse(*args, **kwargs):
        raise RuntimeError(f"network access attempted: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def assert_same_params(expected: torch.nn.Module, actual: torch.nn.Module):
    a, b = expected.state_dict(), actual.state_dict()
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


def assert_round_trips_through_diffusers(unet, vae, text_encoder):
    """diffusers' own LDM->diffusers converters give back exactly the original state dicts."""
    ldm = to_ldm_state_dict(unet, vae, text_encoder)
    for module, back in (
        (unet, convert_ldm_unet_checkpoint(ldm, dict(unet.config))),
        (vae, convert_ldm_vae_checkpoint(ldm, dict(vae.config))),
        (text_encoder, {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()}),
    ):
        ref = module.state_dict()
        assert set(back) == set(ref)
        assert all(back[k].shape == ref[k].shape and torch.equal(back[k], ref[k]) for k in ref)
    return ldm


def image(pipe, seed=0):
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        "a red cube on a table",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    ).images


# --------------------------------------------------------------------------------------------
# round trip through from_single_file
# --------------------------------------------------------------------------------------------


def test_round_trip_is_exact_and_generates_the_same_image(tmp_path):
    folder = save_tiny_model(tmp_path / "diffusers")
    original = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    path = save_single_file(original, tmp_path / "model.safetensors", dtype=None)

    loaded = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)

    for name in ("unet", "vae", "text_encoder"):
        assert_same_params(getattr(original, name), getattr(loaded, name))
    assert type(loaded.scheduler) is type(original.scheduler)
    assert loaded.safety_checker is None
    np.testing.assert_array_equal(image(original), image(loaded))


def test_file_layout_matches_the_original_checkpoints(tmp_path):
    pipe = tiny_pipeline()
    path = save_single_file(pipe.components, tmp_path / "m.safetensors")  # default: fp16
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        prefixes = Counter(k.split(".")[0] for k in keys)
        assert set(prefixes) == {"model", "first_stage_model", "cond_stage_model"}
        assert all(f.get_slice(k).get_dtype() == "F16" for k in keys)
        # LDM's VAE attention is 1x1 convs; diffusers' reader and A1111/ComfyUI accept this shape
        assert f.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape() == [32, 32, 1, 1]
        assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
        assert torch.equal(f.get_tensor("model.diffusion_model.input_blocks.0.0.weight"),
                           pipe.unet.conv_in.weight.detach().half())
    n_params = sum(len(getattr(pipe, n).state_dict()) for n in ("unet", "vae", "text_encoder"))
    assert len(keys) == n_params
    # diffusers sniffs the SD family from these keys when no config is given
    assert infer_diffusers_model_type(load_file(str(path))) == "v1"


# --------------------------------------------------------------------------------------------
# the mapping follows the config, not SD 1.5's sizes
# --------------------------------------------------------------------------------------------

UNET_VARIANTS = {
    "tiny": dict(),
    "2-layers-3-levels-linear-proj-deep-transformer": dict(
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=2,
        use_linear_projection=True,
    ),
    "4-levels-all-attention": dict(
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 4,
        up_block_types=("CrossAttnUpBlock2D",) * 4,
    ),
}


def make_unet(**overrides) -> UNet2DConditionModel:
    torch.manual_seed(0)
    config = dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    )
    config.update(overrides)
    return UNet2DConditionModel(**config)


@pytest.mark.parametrize("variant", UNET_VARIANTS)
def test_unet_variants_map_back_exactly(variant):
    assert_round_trips_through_diffusers(make_unet(**UNET_VARIANTS[variant]), tiny_vae(), tiny_text_encoder())


def test_vae_variant_maps_back_exactly():
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=8, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    ldm = assert_round_trips_through_diffusers(tiny_unet(), vae, tiny_text_encoder())
    assert "first_stage_model.decoder.up.2.block.2.conv1.weight" in ldm  # 3 levels x (2 + 1) resnets
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in ldm  # full-res level: none


def test_nine_channel_inpainting_unet(tmp_path):
    unet = tiny_unet(in_channels=9, seed=1)
    pipe = tiny_pipeline()
    ldm = assert_round_trips_through_diffusers(unet, pipe.vae, pipe.text_encoder)
    assert ldm["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    assert infer_diffusers_model_type(ldm) == "inpainting"
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    assert len(back) == len(unet.state_dict())
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in unet.state_dict().items()}

    # Loading it with a 4-channel config folder: num_in_channels=9 (maps to the UNet only)
    folder = save_tiny_model(tmp_path / "diffusers")
    path = save_single_file({"unet": unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder},
                            tmp_path / "inpaint.safetensors", dtype=None)
    loaded = StableDiffusionInpaintPipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, num_in_channels=9)
    assert_same_params(unet, loaded.unet)
    assert_same_params(pipe.vae, loaded.vae)


# --------------------------------------------------------------------------------------------
# clear errors
# --------------------------------------------------------------------------------------------


def clip_with_projection():
    config = tiny_text_encoder().config
    return CLIPTextModelWithProjection(config)


def with_extra_parameter(module):
    module.register_parameter("adapter_scale", torch.nn.Parameter(torch.ones(1)))
    return module


UNSUPPORTED = {
    "per-block layers_per_block": (lambda: dict(unet=make_unet(layers_per_block=(1, 2))), "layers_per_block"),
    "no mid block": (lambda: dict(unet=make_unet(mid_block_type=None)), "mid_block_type"),
    "class embedding": (lambda: dict(unet=make_unet(class_embed_type="timestep")), "class_embed_type"),
    "SDXL text_time embedding": (
        lambda: dict(unet=make_unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                                    projection_class_embeddings_input_dim=48)),
        "addition_embed_type",
    ),
    "simple-cross-attn block": (
        lambda: dict(unet=make_unet(down_block_types=("SimpleCrossAttnDownBlock2D", "DownBlock2D"))),
        "SimpleCrossAttnDownBlock2D",
    ),
    "VAE without mid attention": (
        lambda: dict(vae=AutoencoderKL(block_out_channels=(8, 8), norm_num_groups=8, mid_block_add_attention=False,
                                       down_block_types=("DownEncoderBlock2D",) * 2,
                                       up_block_types=("UpDecoderBlock2D",) * 2)),
        "mid_block_add_attention",
    ),
    "parameter outside any mapped module": (lambda: dict(unet=with_extra_parameter(tiny_unet())), "no place"),
    "text encoder with projection": (lambda: dict(text_encoder=clip_with_projection()), "CLIPTextModelWithProjection"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_component_is_a_clear_error(case, tmp_path):
    build, fragment = UNSUPPORTED[case]
    parts = {"unet": tiny_unet(), "vae": tiny_vae(), "text_encoder": tiny_text_encoder(), **build()}
    with pytest.raises(ValueError, match=fragment):
        save_single_file(parts, tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_arguments_are_clear_errors(tmp_path):
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_single_file(pipe, tmp_path / "model.ckpt")
    with pytest.raises(ValueError, match="text_encoder"):
        save_single_file({"unet": pipe.unet, "vae": pipe.vae}, tmp_path / "m.safetensors")


# --------------------------------------------------------------------------------------------
# offline loading without config=, and the shipped SD 1.5 configs
# --------------------------------------------------------------------------------------------


def test_offline_without_config_fails_fast_instead_of_downloading(tmp_path):
    """No config=: diffusers wants stable-diffusion-v1-5/stable-diffusion-v1-5's configs from the Hub
    (even with local_files_only=True it retries with downloads on). Offline that is an OSError,
    raised before any connection is tried; the app must pass config= a local folder."""
    path = save_single_file(tiny_pipeline(), tmp_path / "m.safetensors")
    with pytest.raises(OSError, match="offline|outgoing traffic has been disabled|HF_HUB_OFFLINE"):
        StableDiffusionPipeline.from_single_file(str(path), local_files_only=True)


def hub_flag_off(monkeypatch):
    """As in an app started without HF_HUB_OFFLINE: only the socket guard stands in the way."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def test_local_files_only_alone_still_goes_online_without_config(tmp_path, monkeypatch):
    """The hazard behind "always pass config=": diffusers turns local_files_only=True back off
    to fetch the default repo's configs when they are not cached (loaders/single_file.py)."""
    path = save_single_file(tiny_pipeline(), tmp_path / "m.safetensors")
    hub_flag_off(monkeypatch)
    with pytest.raises(RuntimeError, match="network access attempted"):
        StableDiffusionPipeline.from_single_file(str(path), local_files_only=True)


def test_config_folder_loads_without_any_network_even_with_the_hub_flag_off(tmp_path, monkeypatch):
    folder = save_tiny_model(tmp_path / "diffusers")
    path = save_single_file(tiny_pipeline(), tmp_path / "m.safetensors")
    hub_flag_off(monkeypatch)
    pipe = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True)
    assert pipe.unet.config.in_channels == 4


def sd15_skeleton(in_channels: int = 4):
    """Full-size SD 1.5 modules from assets/configs/sd15 with weights on the meta device (no RAM)."""
    unet_config = dict(UNet2DConditionModel.load_config(SD15_CONFIGS, subfolder="unet"), in_channels=in_channels)
    with init_empty_weights():
        return dict(
            unet=UNet2DConditionModel.from_config(unet_config),
            vae=AutoencoderKL.from_config(AutoencoderKL.load_config(SD15_CONFIGS, subfolder="vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(SD15_CONFIGS, subfolder="text_encoder")),
        )


def test_sd15_configs_give_the_sd15_checkpoint_layout():
    parts = sd15_skeleton()
    assert sum(p.numel() for p in parts["unet"].parameters()) == 859_520_964  # SD 1.5's UNet
    ldm = to_ldm_state_dict(**parts)
    # v1-5-pruned-emaonly: 686 UNet + 248 VAE + 196 CLIP tensors (+ CLIP's position_ids buffer,
    # which transformers no longer saves and no loader needs)
    assert Counter(k.split(".")[0] for k in ldm) == {"model": 686, "first_stage_model": 248, "cond_stage_model": 196}
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    for key, shape in {
        "model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3),
        "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    }.items():
        assert shapes[key] == shape, key
    assert infer_diffusers_model_type(ldm) == "v1"
    assert infer_diffusers_model_type(to_ldm_state_dict(**sd15_skeleton(in_channels=9))) == "inpainting"
    # and diffusers' readers accept every key back (shapes only: the weights are on meta)
    back = convert_ldm_unet_checkpoint(ldm, dict(parts["unet"].config))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in parts["unet"].state_dict().items()}
    back = convert_ldm_vae_checkpoint(ldm, dict(parts["vae"].config))
    assert {k: v.shape for k, v in back.items()} == {k: v.shape for k, v in parts["vae"].state_dict().items()}
    assert len(convert_ldm_clip_checkpoint(ldm)) == 196


def test_sd15_config_folder_is_a_complete_offline_pipeline_config():
    index = json.loads((SD15_CONFIGS / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert StableDiffusionPipeline.load_config(SD15_CONFIGS)["unet"] == ["diffusers", "UNet2DConditionModel"]
    tokenizer = CLIPTokenizer.from_pretrained(SD15_CONFIGS / "tokenizer")
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def materialize(module: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Give meta parameters random fp16 values (much faster than the models' own init)."""
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.device.type == "meta":
                data = torch.empty(param.shape, dtype=torch.float16).normal_(0, 0.02, generator=generator)
                sub._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
    return module


@pytest.mark.slow
def test_full_size_sd15_checkpoint_loads_with_shipped_configs(tmp_path):
    """~1.07 B random params (fp16, 2.1 GB file): about 25 s and 5 GB RAM on the 2-core CPU box."""
    generator = torch.Generator().manual_seed(0)
    parts = {name: materialize(module, generator) for name, module in sd15_skeleton().items()}
    path = save_single_file(parts, tmp_path / "sd15.safetensors", dtype=None)

    loaded = StableDiffusionPipeline.from_single_file(
        str(path), config=str(SD15_CONFIGS), local_files_only=True, torch_dtype=torch.float16)

    for name, module in parts.items():
        assert_same_params(module, getattr(loaded, name))
    assert loaded.vae.config.scaling_factor == 0.18215
    assert loaded.tokenizer.model_max_length == 77
