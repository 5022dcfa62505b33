"""The console's CSS and script, read once and served from memory (a few kilobytes; no CDN, works offline)."""

from __future__ import annotations

import hashlib
import mimetypes

from quart import Response, request

from appliance.web.console.base import HERE, PREFIX, blueprint

_FILES: dict[str, tuple[bytes, str, str]] = {}
for _path in (HERE / "static").iterdir():
    if _path.is_file():
        _data = _path.read_bytes()
        _type = mimetypes.guess_type(_path.name)[0] or "application/octet-stream"
        _FILES[_path.name] = (_data, _type, '"' + hashlib.sha256(_data).hexdigest()[:16] + '"')


@blueprint.get(PREFIX + "/static/<name>")
async def static_file(name: str):
    found = _FILES.get(name)
    if found is None:
        return Response("not found\n", status=404, content_type="text/plain; charset=utf-8")
    data, kind, etag = found
    if request.headers.get("If-None-Match") == etag:
        return Response(b"", status=304, headers={"ETag": etag})
    charset = "; charset=utf-8" if kind.startswith("text/") or kind.endswith("javascript") else ""
    return Response(data, status=200, content_type=kind + charset,
                    headers={"ETag": etag, "Cache-Control": "private, max-age=300"})
