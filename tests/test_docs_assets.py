"""The API docs (Swagger UI) of both APIs load every asset from our own app, through the ASGI application as
uvicorn serves it: no CDN, no other host."""
import json
import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx
import pytest


class AssetRefs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.refs.append(value)


def referenced_urls(html: str, page_url: str) -> list[str]:
    parser = AssetRefs()
    parser.feed(html)
    urls = [urljoin(page_url, ref) for ref in parser.refs]
    settings = re.search(r'<script type="application/json" id="swagger-settings">(.*?)</script>', html, re.S)
    if settings:
        urls.append(urljoin(page_url, json.loads(settings.group(1))["url"]))  # the OpenAPI schema
    return urls


@pytest.fixture
def staff_cookies(client, operator):
    client.force_login(operator)
    return {"sessionid": client.cookies["sessionid"].value}


@pytest.mark.parametrize("docs_path", ["/api/v1/docs", "/v1/docs"])
def test_docs_load_every_asset_from_our_own_app(gateway, staff_cookies, docs_path):
    ours = urlsplit(gateway.url).netloc
    with httpx.Client(base_url=gateway.url, cookies=staff_cookies, timeout=15) as http:
        page = http.get(docs_path)
        assert page.status_code == 200 and "swagger-ui" in page.text
        hosts = {urlsplit(u).netloc for u in re.findall(r"""https?://[^\s"'<>)]+""", page.text)}
        assert hosts <= {ours}, f"the docs page names other hosts: {hosts - {ours}}"
        urls = referenced_urls(page.text, gateway.url + docs_path)
        assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
        for url in urls:
            assert urlsplit(url).netloc == ours, url
            response = http.get(url)
            assert response.status_code == 200, (url, response.status_code)
            assert response.content, url


def test_rest_api_docs_are_for_staff_only(gateway):
    r = httpx.get(gateway.url + "/api/v1/docs", timeout=15)
    assert r.status_code == 302 and "/admin/login/" in r.headers["location"]
