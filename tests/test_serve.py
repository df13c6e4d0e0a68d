"""`jaxsegdepth serve` (serve/): the batcher in this process with a model that waits when told
to; the API against a real server process on 127.0.0.1 (a random-init DSResNet bundle, 64x64
pinned), its answers against the in-process `Predictor`, concurrent requests and every error;
a second server, never compiled before, for the request timeout and the full queue; the page
in headless Chromium with its fake camera, on the first server."""

import base64
import concurrent.futures
import http.client
import io
import json
import os
import shutil
import threading
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from jaxsegdepth import inference
from jaxsegdepth.serve import batcher as batcher_lib, client, images
from tools import serve_load

SIZE = 64
FLAGS = ["--size", str(SIZE), "--max-batch", "4", "--max-wait-ms", "50", "--max-plates", "3"]
FLAGS += ["--max-upload-mb", "0.25", "--max-pixels", "1000000"]


# -- the batcher, in this process -------------------------------------------------------------


class _GatedModel:
    """`forward` that records each call's batch and waits for `gate` before answering: the
    mask head is each pair's scene mean, so rows can be told apart."""

    def __init__(self):
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []

    def __call__(self, plates, scenes):
        self.calls.append(len(scenes))
        self.entered.set()
        self.gate.wait(10)
        return {
            "mask": np.broadcast_to(
                scenes.mean(axis=(1, 2, 3))[:, None, None, None], (len(scenes), 2, 2, 1)
            )
        }


def _constant(value: int, side: int = 2) -> np.ndarray:
    return np.full((side, side, 3), value, np.uint8)


def test_batcher_gathers_pads_refuses_and_drops_cancelled_pairs():
    model = _GatedModel()
    batcher = batcher_lib.Batcher(model, max_batch=4, max_wait_s=0.0, max_queue=5)
    try:
        first = batcher.submit(_constant(0), _constant(10))
        assert model.entered.wait(10)  # the worker holds the first pair in the model
        waiting = [batcher.submit(_constant(0), _constant(v)) for v in (20, 30, 40)]
        other_size = batcher.submit(_constant(0, 4), _constant(50, 4))
        with pytest.raises(batcher_lib.QueueFull, match="5 requests queued"):
            batcher.submit(_constant(0), _constant(60))
        cancelled = waiting.pop()
        assert cancelled.cancel()
        model.gate.set()
        assert first.result(10)[1] == 1
        for future, value in zip(waiting, (20, 30)):
            outputs, batch = future.result(10)
            assert batch == 2
            np.testing.assert_array_equal(outputs["mask"], np.full((2, 2), value, np.float32))
        assert other_size.result(10)[0]["mask"][0, 0] == 50
        assert model.calls == [1, 2, 1]  # 20 and 30 in one call (40 cancelled), then 50
        assert dict(batcher.formed) == {1: 2, 2: 1}
    finally:
        model.gate.set()
        batcher.close()
    assert batcher.admitted == 0


def test_batcher_calls_the_model_with_the_pairs_gathered_and_passes_model_errors():
    calls = []

    def forward(plates, scenes):
        calls.append(len(scenes))
        if scenes[0, 0, 0, 0] == 99:
            raise RuntimeError("the model failed")
        return {"mask": np.zeros((len(scenes), 1, 1, 1), np.float32)}

    batcher = batcher_lib.Batcher(forward, max_batch=4, max_wait_s=0.2, max_queue=8)
    try:
        futures = [batcher.submit(_constant(0), _constant(v)) for v in (1, 2, 3)]
        assert [future.result(10)[1] for future in futures] == [3] * 3
        with pytest.raises(RuntimeError, match="the model failed"):
            batcher.submit(_constant(0, 3), _constant(99, 3)).result(10)
    finally:
        batcher.close()
    assert calls == [3, 1]


def test_plate_cache_keeps_the_most_recently_used():
    plates = images.Plates(2)
    for name in ("a", "b"):
        plates.put(name, _constant(ord(name)))
    assert plates.get("a")[0, 0, 0] == ord("a")  # "b" is now the least recently used
    plates.put("c", _constant(0))
    assert plates.get("b") is None and plates.get("a") is not None and len(plates) == 2
    assert images.Plates.id_of(b"x") == images.Plates.id_of(b"x") != images.Plates.id_of(b"y")


