"""ControlNet tab: steer txt2img or img2img with up to 3 control units (edges, pose, …)."""
from __future__ import annotations

import gradio as gr

from pipelines.core.fields import assemble
from pipelines.core.requests import ControlUnit, Img2ImgRequest, Txt2ImgRequest

from . import sdxl, xy_grid
from .common import GenerationService, SafeImage, TabParts, open_image, prompt_box, result_panel, sampler_controls, wire_common
from .control_units import control_from, control_panel
from .fields import Form, take

IMG2IMG_INPUTS = ("init_image", "strength", "resize_mode")  # used with "Use an init image" only


def build(service: GenerationService, native_size: int) -> TabParts:
    form = Form("controlnet", service.limits)
    with gr.Row():
        with gr.Column(scale=1):
            prompt_box(form, service.count_tokens)
            sampler = sampler_controls(form, native_size)
            xl = sdxl.sdxl_controls(form, service.backend, refiner=False)  # the refiner does not run with ControlNet
            control_panel(form, sampler.width, sampler.height)
            with gr.Accordion("Start from an image (img2img)", open=False):
                form.add("use_init_image", gr.Checkbox(value=False, label="Use an init image", elem_id="controlnet_use_init"))
                form.add("init_image", SafeImage(label="Init image", type="filepath", image_mode=None, height=200,
                                                 elem_id="controlnet_init"))
                form.field("resize_mode", component=gr.Radio)
                form.field("strength", info=None)
            xy_grid.grid_controls(form, Img2ImgRequest, ControlUnit)
        with gr.Column(scale=1):
            panel = result_panel("controlnet")

    def generate(request: gr.Request, progress=gr.Progress(), **values):
        def build_request():
            control = control_from(values, values["width"], values["height"])
            if control is None:
                raise gr.Error("Enable at least one ControlNet unit (or use the txt2img tab).")
            img2img = take(values, IMG2IMG_INPUTS)
            if values.pop("use_init_image"):
                image = open_image(img2img.pop("init_image"), "init image")
                return assemble(Img2ImgRequest, {**values, **img2img}, init_image=image, control=control)
            return assemble(Txt2ImgRequest, values, control=control)

        yield from xy_grid.generate(service, build_request, values, request.session_hash, progress)

    panel.generate.click(generate, inputs_kwargs=form.inputs, outputs=panel.outputs(), api_name="controlnet",
                         **service.gpu_event)
    wire_common(panel, sampler, service, interrupt_api=None)
    return TabParts(form, panel, xl)
