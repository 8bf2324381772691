"""txt2img tab: prompt → image."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.requests import Txt2ImgRequest

from .common import GPU, GenerationService, PromptBox, ResultPanel, SamplerControls, prompt_box, result_panel, sampler_controls, sampling_from, wire_common


@dataclass
class Txt2ImgTab:
    prompts: PromptBox
    sampler: SamplerControls
    panel: ResultPanel


def build(service: GenerationService, native_size: int) -> Txt2ImgTab:
    with gr.Row():
        with gr.Column(scale=1):
            prompts = prompt_box("txt2img")
            sampler = sampler_controls("txt2img", service.limits, native_size)
        with gr.Column(scale=1):
            panel = result_panel("txt2img")

    def generate(prompt, negative, scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count, width, height,
                 request: gr.Request, progress=gr.Progress()):
        def build_request():
            return Txt2ImgRequest(
                prompt=prompt, negative_prompt=negative, width=width, height=height,
                sampling=sampling_from(scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count),
            )

        yield from service.stream(build_request, request.session_hash, progress)

    event = dict(fn=generate, inputs=[prompts.prompt, prompts.negative, *sampler.inputs()], outputs=panel.outputs(),
                 concurrency_id=GPU, concurrency_limit=1)
    panel.generate.click(api_name="txt2img", **event)
    prompts.prompt.submit(api_visibility="private", **event)
    wire_common(panel, sampler, service, interrupt_api="interrupt")
    return Txt2ImgTab(prompts, sampler, panel)
