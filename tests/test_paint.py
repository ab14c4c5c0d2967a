"""Interactive painting: the edit on the shipped generator (planted units add / remove their
concept inside the painted region and nothing far outside it), the run's concepts, and the
server over a real socket (good requests answer images; every bad one a 4xx with a message)."""
import base64
import http.client
import io
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from dissect_kernels.generated import sample_z
from dissect_kernels.models.tiny_gan import default_segmenter, load_default_generator, tiny_gan_info
from dissect_kernels.paint import PaintEdit, insertion_values, paint_edit, paint_edits
from dissect_kernels.paint.server import make_server
from dissect_kernels.paint.session import load_painter, read_run
from dissect_kernels.paint.validate import MAX_BODY, MAX_EDITS

INFO = tiny_gan_info()
TREE, DOOR = INFO["planted"]["tree"], INFO["planted"]["door"]
CELL = 4                                       # image pixels per layer3 cell (64 / 16)


@pytest.fixture(scope="module")
def gen():
    return load_default_generator()


@pytest.fixture(scope="module")
def k(gen):
    return insertion_values(gen, "layer3", num_samples=32)


def z_of(i):
    return sample_z(torch.tensor([i]), 48, 0)


def classes(images):
    seg = default_segmenter()(images)
    return (seg[:, 0] if seg.dim() == 4 else seg)[0]


def square(r0, r1, c0, c1, grid=(16, 16)):
    m = torch.zeros(grid)
    m[r0:r1, c0:c1] = 1
    return m


def changed(a, b):
    return (a - b).abs().sum(1)[0] > 0


def within(diff, mask, margin_cells=1):
    """Every changed pixel lies inside the mask's cells grown by margin_cells."""
    grown = torch.nn.functional.max_pool2d(mask[None, None], 2 * margin_cells + 1, 1, margin_cells)[0, 0]
    allowed = grown.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1) > 0
    return bool((diff & ~allowed).sum() == 0)


def test_add_paints_the_concept_inside_the_region_only(gen, k):
    z = z_of(0)                                 # sample 0 has no tree anywhere
    before = gen(z)
    assert int((classes(before) == 1).sum()) == 0
    mask = square(4, 9, 4, 10)
    after = paint_edit(gen, "layer3", z, TREE, mask, "add", k)
    diff = changed(after, before)
    inside = mask.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1) > 0
    tree = classes(after) == 1
    assert int((tree & inside).sum()) > 0.8 * int(inside.sum())     # the region became tree
    assert within(tree, mask)                                      # tree only up to a cell beyond it
    assert within(diff, mask)                                      # nothing beyond one cell changed


def test_remove_ablates_the_concept_inside_the_region_only(gen, k):
    z = z_of(0)
    before = gen(z)
    door = classes(before) == 2
    rows, cols = door.nonzero(as_tuple=True)
    r, c = int(rows.float().mean()) // CELL, int(cols.float().mean()) // CELL
    mask = square(max(r - 3, 0), r + 4, max(c - 3, 0), c + 4)
    after = paint_edit(gen, "layer3", z, DOOR + [6, 9], mask, "remove")
    inside = mask.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1) > 0
    left = classes(after) == 2
    assert int((door & inside).sum()) > 50
    assert int((left & inside).sum()) < 0.2 * int((door & inside).sum())
    assert within(changed(after, before), mask)


def test_no_edits_and_empty_masks_change_nothing(gen, k):
    z = z_of(1)
    base = gen(z)
    assert torch.equal(paint_edits(gen, "layer3", z, []), base)
    assert torch.equal(paint_edit(gen, "layer3", z, TREE, torch.zeros(16, 16), "add", k), base)


