"""The web console (``/console``) and the OpenAPI page (``/docs``), served with no internet.

A trader or an SRE coming from kdb+ expects a console in the browser: a SQL editor over
the plant's tables, a grid and a chart of the answer, a live view of a table or of the
engine's bars, the plant's health and, for admins, the query log. The page is static
(``gateway/static/console/``): everything it shows it asks of the gateway's own API
(``/v1/sql``, ``/v1/tables``, ``/v1/health``, ``/v1/subscribe/{source}``) with the key the
user typed, so it sees exactly what that key may see and nothing more. Its libraries,
and Swagger UI's for ``/docs``, are npm packages vendored under ``/static/vendor``
(``gateway/console_assets.py``): an air-gapped desk gets the same pages.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from gateway.console_assets import STATIC_DIR, url

CONSOLE_PAGE = STATIC_DIR / "console" / "index.html"


def mount_console(app: FastAPI) -> None:
    """``/static``, ``/console`` and a local ``/docs`` on ``app`` (created with ``docs_url=None``
    and ``redoc_url=None``: FastAPI's own pages load their assets from a CDN)."""
    if not CONSOLE_PAGE.exists():
        raise RuntimeError(f"the console's page {CONSOLE_PAGE} is missing: the package is incomplete")
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/console", include_in_schema=False)
    def console() -> FileResponse:
        # no-cache: a gateway upgraded under an open desk serves its new page on reload
        return FileResponse(CONSOLE_PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/console/", include_in_schema=False)
    def console_slash() -> RedirectResponse:
        return RedirectResponse("/console")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=url("swagger-ui-dist", "swagger-ui-bundle.js"),
            swagger_css_url=url("swagger-ui-dist", "swagger-ui.css"),
            swagger_favicon_url=url("swagger-ui-dist", "favicon-32x32.png"),
            # no validator badge: it would call swagger.io with the spec
            swagger_ui_parameters={"validatorUrl": None},
        )
