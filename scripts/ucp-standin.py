#!/usr/bin/env python3
"""Test stand-in for UCP's and DTR's HTTPS APIs (neither UCP nor DTR can be run here).

UCP: answers what dtr-backup's preflight asks: GET /_ping ("OK"), GET /ca (the CA's PEM) and
POST /auth/login ({"username", "password"} -> {"auth_token"} for the one good password, 401
otherwise).

DTR: GET and POST /api/v0/meta/settings with HTTP basic authentication (the UCP admin and the
good password; 401 otherwise), of which only `readOnlyRegistry` is kept. Each change is
appended to the file named by DTR_STANDIN_LOG (if set) as `<unix time> readOnlyRegistry=<bool>`,
so that a test can tell when the registry was read-only.

Listens on 127.0.0.1 only. With PORT 0 a free port is taken and printed on the first line of
standard output.

Usage: ucp-standin.py PORT CERT KEY CA_PEM   (the good password comes from UCP_STANDIN_PASSWORD)
"""
import base64
import http.server
import json
import os
import ssl
import sys
import time

PORT, CERT, KEY, CA = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
PASSWORD = os.environ["UCP_STANDIN_PASSWORD"]
LOG = os.environ.get("DTR_STANDIN_LOG")
SETTINGS = {"readOnlyRegistry": os.environ.get("DTR_STANDIN_READ_ONLY") == "true"}


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return False
        try:
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return False
        return bool(user) and pw == PASSWORD

    def settings(self):
        if not self.authorized():
            self.reply(401, '{"errors": [{"code": "NOT_AUTHENTICATED"}]}')
            return
        if self.command == "POST":
            length = int(self.headers.get("Content-Length", "0"))
            try:
                doc = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self.reply(400, '{"errors": [{"code": "INVALID_JSON"}]}')
                return
            if "readOnlyRegistry" in doc:
                SETTINGS["readOnlyRegistry"] = bool(doc["readOnlyRegistry"])
                if LOG:
                    with open(LOG, "a") as f:
                        f.write(f"{time.time():.6f} readOnlyRegistry={str(SETTINGS['readOnlyRegistry']).lower()}\n")
        self.reply(200, json.dumps(SETTINGS))

    def do_GET(self):
        if self.path == "/api/v0/meta/settings":
            self.settings()
        elif self.path == "/_ping":
            self.reply(200, "OK", "text/plain")
        elif self.path == "/ca":
            with open(CA) as f:
                self.reply(200, f.read(), "text/plain")
        else:
            self.reply(404, '{"message": "not found"}')

    def do_POST(self):
        if self.path == "/api/v0/meta/settings":
            self.settings()
            return
        if self.path != "/auth/login":
            self.reply(404, '{"message": "not found"}')
            return
        length = int(self.headers.get("Content-Length", "0"))
        try:
            doc = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.reply(400, '{"message": "bad json"}')
            return
        if doc.get("password") == PASSWORD and doc.get("username"):
            self.reply(200, json.dumps({"auth_token": "standin-token", "refresh_token": ""}))
        else:
            self.reply(401, '{"message": "invalid credentials"}')

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
if PORT == 0:
    print(server.server_address[1], flush=True)
server.serve_forever()