def test_edits_apply_in_order_and_fine_masks_are_area_averaged(gen, k):
    z = z_of(2)
    mask = square(2, 8, 2, 8)
    add = PaintEdit(TREE, mask, "add")
    both = paint_edits(gen, "layer3", z, [add, PaintEdit(TREE, mask, "remove")], k)
    assert torch.equal(both, paint_edits(gen, "layer3", z, [PaintEdit(TREE, mask, "remove")], k))
    fine = mask.repeat_interleave(CELL, 0).repeat_interleave(CELL, 1)               # 64 x 64
    assert torch.equal(paint_edit(gen, "layer3", z, TREE, fine, "add", k),
                       paint_edits(gen, "layer3", z, [add], k))


def test_edit_errors_name_the_bad_input(gen, k):
    z = z_of(0)
    with pytest.raises(ValueError, match="mask values"):
        paint_edit(gen, "layer3", z, TREE, square(0, 2, 0, 2) * 2, "add", k)
    with pytest.raises(ValueError, match="layer's grid"):
        paint_edit(gen, "layer3", z, TREE, torch.ones(4, 4), "add", k)
    with pytest.raises(ValueError, match="24 units"):
        paint_edit(gen, "layer3", z, [24], square(0, 2, 0, 2), "add", k)
    with pytest.raises(ValueError, match="mode"):
        paint_edit(gen, "layer3", z, TREE, square(0, 2, 0, 2), "paint", k)
    with pytest.raises(ValueError, match="insertion values"):
        paint_edit(gen, "layer3", z, TREE, square(0, 2, 0, 2), "add")


