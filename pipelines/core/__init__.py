"""The request layer: torch-free (pure Python + PIL). Requests and their field declarations,
grids, infotext and PNG metadata, prompt syntax, the model catalogue, jobs, the Backend
protocol. ui/ and api/ import from here; the engine (pipelines/*.py beside it) needs torch."""
