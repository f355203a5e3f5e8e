#!/usr/bin/env python3
"""The official `huggingface_hub` client against MLXEngine's Hub test server: keeps the
server honest to the real Hub's API, and shows that `mlxengine pull` fills the same cache
layout Python tools read.

usage: hf_client_check.py ENDPOINT CACHE_PULLED_BY_MLXENGINE REPO_ROOT
Prints one JSON line: {"ok": true, "checks": [...]}; exits 1 on the first failed check.
"""
import hashlib, json, os, sys, tempfile

endpoint, pulled_cache, root = sys.argv[1], sys.argv[2], sys.argv[3]
os.environ["HF_ENDPOINT"] = endpoint
os.environ.pop("HF_TOKEN", None)

from huggingface_hub import HfApi, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError, GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError)

checks = []


def check(name, cond, detail=""):
    checks.append(name)
    if not cond:
        print(json.dumps({"ok": False, "failed": name, "detail": str(detail), "checks": checks}))
        sys.exit(1)


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


api = HfApi(endpoint=endpoint)
ids = sorted(m.id for m in api.list_models(search="testorg"))
check("search follows pages", len(ids) == 4 and "testorg/tiny" in ids, ids)
info = api.model_info("testorg/tiny", files_metadata=True)
sib = {s.rfilename: s for s in info.siblings}
check("info has files with sizes", sib["model.safetensors"].size == os.path.getsize(
    os.path.join(root, "testorg/tiny/model.safetensors")), sib)
check("info has the LFS sha256", sib["model.safetensors"].lfs.sha256 == sha256(
    os.path.join(root, "testorg/tiny/model.safetensors")), sib["model.safetensors"].lfs)
tree = {e.path: e for e in api.list_repo_tree("testorg/tiny", recursive=True)}
check("tree lists nested files across pages", "onnx/model.onnx" in tree, list(tree))

with tempfile.TemporaryDirectory() as d:
    snap = snapshot_download("testorg/tiny", cache_dir=d)
    for rel in ["config.json", "model.safetensors", "tokenizer.json", "onnx/model.onnx"]:
        check(f"snapshot_download {rel}", sha256(os.path.join(snap, rel)) == sha256(
            os.path.join(root, "testorg/tiny", rel)))

p = hf_hub_download("testorg/tiny", "model.safetensors", cache_dir=pulled_cache,
                    local_files_only=True)
check("reads the file mlxengine pulled (shared cache)", sha256(p) == sha256(
    os.path.join(root, "testorg/tiny/model.safetensors")), p)

for name, call, exc in [
    ("missing file", lambda: hf_hub_download("testorg/tiny", "nope.bin", cache_dir=tempfile.mkdtemp()),
     EntryNotFoundError),
    ("missing repo", lambda: api.model_info("testorg/nope"), RepositoryNotFoundError),
    ("missing revision", lambda: api.model_info("testorg/tiny", revision="v9"), RevisionNotFoundError),
    ("private without token", lambda: api.model_info("private/tiny", token=False), RepositoryNotFoundError),
    ("gated", lambda: api.model_info("gated/tiny", token=False), GatedRepoError),
]:
    try:
        call()
        check(name, False, "no error")
    except exc:
        check(name, True)
    except Exception as e:  # noqa: BLE001
        check(name, False, repr(e))

print(json.dumps({"ok": True, "checks": checks}))