def test_insertion_values_are_each_units_099_quantile(gen, k):
    from dissect_kernels.paint.edit import layer_activation
    acts = torch.cat([layer_activation(gen, "layer3", z_of(i)) for i in range(32)])
    expect = torch.quantile(acts.permute(1, 0, 2, 3).reshape(24, -1).double(), 0.99, dim=1).float()
    assert torch.allclose(k, expect, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small default `dissect-kernels gan` run folder."""
    from dissect_kernels.cli import main
    out = tmp_path_factory.mktemp("paint") / "gan"
    assert main(["gan", "--num-samples", "48", "--ace-samples", "8", "--batch-size", "16",
                 "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def painter(run):
    return load_painter(run, value_samples=32)


def test_the_runs_concepts_come_from_its_ace_ranking_and_detectors(run, painter):
    summary = read_run(run)
    assert painter.grid == (16, 16) and painter.num_units == 24 and painter.image_size == (64, 64)
    tree = painter.concepts["tree"]
    assert tree.source == "ace" and set(TREE) <= set(tree.units)
    assert tree.units == summary["layers"]["layer3"]["extra"]["ace"]["top_units"][:len(tree.units)]
    door = painter.concepts["door"]
    assert door.source == "dissection" and set(DOOR) <= set(door.units)
    assert door.scores == sorted(door.scores, reverse=True)
    index = (run / "index.html").read_text()              # the report's index says how to paint
    assert "dissect-kernels paint --run" in index and str(run.resolve()) in index


def test_runs_it_cannot_paint_are_refused(tmp_path, run):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        load_painter(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    summary["model"]["name"] = "OtherGAN"
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="OtherGAN"):
        load_painter(tmp_path)


@pytest.fixture(scope="module")
def server(painter):
    srv = make_server(painter, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
    resp = conn.getresponse()
    out = resp.status, resp.getheader("Content-Type"), resp.read()
    conn.close()
    return out


def decode(payload):
    url = json.loads(payload)["image"]
    assert url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def grid_list(mask):
    return mask.tolist()


def test_server_answers_samples_and_paints(server, gen, painter):
    status, kind, body = request(server, "GET", "/api/concepts")
    assert status == 200 and kind == "application/json"
    info = json.loads(body)
    assert info["grid"] == [16, 16] and {c["name"] for c in info["concepts"]} >= {"tree", "door"}
    status, _, body = request(server, "GET", "/api/sample?seed=0")
    assert status == 200
    original = decode(body)
    expect = ((gen(z_of(0))[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(original, expect)
    mask = square(4, 9, 4, 10)
    t0 = time.perf_counter()
    status, _, body = request(server, "POST", "/api/paint",
                              {"seed": 0, "concept": "tree", "mode": "add", "mask": grid_list(mask)})
    elapsed = time.perf_counter() - t0
    assert status == 200 and elapsed < 1.0, (status, body[:200], elapsed)   # within a second on CPU
    painted = decode(body)
    diff = torch.from_numpy((painted != original).any(-1))
    assert int(diff[16:36, 16:40].sum()) > 200 and within(diff, mask)
    stroke = {"concept": "tree", "mode": "add", "mask": grid_list(mask)}
    status, _, body = request(server, "POST", "/api/paint", {"seed": 0, "edits": [stroke, dict(
        stroke, mode="remove", units=TREE)]})
    assert status == 200 and json.loads(body)["edits"] == 2
    status, _, body = request(server, "GET", "/")
    assert status == 200 and b"paint.js" in body


def raw(port, text: bytes) -> tuple[int, dict]:
    """Send raw bytes; (status, JSON body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(text)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


MASK = [[0] * 16 for _ in range(16)]
GOOD = {"seed": 0, "concept": "tree", "mode": "add", "mask": MASK}
BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"seed": NaN, "concept": "tree", "mode": "add", "mask": []}', "not valid JSON"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
    ({"concept": "tree", "mode": "add", "mask": MASK}, "lacks 'seed'"),
    (dict(GOOD, seed=-1), "seed must be"),
    (dict(GOOD, seed=2 ** 40), "seed must be"),
    (dict(GOOD, seed="3"), "seed must be"),
    (dict(GOOD, seed=True), "seed must be"),
    (dict(GOOD, concept="<script>x</script>"), "not a concept of this run"),
    (dict(GOOD, concept=7), "not a concept of this run"),
    (dict(GOOD, mode="paint"), "mode must be one of"),
    ({"seed": 0, "mode": "add", "mask": MASK}, "lacks 'concept'"),
    (dict(GOOD, mask=[[0] * 16] * 15), "16 rows"),
    (dict(GOOD, mask=[[0] * 15] * 16), "row 0 must hold 16"),
    (dict(GOOD, mask=[[2] * 16] * 16), "in [0, 1]"),
    (dict(GOOD, mask=[["1"] * 16] * 16), "in [0, 1]"),
    (dict(GOOD, mask="all"), "16 rows"),
    (dict(GOOD, units=[24]), "not a unit number in [0, 23]"),
    (dict(GOOD, units=[-1]), "not a unit number"),
    (dict(GOOD, units=[True]), "not a unit number"),
    (dict(GOOD, units=[]), "list of 1 to 24"),
    (dict(GOOD, units=list(range(25))), "list of 1 to 24"),
    (dict(GOOD, brush=3), "unknown field 'brush'"),
    ({"seed": 0, "edits": "x"}, f"at most {MAX_EDITS}"),
    ({"seed": 0, "edits": [GOOD] * (MAX_EDITS + 1)}, f"at most {MAX_EDITS}"),
    ({"seed": 0, "edits": [{"concept": "tree"}]}, "edits[0] lacks 'mode'"),
    ({"seed": 0, "edits": [3]}, "edits[0] must be an object"),
    ({"seed": 0, "edits": [], "concept": "tree"}, "unknown field 'concept'"),
]


@pytest.mark.parametrize("body, message", BAD_BODIES, ids=[m for _, m in BAD_BODIES])
def test_bad_paint_bodies_get_400_with_a_message(server, body, message):
    status, kind, data = request(server, "POST", "/api/paint", body)
    assert status == 400 and kind == "application/json"
    assert message in json.loads(data)["error"]


