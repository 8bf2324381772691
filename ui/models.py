"""Models tab: what is loaded, where weights live, and (when the host allows) load another."""
from __future__ import annotations

import gradio as gr

from pipelines.errors import StudioError



def _details(manager) -> str:
    report = manager.memory_report()
    if not report["modes"]:
        return manager.describe()
    mib = 1024 * 1024
    return (f"{manager.describe()} Loaded in {manager.model.seconds:.1f} s.\n\n"
            f"Weights: {report['shared_bytes'] / mib:.1f} MiB shared by every mode loaded ({', '.join(report['modes'])}); "
            f"{report['extra_bytes'] / mib:.1f} MiB of extra modules (ControlNets, inpainting UNet); "
            f"{report['all_modes_bytes'] / mib:.1f} MiB in all.")


def build(manager, allow_change: bool, status: gr.Markdown, gpu_event: dict) -> None:
    # A callable value is computed on every page load: the text follows what is loaded now
    # (modes derived, ControlNets cached), not what was loaded when the app started.
    info = gr.Markdown(lambda: _details(manager), elem_id="models_info")
    source = gr.Textbox(label="Base model", placeholder="path/to/diffusers-folder, model.safetensors, or user/repo",
                        interactive=allow_change, elem_id="models_source")
    load = gr.Button("Load", variant="primary", interactive=allow_change, elem_id="models_load")
    if not allow_change:
        gr.Markdown("This host does not allow changing models.")

    def load_model(text: str):
        if not allow_change:
            raise gr.Error("This host does not allow changing models.")
        try:
            manager.load_base(text)
        except StudioError as error:
            raise gr.Error(f"{error} The previous model stays loaded.") from error
        return _details(manager), manager.describe()

    refresh = gr.Button("Refresh", elem_id="models_refresh", size="sm")
    refresh.click(lambda: _details(manager), None, info, queue=False, api_visibility="private")
    load.click(load_model, source, [info, status], api_name="load_model", **gpu_event)
