"""txt2img tab: prompt → image."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.requests import Txt2ImgRequest

from . import sdxl, xy_grid
from .common import GenerationService, PromptBox, ResultPanel, SamplerControls, prompt_box, result_panel, sampler_controls, sampling_from, wire_common


@dataclass
class Txt2ImgTab:
    prompts: PromptBox
    sampler: SamplerControls
    panel: ResultPanel
    sdxl: sdxl.SDXLControls


def build(service: GenerationService, native_size: int) -> Txt2ImgTab:
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box("txt2img")
            sampler = sampler_controls("txt2img", service.limits, native_size)
            xl = sdxl.sdxl_controls("txt2img", service.backend)  # shown only with an SDXL model
            grid = xy_grid.grid_controls("txt2img", xy_grid.TXT2IMG_AXES)  # X/Y grid hook
        with gr.Column(scale=1):
            panel = result_panel("txt2img")

    def generate(prompt, negative, scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count, width, height,
                 x_type, x_values, y_type, y_values, draw_legend,
                 original_width=0, original_height=0, target_width=0, target_height=0, crop_left=0, crop_top=0,
                 refiner="None", refiner_switch=0.8, request: gr.Request = None, progress=gr.Progress()):
        xl_fields = sdxl.request_fields((original_width, original_height, target_width, target_height, crop_left,
                                         crop_top, refiner, refiner_switch))

        def build_request():
            return Txt2ImgRequest(
                prompt=prompt, negative_prompt=negative, width=width, height=height,
                sampling=sampling_from(scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count),
                **xl_fields,
            )

        grid_values = (x_type, x_values, y_type, y_values, draw_legend)  # X/Y grid hook: a grid when an axis is set
        yield from xy_grid.generate(service, build_request, grid_values, request.session_hash, progress)

    event = dict(fn=generate, inputs=[prompts.prompt, prompts.negative, *sampler.inputs(), *grid.inputs(), *xl.inputs()], outputs=panel.outputs(),
                 **service.gpu_event)
    panel.generate.click(api_name="txt2img", **event)
    prompts.prompt.submit(api_visibility="private", **event)
    wire_common(panel, sampler, service, interrupt_api="interrupt")
    return Txt2ImgTab(prompts, sampler, panel, xl)
