"""AUTOMATIC1111-compatible REST API (`/sdapi/v1/…`, the ControlNet extension's routes),
served by the Gradio app's own server and port when enabled (--api / SD_STUDIO_API).

Like ui/, it only turns JSON into the request objects of pipelines/core/requests.py and results
back into JSON; it never imports torch. Jobs share the browser tabs' backend through one
first-come-first-served line (serving/fair.py)."""
from __future__ import annotations


def launch_kwargs(backend, settings, store=None) -> dict:
    """Extra keyword arguments for gr.Blocks.launch: our routes go into Gradio's FastAPI app
    (ahead of Gradio's own routes), with an OpenAPI page at /docs listing only them. {} when
    the API is off."""
    if not settings.api:
        if settings.api_auth:
            import logging

            logging.getLogger("sd-studio").warning("--api-auth has no effect without --api.")
        return {}
    from .http import parse_accounts

    try:
        parse_accounts(settings.api_auth)
    except ValueError as error:
        raise SystemExit(f"{error}, e.g. --api-auth alice:secret") from None
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse
    from fastapi.routing import APIRoute

    from ui.outputs import OutputStore

    from .routes import build_router, internal_router

    store = store or OutputStore(settings.outputs_dir, settings.save_outputs)
    routes = build_router(backend, settings, store).routes + internal_router().routes
    schema: dict = {}

    def openapi():
        if not schema:
            schema.update(get_openapi(title="SD Studio — AUTOMATIC1111-compatible API", version="1",
                                      description="See docs/api.md for the supported fields and the differences from A1111.",
                                      routes=routes))
        return JSONResponse(schema)

    def docs():
        return get_swagger_ui_html(openapi_url="/openapi.json", title="SD Studio API")

    routes += [APIRoute("/openapi.json", openapi, include_in_schema=False),
               APIRoute("/docs", docs, include_in_schema=False)]
    return {"app_kwargs": {"routes": routes, "openapi_url": None, "docs_url": None, "redoc_url": None}}
