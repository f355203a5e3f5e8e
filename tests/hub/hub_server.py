#!/usr/bin/env python3
"""MLXEngine's Hub test server: the Hugging Face Hub HTTP API on 127.0.0.1, stdlib only.

Serves ROOT/<owner>/<name>/<files...> as model repos, with the API's shapes:

  GET  /api/models?search=&author=&pipeline_tag=&limit=&config=   (Link rel="next" paging)
  GET  /api/models/{o}/{n}[/revision/{rev}][?blobs=true]
  GET  /api/models/{o}/{n}/tree/{rev}[/{path}][?recursive=true]   (Link rel="next" paging)
  POST /api/models/{o}/{n}/paths-info/{rev}
  HEAD/GET /{o}/{n}/resolve/{rev}/{path}
        small files: 200 (Range → 206/416), ETag = git blob sha1, X-Repo-Commit
        LFS files:   302 to the second origin (the "CDN") with X-Linked-Etag/X-Linked-Size
  HEAD/GET (CDN) /lfs/{sha256}                                    (Range → 206/416)

Access rules by owner: `private/*` needs `Authorization: Bearer <--token>` (401 otherwise,
as the Hub answers for a private repo); `gated/*` answers 401 GatedRepo without a token
and 403 GatedRepo with one; `evil/*` lists a file named `../../outside.txt`.
Errors carry X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo).

Faults, set with POST /_ctl (JSON) and consumed by the next LFS body GETs (HEAD never):
  {"cut": [N, ...]}      cut the next bodies after N bytes (connection dropped)
  {"corrupt": K}         flip a byte in the next K bodies (same size, wrong checksum)
  {"status": [403, ...]} answer the next bodies with this status and an error page
  {"die_after": N}       the process exits (os._exit) after sending N bytes of the next body
  {"rate": B}            send bodies at about B bytes/s (0: unthrottled)
  {"busy": K}            answer the next K bodies 503 with Retry-After: 1
Every request is appended to --log as one JSON line: method, path, range, status, bytes.
"""
import argparse, hashlib, json, os, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LFS_EXT = (".safetensors", ".bin", ".gguf", ".onnx", ".pt", ".pth", ".h5", ".msgpack")
ARGS = None
FAULTS = {"cut": [], "corrupt": 0, "status": [], "die_after": None, "rate": 0, "busy": 0,
          # Tree listings: always announce a next page (the same one again), or announce
          # the next page on the second origin (the CDN port).
          "endless_pages": False, "next_on_cdn": False}
LOCK = threading.Lock()
_meta_cache = {}


def repo_files(rd):
    out = []
    for d, dirs, fs in os.walk(rd):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        for f in fs:
            if not f.startswith("."):
                out.append(os.path.relpath(os.path.join(d, f), rd).replace(os.sep, "/"))
    return sorted(out)


def git_sha1(data):
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def file_meta(path):
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    with LOCK:
        if key in _meta_cache:
            return _meta_cache[key]
    h256, h1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % st.st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h256.update(chunk)
            h1.update(chunk)
    m = {"size": st.st_size, "oid": h1.hexdigest(), "lfs": None}
    if path.endswith(LFS_EXT) or st.st_size >= (1 << 20):
        sha = h256.hexdigest()
        ptr = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {st.st_size}\n".encode()
        m["lfs"] = {"oid": sha, "size": st.st_size, "pointerSize": len(ptr)}
        m["oid"] = git_sha1(ptr)
    with LOCK:
        _meta_cache[key] = m
    return m


def commit_of(rd):
    h = hashlib.sha1()
    for p in repo_files(rd):
        h.update(f"{p}\0{file_meta(os.path.join(rd, p))['oid']}\n".encode())
    return h.hexdigest()


def log(entry):
    if ARGS.log:
        with LOCK, open(ARGS.log, "a") as f:
            f.write(json.dumps(entry) + "\n")


def take_fault():
    """The faults that apply to the next body GET."""
    with LOCK:
        f = {"cut": FAULTS["cut"].pop(0) if FAULTS["cut"] else None,
             "corrupt": FAULTS["corrupt"] > 0,
             "status": FAULTS["status"].pop(0) if FAULTS["status"] else None,
             "die_after": FAULTS["die_after"],
             "busy": FAULTS["busy"] > 0}
        if f["corrupt"]:
            FAULTS["corrupt"] -= 1
        if f["busy"]:
            FAULTS["busy"] -= 1
        FAULTS["die_after"] = None
        return f


