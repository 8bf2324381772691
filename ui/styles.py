"""Prompt styles under a tab's prompt box: choose styles and Apply them to the prompts;
import an A1111 styles.csv; save the current prompts as a style. The logic is in
pipelines/core/styles.py.

Each browser session holds its own list (a gr.State, starting from the host's styles file),
so what one visitor imports is never shown to another; "Save" writes the host's file only
where the host has one (none on a public Space)."""
from __future__ import annotations

import gradio as gr

from pipelines.core import styles as style_lib
from pipelines.core.errors import StudioError

from .common import PromptBox


def initial_styles(path: str) -> list[style_lib.Style]:
    try:
        return style_lib.load(path) if path else []
    except (StudioError, OSError, UnicodeDecodeError):
        return []  # a broken file must not stop the app; importing a good one fixes it


def style_controls(tab: str, prompts: PromptBox, styles_file: str) -> None:
    book = gr.State(initial_styles(styles_file))
    with gr.Row(equal_height=True):
        chosen = gr.Dropdown([s.name for s in book.value], value=[], multiselect=True, label="Styles",
                             elem_id=f"{tab}_styles", scale=4)
        apply = gr.Button("Apply styles", elem_id=f"{tab}_styles_apply", scale=0, min_width=110, size="sm")
    with gr.Accordion("Edit styles", open=False, elem_id=f"{tab}_styles_edit"):
        with gr.Row(equal_height=True):
            name = gr.Textbox(label="Style name", max_lines=1, elem_id=f"{tab}_style_name", scale=3)
            save = gr.Button("Save prompts as style", elem_id=f"{tab}_style_save", scale=1, size="sm")
        upload = gr.File(label="Import an A1111 styles.csv", file_types=[".csv"], type="filepath",
                         elem_id=f"{tab}_styles_import")
        message = gr.Markdown(elem_id=f"{tab}_styles_message")

    def apply_chosen(prompt, negative, names, current):
        by_name = {s.name: s for s in current}
        missing = [n for n in names or [] if n not in by_name]
        if missing:
            raise gr.Error(f"Unknown style {missing[0][:80]!r}: import it or save it first.")
        prompt, negative = style_lib.apply_styles(prompt or "", negative or "", [by_name[n] for n in names or []])
        return prompt, negative, []

    def import_file(path, current):
        if not path:
            return gr.skip(), gr.skip(), ""
        try:
            with open(path, encoding="utf-8-sig", errors="replace") as handle:
                text = handle.read(style_lib.MAX_FILE_BYTES + 1)
            imported = style_lib.parse_csv(text)
        except StudioError as error:
            raise gr.Error(str(error)) from error
        for style in imported:
            current = style_lib.upsert(current, style)
        if len(current) > style_lib.MAX_STYLES:
            raise gr.Error(f"At most {style_lib.MAX_STYLES} styles.")
        return current, gr.update(choices=[s.name for s in current]), f"Imported {len(imported)} style(s)."

    def save_style(style_name, prompt, negative, current):
        style = style_lib.Style((style_name or "").strip()[:200], prompt or "", negative or "")
        try:
            current = style_lib.upsert(current, style)
        except StudioError as error:
            raise gr.Error(str(error)) from error
        note = f"Saved style “{style.name}” for this session."
        if styles_file:  # re-read: other sessions may have saved styles since this one started
            style_lib.save(styles_file, style_lib.upsert(initial_styles(styles_file), style))
            note = f"Saved style “{style.name}” to the styles file."
        return current, gr.update(choices=[s.name for s in current]), note

    apply.click(apply_chosen, [prompts.prompt, prompts.negative, chosen, book], [prompts.prompt, prompts.negative, chosen],
                api_name=f"{tab}_apply_styles", queue=False)
    upload.upload(import_file, [upload, book], [book, chosen, message], api_name=f"{tab}_import_styles", queue=False)
    save.click(save_style, [name, prompts.prompt, prompts.negative, book], [book, chosen, message],
               api_visibility="private", queue=False)