def test_bad_flags_are_one_line_and_status_2_before_the_model_loads(capsys):
    from jaxsegdepth import cli

    assert cli.main(["serve", "--max-queue", "0"]) == 2
    assert capsys.readouterr().err == "error: --max-queue=0: expected > 0\n"
    assert cli.main(["serve", "--max-batch", "-1"]) == 2
    assert (
        "--size, --max-side, --max-batch, --max-wait-ms: expected >= 0" in capsys.readouterr().err
    )
    assert cli.main(["serve", "--threshold", "2"]) == 2
    assert capsys.readouterr().err == "error: --threshold=2.0: expected in [0, 1]\n"


# -- the API, against a server process ------------------------------------------------------


@pytest.fixture(scope="module")
def server(dsresnet_bundle, compilation_cache_dir):
    cache = {"JAX_COMPILATION_CACHE_DIR": compilation_cache_dir}
    if compilation_cache_dir.lower() != "none":
        cache["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    else:
        cache = {}
    process, url = serve_load.start_server(["--model", dsresnet_bundle, *FLAGS], cache)
    yield url
    output = serve_load.stop_server(process)
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def reference(dsresnet_bundle):
    return inference.load(dsresnet_bundle, resolution=SIZE)


@pytest.fixture(scope="module")
def plate_id(server):
    status, _, body = client.post(server + "/v1/plates", {"plate": serve_load.encode(_PLATE)})
    assert status == 200
    answer = json.loads(body)
    assert answer == {
        "plate_id": images.Plates.id_of(serve_load.encode(_PLATE)),
        "width": 80,
        "height": 48,
    }
    return answer["plate_id"]


_PLATE, _ = serve_load.pair(48, 80, 0)
_SCENES = [_PLATE.copy() for _ in range(4)]
for _index, _scene in enumerate(_SCENES):
    _scene[4 + 8 * _index : 20 + 8 * _index, 10:40] = [230, 20, 40]


_JPEG = serve_load.encode(_PLATE, "JPEG")


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _check_against(reference_result, answer: dict) -> None:
    """The served PNGs against the in-process prediction: depth within one level, the mask
    equal but for pixels within 1e-3 of the threshold."""
    mask = _decode(base64.b64decode(answer["mask"])) > 0
    depth = _decode(base64.b64decode(answer["depth"])).astype(int)
    want_depth = np.round(reference_result.depth * 255).astype(int)
    assert np.abs(depth - want_depth).max() <= 1
    unsure = np.abs(reference_result.mask_prob - 0.5) < 1e-3
    np.testing.assert_array_equal(mask[~unsure], reference_result.mask[~unsure])


def test_health_schema_docs_and_page(server):
    health = client.get_json(server + "/v1/health")
    assert health["status"] == "ok" and health["model"] == "dsresnet" and health["size"] == SIZE
    assert health["heads"] == ["mask", "depth"] and health["align"] is True
    assert health["max_batch"] == 4
    schema = client.get_json(server + "/openapi.json")
    assert {"/v1/plates", "/v1/predict", "/v1/health"} <= set(schema["paths"])
    for path, kind in (
        ("/docs", "text/html"),
        ("/", "text/html"),
        ("/static/app.js", "javascript"),
    ):
        status, headers, _ = client.request(server + path)
        assert status == 200 and kind in headers["content-type"], path


def test_predict_json_and_pngs_match_the_predictor(server, plate_id, reference):
    scene = serve_load.encode(_SCENES[0])
    status, headers, body = client.post(
        server + "/v1/predict?output=json", {"scene": scene}, {"plate_id": plate_id}
    )
    assert status == 200 and "x-plate-resized" not in headers
    answer = json.loads(body)
    assert (answer["width"], answer["height"], answer["model_size"]) == (80, 48, [SIZE, SIZE])
    assert answer["alignment"]["status"] == "still"  # the plate is the scene's background
    assert set(answer["timings_ms"]) == {"decode", "align", "resize", "queue_and_model", "encode"}
    want = reference(_PLATE, _SCENES[0])
    _check_against(want, answer)
    cutout = _decode(base64.b64decode(answer["cutout"]))
    np.testing.assert_array_equal(cutout[..., :3], _SCENES[0])
    assert np.abs(cutout[..., 3].astype(int) - np.round(want.mask_prob * 255)).max() <= 1
    for output in ("mask", "depth", "cutout"):
        status, headers, png = client.post(
            server + f"/v1/predict?output={output}", {"scene": scene}, {"plate_id": plate_id}
        )
        assert status == 200 and headers["content-type"] == "image/png"
        np.testing.assert_array_equal(_decode(png), _decode(base64.b64decode(answer[output])))


def test_a_plate_of_another_size_is_resized_and_said(server, reference):
    small_plate = serve_load.encode(_PLATE[:40, :64])
    status, headers, body = client.post(
        server + "/v1/predict?output=json",
        {"scene": serve_load.encode(_SCENES[1]), "plate": small_plate},
    )
    assert status == 200 and headers["x-plate-resized"] == "64x40 to 80x48"
    assert json.loads(body)["plate_resized"] == "64x40 to 80x48"


def test_odd_but_valid_images_are_predicted(server):
    """One pixel (which registration cannot use), grey 16-bit, RGBA and an animated GIF."""
    rng = np.random.default_rng(3)
    frames = [Image.new("P", (40, 30), index) for index in range(2)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    cases = {
        "one pixel": serve_load.encode(np.zeros((1, 1, 3), np.uint8)),
        "grey 16-bit": serve_load.encode(rng.integers(0, 65535, (30, 40), np.uint16)),
        "RGBA": serve_load.encode(rng.integers(0, 256, (30, 40, 4), np.uint8)),
        "animated GIF": gif.getvalue(),
    }
    alignment = {}
    for name, data in cases.items():
        status, _, body = client.post(
            server + "/v1/predict?output=json", {"scene": data, "plate": data}
        )
        assert status == 200, (name, body)
        answer = json.loads(body)
        assert (answer["width"], answer["height"]) == ((1, 1) if name == "one pixel" else (40, 30))
        alignment[name] = answer["alignment"]["status"]
    assert alignment["one pixel"].startswith("refused: ")


def test_concurrent_requests_each_get_their_own_answer(server, plate_id, reference):
    before = client.get_json(server + "/v1/health")["batches"]
    scenes = [serve_load.encode(scene) for scene in _SCENES] * 2

    def ask(scene):
        return client.post(server + "/v1/predict", {"scene": scene}, {"plate_id": plate_id})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, scenes))
    assert [status for status, _, _ in answers] == [200] * 8
    wants = reference(_PLATE, _SCENES)
    for index, (_, headers, body) in enumerate(answers):
        _check_against(wants[index % 4], json.loads(body))
        assert 1 <= int(headers["x-batch-size"]) <= 4
    after = client.get_json(server + "/v1/health")["batches"]
    served = sum(int(size) * (count - before.get(size, 0)) for size, count in after.items())
    assert served == 8


