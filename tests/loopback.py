"""Test material made here: clips from ffmpeg's lavfi sources, and an HTTP server on 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading

from audionet_tf.preparation.media import ffmpeg_exe


def make_clip(path: str, seconds: float, *, video: str | None = "testsrc=size=32x24:rate=25",
              audio: str | None = "sine=frequency=440:sample_rate=16000") -> str:
    """Write a faststart MP4 from lavfi sources (None drops that stream)."""
    command = [ffmpeg_exe(), "-y", "-loglevel", "error"]
    if video:
        command += ["-f", "lavfi", "-i", f"{video}:duration={seconds}" if "duration" not in video else video]
    if audio:
        command += ["-f", "lavfi", "-i", f"{audio}:duration={seconds}" if "duration" not in audio else audio]
    if video:
        command += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "25"]
    if audio:
        command += ["-c:a", "aac"]
    command += ["-movflags", "+faststart", "-t", str(seconds), path]
    subprocess.run(command, check=True, capture_output=True)
    return path


class Server:
    """A threaded static file server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, directory: str):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Handler, directory=directory))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        """Shut the server down."""
        self.httpd.shutdown()
        self.httpd.server_close()


def flash_and_click(path: str, seconds: float, at: float, rate: int = 30) -> str:
    """A clip that is black except one white source frame at `at` s, silent except a click at `at` s."""
    frame = 1.0 / rate
    video = (f"color=c=black:s=32x24:rate={rate}:duration={seconds},"
             f"drawbox=c=white:t=fill:enable='between(t,{at - frame / 4:.4f},{at + frame / 2:.4f})'")
    audio = (f"aevalsrc='if(between(t,{at:.4f},{at + 0.004:.4f}),0.9*sin(2*PI*3000*t),0)':"
             f"s=16000:duration={seconds}")
    return make_clip(path, seconds, video=video, audio=audio)


def exists(path: str) -> bool:
    """Whether a file is there (for readable assertions)."""
    return os.path.isfile(path)
