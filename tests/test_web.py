"""The page `audionet export --web DIR` writes, in a real headless Chromium: a real recording dropped on it gives
`audionet predict`'s top class every second, and the page reaches nothing but its own server.

What it needs on a fresh machine, and how it gets it:
- Playwright (the `test` extra) drives Debian's `chromium` through `executable_path` (Playwright's own browser
  downloads are never used). When /usr/bin/chromium is missing and CI=true, the `chromium` fixture installs it
  with apt-get (CI runs as root on a Debian machine); elsewhere the test is skipped with the command to run.
- onnxruntime-web comes from npm: the `web_runtime` fixture installs the pinned version once into
  ~/.cache/audionet_tf/npm (the same code `--web` runs without `--web-runtime`), skipped when npm is absent.
"""
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import real_student
from audionet_tf.core.config import ExportConfig
from audionet_tf.serving import inference, web
from audionet_tf.serving.predict import predict_file

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Largest difference allowed between the page's and predict's probability of a second's top class.
PROBABILITY_TOLERANCE = 0.02
RUNTIME_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "audionet_tf", "npm")


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium: installed by apt-get on CI when missing (a failed install fails the test there), else
    the test is skipped with the command to run."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI") != "true" or not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(f"{CHROMIUM} absent: apt-get install chromium (with CI=true, as root, the test installs it)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=1200)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed: {done.stderr[-1000:]}")
    assert os.path.exists(CHROMIUM), f"apt-get installed chromium but {CHROMIUM} is not there"
    return CHROMIUM


@pytest.fixture(scope="session")
def web_runtime():
    """onnxruntime-web's files, installed by npm once into a cache outside the checkout."""
    if shutil.which("npm") is None:
        pytest.skip("npm absent: the page's runtime (onnxruntime-web) is installed with npm")
    version = ExportConfig().web_runtime_version
    return web.install_runtime(version, RUNTIME_CACHE)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """Serve a directory on 127.0.0.1; yields a function DIR -> base URL."""
    servers = []

    def start(directory):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                 functools.partial(QuietHandler, directory=str(directory)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_page_in_chromium_gives_predicts_top_class_every_second(tmp_path_factory, tmp_path, chromium, web_runtime,
                                                                serve):
    playwright = pytest.importorskip("playwright.sync_api", reason="part of the test extra")
    real = real_student.exported(tmp_path_factory)
    page_dir = tmp_path / "page"
    done = subprocess.run([sys.executable, "-m", "audionet_tf.export", str(real["keras"]), "--labels",
                           str(real["work"] / "labels.txt"), "--out", str(tmp_path / "export"), "--web",
                           str(page_dir), "--web-runtime", web_runtime], cwd=tmp_path, env=real_student.ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(os.listdir(page_dir)) == sorted([*web.PAGE_FILES, *web.RUNTIME_FILES, "student.onnx"])
    assert (page_dir / "student.onnx").read_bytes() == (tmp_path / "export" / "student.onnx").read_bytes()

    student = inference.load_student(str(tmp_path / "export"))
    base = serve(page_dir)
    requests, errors = [], []
    started = time.monotonic()
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{base}/index.html")
            page.wait_for_selector("#status[data-state=ready]", timeout=120_000)
            for name in ("violin", "trumpet", "piano"):  # stereo, mono, stereo
                path = real["paths"][name]
                page.set_input_files("#file", str(path))
                page.wait_for_selector("#status[data-state=done], #status[data-state=error]", timeout=120_000)
                result = page.evaluate("window.audionetResult")
                assert result, page.inner_text("#status")
                expected = predict_file(student, str(path)).per_second()
                got = [(s["second"], s["top"][0]["class"]) for s in result["seconds"]]
                assert got == [(s["second"], s["top"][0]["class"]) for s in expected], name
                # Close, not equal: the browser resamples with its own filter (0.0024 at most measured on these
                # three; averaging stereo's channels instead of ffmpeg's (L + R)/sqrt(2) gave 0.07 and 0.14).
                gaps = [abs(a["top"][0]["probability"] - b["top"][0]["probability"])
                        for a, b in zip(result["seconds"], expected)]
                assert max(gaps) <= PROBABILITY_TOLERANCE, (name, max(gaps))
                # The page's table says the same as its result.
                rows = page.eval_on_selector_all("#seconds tbody tr", "rows => rows.map(r => [+r.dataset.second, "
                                                 "r.dataset.top])")
                assert [tuple(row) for row in rows] == got
                assert len(result["windows"]) == sum(1 for _ in predict_file(student, str(path)).windows())
                if name == "violin":
                    shot = tmp_path / "page.png"
                    page.screenshot(path=str(shot), full_page=True)
                    print(f"screenshot of the page after {path.name}: {shot}")
            # A file that is not audio gets a message naming it, and the page still works.
            (tmp_path / "notes.txt").write_text("not a recording\n")
            page.set_input_files("#file", str(tmp_path / "notes.txt"))
            page.wait_for_selector("#status[data-state=error]", timeout=60_000)
            assert page.inner_text("#status").startswith("notes.txt: ")
        finally:
            browser.close()
    print(f"browser part: {time.monotonic() - started:.1f} s")
    assert not errors, errors
    assert requests and all(url.startswith(base + "/") for url in requests), requests
    assert {url[len(base) + 1:] for url in requests} >= {"index.html", "app.js", "student.onnx", *web.RUNTIME_FILES}


def test_web_runtime_is_found_in_a_package_its_dist_or_an_npm_prefix_and_refused_elsewhere(tmp_path, capsys):
    """--web-runtime takes the npm package, its dist/ or an npm prefix; a directory without the files is refused
    with the files it looked for, before anything is exported."""
    from audionet_tf.commands import export as export_cmd
    from audionet_tf.core.errors import AudioNetError
    from audionet_tf.model.student import build_audionet

    dist = tmp_path / "prefix" / "node_modules" / "onnxruntime-web" / "dist"
    dist.mkdir(parents=True)
    for name in web.RUNTIME_FILES:
        (dist / name).write_bytes(b"x")
    (dist.parent / "package.json").write_text(json.dumps({"name": "onnxruntime-web", "version": "1.2.3"}))
    for given in (tmp_path / "prefix", dist.parent, dist):
        assert web.runtime_dir(ExportConfig(web="page", web_runtime=str(given))) == str(dist)
    assert web.runtime_version(str(dist)) == "1.2.3"
    with pytest.raises(AudioNetError, match=r"--web-runtime .*: no onnxruntime-web files there .*ort\.wasm\.min\.js"):
        web.runtime_dir(ExportConfig(web="page", web_runtime=str(tmp_path)))
    build_audionet(None, 3).save(tmp_path / "model.keras")
    capsys.readouterr()
    assert export_cmd.main([str(tmp_path / "model.keras"), "--out", str(tmp_path / "export"), "--web",
                            str(tmp_path / "page"), "--web-runtime", str(tmp_path / "prefix" / "node_modules")]) == 2
    assert "no onnxruntime-web files there" in capsys.readouterr().err
    assert not (tmp_path / "export").exists() and not (tmp_path / "page").exists()


def test_without_npm_the_page_asks_for_npm_or_a_runtime_directory(tmp_path, monkeypatch):
    """Where npm is not on the PATH and the cache is empty, --web stops with one message giving both ways."""
    from audionet_tf.core.errors import AudioNetError

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(AudioNetError, match=r"npm is not installed .* give --web-runtime DIR with the files of "
                                            r"`npm pack onnxruntime-web@1\.31\.1` unpacked"):
        web.runtime_dir(ExportConfig(web="page", web_cache=str(tmp_path / "cache")))
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")
