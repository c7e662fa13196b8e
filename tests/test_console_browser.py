"""The console in a real browser (Chromium from the Debian package, driven by Playwright) against real data,
trainer, eval and gateway services: sign in, upload a CSV and see its rejected rows, open the jobs and
models pages; run an evaluation from its form and read its report; see a promotion without evidence
refused (and a read-only operator told so); chat side by side and see both answers stream.
Screenshots go to the test's temporary folder, and to docs/screenshots/ (the README shows them) when
FT_UPDATE_SCREENSHOTS=1, so a test run never changes tracked files; each page's server time (the browser's
navigation timing: request sent to first byte) and load time are printed."""

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from data_fixtures import prepared_qa_version
from gateway_support import one_request_at_a_time_gateway  # noqa: F401  (fixture: inference_server)
from test_console_evaluations import PAIRS, eval_server  # noqa: F401  (fixture: a real eval service)

from finetune.v1 import data_pb2
from ftcommon.grpc_server import RunningServer
from services.console.config import ConsoleSettings
from services.console.server import ConsoleServer, build_server
from services.trainer.config import DEFAULT_BASE_MODEL_NAME

if TYPE_CHECKING:
    from services.eval.server import EvalServer
    from services.inference.server import InferenceServer

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
    tmp_path_factory: pytest.TempPathFactory,
    data_server: RunningServer,
    trainer_server: RunningServer,
    eval_server: "EvalServer",  # noqa: F811
    inference_server: "InferenceServer",
) -> Iterator[ConsoleServer]:
    """The console before real services; its gateway decodes one request at a time, so that the default
    model evaluated against itself ties on every row (a row the candidate "wins" would break the report's
    empty win filter below)."""
    settings = ConsoleSettings(
        data_dir=tmp_path_factory.mktemp("console"),
        port=0,
        data_address=data_server.address,
        trainer_address=trainer_server.address,
        eval_address=eval_server.address,
        gateway_url=inference_server.http_url,
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


# The browser's own timing of the last navigation: server time is request sent to first byte of the reply.
NAVIGATION_TIMING = """() => {
  const n = performance.getEntriesByType("navigation")[0];
  return {server_ms: n.responseStart - n.requestStart, load_ms: n.loadEventEnd - n.startTime};
}"""


def _sign_in(page: Any, url: str, token: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/datasets$"))


def test_evaluation_report_refused_promotion_and_side_by_side_chat_in_chromium(
    console_server: ConsoleServer, data_stub, data_root, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip dev extra)"
    )
    split = data_pb2.SplitFractions(train=0.4, validation=0.0, test=0.6)
    version = prepared_qa_version(data_stub, data_root, "browser-eval", PAIRS, split, seed=3)
    dataset_id = data_stub.GetPreparedVersion(data_pb2.GetPreparedVersionRequest(id=version)).dataset_id
    _, admin_token = console_server.state.accounts.create_operator("browser admin", "admin")
    _, reader_token = console_server.state.accounts.create_operator("browser reader", "read-only")
    screenshots = DOCS_SCREENSHOTS if os.environ.get("FT_UPDATE_SCREENSHOTS") == "1" else tmp_path
    screenshots.mkdir(parents=True, exist_ok=True)
    timings: dict[str, dict[str, float]] = {}
    url = console_server.url

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:

            def timed(path: str, name: str = "") -> None:
                page.goto(url + path, wait_until="load")
                timings[name or path] = page.evaluate(NAVIGATION_TIMING)

            _sign_in(page, url, admin_token)
            timed(f"/evaluations?prepared_version_id={version}", "/evaluations")
            page.select_option("select[name=baseline]", DEFAULT_BASE_MODEL_NAME)
            page.select_option("select[name=candidate]", DEFAULT_BASE_MODEL_NAME)
            page.fill("input[name=max_tokens]", "8")
            page.fill(
                "textarea[name=off_topic_probes]", "Who invented the telephone?\nHow do I iron a shirt?"
            )
            page.click("#eval-form button[type=submit]")
            page.wait_for_url(re.compile(r".*/evaluations/[^/?]+$"))
            run_path = page.url.removeprefix(url)
            page.wait_for_selector(
                "#verdict", timeout=300_000
            )  # the page reloads itself until the report is in
            assert page.locator("#verdict").inner_text() == "fail"  # a model against itself cannot win
            assert page.locator("#metrics tbody tr").count() >= 3
            assert page.locator("#side-by-side tbody tr").count() >= 3
            page.screenshot(path=str(screenshots / "console-evaluation.png"), full_page=True)
            timed(run_path)
            page.select_option("select[name=outcome]", "win")
            page.click("#example-filter button[type=submit]")
            page.wait_for_selector("text=No rows match")

            timed("/models")
            page.fill("form[action='/models/promote'] input[name=model]", DEFAULT_BASE_MODEL_NAME)
            page.fill("form[action='/models/promote'] input[name=alias]", "browser-prod")
            page.click("form[action='/models/promote'] button[type=submit]")
            refusal = page.locator("#promote-refusal")
            refusal.wait_for()
            assert "FAILED_PRECONDITION" in refusal.inner_text() and "request id" in refusal.inner_text()
            timed(f"/models/{DEFAULT_BASE_MODEL_NAME}", "/models/{model}")
            timed(f"/datasets/{dataset_id}", "/datasets/{dataset}")
            timed("/datasets")
            timed("/jobs")
            timed(f"/jobs/new?prepared_version_id={version}", "/jobs/new")
            timed("/keys")

            timed("/playground")
            page.select_option("select[name=model_a]", DEFAULT_BASE_MODEL_NAME)
            page.check("input[name=side_by_side]")
            page.select_option("select[name=model_b]", DEFAULT_BASE_MODEL_NAME)
            page.fill("input[name=max_tokens]", "12")
            page.fill("textarea[name=message]", "What is the capital of France?")
            page.click("#chat-form button[type=submit]")
            for box in ("#answer-a", "#answer-b"):
                # Both answers stream in; each ends with the form that saves it as a training row.
                page.wait_for_selector(f"{box} form.save-row", timeout=120_000)
                answer = page.locator(f"{box} > div").first.inner_text()
                assert answer.strip() and "request id" not in answer, answer
            page.screenshot(path=str(screenshots / "console-playground.png"), full_page=True)

            reader = browser.new_page()
            _sign_in(reader, url, reader_token)
            reader.goto(url + "/models")
            assert reader.locator("form[action='/models/promote']").count() == 0
            refused = reader.evaluate(
                """async () => {
                  const reply = await fetch("/models/promote", {method: "POST",
                    headers: {"X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content,
                              "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
                    body: "model=smollm2-135m-instruct&alias=prod"});
                  return {status: reply.status, body: await reply.json()};
                }"""
            )
            assert refused["status"] == 403 and "read-only" in refused["body"]["error"]
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    print("page times (ms, server = request to first byte):")
    for path, timing in timings.items():
        print(f"  {path:24} server {timing['server_ms']:7.1f}  load {timing['load_ms']:7.1f}")
