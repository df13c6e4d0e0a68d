"""A small HTTP client of the API on the standard library, for the tests and tools/serve_load.py.

status, headers, body = client.post(url, files={"scene": png_bytes}, fields={"plate_id": id})
"""

import http.client
import json
import secrets
import urllib.parse
from typing import Optional


def multipart(fields: dict, files: dict, content_type: str = "image/png") -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/form-data form: text `fields` and `files` as
    {name: bytes}, each file sent as `content_type`."""
    boundary = secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n')
        parts.append(f"{value}\r\n")
    for name, data in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{name}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(data)
        parts.append("\r\n")
    parts.append(f"--{boundary}--\r\n")
    body = b"".join(part.encode() if isinstance(part, str) else part for part in parts)
    return body, f"multipart/form-data; boundary={boundary}"


def request(
    url: str,
    method: str = "GET",
    body: Optional[bytes] = None,
    headers: Optional[dict] = None,
    timeout: float = 60.0,
) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one request on a new connection."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def post(
    url: str,
    files: dict,
    fields: Optional[dict] = None,
    content_type: str = "image/png",
    timeout: float = 60.0,
) -> tuple[int, dict, bytes]:
    """A multipart POST of `files` and `fields` (see `multipart`)."""
    body, form_type = multipart(fields or {}, files, content_type)
    return request(url, "POST", body, {"Content-Type": form_type}, timeout)


def get_json(url: str, timeout: float = 10.0) -> dict:
    status, _, body = request(url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url}: {status} {body[:200]!r}")
    return json.loads(body)
