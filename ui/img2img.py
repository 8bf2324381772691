"""img2img tab: an init image re-noised to a point of the schedule (strength) and denoised."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.core.fields import assemble
from pipelines.core.requests import Img2ImgRequest

from . import sdxl, xy_grid
from .common import (GenerationService, PromptBox, ResultPanel, SafeImage, SamplerControls, open_image, prompt_box,
                     result_panel, sampler_controls, vae_field, wire_common)
from .fields import Form
from .styles import style_controls


@dataclass
class Img2ImgTab:
    form: Form
    prompts: PromptBox
    init_image: gr.Image
    sampler: SamplerControls
    strength: gr.Slider
    resize_mode: gr.Radio
    panel: ResultPanel
    sdxl: gr.Accordion  # shown only with an SDXL model


def build(service: GenerationService, native_size: int, styles_file: str = "") -> Img2ImgTab:
    form = Form("img2img", service.limits)
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box(form, service.count_tokens)
            style_controls("img2img", prompts, styles_file)
            init_image = form.add("init_image", SafeImage(label="Init image", type="filepath", image_mode=None,
                                                          sources=["upload", "clipboard"], height=320, elem_id="img2img_init"))
            with gr.Row():
                resize_mode = form.field("resize_mode", component=gr.Radio)
                use_size = gr.Button("Use image size", elem_id="img2img_use_size", scale=0)
            strength = form.field("strength")
            sampler = sampler_controls(form, native_size)
            vae_field(form)
            xl = sdxl.sdxl_controls(form, service.backend, refiner=False)  # the refiner hands off in txt2img only
            xy_grid.grid_controls(form, Img2ImgRequest)
        with gr.Column(scale=1):
            panel = result_panel("img2img")

    def generate(request: gr.Request, progress=gr.Progress(), **values):
        def build_request():
            return assemble(Img2ImgRequest, values, init_image=open_image(values.get("init_image"), "init image"))

        yield from xy_grid.generate(service, build_request, values, request.session_hash, progress)

    def image_size(image_path):
        image = open_image(image_path, "init image") if image_path else None
        if image is None:
            return gr.skip(), gr.skip()
        limits = service.limits
        return (min(limits.max_width, max(64, image.width // 8 * 8)), min(limits.max_height, max(64, image.height // 8 * 8)))

    panel.generate.click(generate, inputs_kwargs=form.inputs, outputs=panel.outputs(), api_name="img2img", **service.gpu_event)
    use_size.click(image_size, init_image, [sampler.width, sampler.height], queue=False, api_visibility="private")
    wire_common(panel, sampler, service, interrupt_api=None)
    return Img2ImgTab(form, prompts, init_image, sampler, strength, resize_mode, panel, xl)
