"""A local HTTP server on 127.0.0.1 that speaks the Hugging Face Hub's protocol for downloads (repo info, file
tree, ``resolve`` URLs with ETag and commit headers, HTTP Range), serving folders of this disk as repos, and
plain files with Range support (Apple's tarball, ml-mgie's example picture). It records every request, so a
test can tell what was fetched and whether a download resumed. Tests point ``HF_ENDPOINT`` at it: they never
reach the real hub.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, repos: dict[str, Path], files: dict[str, Path]):
        self.repos, self.files = repos, files
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fetched(self) -> list[str]:
        return [path for method, path, _ in self.requests if method == "GET"]

    def repo_files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.path.split("?")[0]
        self.hub.requests.append((self.command, path, self.headers.get("Range")))
        if path.startswith("/api/models/"):
            return self._api(path[len("/api/models/"):])
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        if match and match.group(1) in self.hub.repos:
            file = self.hub.repo_files(match.group(1)).get(match.group(2))
            return self._file(file, body, {"X-Repo-Commit": COMMIT})
        return self._file(self.hub.files.get(path), body, {})

    def _api(self, rest: str) -> None:
        repo = next((r for r in self.hub.repos if rest == r or rest.startswith(r + "/")), None)
        if repo is None:
            return self._json({"error": "Repository not found"}, 404)
        files = self.hub.repo_files(repo)
        if "/tree/" in rest:
            return self._json([{"type": "file", "oid": _sha(p), "size": p.stat().st_size, "path": name}
                               for name, p in files.items()])
        self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                    "siblings": [{"rfilename": name} for name in files]})

    def _json(self, data, status: int = 200) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _file(self, file: Path | None, body: bool, headers: dict[str, str]) -> None:
        if file is None:
            return self._json({"error": "Entry not found"}, 404)
        data = file.read_bytes()
        start, status = 0, 200
        ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if ranged:
            start = int(ranged.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("ETag", f'"{_sha(file)}"')
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data[start:])


def _sha(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
