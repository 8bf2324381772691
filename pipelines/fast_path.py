"""The GPU fast path, applied in place to the shared modules so every task pipeline gets it.

On an H100 the SD 1.5 UNet step is launch-bound (a CUDA graph alone gives 2.3×, see
shared/reference/MEASUREMENTS.md), so the levers are, in order of gain:
- CUDA graphs: the UNet call and the VAE decode are captured once per input shape and
  replayed (one launch instead of ~1000); calls the graph cannot serve (ControlNet
  residuals, unusual arguments, tiling) run the ordinary forward;
- compilation that finishes fast: regional (the repeated transformer blocks, compiled once
  and reused for every block) instead of the whole UNet; "full" is offered too;
- channels_last and fused QKV projections; fp16/bf16 and SDPA come from the manager.
Inductor's compile cache is kept across restarts (app.py points TORCHINDUCTOR_CACHE_DIR at
~/.cache/sd-studio/inductor before torch is imported).

Off on CPU/MPS: nothing here changes the maths, only how kernels are launched.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

COMPILE_MODES = ("regional", "full", "none")


@dataclass(frozen=True)
class FastPath:
    # "full": 6.6 ms per CFG UNet call on an H100, 49 s first warm-up, 11 s with the cache;
    # "regional": 9.8 ms, 15 s warm-up (docs/performance.md).
    compile: str = "full"
    cuda_graphs: bool = True
    channels_last: bool = True
    fuse_qkv: bool = True

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be one of {COMPILE_MODES}, got {self.compile!r}")


class GraphedCall:
    """Replays CUDA graphs of fn(*tensors) keyed by the inputs' shapes and dtypes.

    The first `warmup` calls of a shape run fn normally (compilation and cuDNN autotuning
    happen there), the next one is captured; later calls copy their inputs into the graph's
    static buffers and replay it. Outputs are cloned: the graph reuses its buffers."""

    def __init__(self, fn, warmup: int = 2, max_graphs: int = 8):
        self.fn, self.warmup, self.max_graphs = fn, warmup, max_graphs
        self.graphs: dict[tuple, tuple] = {}
        self.seen: dict[tuple, int] = {}
        self.pool = None

    @staticmethod
    def key(tensors) -> tuple:
        return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        key = self.key(tensors)
        if key in self.graphs:
            graph, inputs, output = self.graphs[key]
            for static, value in zip(inputs, tensors):
                static.copy_(value)
            graph.replay()
            return output.clone()
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] <= self.warmup or len(self.graphs) >= self.max_graphs:
            return self.fn(*tensors)
        return self._capture(key, tensors)

    def _capture(self, key, tensors) -> torch.Tensor:
        # Streams and pools belong to a device: make it the current one (a pool of managers
        # runs each device's jobs in its own thread, whose current device is cuda:0).
        with torch.cuda.device(tensors[0].device):
            inputs = [t.clone() for t in tensors]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # one more run off the main stream, as capture requires
                self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()  # graphs of all shapes share one memory pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                output = self.fn(*inputs)
            self.graphs[key] = (graph, inputs, output)
            graph.replay()
        return output.clone()


def _graph_unet(unet) -> None:
    """Route plain UNet calls (sample, t, text embeddings) through CUDA graphs."""
    inner = unet.forward

    def core(sample, timestep, encoder_hidden_states):
        return inner(sample, timestep, encoder_hidden_states, return_dict=False)[0]

    graphed = GraphedCall(core)
    plain = {"return_dict", "timestep_cond", "cross_attention_kwargs", "added_cond_kwargs", "attention_mask",
             "encoder_attention_mask"}

    def forward(sample, timestep, encoder_hidden_states, *args, return_dict: bool = True, **kwargs):
        simple = (not args and set(kwargs) <= plain and all(not kwargs.get(k) for k in kwargs)
                  and sample.is_cuda and torch.is_tensor(timestep))
        if not simple:  # ControlNet residuals and the like: the ordinary (compiled) forward
            return inner(sample, timestep, encoder_hidden_states, *args, return_dict=return_dict, **kwargs)
        out = graphed(sample, timestep.to(sample.device), encoder_hidden_states)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    unet.forward = forward
    unet._sd_studio_graphs = graphed


def _graph_vae_decode(vae) -> None:
    inner = vae.decode
    graphed = GraphedCall(lambda z: inner(z, return_dict=False)[0])

    def decode(z, return_dict: bool = True, generator=None):
        if getattr(vae, "use_tiling", False) or not z.is_cuda:
            return inner(z, return_dict=return_dict)
        sample = graphed(z)
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=sample)
        return (sample,)

    vae.decode = decode
    vae._sd_studio_graphs = graphed


def apply_fast_path(pipe, config: FastPath) -> list[str]:
    """Apply the fast path in place to pipe's UNet and VAE (shared by every derived task
    pipeline). Returns what was applied, for logs and benchmarks."""
    applied = []
    unet, vae = pipe.unet, pipe.vae
    if config.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if config.fuse_qkv:
        unet.fuse_qkv_projections()
        applied.append("fused_qkv")
    if config.compile == "regional":
        unet.compile_repeated_blocks(fullgraph=True)
        applied.append("regional_compile")
    elif config.compile == "full":
        unet.forward = torch.compile(unet.forward, fullgraph=True)
        applied.append("full_compile")
    if config.cuda_graphs:
        _graph_unet(unet)
        _graph_vae_decode(vae)
        applied.append("cuda_graphs")
    log.info("fast path: %s", ", ".join(applied))
    return applied
