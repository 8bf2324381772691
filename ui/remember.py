"""Remembered settings: each tab's last values survive a reload, and the host may keep
defaults.

- In the browser: every declared field's widget writes its value to the browser's
  localStorage when it changes (ui/studio.js, no server call); on page load the stored
  values come back through one load event and are checked against the declarations (a value
  a request would refuse is dropped) before they reach the widgets. Each browser keeps its
  own: nothing is shared between users, on a Space included.
- On the host: "Save as defaults" writes every tab's current values to ui-config.json beside
  the outputs folder; they apply on page load, under the browser's own values. Only where the
  host allows model changes and saving (never on a Space, where strangers share the server).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import gradio as gr

from pipelines.core.errors import RequestError
from pipelines.core.requests import FIELDS

log = logging.getLogger(__name__)

STORAGE_KEY = "sd-studio:remembered"  # localStorage key (ui/studio.js uses the same)
MAX_STORED_CHARS = 200_000  # a stored blob larger than this is ignored
MAX_TEXT_CHARS = 20_000


def remembered_widgets(form) -> dict:
    """A tab's widgets whose values are remembered: its declared, non-image fields."""
    return {name: w for name, w in form.widgets.items() if name in FIELDS and FIELDS[name].kind in (bool, int, float, str)}


def checked(name: str, value, limits=None):
    """The value when the field's declaration (and this host's limits) accept it, else None."""
    field = FIELDS[name]
    if field.kind is str and isinstance(value, str) and len(value) > MAX_TEXT_CHARS:
        return None
    try:
        value = field.check(value)
    except RequestError:
        return None
    if field.numeric:
        low, high = field.widget_range(limits)
        if not low <= value <= high:
            return None
    return value


def host_config_path(settings) -> Path:
    return Path(settings.outputs_dir).resolve().parent / "ui-config.json"


class HostDefaults:
    """ui-config.json: {tab: {field: value}}; disabled where the host may not keep one."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    @classmethod
    def for_settings(cls, settings) -> "HostDefaults":
        return cls(host_config_path(settings), settings.allow_model_change and settings.save_outputs)

    def load(self) -> dict:
        if not self.enabled or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            log.warning("ui-config.json not read: %s", error)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, values: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(values, indent=1, ensure_ascii=False), encoding="utf-8")


def _stored(text) -> dict:
    if not isinstance(text, str) or len(text) > MAX_STORED_CHARS:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def widget_list(tabs: dict) -> list:
    """(tab, name, widget) of every remembered widget; tabs: tab id → the tab's parts (.form)."""
    return [(tab, name, w) for tab, parts in tabs.items() for name, w in remembered_widgets(parts.form).items()]


def wire(widgets: list, limits, host: HostDefaults, page_load) -> None:
    """Browser memory for every widget, and the values put back on page load: run after
    page_load (the load event that sets model-dependent values such as the native size),
    so what the user chose comes last."""
    for tab, name, w in widgets:
        w.change(None, [w], None, js=f"(v) => window.sdStudio && window.sdStudio.remember({json.dumps(tab)}, {json.dumps(name)}, v)")
    stored = gr.Textbox(visible=False, elem_id="remembered_store")

    def restore(text):
        browser, saved = _stored(text), host.load()
        updates = []
        for tab, name, _ in widgets:
            value = None
            for source in (browser, saved):
                values = source.get(tab)
                if isinstance(values, dict) and name in values:
                    value = checked(name, values[name], limits)
                    if value is not None:
                        break
            updates.append(gr.skip() if value is None else value)
        return updates

    page_load.then(restore, stored, [w for _, _, w in widgets], queue=False, api_visibility="private",
                   js=f"() => localStorage.getItem({json.dumps(STORAGE_KEY)}) || '{{}}'")


def defaults_panel(widgets: list, host: HostDefaults) -> None:
    """'Save as defaults' (host) and 'Forget' (this browser), in the Models tab."""
    with gr.Group(elem_id="ui_defaults"):
        with gr.Row():
            save = gr.Button("Save every tab's current settings as this host's defaults", size="sm",
                             interactive=host.enabled, elem_id="ui_defaults_save")
            forget = gr.Button("Forget the settings this browser remembers", size="sm", elem_id="ui_defaults_forget")
        message = gr.Markdown("" if host.enabled else "This host does not keep default settings (each browser still remembers its own).",
                              elem_id="ui_defaults_message")

    def save_defaults(*values):
        if not host.enabled:
            raise gr.Error("This host does not keep default settings.")
        config: dict = {}
        for (tab, name, _), value in zip(widgets, values):
            if checked(name, value) is not None:
                config.setdefault(tab, {})[name] = value
        try:
            host.save(config)
        except OSError as error:
            raise gr.Error(f"The defaults could not be saved ({type(error).__name__}).") from error
        return "Saved: these settings now open every new page on this host (a browser's own remembered values still come first)."

    save.click(save_defaults, [w for _, _, w in widgets], message, queue=False, api_visibility="private")
    forget.click(None, None, message, js=f"() => {{ localStorage.removeItem({json.dumps(STORAGE_KEY)}); "
                 "return 'Forgotten: a reload shows the defaults.'; }")
