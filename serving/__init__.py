"""How generation is served: one manager, a pool of managers (one per GPU of a host), Ray
Serve workers across hosts, ZeroGPU on Spaces. Each implements pipelines.core.backend.Backend
(stream/run of request objects with a Job, describe, native_size, train_steps, memory_report,
load_base), so ui/ never knows which one it talks to. No gradio here."""