def _chunked_post(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", parts.path, body=iter([b"a", b"b"]), encode_chunked=True)
        return connection.getresponse().status
    finally:
        connection.close()


def test_every_error_is_a_4xx_naming_the_field_and_the_server_stays_up(server, plate_id):
    cases = serve_load.fuzz(server, plate_id, serve_load.encode(_SCENES[0]), 300_000, plates=5)
    assert cases.pop("healthy") is True
    assert cases.pop("5 plate uploads") == {"200": 5}
    assert cases == {
        "zero bytes": [400],
        "truncated JPEG": [400],
        "100000x100000 PNG header": [413],
        "text as an image": [400],
        "upload over the limit": [413],
        "wrong content type": [422],
        "unknown plate id": [404],
        "malformed plate id": [404],
    }
    predict = server + "/v1/predict"
    details = {
        b"": "scene: empty file",
        serve_load.bomb_png(100_000, 100_000): "scene: more than the server's --max-pixels=1000000",
        serve_load.bomb_png(2000, 1000): "scene: 2000x1000 pixels, more than the server's "
        "--max-pixels=1000000",
        _JPEG[: len(_JPEG) // 2]: "scene: truncated or corrupt image",
    }
    for data, detail in details.items():
        _, _, body = client.post(predict, {"scene": data}, {"plate_id": plate_id})
        assert json.loads(body)["detail"].startswith(detail)
    status, _, body = client.post(predict, {"scene": serve_load.encode(_PLATE), "plate": b"x"})
    assert (status, json.loads(body)["detail"]) == (
        400,
        "plate: not an image (expected a PNG, JPEG or other image)",
    )
    status, _, body = client.post(predict, {"scene": serve_load.encode(_PLATE)})
    assert status == 400 and "plate_id" in json.loads(body)["detail"]
    status, _, body = client.post(predict + "?output=png", {"scene": b"x"}, {"plate_id": plate_id})
    assert status == 422 and json.loads(body)["detail"][0]["loc"] == ["query", "output"]
    status, _, body = client.post(server + "/v1/plates", {"plate": os.urandom(300_000)})
    assert status == 413 and "more than --max-upload-mb" in json.loads(body)["detail"]
    assert _chunked_post(predict) == 411
    assert client.get_json(server + "/v1/health")["status"] == "ok"


def test_the_plate_cache_drops_the_least_recently_used(server):
    ids = []
    for seed in (1, 2, 3, 4):  # --max-plates 3
        plate = serve_load.encode(_PLATE + np.uint8(seed))
        _, _, body = client.post(server + "/v1/plates", {"plate": plate})
        ids.append(json.loads(body)["plate_id"])
    scene = serve_load.encode(_SCENES[0])
    statuses = [
        client.post(server + "/v1/predict?output=mask", {"scene": scene}, {"plate_id": i})[0]
        for i in ids
    ]
    assert statuses == [404, 200, 200, 200]


def test_a_timeout_and_a_full_queue_answer_503_with_retry_after(dsresnet_bundle):
    """A server without a compilation cache: its first call compiles for seconds, longer than
    --timeout-s; the pair stays in the model (queue 1), so the next request is refused."""
    flags = ["--model", dsresnet_bundle, "--max-side", "64", "--max-batch", "1", "--max-queue", "1"]
    process, url = serve_load.start_server(
        flags + ["--timeout-s", "0.5"], {"JAX_COMPILATION_CACHE_DIR": ""}
    )
    try:
        _, _, body = client.post(url + "/v1/plates", {"plate": serve_load.encode(_PLATE)})
        fields = {"plate_id": json.loads(body)["plate_id"]}
        scene = {"scene": serve_load.encode(_SCENES[0])}
        status, headers, body = client.post(url + "/v1/predict", scene, fields)
        assert (status, headers["retry-after"]) == (503, "1")
        assert json.loads(body)["detail"] == "the request took more than --timeout-s=0.5"
        status, headers, body = client.post(url + "/v1/predict", scene, fields)
        assert (status, headers["retry-after"]) == (503, "1")
        assert json.loads(body)["detail"].startswith("busy: 1 requests queued (--max-queue)")
        assert client.get_json(url + "/v1/health")["queued"] == 1
    finally:
        serve_load.stop_server(process, wait_s=0)


# -- the page, in headless Chromium -----------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium through Selenium, with Chromium's fake camera; skipped when absent,
    failed under CI=true (`.ci/run` installs it)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        chromium = None
    if not (chromium and driver):
        message = (
            "needs selenium, chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--use-fake-device-for-media-stream")
    options.add_argument("--use-fake-ui-for-media-stream")
    session = webdriver.Chrome(service=Service(driver), options=options)
    yield session
    session.quit()


def _text_when(browser, element_id: str, ready, timeout: float = 60.0) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    element = browser.find_element(By.ID, element_id)
    WebDriverWait(browser, timeout).until(lambda _: ready(element.text))
    return element.text


def test_the_page_predicts_uploaded_files(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    paths = {"plate": tmp_path / "plate.png", "scene": tmp_path / "scene.png"}
    paths["plate"].write_bytes(serve_load.encode(_PLATE))
    paths["scene"].write_bytes(serve_load.encode(_SCENES[2]))
    _, _, body = client.post(
        server + "/v1/predict?output=mask",
        {"scene": paths["scene"].read_bytes(), "plate": paths["plate"].read_bytes()},
    )
    want = int((_decode(body) > 0).sum())
    browser.get(server + "/")
    browser.find_element(By.ID, "plate-file").send_keys(str(paths["plate"]))
    browser.find_element(By.ID, "scene-file").send_keys(str(paths["scene"]))
    browser.find_element(By.ID, "predict-files").click()
    status = _text_when(browser, "status", lambda text: text not in ("ready", "predicting"))
    assert status == "done: 80x48, registration still"
    overlay = browser.find_element(By.ID, "overlay")
    assert (overlay.get_attribute("width"), overlay.get_attribute("height")) == ("80", "48")
    assert int(overlay.get_attribute("data-mask-pixels")) == want
    for image in ("depth", "cutout"):
        width = browser.execute_script(f"return document.getElementById('{image}').naturalWidth")
        assert width == 80
    assert browser.find_element(By.ID, "frames").text == "1"


def test_the_page_runs_live_on_the_fake_camera(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    browser.find_element(By.ID, "camera-start").click()
    _text_when(browser, "status", lambda text: text.startswith(("camera on", "camera:")))
    browser.find_element(By.ID, "camera-plate").click()
    _text_when(browser, "frames", lambda text: int(text) >= 5)
    assert browser.find_element(By.ID, "status").text == "live"
    assert float(browser.find_element(By.ID, "fps").text) > 0
    assert int(browser.find_element(By.ID, "latency").text) > 0
    overlay = browser.find_element(By.ID, "overlay")
    assert (overlay.get_attribute("width"), overlay.get_attribute("height")) == ("320", "240")
    browser.find_element(By.ID, "camera-stop").click()
