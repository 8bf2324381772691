"""Widgets made from the field declarations (pipelines/core/fields.py), and a tab's inputs by name.

A tab's layout calls ``form.field("steps")`` where the widget goes; the Form remembers it
under its name, and the Generate event passes ``inputs_kwargs=form.inputs``: the handler
receives ``**values`` by name (the names are also the Gradio API's parameter names) and
builds its request with ``assemble(Request, values)``. Nothing depends on positions.
"""
from __future__ import annotations

import gradio as gr

from pipelines.core.fields import NUMBER_WIDGET_SPAN, Field, fields_of
from pipelines.core.requests import FIELDS


def widget(field: Field | str, elem_id: str, limits=None, of=None, component=None, **overrides):
    """The widget of a declared field: a checkbox, a dropdown (or component=gr.Radio) of its
    choices, a text box, a slider over its widget range, or a number box for wide ranges.
    of: the request class whose declaration to use (InpaintRequest's strength default is 1)."""
    f = field if isinstance(field, Field) else (fields_of(of) if of else FIELDS)[field]
    props = {"label": f.label, "elem_id": elem_id}
    if f.info:
        props["info"] = f.info
    if f.kind is bool:
        component, props["value"] = component or gr.Checkbox, f.default
    elif f.choices is not None:
        component, props["choices"], props["value"] = component or gr.Dropdown, list(f.choices), f.default
    elif f.kind is str:  # a value, even "", makes the API parameter optional
        component, props["value"] = component or gr.Textbox, f.default
    elif f.numeric:
        low, high = f.widget_range(limits)
        if component is None and (f.slider or f.limit or high - low <= NUMBER_WIDGET_SPAN):
            component = gr.Slider
            props.update(minimum=low, maximum=high, step=f.step, value=min(max(f.default, low), high))
        else:
            component = component or gr.Number
            props.update(value=f.default, precision=0 if f.kind is int else None)
    props.update(overrides)
    return component(**props)


class Form:
    """The inputs of one tab's Generate, by name. Declared fields come first, in declaration
    order (the Gradio API's parameter order), then the tab's own inputs as they were added."""

    def __init__(self, tab: str, limits=None):
        self.tab = tab
        self.limits = limits
        self.widgets: dict[str, gr.components.Component] = {}

    def field(self, name: str, elem: str | None = None, **overrides):
        """Make a declared field's widget here (elem_id: <tab>_<elem or name>) and register it."""
        return self.add(name, widget(name, f"{self.tab}_{elem or name}", self.limits, **overrides))

    def add(self, name: str, component):
        if name in self.widgets:
            raise ValueError(f"{self.tab}: two inputs named {name!r}")
        self.widgets[name] = component
        return component

    @property
    def inputs(self) -> dict:
        order = {name: index for index, name in enumerate(FIELDS)}
        names = sorted(self.widgets, key=lambda n: (0, order[n]) if n in order else (1, list(self.widgets).index(n)))
        return {name: self.widgets[name] for name in names}


def take(values: dict, names) -> dict:
    """Remove the named values from values and return them (a tab's non-request inputs)."""
    return {name: values.pop(name) for name in list(names) if name in values}
