#!/usr/bin/python3
"""A local S3 stand-in for sluice's aws_sigv4 tests, verifying SigV4 with the REAL keys.

Run with Debian's python3 (its python3-botocore): header and presigned signatures are
recomputed with botocore's own S3 signers over the request as received, restricted to the
headers the client signed; aws-chunked chunk signatures are checked by the chain below (an
implementation independent of sluice's TypeScript one). Placeholder keys, or anything that
does not verify, get S3's 403 errors.

  _s3_standin.py PORT CERT KEY LOG [HOST]   (REAL_AWS_ACCESS_KEY_ID / REAL_AWS_SECRET_ACCESS_KEY /
                                      REAL_AWS_SESSION_TOKEN in the environment)

Prints "ready PORT" when listening. Each request is one JSON line in LOG.

  _s3_standin.py put-chunked URL PROXY_PORT CA FILE   (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
                                                       AWS_SESSION_TOKEN: the keys to sign with)

A client: PUTs FILE as an aws-chunked upload (STREAMING-AWS4-HMAC-SHA256-PAYLOAD, 64 KiB chunks,
every chunk signed), signed here by hand, through the proxy's CONNECT; prints the status.
"""
import hashlib
import hmac
import json
import os
import ssl
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS = os.environ.get("REAL_AWS_ACCESS_KEY_ID")
SECRET = os.environ.get("REAL_AWS_SECRET_ACCESS_KEY")
TOKEN = os.environ.get("REAL_AWS_SESSION_TOKEN") or None
EMPTY = hashlib.sha256(b"").hexdigest()

objects = {}
uploads = {}
lock = threading.Lock()


def parse_auth(value):
    # AWS4-HMAC-SHA256 Credential=ID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex
    fields = dict(p.strip().split("=", 1) for p in value[len("AWS4-HMAC-SHA256 "):].split(","))
    key_id, date, region, service, _ = fields["Credential"].split("/")
    return key_id, date, region, service, fields["SignedHeaders"].split(";"), fields["Signature"]


