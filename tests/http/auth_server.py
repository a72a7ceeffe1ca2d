#!/usr/bin/env python3
"""A small HTTP authentication service for tests/suite/auth_http.rs (Python's http.server, an
independent HTTP implementation). It answers by username:

  allow-*    {"result": "allow"}
  super      {"result": "allow", "is_superuser": true}
  ruled      {"result": "allow", "acl": [allow publish t/${clientid}, deny publish t/no]}
  deny       {"result": "deny"}
  slow       the allow answer after 3 s (past the broker's timeout)
  broken     status 500
  garbage    200 with a body that is not JSON
  (other)    {"result": "ignore"}

Every request body is appended as one JSON line to LOG. Usage: auth_server.py PORT_FILE LOG;
it writes its port to PORT_FILE and stops by itself after 120 s.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(sys.argv[2], "a") as log:
            log.write(body.decode() + "\n")
        request = json.loads(body)
        user = request.get("username") or ""
        status, answer = 200, {"result": "ignore"}
        if user.startswith("allow-"):
            answer = {"result": "allow"}
        elif user == "super":
            answer = {"result": "allow", "is_superuser": True}
        elif user == "ruled":
            answer = {"result": "allow", "acl": [
                {"permission": "allow", "action": "publish", "topic": "t/${clientid}"},
                {"permission": "deny", "action": "publish", "topic": "t/no"}]}
        elif user == "deny":
            answer = {"result": "deny"}
        elif user == "slow":
            time.sleep(3)
            answer = {"result": "allow"}
        elif user == "broken":
            status = 500
        raw = b"not json" if user == "garbage" else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
threading.Timer(120, server.shutdown).start()
server.serve_forever()
