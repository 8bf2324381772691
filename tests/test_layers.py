"""The layout states the layers: pipelines/core/ is the torch-free request layer that ui/ and
api/ build on; the engine beside it needs torch; nothing in pipelines/ imports gradio."""
from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

CORE = sorted(p.stem for p in (ROOT / "pipelines" / "core").glob("*.py") if p.stem != "__init__")


def test_every_core_module_imports_without_torch_or_gradio():
    imports = "; ".join(f"import pipelines.core.{name}" for name in CORE)
    code = f"import sys; {imports}; heavy = [m for m in ('torch', 'diffusers', 'gradio') if m in sys.modules]; assert not heavy, heavy"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(CORE) >= 10  # requests, fields, grid, metadata, catalog, … live there


def test_no_module_of_pipelines_imports_gradio():
    offenders = [p.relative_to(ROOT).as_posix() for p in (ROOT / "pipelines").rglob("*.py")
                 if "import gradio" in p.read_text() or "from gradio" in p.read_text()]
    assert offenders == []
