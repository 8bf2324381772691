"""img2img tab: an init image re-noised to a point of the schedule (strength) and denoised."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.requests import RESIZE_MODES, Img2ImgRequest

from . import xy_grid
from .common import (GenerationService, PromptBox, ResultPanel, SafeImage, SamplerControls, SeedExtras, open_image,
                     prompt_box, result_panel, sampler_controls, sampling_from, wire_common, with_seed_extras, with_session)
from .styles import style_controls


@dataclass
class Img2ImgTab:
    prompts: PromptBox
    init_image: gr.Image
    sampler: SamplerControls
    strength: gr.Slider
    panel: ResultPanel


def build(service: GenerationService, native_size: int, styles_file: str = "") -> Img2ImgTab:
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box("img2img")
            style_controls("img2img", prompts, styles_file)
            init_image = SafeImage(label="Init image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                   height=320, elem_id="img2img_init")
            with gr.Row():
                resize_mode = gr.Radio(list(RESIZE_MODES), value="crop and resize", label="Resize mode", elem_id="img2img_resize_mode")
                use_size = gr.Button("Use image size", elem_id="img2img_use_size", scale=0)
            strength = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                 info="fraction of the noise schedule re-run: 0 returns the input, 1 ignores it",
                                 elem_id="img2img_strength")
            sampler = sampler_controls("img2img", service.limits, native_size, extras=True)
            grid = xy_grid.grid_controls("img2img", xy_grid.IMG2IMG_AXES)  # X/Y grid hook
        with gr.Column(scale=1):
            panel = result_panel("img2img")

    def generate(prompt, negative, image_path, mode, denoise, scheduler, steps, cfg, cfg_scale, eta, seed, batch_size,
                 batch_count, width, height, x_type, x_values, y_type, y_values, draw_legend, *seed_values,
                 request: gr.Request, progress):
        def build_request():
            sampling = sampling_from(scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count)
            return Img2ImgRequest(
                prompt=prompt, negative_prompt=negative, width=width, height=height,
                init_image=open_image(image_path, "init image"), strength=denoise, resize_mode=mode,
                sampling=with_seed_extras(sampling, *seed_values) if seed_values else sampling,
            )

        grid_values = (x_type, x_values, y_type, y_values, draw_legend)  # X/Y grid hook: a grid when an axis is set
        yield from xy_grid.generate(service, build_request, grid_values, request.session_hash, progress)

    def image_size(image_path):
        image = open_image(image_path, "init image") if image_path else None
        if image is None:
            return gr.skip(), gr.skip()
        limits = service.limits
        return (min(limits.max_width, max(64, image.width // 8 * 8)), min(limits.max_height, max(64, image.height // 8 * 8)))

    inputs = [prompts.prompt, prompts.negative, init_image, resize_mode, strength, *sampler.inputs(), *grid.inputs(),
              *sampler.extra.inputs()]
    names = ["prompt", "negative", "image_path", "mode", "denoise", "scheduler", "steps", "cfg", "cfg_scale", "eta", "seed",
             "batch_size", "batch_count", "width", "height", *xy_grid.GRID_FIELDS, *SeedExtras.FIELDS]
    panel.generate.click(with_session(generate, names), inputs, panel.outputs(), api_name="img2img", **service.gpu_event)
    use_size.click(image_size, init_image, [sampler.width, sampler.height], queue=False, api_visibility="private")
    wire_common(panel, sampler, service, interrupt_api=None)
    return Img2ImgTab(prompts, init_image, sampler, strength, panel)