BAD_REQUESTS = [
    ("GET", "/api/sample", None, {}, 400, "needs ?seed"),
    ("GET", "/api/sample?seed=abc", None, {}, 400, "seed must be"),
    ("GET", "/api/sample?seed=99999999999", None, {}, 400, "seed must be"),
    ("GET", "/api/sample?seed=1&seed=2", None, {}, 400, "given once"),
    ("GET", "/api/sample?seed=1&size=9", None, {}, 400, "unknown query parameter 'size'"),
    ("GET", "/api/concepts?x=1", None, {}, 400, "unknown query parameter"),
    ("GET", "/nope", None, {}, 404, "no such page"),
    ("GET", "/static/../session.py", None, {}, 404, "no such file"),
    ("GET", "/static/%2e%2e/session.py", None, {}, 404, "no such file"),
    ("GET", "/static/paint.js/..", None, {}, 404, "no such file"),
    ("GET", "/api/paint", None, {}, 405, "use POST"),
    ("PUT", "/api/paint", b"{}", {}, 405, "not allowed"),
    ("POST", "/api/sample", b"{}", {}, 405, "only for /api/paint"),
    ("POST", "/api/paint", b"{}", {"Content-Type": "text/plain"}, 415, "application/json"),
    ("GET", "/api/concepts", None, {"Host": "evil.example:80"}, 403, "loopback only"),
]


@pytest.mark.parametrize("method, path, body, headers, status, message", BAD_REQUESTS,
                         ids=[f"{r[0]} {r[1]} {r[4]}" for r in BAD_REQUESTS])
def test_bad_requests_get_4xx_with_a_message(server, method, path, body, headers, status, message):
    line = f"{method} {path} HTTP/1.1\r\n".encode()
    hdrs = {"Host": f"127.0.0.1:{server}", "Connection": "close", **headers}
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
        hdrs["Content-Length"] = str(len(body))
    text = line + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()).encode() + b"\r\n" + (body or b"")
    got, answer = raw(server, text)
    assert got == status and message in answer["error"], (got, answer)


def test_oversized_and_unsized_bodies_are_refused_unread(server):
    head = f"POST /api/paint HTTP/1.1\r\nHost: 127.0.0.1:{server}\r\nContent-Type: application/json\r\n"
    status, answer = raw(server, (head + f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode())
    assert status == 413 and "at most" in answer["error"]
    status, answer = raw(server, (head + "\r\n").encode())
    assert status == 411 and "Content-Length" in answer["error"]


def test_cli_serves_a_run_and_refuses_a_missing_one_or_a_taken_port(run, tmp_path):
    from dissect_kernels.cli import main
    proc = subprocess.Popen([sys.executable, "-m", "dissect_kernels", "paint", "--run", str(run), "--port", "0",
                             "--value-samples", "16"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert "painting layer3" in lines[0] and "one edit regenerates in" in lines[0], lines
        port = int(lines[1].split("127.0.0.1:")[1].split("/")[0])
        status, _, body = request(port, "GET", "/api/concepts")
        assert status == 200 and json.loads(body)["layer"] == "layer3"
        with pytest.raises(SystemExit, match="cannot listen there"):
            main(["paint", "--run", str(run), "--port", str(port), "--value-samples", "4"])
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    with pytest.raises(SystemExit, match="no summary.json"):
        main(["paint", "--run", str(tmp_path / "none")])


def test_run_concepts_read_report_numbers_and_ace_indices():
    from dissect_kernels.paint.session import run_concepts
    rows = [{"unit": 1, "label": "tree", "iou": 0.2, "detector": True},
            {"unit": 3, "label": "tree", "iou": 0.5, "detector": True},
            {"unit": 2, "label": "sun", "iou": 0.9, "detector": False},
            {"unit": 4, "label": "door", "iou": 0.3, "detector": True}]
    layer = {"unit_rows": rows, "concept_names": ["background", "tree", "door", "sun"],
             "extra": {"ace": {"concept": "door", "top_units": [3, 0, 1], "top_ace": [0.4, 0.1, -0.2]}}}
    got = run_concepts(layer, unit_base=1)            # rows number units from 1, ACE indexes from 0
    assert list(got) == ["tree", "door"]
    assert got["tree"].units == [2, 0] and got["tree"].source == "dissection"
    assert got["door"].units == [3, 0] and got["door"].source == "ace" and got["door"].scores == [0.4, 0.1]
