"""Torch/diffusers side of the studio. Never imports gradio: ui/ hands over request objects."""
