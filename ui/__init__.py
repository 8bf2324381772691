"""Gradio side of the studio: one module per tab, each with build(); never imports torch.

build_app assembles the tabs around one GenerationService (manager + limits + outputs)."""
from __future__ import annotations

import os

import gradio as gr

from . import controlnet, img2img, inpaint, lab, models, pnginfo, txt2img, uploads
from pipelines.catalog import upscaler_models

from .common import GenerationService
from .errors import StudioBlocks
from .limits import HostLimits
from .outputs import OutputStore


def build_app(manager, settings, startup_message: str = "") -> gr.Blocks:
    # What a host trusts and accepts (see docs/security.md): uploads, model fields, limits.
    uploads.POLICY.max_megapixels = settings.max_upload_megapixels
    uploads.MODELS.catalogue_only = bool(os.environ.get("SPACE_ID")) or not settings.allow_model_change
    store = OutputStore(settings.outputs_dir, settings.save_outputs)
    host = HostLimits(settings.max_prompt_chars, settings.max_grid_megapixels)
    service = GenerationService(manager, settings.limits, store, host, grid_for_batches=settings.grid_for_batches)
    status_text = " ".join(filter(None, [startup_message or manager.describe(), store.startup_problem()]))
    size = manager.native_size
    with StudioBlocks(title="SD Studio", analytics_enabled=False, delete_cache=settings.delete_cache) as app:
        status = gr.Markdown(status_text, elem_id="status")
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i = txt2img.build(service, size, settings.styles_file, list(upscaler_models(settings.upscaler_dir)))
            with gr.Tab("img2img", id="img2img"):
                i2i = img2img.build(service, size, settings.styles_file)
            with gr.Tab("Inpaint", id="inpaint"):
                inpaint.build(service, size)
            with gr.Tab("ControlNet", id="controlnet"):
                controlnet.build(service, size)
            with gr.Tab("Diffusion lab", id="lab"):
                lab.build(service)
            with gr.Tab("PNG info", id="pnginfo"):
                pnginfo.build(tabs, t2i, i2i)
            with gr.Tab("Models", id="models"):
                models.build(manager, settings.allow_model_change, status, service.gpu_event)
    service.blocks = app
    return app
