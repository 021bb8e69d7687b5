"""The interactive API documentation, /docs (Swagger UI) and /redoc, with their scripts, styles and
icon served by the API itself from the fastapi-offline package (installed with the project), so
that both pages render without internet: FastAPI's own pages load them from a CDN. Like FastAPI's,
these pages and /openapi.json stay open when API tokens are set (they describe, never act)."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
ASSET_DIR = files("fastapi_offline") / "static"
# Swagger UI would otherwise send the schema's URL to its online validator.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
# The pages may load only from the API itself: ReDoc's menu shows a logo from its makers' CDN,
# which the browser then does not even try to fetch. (Both pages start with an inline script or
# style; ReDoc builds a worker from a blob.)
POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:"
)


def _local_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = POLICY
    return page


def install(app: FastAPI) -> None:
    """Serve /docs, its OAuth2 redirect page and /redoc on local assets; the app must be made with
    docs_url=None and redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=str(ASSET_DIR)), name="docs-assets")
    redirect_url = app.swagger_ui_oauth2_redirect_url

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        prefix = root(request)
        return _local_only(
            get_swagger_ui_html(
                openapi_url=prefix + app.openapi_url,
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=prefix + redirect_url if redirect_url else None,
                swagger_js_url=f"{prefix}{ASSETS}/swagger-ui-bundle.js",
                swagger_css_url=f"{prefix}{ASSETS}/swagger-ui.css",
                swagger_favicon_url=f"{prefix}{ASSETS}/favicon.png",
                swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
            )
        )

    if redirect_url:

        @app.get(redirect_url, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        prefix = root(request)
        return _local_only(
            get_redoc_html(
                openapi_url=prefix + app.openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{prefix}{ASSETS}/redoc.standalone.js",
                redoc_favicon_url=f"{prefix}{ASSETS}/favicon.png",
                with_google_fonts=False,
            )
        )