def describe(o, n, rd):
    files = repo_files(rd)
    cfg = {}
    if "config.json" in files:
        try:
            cfg = json.load(open(os.path.join(rd, "config.json")))
        except ValueError:
            pass
    archs = cfg.get("architectures") or []
    if any(f.endswith(".gguf") for f in files):
        tag, lib = "text-generation", "gguf"
    elif "modules.json" in files:
        tag, lib = "sentence-similarity", "sentence-transformers"
    elif any(a.endswith("ForCausalLM") for a in archs):
        tag, lib = "text-generation", "transformers"
    else:
        tag, lib = None, None
    seed = int(hashlib.md5(f"{o}/{n}".encode()).hexdigest()[:6], 16)
    tags = [t for t in (lib, tag) if t]
    return {"_id": hashlib.md5(f"{o}/{n}".encode()).hexdigest()[:24], "id": f"{o}/{n}",
            "modelId": f"{o}/{n}", "author": o, "sha": commit_of(rd), "private": o == "private",
            "gated": "auto" if o == "gated" else False, "disabled": False,
            "downloads": seed % 100000, "likes": seed % 500, "tags": tags, "pipeline_tag": tag,
            "library_name": lib, "lastModified": "2026-01-01T00:00:00.000Z",
            "config": {k: cfg[k] for k in ("model_type", "architectures") if k in cfg} or None}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY each answer waits
    # for the client's delayed ACK (~40 ms a request).
    disable_nagle_algorithm = True
    cdn = False

    def log_message(self, fmt, *a):
        pass

    def record(self, status, sent=0):
        log({"origin": "cdn" if self.cdn else "api", "method": self.command, "path": self.path,
             "range": self.headers.get("Range"), "auth": bool(self.headers.get("Authorization")),
             "status": status, "bytes": sent})

    def send(self, code, body=b"", headers=None, ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.record(code, 0 if self.command == "HEAD" else len(body))

    def err(self, code, ecode, msg, extra=None):
        h = {"X-Error-Code": ecode, "X-Error-Message": msg}
        h.update(extra or {})
        self.send(code, {"error": msg}, h)

    def access(self, o, n):
        """The repo folder, or None after answering the error."""
        rd = os.path.join(ARGS.root, o, n)
        if not os.path.isdir(rd) or o.startswith("."):
            self.err(404, "RepoNotFound", "Repository not found")
            return None
        auth = self.headers.get("Authorization")
        good = ARGS.token and auth == f"Bearer {ARGS.token}"
        if o == "private" and not good:
            self.err(401, "RepoNotFound", "Repository not found or you are not authenticated")
            return None
        if o == "gated":
            if auth:
                self.err(403, "GatedRepo", "Access to this model is restricted; you must have access to it")
            else:
                self.err(401, "GatedRepo", "Access to this model is restricted; please log in")
            return None
        return rd

    def rev_ok(self, rd, rev):
        return rev == "main" or rev == commit_of(rd)

    def paged(self, items, q, base):
        size = min(int(q.get("limit", 0) or 0) or ARGS.page, ARGS.page)
        off = int(q.get("cursor", 0))
        page, hdr = items[off:off + size], {}
        tree = "/tree/" in base
        endless = tree and FAULTS["endless_pages"]
        port = ARGS.cdn_port if tree and FAULTS["next_on_cdn"] else ARGS.port
        if off + size < len(items) or endless:
            nq = dict(q, cursor=str(off if endless else off + size))
            hdr["Link"] = f'<http://127.0.0.1:{port}{base}?{urllib.parse.urlencode(nq)}>; rel="next"'
        return page, hdr

    def tree_entry(self, rd, p):
        if p.startswith("../"):
            return {"type": "file", "oid": "0" * 40, "size": 4, "path": p}
        m = file_meta(os.path.join(rd, p))
        e = {"type": "file", "oid": m["oid"], "size": m["size"], "path": p}
        if m["lfs"]:
            e["lfs"] = dict(m["lfs"])
        return e

    def body(self, path, extra):
        """Serve a file's bytes with Range and the injected faults."""
        size = os.path.getsize(path)
        fault = take_fault() if self.command == "GET" and self.cdn else None
        if fault and fault["busy"]:
            return self.err(503, "Busy", "try again", {"Retry-After": "1"})
        if fault and fault["status"]:
            code = fault["status"]
            page = f"<html><body><h1>{code}</h1>injected error page</body></html>".encode()
            return self.send(code, page, {}, "text/html")
        start, end, code = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, _, b = rng[6:].split(",")[0].partition("-")
            if a == "":
                start = max(0, size - int(b))
            else:
                start, end = int(a), (min(int(b), size - 1) if b else size - 1)
            if start >= size or start > end:
                return self.send(416, b"", {"Content-Range": f"bytes */{size}"})
            code = 206
        n = end - start + 1
        self.send_response(code)
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return self.record(code, 0)
        limit = n
        for k in ("cut", "die_after"):
            if fault and fault[k] is not None:
                limit = min(limit, fault[k])
        sent, t0 = 0, time.time()
        with open(path, "rb") as f:
            f.seek(start)
            while sent < limit:
                chunk = f.read(min(16384, limit - sent))
                if not chunk:
                    break
                if fault and fault["corrupt"] and sent == 0:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                try:
                    self.wfile.write(chunk)
                except OSError:
                    break
                sent += len(chunk)
                rate = FAULTS["rate"]
                if rate:
                    ahead = sent / rate - (time.time() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
        self.record(code, sent)
        if fault and fault["die_after"] is not None and sent < n:
            self.wfile.flush()
            os._exit(3)  # the server dies mid-body
        if sent < n:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)  # a dropped connection mid-body

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        u = urllib.parse.urlparse(self.path)
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)).decode()
        if u.path == "/_ctl":
            req = json.loads(raw or "{}")
            with LOCK:
                for k, v in req.items():
                    FAULTS[k] = list(v) if isinstance(v, list) else v
            return self.send(200, {"ok": True, "faults": FAULTS})
        parts = [urllib.parse.unquote(p) for p in u.path.strip("/").split("/")]
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "paths-info":
            rd = self.access(parts[2], parts[3])
            if not rd:
                return
            if "json" in (self.headers.get("Content-Type") or ""):
                paths = json.loads(raw).get("paths", [])
            else:
                paths = urllib.parse.parse_qs(raw).get("paths", [])
            have = set(repo_files(rd))
            return self.send(200, [self.tree_entry(rd, p) for p in paths if p in have])
        self.err(404, "NotFound", "not found")

    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = {k: v[0] for k, v in urllib.parse.parse_qs(u.query).items()}
        parts = [urllib.parse.unquote(p) for p in u.path.strip("/").split("/")]
        # The second origin serves LFS objects, and tree pages (for `next_on_cdn`).
        if self.cdn and not (parts[:2] == ["api", "models"] and "tree" in parts):
            if len(parts) == 2 and parts[0] == "lfs":
                for o in sorted(os.listdir(ARGS.root)):
                    for n in sorted(os.listdir(os.path.join(ARGS.root, o))):
                        rd = os.path.join(ARGS.root, o, n)
                        for p in repo_files(rd):
                            m = file_meta(os.path.join(rd, p))
                            if m["lfs"] and m["lfs"]["oid"] == parts[1]:
                                return self.body(os.path.join(rd, p), {"ETag": f'"{parts[1]}"'})
            return self.err(404, "EntryNotFound", "no such object")
        if parts[:2] == ["api", "models"]:
            if len(parts) == 2:
                return self.search(q)
            if len(parts) < 4:
                return self.err(404, "NotFound", "not found")
            o, n, rest = parts[2], parts[3], parts[4:]
            rd = self.access(o, n)
            if not rd:
                return
            if not rest or rest[0] == "revision":
                rev = "/".join(rest[1:]) if rest else "main"
                if not self.rev_ok(rd, rev):
                    return self.err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                info = describe(o, n, rd)
                info["siblings"] = []
                for p in repo_files(rd):
                    s = {"rfilename": p}
                    if q.get("blobs") == "true":
                        m = file_meta(os.path.join(rd, p))
                        s.update({"blobId": m["oid"], "size": m["size"]})
                        if m["lfs"]:
                            s["lfs"] = {"sha256": m["lfs"]["oid"], "size": m["size"],
                                        "pointerSize": m["lfs"]["pointerSize"]}
                    info["siblings"].append(s)
                return self.send(200, info)
            if rest[0] == "tree" and len(rest) >= 2:
                return self.tree(rd, o, rest[1], "/".join(rest[2:]).strip("/"), q, u.path)
            return self.err(404, "NotFound", "not found")
        if len(parts) >= 5 and parts[2] == "resolve":
            o, n, rev, fp = parts[0], parts[1], parts[3], "/".join(parts[4:])
            rd = self.access(o, n)
            if not rd:
                return
            if not self.rev_ok(rd, rev):
                return self.err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            sha = commit_of(rd)
            if fp not in repo_files(rd):
                return self.err(404, "EntryNotFound", f"{fp} does not exist", {"X-Repo-Commit": sha})
            m = file_meta(os.path.join(rd, fp))
            if m["lfs"]:
                h = m["lfs"]["oid"]
                return self.send(302, b"", {"Location": f"http://127.0.0.1:{ARGS.cdn_port}/lfs/{h}",
                                            "X-Repo-Commit": sha, "ETag": f'"{m["oid"]}"',
                                            "X-Linked-Etag": f'"{h}"', "X-Linked-Size": str(m["size"])})
            inm = self.headers.get("If-None-Match")
            if inm and inm.strip('"') == m["oid"]:
                return self.send(304, b"", {"ETag": f'"{m["oid"]}"', "X-Repo-Commit": sha})
            return self.body(os.path.join(rd, fp), {"ETag": f'"{m["oid"]}"', "X-Repo-Commit": sha})
        self.err(404, "NotFound", "not found")

    def search(self, q):
        items = []
        for o in sorted(os.listdir(ARGS.root)):
            if o in ("private", "gated") or o.startswith("."):
                continue
            for n in sorted(os.listdir(os.path.join(ARGS.root, o))):
                d = describe(o, n, os.path.join(ARGS.root, o, n))
                if q.get("search", "").lower() not in d["id"].lower():
                    continue
                if q.get("author") and q["author"] != o:
                    continue
                if q.get("pipeline_tag") and q["pipeline_tag"] != d["pipeline_tag"]:
                    continue
                if q.get("config") != "true":
                    d.pop("config")
                items.append(d)
        items.sort(key=lambda d: -d["downloads"])
        page, hdr = self.paged(items, q, "/api/models")
        return self.send(200, page, hdr)

    def tree(self, rd, owner, rev, sub, q, base):
        if not self.rev_ok(rd, rev):
            return self.err(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = [p for p in repo_files(rd) if not sub or p.startswith(sub + "/")]
        if sub and not files:
            return self.err(404, "EntryNotFound", f"{sub} does not exist")
        recursive = q.get("recursive") == "true"
        dirs, out = set(), []
        for p in files:
            rel = p[len(sub) + 1:] if sub else p
            if "/" in rel:
                dirs.add((sub + "/" if sub else "") + rel.split("/")[0])
                if not recursive:
                    continue
            out.append(self.tree_entry(rd, p))
        if owner == "evil":
            out.append(self.tree_entry(rd, "../../outside.txt"))
        out = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)] + out
        page, hdr = self.paged(out, {k: v for k, v in q.items() if k != "limit"}, base)
        return self.send(200, page, hdr)


class CdnHandler(Handler):
    cdn = True


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cdn-port", type=int, default=0)
    ap.add_argument("--token", default="")
    ap.add_argument("--log", default="")
    ap.add_argument("--page", type=int, default=3, help="items per page of search and tree")
    ARGS = ap.parse_args()
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    api = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    cdn = ThreadingHTTPServer(("127.0.0.1", ARGS.cdn_port), CdnHandler)
    ARGS.port, ARGS.cdn_port = api.server_address[1], cdn.server_address[1]
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    print(json.dumps({"api": f"http://127.0.0.1:{ARGS.port}", "port": ARGS.port,
                      "cdn_port": ARGS.cdn_port}), flush=True)
    api.serve_forever()


if __name__ == "__main__":
    main()
