"""How generation is served: one manager, a pool of managers (one per GPU of a host), Ray
Serve workers across hosts, ZeroGPU on Spaces. Every backend offers what the UI uses of a
PipelineManager (stream/run, describe, native_size, memory_report, load_base), so ui/ never
knows which one it talks to. No gradio here."""
