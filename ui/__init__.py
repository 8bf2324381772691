"""Gradio side of the studio: one module per tab, each with build(); never imports torch.

build_app assembles the tabs around one GenerationService (manager + limits + outputs), then
wires what spans tabs: send-to buttons, remembered settings. launch_assets() is the page's
script and style (keyboard, title progress, phone layout), for Blocks.launch.
"""
from __future__ import annotations

import os
from pathlib import Path

import gradio as gr

from pipelines.core.catalog import upscaler_models

from . import controlnet, img2img, inpaint, lab, models, pnginfo, remember, sdxl, send_to, txt2img, uploads
from .common import GenerationService
from .errors import StudioBlocks
from .limits import HostLimits
from .outputs import OutputStore

HERE = Path(__file__).resolve().parent


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
                inp = inpaint.build(service, size)
            with gr.Tab("ControlNet", id="controlnet"):
                cn = controlnet.build(service, size)
            with gr.Tab("Diffusion lab", id="lab"):
                lab.build(service)
            with gr.Tab("PNG info", id="pnginfo"):
                pnginfo.build(tabs, t2i, i2i)
            with gr.Tab("Models", id="models"):
                loaded = models.build(manager, settings.allow_model_change, status, service.gpu_event)
                generation_tabs = {"txt2img": t2i, "img2img": i2i, "inpaint": inp, "controlnet": cn}
                remembered = remember.widget_list(generation_tabs)
                host_defaults = remember.HostDefaults.for_settings(settings)
                remember.defaults_panel(remembered, host_defaults)
        # The loaded model's family decides the native size and whether SDXL fields show.
        groups = [tab.sdxl for tab in generation_tabs.values()]
        sizes = [tab.form.widgets[name] for tab in generation_tabs.values() for name in ("width", "height")]
        refresh = sdxl.refresh(manager, groups, sizes)
        targets = groups + sizes
        page_load = app.load(refresh, None, targets, queue=False, api_visibility="private")
        loaded.then(refresh, None, targets, queue=False, api_visibility="private")
        # Remembered values come after the native size: what the user chose wins.
        remember.wire(remembered, settings.limits, host_defaults, page_load)
        send_to.wire_all(list(generation_tabs.values()), send_to.targets_of(i2i, inp, cn), tabs)
    service.blocks = app
    return app


def launch_assets() -> dict:
    """launch() keyword arguments: the page script (ui/studio.js) and style (ui/studio.css)."""
    return {"js": (HERE / "studio.js").read_text(encoding="utf-8"), "css": (HERE / "studio.css").read_text(encoding="utf-8")}
