"""txt2img tab: prompt → image."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.core.fields import assemble
from pipelines.core.requests import HIRES_UPSCALERS, Txt2ImgRequest

from . import sdxl, xy_grid
from .common import GenerationService, PromptBox, ResultPanel, SamplerControls, prompt_box, result_panel, sampler_controls, vae_field, wire_common
from .fields import Form
from .styles import style_controls


@dataclass
class Txt2ImgTab:
    form: Form
    prompts: PromptBox
    sampler: SamplerControls
    panel: ResultPanel
    sdxl: gr.Accordion  # shown only with an SDXL model


def hires_controls(form: Form, model_upscalers: list[str]) -> None:
    with gr.Accordion("Hires fix", open=False, elem_id="txt2img_hires"):
        form.field("enable_hr")
        with gr.Row():
            form.field("hr_upscaler", component=gr.Dropdown, choices=[*HIRES_UPSCALERS, *model_upscalers])
            form.field("hr_scale")
        with gr.Row():
            form.field("hr_second_pass_steps", elem="hr_steps")
            form.field("denoising_strength", elem="hr_strength")
        with gr.Row():
            form.field("hr_resize_x")
            form.field("hr_resize_y")


def build(service: GenerationService, native_size: int, styles_file: str = "", model_upscalers=()) -> Txt2ImgTab:
    form = Form("txt2img", service.limits)
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box(form, service.count_tokens)
            style_controls("txt2img", prompts, styles_file)
            sampler = sampler_controls(form, native_size)
            vae_field(form)
            hires_controls(form, list(model_upscalers))
            xl = sdxl.sdxl_controls(form, service.backend)
            xy_grid.grid_controls(form, Txt2ImgRequest)
        with gr.Column(scale=1):
            panel = result_panel("txt2img")

    def generate(request: gr.Request, progress=gr.Progress(), **values):
        yield from xy_grid.generate(service, lambda: assemble(Txt2ImgRequest, sdxl.resolve_refiner(values)), values, request.session_hash, progress)

    event = dict(fn=generate, inputs_kwargs=form.inputs, outputs=panel.outputs(), **service.gpu_event)
    panel.generate.click(api_name="txt2img", **event)
    prompts.prompt.submit(api_visibility="private", **event)
    wire_common(panel, sampler, service, interrupt_api="interrupt")
    return Txt2ImgTab(form, prompts, sampler, panel, xl)
