"""txt2img tab: prompt → image."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.requests import HIRES_UPSCALERS, Txt2ImgRequest

from . import xy_grid
from .common import (GenerationService, PromptBox, ResultPanel, SamplerControls, prompt_box, result_panel, sampler_controls,
                     SeedExtras, sampling_from, wire_common, with_seed_extras, with_session)
from .styles import style_controls


@dataclass
class HiresControls:
    enable: gr.Checkbox
    upscaler: gr.Dropdown
    scale: gr.Slider
    steps: gr.Slider
    strength: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider

    FIELDS = ("enable_hr", "hr_upscaler", "hr_scale", "hr_second_pass_steps", "denoising_strength", "hr_resize_x", "hr_resize_y")

    def inputs(self) -> list:
        """Order matches FIELDS (the request's field names)."""
        return [self.enable, self.upscaler, self.scale, self.steps, self.strength, self.resize_x, self.resize_y]


def hires_controls(limits, model_upscalers: list[str]) -> HiresControls:
    with gr.Accordion("Hires fix", open=False, elem_id="txt2img_hires"):
        enable = gr.Checkbox(value=False, label="Hires fix", elem_id="txt2img_enable_hr",
                             info="first pass at the size above, then upscale and refine at the final size")
        with gr.Row():
            upscaler = gr.Dropdown([*HIRES_UPSCALERS, *model_upscalers], value="Latent", label="Upscaler", elem_id="txt2img_hr_upscaler")
            scale = gr.Slider(1, 4, value=2, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
        with gr.Row():
            steps = gr.Slider(0, limits.max_steps, value=0, step=1, label="Hires steps", info="0 = same as the first pass",
                              elem_id="txt2img_hr_steps")
            strength = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength", elem_id="txt2img_hr_strength")
        with gr.Row():
            resize_x = gr.Slider(0, limits.max_width, value=0, step=8, label="Resize width to", info="0 = by the factor",
                                 elem_id="txt2img_hr_resize_x")
            resize_y = gr.Slider(0, limits.max_height, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y")
    return HiresControls(enable, upscaler, scale, steps, strength, resize_x, resize_y)


@dataclass
class Txt2ImgTab:
    prompts: PromptBox
    sampler: SamplerControls
    panel: ResultPanel
    hires: HiresControls | None = None


def build(service: GenerationService, native_size: int, styles_file: str = "", model_upscalers: list[str] = ()) -> Txt2ImgTab:
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box("txt2img")
            style_controls("txt2img", prompts, styles_file)
            sampler = sampler_controls("txt2img", service.limits, native_size, extras=True)
            hires = hires_controls(service.limits, list(model_upscalers))
            grid = xy_grid.grid_controls("txt2img", xy_grid.TXT2IMG_AXES)  # X/Y grid hook
        with gr.Column(scale=1):
            panel = result_panel("txt2img")

    def generate(prompt, negative, scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count, width, height,
                 x_type, x_values, y_type, y_values, draw_legend, *extra_values, request: gr.Request, progress):
        seed_values, hires_values = extra_values[:4], extra_values[4:]

        def build_request():
            sampling = sampling_from(scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count)
            return Txt2ImgRequest(
                prompt=prompt, negative_prompt=negative, width=width, height=height,
                sampling=with_seed_extras(sampling, *seed_values) if seed_values else sampling,
                **dict(zip(HiresControls.FIELDS, hires_values)),
            )

        grid_values = (x_type, x_values, y_type, y_values, draw_legend)  # X/Y grid hook: a grid when an axis is set
        yield from xy_grid.generate(service, build_request, grid_values, request.session_hash, progress)

    inputs = [prompts.prompt, prompts.negative, *sampler.inputs(), *grid.inputs(), *sampler.extra.inputs(), *hires.inputs()]
    names = ["prompt", "negative", "scheduler", "steps", "cfg", "cfg_scale", "eta", "seed", "batch_size", "batch_count",
             "width", "height", *xy_grid.GRID_FIELDS, *SeedExtras.FIELDS, *HiresControls.FIELDS]
    event = dict(fn=with_session(generate, names), inputs=inputs, outputs=panel.outputs(), **service.gpu_event)
    panel.generate.click(api_name="txt2img", **event)
    prompts.prompt.submit(api_visibility="private", **event)
    wire_common(panel, sampler, service, interrupt_api="interrupt")
    return Txt2ImgTab(prompts, sampler, panel, hires)
