"""Models tab: what is loaded, where weights live, the model catalogue (models folder, demo
family, Hugging Face cache), and (when the host allows) load another base model."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from pipelines.core import catalog
from pipelines.core.errors import StudioError

KIND_TITLES = {"checkpoint": "Checkpoints", "inpaint": "Inpainting models", "lora": "LoRA", "embedding": "Embeddings",
               "vae": "VAE", "controlnet": "ControlNet"}


def _details(manager) -> str:
    report = manager.memory_report()
    if not report["modes"]:
        return manager.describe()
    mib = 1024 * 1024
    text = (f"{manager.describe()} Loaded in {manager.model.seconds:.1f} s.\n\n"
            f"Weights: {report['shared_bytes'] / mib:.1f} MiB shared by every mode loaded ({', '.join(report['modes'])}); "
            f"{report['extra_bytes'] / mib:.1f} MiB of extra modules (ControlNets, inpainting UNet); "
            f"{report['all_modes_bytes'] / mib:.1f} MiB in all.")
    if "lora_bytes" in report:
        loras = ", ".join(report["loras"]) or "none"
        vaes = ", ".join(report["vaes"]) or "none"
        text += (f"\n\nLoRA loaded: {loras} ({report['lora_bytes'] / mib:.2f} MiB, inside the shared UNet/text encoder"
                 f"{'; fused' if report.get('fused') else ''}). VAEs cached: {vaes} ({report['vae_bytes'] / mib:.1f} MiB).")
    if "embeddings_loaded" in report:
        text += f"\n\nEmbeddings loaded (write the word in a prompt): {', '.join(report['embeddings_loaded']) or 'none'}."
        if report["embeddings_failed"]:
            text += " Failed: " + "; ".join(f"{word} ({why})" for word, why in report["embeddings_failed"].items())
    return text


def _where(entry: catalog.Entry, cat: catalog.Catalog) -> str:
    """Where an entry lives, without this machine's absolute paths."""
    if entry.origin == "Hugging Face cache":
        return "Hugging Face cache"
    root = catalog.ASSET_MODELS if entry.origin == "demo" else cat.models_dir
    try:
        return f"{entry.origin}: {Path(entry.source).resolve().relative_to(root.resolve()).as_posix()}"
    except ValueError:
        return entry.origin


def catalogue_text(cat: catalog.Catalog) -> str:
    lines = [f"Models folder: `{cat.models_dir.name}/` (A1111 layout: Stable-diffusion/, Lora/, embeddings/, VAE/, ControlNet/)."]
    for kind in catalog.KINDS:
        entries = list(cat.entries[kind].values())
        lines.append(f"\n**{KIND_TITLES[kind]}** ({len(entries)}): " +
                     (", ".join(f"{e.name} <small>({_where(e, cat)})</small>" for e in entries) or "none"))
    return "\n".join(lines)


def build(manager, allow_change: bool, status: gr.Markdown, gpu_event: dict) -> None:
    # A callable value is computed on every page load: the text follows what is loaded now
    # (modes derived, ControlNets cached), not what was loaded when the app started.
    info = gr.Markdown(lambda: _details(manager), elem_id="models_info")
    source = gr.Dropdown(catalog.names("checkpoint"), value=None, allow_custom_value=True, label="Base model",
                         info="a checkpoint from the catalogue" + (", or a path / Hub id" if allow_change else ""),
                         interactive=allow_change, elem_id="models_source")
    load = gr.Button("Load", variant="primary", interactive=allow_change, elem_id="models_load")
    if not allow_change:
        gr.Markdown("This host does not allow changing models.")
    listing = gr.Markdown(catalogue_text(catalog.current()), elem_id="models_catalogue")

    def load_model(text: str):
        if not allow_change:
            raise gr.Error("This host does not allow changing models.")
        try:
            manager.load_base(text)
        except StudioError as error:
            raise gr.Error(f"{error} The previous model stays loaded.") from error
        return _details(manager), manager.describe()

    def refresh():
        catalog.refresh()  # the next generation on each device loads embeddings that are new
        return _details(manager), catalogue_text(catalog.current()), gr.Dropdown(choices=catalog.names("checkpoint"))

    refresh_button = gr.Button("Refresh", elem_id="models_refresh", size="sm")
    refresh_button.click(refresh, None, [info, listing, source], api_visibility="private", queue=False)
    return load.click(load_model, source, [info, status], api_name="load_model", **gpu_event)
