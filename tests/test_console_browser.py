"""The console in a real browser (Chromium from the Debian package, driven by Playwright) against real data
and trainer services: sign in, upload a CSV and see its rejected rows, open the jobs and models pages.
Screenshots go to the test's temporary folder, and to docs/screenshots/ (the README shows them) when
FT_UPDATE_SCREENSHOTS=1, so a test run never changes tracked files; page load times are printed."""

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ftcommon.grpc_server import RunningServer
from services.console.config import ConsoleSettings
from services.console.server import ConsoleServer, build_server

CHROMIUM = Path("/usr/bin/chromium")
DOCS_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CSV = (
    "question,answer\n"
    "What is LoRA?,A low-rank adapter method for fine-tuning.\n"
    ",An answer without a question.\n"
    "How do I prepare data?,Upload it and run prepare.\n"
    "Who owns the registry?,\n"
    "Where do I report a bug?,Email support@example.com with the request id.\n"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} is absent: `make setup` as root installs it"
    ),
]


@pytest.fixture(scope="module")
def console_server(
    tmp_path_factory: pytest.TempPathFactory, data_server: RunningServer, trainer_server: RunningServer
) -> Iterator[ConsoleServer]:
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console"),
        port=0,
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        eval_address="127.0.0.1:1",
    )
    running = build_server(settings)
    yield running
    running.stop()


def test_sign_in_upload_and_browse_in_chromium(console_server: ConsoleServer, tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip dev extra)"
    )
    _, token = console_server.state.accounts.create_operator("browser tester", "admin")
    csv_path = tmp_path / "support_faq.csv"
    csv_path.write_text(CSV)
    screenshots = DOCS_SCREENSHOTS if os.environ.get("FT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    load_times: dict[str, float] = {}

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:

            def visit(path: str) -> None:
                started = time.perf_counter()
                page.goto(console_server.url + path, wait_until="load")
                load_times[path] = time.perf_counter() - started

            visit("/datasets")
            assert "/login" in page.url
            page.fill("input[name=token]", token)
            page.click("button[type=submit]")
            page.wait_for_url(re.compile(r".*/datasets$"))
            page.set_input_files("input[type=file]", str(csv_path))
            page.click("#upload-form button[type=submit]")
            page.wait_for_url(re.compile(r".*/datasets/[^/]+$"))
            rejected = page.locator("#rejected tbody tr")
            assert rejected.count() == 2
            assert "3" in rejected.nth(0).inner_text() and "5" in rejected.nth(1).inner_text()
            page.screenshot(path=str(screenshots / "console-dataset-report.png"), full_page=True)
            visit(page.url.removeprefix(console_server.url))
            visit("/datasets")
            assert "support_faq" in page.content()
            page.screenshot(path=str(screenshots / "console-datasets.png"))
            visit("/jobs")
            assert page.locator("h1").first.inner_text().startswith("Training jobs")
            visit("/models")
            assert "smollm2-135m-instruct" in page.content()
            page.screenshot(path=str(screenshots / "console-models.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    print("page load times (s):", {path: round(seconds, 3) for path, seconds in load_times.items()})
