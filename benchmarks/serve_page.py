"""The picture of `diffuse serve`'s page after a finished job (docs/serve.png), taken in headless Chromium.

    python benchmarks/serve_page.py runs/fashion --labels 0-9 --n 20 --out docs/serve.png

The run is served on 127.0.0.1 and the page is driven as the browser test drives it
(tests/test_serve_browser.py: Debian's chromium and chromium-driver, through Selenium): the labels
ticked, Sample pressed, the grid awaited, then the window saved as a PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from budget import set_threads  # first: it sets OpenMP's wait policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import diffuse  # noqa: E402
from diffuse.cli_args import parse_labels  # noqa: E402
from diffuse.files import write_bytes_atomic  # noqa: E402
from diffuse.serve.app import Service  # noqa: E402
from diffuse.serve.jobs import JobQueue  # noqa: E402
from test_serve_browser import browser, sample_on_page  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--labels", help="classes to tick, e.g. 0-9")
    parser.add_argument("--prompt", help="a text model's prompt")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--steps", type=int, default=18)
    parser.add_argument("--size", default="900,760", help="the window, width,height")
    parser.add_argument("--out", default="docs/serve.png")
    args = parser.parse_args()

    set_threads(2)
    name = Path(args.run.rstrip("/")).name
    service = Service(JobQueue({name: diffuse.load(args.run)})).start()
    driver = browser(*(int(v) for v in args.size.split(",")))
    try:
        sample_on_page(driver, service.url + "/", name, prompt=args.prompt, labels=parse_labels(args.labels) or (),
                       n=args.n, steps=args.steps)
        write_bytes_atomic(args.out, driver.get_screenshot_as_png())
    finally:
        driver.quit()
        service.stop()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
