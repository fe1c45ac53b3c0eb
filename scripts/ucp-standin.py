#!/usr/bin/env python3
"""Test stand-in for UCP's HTTPS API (no UCP can be run here).

Answers what dtr-backup's preflight asks: GET /_ping ("OK"), GET /ca (the CA's PEM) and
POST /auth/login ({"username", "password"} -> {"auth_token"} for the one good password, 401
otherwise). Listens on 127.0.0.1 only.

Usage: ucp-standin.py PORT CERT KEY CA_PEM   (the good password comes from UCP_STANDIN_PASSWORD)
"""
import http.server
import json
import os
import ssl
import sys

PORT, CERT, KEY, CA = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
PASSWORD = os.environ["UCP_STANDIN_PASSWORD"]


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/_ping":
            self.reply(200, "OK", "text/plain")
        elif self.path == "/ca":
            with open(CA) as f:
                self.reply(200, f.read(), "text/plain")
        else:
            self.reply(404, '{"message": "not found"}')

    def do_POST(self):
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
server.serve_forever()
