"""data_process.py fetch: checksums, corruption repair, resume over HTTP Range, and the shared mirror."""

import gzip
import hashlib
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import data_process
from data.fetch import MANIFEST, in_demo, read_manifest, sha256_file
from model.errors import MiniMindError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_mirror(root: Path) -> dict[str, bytes]:
    files = {
        "pretrain_zh/a/target.txt": "今天天气很好。\n我们一起去公园散步吧。\n".encode("utf-8") * 200,
        "sft_zh/b.json": b'[{"instruction": "x", "output": "y"}]',
        "ceval/val/c_val.csv": b"id,question,A,B,C,D,answer\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def write_manifest(path: Path, files: dict[str, bytes], base_url: str, corrupt: str = None) -> Path:
    lines = ["local_path\turl\tsha256\tbytes"]
    for rel, data in files.items():
        digest = hashlib.sha256(data + (b"x" if rel == corrupt else b"")).hexdigest()
        lines.append(f"{rel}\t{base_url}/{rel}\t{digest}\t{len(data)}")
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode("utf-8")))
    return path


class RangeHandler(SimpleHTTPRequestHandler):
    """http.server that honours `Range: bytes=N-` (the stdlib one ignores it) and records what was asked."""

    requests: list = []

    def do_GET(self):
        RangeHandler.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            return self.send_error(404)
        data = path.read_bytes()
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].rstrip("-"))
            if start >= len(data):
                return self.send_error(416)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    root = tmp_path / "served"
    files = make_mirror(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield files, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch(*argv):
    data_process.main(["fetch", "--workers", "2", *argv])


def test_http_fetch_verifies_resumes_and_repairs(http_mirror, tmp_path, capsys):
    files, url = http_mirror
    manifest = write_manifest(tmp_path / "m.tsv.gz", files, url)
    raw = tmp_path / "raw"
    big = "pretrain_zh/a/target.txt"
    # a download interrupted half way: the part file holds the first half
    (raw / big).parent.mkdir(parents=True)
    (raw / (big + ".part")).write_bytes(files[big][: len(files[big]) // 2])
    fetch("--set", "full", "--manifest", str(manifest), "--raw", str(raw))
    for rel, data in files.items():
        assert (raw / rel).read_bytes() == data
    assert (f"/{big}", f"bytes={len(files[big]) // 2}-") in RangeHandler.requests  # resumed, not restarted
    assert not list(raw.rglob("*.part"))

    # a corrupted file is detected and fetched again; intact files are not downloaded again
    (raw / big).write_bytes(b"garbage")
    RangeHandler.requests = []
    fetch("--set", "full", "--manifest", str(manifest), "--raw", str(raw))
    assert (raw / big).read_bytes() == files[big]
    assert [path for path, _ in RangeHandler.requests] == [f"/{big}"]
    assert "1 corrupt, re-fetched" in capsys.readouterr().out


def test_checksum_mismatch_never_lands_under_the_final_name(http_mirror, tmp_path):
    files, url = http_mirror
    manifest = write_manifest(tmp_path / "m.tsv.gz", files, url, corrupt="sft_zh/b.json")
    raw = tmp_path / "raw"
    with pytest.raises(MiniMindError, match="1 file\\(s\\) failed"):
        fetch("--set", "full", "--manifest", str(manifest), "--raw", str(raw))
    assert not (raw / "sft_zh/b.json").exists() and not (raw / "sft_zh/b.json.part").exists()
    assert (raw / "ceval/val/c_val.csv").exists()
    with pytest.raises(MiniMindError, match="sha256 mismatch"):
        fetch("--set", "full", "--manifest", str(manifest), "--raw", str(raw), "--strict")


def test_local_mirror_folder(tmp_path):
    root = tmp_path / "mirror"
    files = make_mirror(root)
    manifest = write_manifest(tmp_path / "m.tsv.gz", files, "https://example.invalid")
    raw = tmp_path / "raw"
    fetch("--set", "full", "--manifest", str(manifest), "--raw", str(raw), "--mirror", str(root))
    assert all((raw / rel).read_bytes() == data for rel, data in files.items())
    (root / "sft_zh/b.json").unlink()
    (raw / "sft_zh/b.json").unlink()
    with pytest.raises(MiniMindError, match="failed"):
        fetch("--set", "full", "--manifest", str(manifest), "--raw", str(raw), "--mirror", str(root))


def test_manifest_is_safe_and_demo_is_a_subset(tmp_path):
    sources = read_manifest(MANIFEST)
    assert len({s.local_path for s in sources}) == len(sources)
    demo = [s for s in sources if in_demo(s.local_path)]
    demo_mb = sum(s.bytes for s in demo) / 1e6
    assert 20 < demo_mb < 60, demo_mb  # "a few tens of MB"
    assert any(s.local_path.startswith("ceval/val/") for s in demo)
    assert not any(s.local_path.startswith("ceval/test/") for s in demo)
    bad = tmp_path / "bad.tsv"
    bad.write_text("local_path\turl\tsha256\tbytes\n../etc/passwd\thttp://x\tab\t1\n")
    with pytest.raises(MiniMindError, match="inside the raw folder"):
        read_manifest(bad)


@pytest.mark.skipif(
    not (SHARED / "sources.tsv").exists(), reason="the shared data mirror ../shared/data is not present"
)
def test_demo_fetch_from_shared_mirror(tmp_path):
    """Integration: the ~40 MB demo set copies from the shared mirror and every checksum verifies."""
    raw = tmp_path / "raw"
    fetch("--set", "demo", "--mirror", str(SHARED), "--raw", str(raw))
    sample = next(s for s in read_manifest(MANIFEST) if in_demo(s.local_path))
    assert sha256_file(raw / sample.local_path) == sample.sha256


def test_unreachable_source_stops_early_with_a_clear_message(tmp_path):
    files = {f"f{i}.txt": b"x" for i in range(40)}
    manifest = write_manifest(tmp_path / "m.tsv.gz", files, "https://example.invalid")
    with pytest.raises(MiniMindError, match="first 8 files all failed; check the network or --mirror"):
        fetch(
            "--set",
            "full",
            "--manifest",
            str(manifest),
            "--raw",
            str(tmp_path / "raw"),
            "--mirror",
            str(tmp_path / "nowhere"),
        )
