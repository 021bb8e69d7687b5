"""/docs and /redoc load everything they need from the API itself, never from the internet."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api import docs

# What a page loads: src and href attributes, and Swagger UI's `url: '...'` for the schema.
REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)|\burl:\s*'([^']+)""")
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI(title="trainyard", docs_url=None, redoc_url=None)
    docs.install(app)
    return TestClient(app)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_pages_reference_no_external_url(client, page):
    answer = client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    references = [a or b for a, b in REFERENCE.findall(answer.text)]
    assert "/openapi.json" in references and any(r.startswith(docs.ASSETS) for r in references)
    assert all(r.startswith("/") and not r.startswith("//") for r in references), references
    assert not re.search(r"https?:|//[\w.-]+\.\w", answer.text), answer.text  # no CDN, fonts or icon from afar
    # ...and the browser is told to load nothing from elsewhere (ReDoc's script asks for a logo).
    assert "default-src 'self'" in answer.headers["content-security-policy"]
    assert "img-src 'self' data:;" in answer.headers["content-security-policy"]
    for reference in references:
        loaded = client.get(reference)
        assert loaded.status_code == 200 and loaded.content, reference


def test_the_assets_are_installed_with_the_project(client):
    for name, media_type in ASSETS.items():
        answer = client.get(f"{docs.ASSETS}/{name}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(media_type)
        assert len(answer.content) > (1000 if name == "favicon.png" else 100_000), name
    assert client.get(f"{docs.ASSETS}/../docs.py").status_code == 404


def test_swagger_ui_sends_nothing_to_its_online_validator(client):
    assert '"validatorUrl": null' in client.get("/docs").text
    assert client.get("/docs/oauth2-redirect").status_code == 200
