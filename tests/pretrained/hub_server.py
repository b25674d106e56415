"""A minimal stand-in for the Hugging Face hub on 127.0.0.1, serving local directories as model repos, for testing
downloads with no network: `HF_ENDPOINT=http://127.0.0.1:PORT` points huggingface_hub at it.

It answers the three requests `snapshot_download` makes: the repo's revision (`/api/models/{id}/revision/{rev}`),
its file tree (`/api/models/{id}/tree/{sha}`) and each file (`HEAD` / `GET /{id}/resolve/{sha}/{path}`). Every
request is recorded in `requests`.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import urllib.parse

SHA = "0123456789abcdef0123456789abcdef01234567"


class HubServer:
    def __init__(self, repos: dict[str, str]):
        self.repos, self.requests = repos, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.respond(body=False)

            def do_GET(self):
                self.respond(body=True)

            def respond(self, body: bool):
                path = urllib.parse.urlparse(self.path).path
                server.requests.append((self.command, path))
                status, headers, payload = server.route(path)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def files(self, repo: str) -> list[str]:
        root = self.repos[repo]
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)

    def route(self, path: str):
        json_headers = {"Content-Type": "application/json"}
        for repo in self.repos:
            if path.startswith(f"/api/models/{repo}/revision/"):
                info = {"id": repo, "sha": SHA, "siblings": [{"rfilename": f} for f in self.files(repo)]}
                return 200, json_headers, json.dumps(info).encode()
            if path.startswith(f"/api/models/{repo}/tree/"):
                tree = []
                for f in self.files(repo):
                    data = open(os.path.join(self.repos[repo], f), "rb").read()
                    tree.append({"type": "file", "path": f, "size": len(data), "oid": hashlib.sha1(data).hexdigest()})
                return 200, json_headers, json.dumps(tree).encode()
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                name = path[len(prefix) :].split("/", 1)[1]
                file = os.path.join(self.repos[repo], name)
                if not os.path.isfile(file):
                    return 404, {"X-Error-Code": "EntryNotFound"}, b"not found"
                data = open(file, "rb").read()
                etag = hashlib.sha256(data).hexdigest()
                return 200, {"X-Repo-Commit": SHA, "ETag": f'"{etag}"'}, data
        return 404, {"X-Error-Code": "RepoNotFound"}, b"not found"

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
