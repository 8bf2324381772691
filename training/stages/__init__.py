"""One module per training stage; each exposes run(args, device) -> dict of measured numbers."""