def signing_key(date, region, service, secret=None):
    k = hmac.new(("AWS4" + (secret or SECRET)).encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, note):
        self.record["error"] = code
        body = f"<Error><Code>{code}</Code><Message>{note}</Message></Error>".encode()
        self.reply(status, body, {"Content-Type": "application/xml"})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def verify(self, raw_body):
        """The signature's verdict with the real keys: None when good, else (code, note)."""
        host = self.headers["Host"]
        url = f"https://{host}{self.path}"
        auth = self.headers.get("Authorization")
        parts = urlsplit(self.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        creds = Credentials(ACCESS, SECRET, TOKEN)
        if auth:
            key_id, date, region, service, signed, sig = parse_auth(auth)
            self.record.update(auth="header", key_id=key_id, signed=signed)
            if key_id != ACCESS:
                return ("InvalidAccessKeyId", "unknown key id")
            if TOKEN and self.headers.get("x-amz-security-token") != TOKEN:
                return ("InvalidToken", "the session token is not the real one")
            headers = {h: self.headers[h] for h in signed if self.headers.get(h) is not None}
            req = AWSRequest(method=self.command, url=url, headers=headers, data=raw_body)
            signer = S3SigV4Auth(creds, service, region)
        elif "X-Amz-Signature" in query:
            key_id, date, region, service, _ = query["X-Amz-Credential"].split("/")
            sig = query["X-Amz-Signature"]
            self.record.update(auth="query", key_id=key_id)
            if key_id != ACCESS:
                return ("InvalidAccessKeyId", "unknown key id")
            kept = "&".join(p for p in parts.query.split("&") if not p.startswith("X-Amz-Signature="))
            req = AWSRequest(method=self.command, url=f"https://{host}{parts.path}?{kept}",
                             headers={"host": host})
            signer = S3SigV4QueryAuth(creds, service, region, expires=int(query["X-Amz-Expires"]))
        else:
            self.record["auth"] = "none"
            return ("AccessDenied", "anonymous")
        req.context["timestamp"] = self.headers.get("x-amz-date") or query.get("X-Amz-Date")
        canonical = signer.canonical_request(req)
        want = signer.signature(signer.string_to_sign(req, canonical), req)
        if not hmac.compare_digest(want, sig):
            return ("SignatureDoesNotMatch", "the signature does not verify with the real key")
        self.seed = (sig, date, region, service, req.context["timestamp"])
        return None

    def decode_chunks(self, raw):
        """aws-chunked: every chunk signature checked by the real key's chain; returns the data."""
        seed, date, region, service, stamp = self.seed
        key = signing_key(date, region, service)
        scope = f"{date}/{region}/{service}/aws4_request"
        prev, out, i = seed, b"", 0
        while True:
            end = raw.index(b"\r\n", i)
            size_hex, sig = raw[i:end].decode().split(";chunk-signature=")
            size = int(size_hex, 16)
            data = raw[end + 2:end + 2 + size]
            text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", stamp, scope, prev, EMPTY,
                              hashlib.sha256(data).hexdigest()])
            want = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(want, sig):
                raise ValueError("a chunk signature does not verify with the real key")
            prev, out, i = sig, out + data, end + 2 + size + 2
            if size == 0:
                return out

    def handle_any(self):
        self.record = {"method": self.command, "path": self.path,
                       "authorization": self.headers.get("Authorization"),
                       "sha256": self.headers.get("x-amz-content-sha256")}
        try:
            raw = self.body()
            bad = self.verify(raw)
            if bad:
                return self.error(403, *bad)
            data = raw
            if self.headers.get("x-amz-content-sha256") == "STREAMING-AWS4-HMAC-SHA256-PAYLOAD":
                try:
                    data = self.decode_chunks(raw)
                except ValueError as e:
                    return self.error(403, "SignatureDoesNotMatch", str(e))
                self.record["chunked"] = True
            self.route(data)
        finally:
            with open(LOG, "a") as f:
                f.write(json.dumps(self.record) + "\n")

    def route(self, data):
        parts = urlsplit(self.path)
        q = dict(parse_qsl(parts.query, keep_blank_values=True))
        host = self.headers["Host"].split(":")[0]
        if host.endswith(".amazonaws.com") and ".s3." in host:  # virtual-hosted: bucket in the name
            bucket, key = host.split(".s3.")[0], parts.path.lstrip("/")
        else:  # path style
            segs = parts.path.lstrip("/").split("/", 1)
            bucket = segs[0]
            key = segs[1] if len(segs) > 1 else ""
        xml = {"Content-Type": "application/xml"}
        if not bucket:
            return self.reply(200, b"<ListAllMyBucketsResult><Buckets><Bucket><Name>ci-artifacts</Name>"
                              b"<CreationDate>2026-01-01T00:00:00.000Z</CreationDate></Bucket></Buckets>"
                              b"</ListAllMyBucketsResult>", xml)
        if not key and self.command == "GET":
            items = "".join(f"<Contents><Key>{k}</Key><Size>{len(v)}</Size>"
                            f"<LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                            f"<ETag>\"{hashlib.md5(v).hexdigest()}\"</ETag></Contents>"
                            for (b, k), v in sorted(objects.items()) if b == bucket)
            return self.reply(200, f"<ListBucketResult><Name>{bucket}</Name><KeyCount>"
                              f"{items.count('<Contents>')}</KeyCount><IsTruncated>false</IsTruncated>"
                              f"{items}</ListBucketResult>".encode(), xml)
        with lock:
            if self.command == "POST" and "uploads" in q:
                uid = uuid.uuid4().hex
                uploads[uid] = {}
                return self.reply(200, f"<InitiateMultipartUploadResult><Bucket>{bucket}</Bucket>"
                                  f"<Key>{key}</Key><UploadId>{uid}</UploadId>"
                                  f"</InitiateMultipartUploadResult>".encode(), xml)
            if self.command == "PUT" and "uploadId" in q:
                uploads[q["uploadId"]][int(q["partNumber"])] = data
                return self.reply(200, b"", {"ETag": f"\"{hashlib.md5(data).hexdigest()}\""})
            if self.command == "POST" and "uploadId" in q:
                parts_ = uploads.pop(q["uploadId"])
                objects[(bucket, key)] = b"".join(parts_[n] for n in sorted(parts_))
                self.record["parts"] = len(parts_)
                return self.reply(200, f"<CompleteMultipartUploadResult><Key>{key}</Key><ETag>\"x\"</ETag>"
                                  f"</CompleteMultipartUploadResult>".encode(), xml)
            if self.command == "PUT":
                objects[(bucket, key)] = data
                return self.reply(200, b"", {"ETag": f"\"{hashlib.md5(data).hexdigest()}\""})
            obj = objects.get((bucket, key))
        if obj is None:
            return self.error(404, "NoSuchKey", key)
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].partition("-")
            a, b = int(a), min(int(b) if b else len(obj) - 1, len(obj) - 1)
            return self.reply(206, obj[a:b + 1], {"Content-Type": "application/octet-stream",
                                                  "Content-Range": f"bytes {a}-{b}/{len(obj)}",
                                                  "ETag": f"\"{hashlib.md5(obj).hexdigest()}\""})
        return self.reply(200, obj, {"Content-Type": "application/octet-stream",
                                     "ETag": f"\"{hashlib.md5(obj).hexdigest()}\"",
                                     "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"})

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = handle_any


def put_chunked(url, proxy_port, ca, path):
    import http.client
    import time
    data = open(path, "rb").read()
    key_id = os.environ["AWS_ACCESS_KEY_ID"]
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    token = os.environ.get("AWS_SESSION_TOKEN")
    u = urlsplit(url)
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    date, region, service = amz_date[:8], "us-east-1", "s3"
    scope = f"{date}/{region}/{service}/aws4_request"
    size = 64 * 1024
    chunks = [data[i:i + size] for i in range(0, len(data), size)] + [b""]
    total = sum(len(f"{len(c):x};chunk-signature=") + 64 + 2 + len(c) + 2 for c in chunks)
    headers = {"host": u.netloc, "x-amz-date": amz_date,
               "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
               "content-encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(data)),
               "content-length": str(total)}
    if token:
        headers["x-amz-security-token"] = token
    signed = sorted(headers)
    canonical = "\n".join(["PUT", u.path, "", "".join(f"{h}:{headers[h]}\n" for h in signed),
                           ";".join(signed), "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"])
    key = signing_key(date, region, service, secret)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(canonical.encode()).hexdigest()])
    prev = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
                                f"SignedHeaders={';'.join(signed)}, Signature={prev}")
    body = b""
    for c in chunks:
        text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, EMPTY,
                          hashlib.sha256(c).hexdigest()])
        prev = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        body += f"{len(c):x};chunk-signature={prev}\r\n".encode() + c + b"\r\n"
    assert len(body) == total
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port,
                                       context=ssl.create_default_context(cafile=ca))
    conn.set_tunnel(u.hostname, u.port)
    conn.request("PUT", u.path, body=body, headers=headers)
    r = conn.getresponse()
    print(r.status, r.read().decode(errors="replace"))


if __name__ == "__main__" and sys.argv[1] == "put-chunked":
    put_chunked(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
elif __name__ == "__main__":
    port, cert, key, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    host = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.1"
    server = ThreadingHTTPServer((host, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()
