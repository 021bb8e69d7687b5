"""The web dashboard in a real headless Chromium: list jobs, open one, submit one, predict an image."""

from __future__ import annotations

import re
import shutil

import httpx
import pytest

from tests.support.datagen import image_folder_zip, png_bytes
from tests.support.servers import Stack, require, wait_until
from tests.support.specs import SOFTMAX_SPEC, submit

pytestmark = pytest.mark.e2e
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def chromium(*flags: str):
    """A headless Chromium driven by selenium, with these flags besides the usual ones."""
    require(
        CHROMIUM is not None and CHROMEDRIVER is not None,
        "Chromium and chromedriver are not installed (Debian packages chromium, chromium-driver; "
        "`make setup` installs them when it runs as root)",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        *flags,
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


# No name resolves but the loopback address, and anything else would go to a proxy that is not
# there (Chromium always reaches loopback directly): the internet is out of reach.
OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9")


def fetched_elsewhere(driver, url: str) -> list[str]:
    """What the page asked for from anywhere but `url`, less what its Content-Security-Policy
    blocked before any request (ReDoc's menu shows its makers' logo from their CDN)."""
    blocked = {
        m.group(1)
        for entry in driver.get_log("browser")
        for m in [
            re.search(r"Loading the \w+ '([^']+)' violates the following Content Security Policy", entry["message"])
        ]
        if m
    }
    asked = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any(name.startswith(url) for name in asked)
    return [name for name in asked if not name.startswith(url) and name not in blocked]


def test_the_api_documentation_renders_offline(embedded_stack, tmp_path):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    driver = chromium(*OFFLINE)
    try:
        with pytest.raises(WebDriverException, match="ERR_"):  # the network really is out of reach
            driver.get("http://example.com/")

        driver.get(embedded_stack.url + "/docs")
        wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, ".opblock"), timeout=30, what="Swagger UI's operations"
        )
        create = driver.find_element(By.CSS_SELECTOR, ".opblock-post .opblock-summary-path[data-path='/v1/jobs']")
        assert create.text.replace("\u200b", "") == "/v1/jobs"
        assert "trainyard" in text(driver, ".info .title")
        driver.save_screenshot(str(tmp_path / "docs.png"))
        assert fetched_elsewhere(driver, embedded_stack.url) == []

        driver.get(embedded_stack.url + "/redoc")
        wait_until(
            lambda: (
                "trainyard"
                in driver.execute_script("const h = document.querySelector('h1'); return h ? h.textContent : ''")
            ),
            timeout=30,
            what="ReDoc's title",
        )
        wait_until(
            lambda: "/v1/jobs" in driver.find_element(By.TAG_NAME, "body").get_attribute("textContent"),
            timeout=30,
            what="ReDoc's operations",
        )
        driver.save_screenshot(str(tmp_path / "redoc.png"))
        assert fetched_elsewhere(driver, embedded_stack.url) == []
    finally:
        driver.quit()


def text(driver, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector).text


def test_job_page_shows_the_evaluation_report(browser, embedded_stack, unsure_job):
    from selenium.webdriver.common.by import By

    with embedded_stack.client() as client:
        report = client.get(f"/v1/jobs/{unsure_job}/evaluation").json()
    browser.get(f"{embedded_stack.url}/ui/jobs/{unsure_job}")
    wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#evaluation #classes"),
        timeout=20,
        what="the evaluation report on the job's page",
    )
    assert f"accuracy {report['accuracy']:.4f}" in text(browser, "#evaluation-summary")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#classes tbody tr")) == 10
    assert "macro avg" in text(browser, "#classes tfoot") and "0.99" in text(browser, "#thresholds")
    cells = [
        [int(cell.text) for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#confusion tr")[1:]
    ]
    assert cells == report["confusion_matrix"]
    first = report["mistakes"][0]
    caption = text(browser, ".mistake figcaption")
    assert first["true_label"] in caption and first["predicted_label"] in caption
    assert len(browser.find_elements(By.CSS_SELECTOR, ".mistake img")) == len(report["mistakes"]) == 24
    wait_until(
        lambda: browser.execute_script(
            "const i = document.querySelector('.mistake img'); return i.complete && i.naturalWidth == 28"
        ),
        timeout=20,
        what="a mistake's thumbnail",
    )


def test_list_open_submit_and_predict(browser, embedded_stack, tmp_path):
    from selenium.webdriver.common.by import By

    with embedded_stack.client() as client:
        job_id = submit(client, {**SOFTMAX_SPEC, "name": "dashboard-job"})
        embedded_stack.wait_for_job(client, job_id)
        assert client.post("/v1/models", json={"name": "dashboard-model", "job_id": job_id}).status_code == 201
        assert client.put("/v1/models/dashboard-model/aliases/production", json={"version": 1}).status_code == 200

    browser.get(embedded_stack.url + "/")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{job_id}"]')
    assert "dashboard-job" in row.text and "succeeded" in row.text
    browser.save_screenshot(str(tmp_path / "jobs.png"))

    row.find_element(By.TAG_NAME, "a").click()
    assert text(browser, "#status") == "succeeded"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")) == 3
    wait_until(
        lambda: browser.execute_script(
            "const i = document.querySelector('#curves'); return i.complete && i.naturalWidth > 300"
        ),
        timeout=20,
        what="the learning-curve image",
    )
    exports = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.export")]
    browser.find_element(By.ID, "tab-logs").click()
    assert "epoch 3/3: train loss" in text(browser, "#logs") and "succeeded" in text(browser, "#logs")
    assert [a.text for a in browser.find_elements(By.CSS_SELECTOR, "a.export")] == exports  # the same on both tabs
    browser.find_element(By.ID, "tab-overview").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")) == 3
    assert not browser.find_elements(By.ID, "parameters-table")  # read only when opened
    browser.find_element(By.CSS_SELECTOR, "#parameters summary").click()
    wait_until(lambda: browser.find_elements(By.ID, "parameters-table"), timeout=20, what="the learned parameters")
    assert "7,850 learned numbers" in text(browser, "#parameters-body")

    browser.get(embedded_stack.url + "/ui/submit?example=softmax-regression")
    spec = browser.find_element(By.ID, "spec")
    assert '"softmax_regression"' in spec.get_attribute("value")
    browser.execute_script(
        "arguments[0].value = arguments[1]",
        spec,
        '{"name": "from-the-browser", '
        '"model": {"arch": "softmax_regression"}, "data": {"dataset": "fashion-mnist"}, "epochs": 2}',
    )
    browser.find_element(By.ID, "submit").click()
    wait_until(
        lambda: "/ui/jobs/" in browser.current_url and text(browser, "#status") == "succeeded",
        timeout=60,
        interval=0.5,
        what="the submitted job's page to show success",
    )
    assert "from-the-browser" in browser.title
    deleted_id = browser.current_url.rsplit("/", 1)[-1]

    browser.get(embedded_stack.url + "/")
    for picked in (job_id, deleted_id):
        browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{picked}"] input.pick').click()
    browser.execute_script("document.querySelectorAll('#jobs tbody tr').forEach((row) => row.dataset.old = 'yes')")
    wait_until(
        lambda: not browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-old]"), timeout=20, what="a refresh"
    )
    ticked = browser.find_elements(By.CSS_SELECTOR, "#jobs input.pick:checked")
    assert sorted(box.get_attribute("value") for box in ticked) == sorted([job_id, deleted_id])  # kept through it
    button = browser.find_element(By.ID, "compare-button")
    assert button.is_enabled() and button.text == "compare 2 ticked jobs"
    button.click()
    wait_until(lambda: browser.find_elements(By.ID, "compared"), timeout=20, what="the comparison page")
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#compared thead th")]
    assert "epochs" in header and "name" not in header, header  # what tells them apart: 3 epochs against 2
    wait_until(
        lambda: browser.execute_script(
            "const i = document.querySelector('#compare'); return i.complete && i.naturalWidth > 300"
        ),
        timeout=20,
        what="the comparison's curves",
    )
    browser.get(f"{embedded_stack.url}/ui/jobs/{deleted_id}")
    browser.execute_script("window.confirm = () => true")  # the delete button asks first
    browser.find_element(By.ID, "delete").click()
    wait_until(lambda: browser.current_url.rstrip("/") == embedded_stack.url, timeout=20, what="back to the jobs list")
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-job="{deleted_id}"]')
    with embedded_stack.client() as client:
        assert client.get(f"/v1/jobs/{deleted_id}").status_code == 404

    browser.get(embedded_stack.url + "/ui/submit")
    browser.execute_script(
        'document.querySelector(\'#spec\').value = \'{"model": {"arch": "mlp"}, "data": '
        '{"dataset": "fashion-mnist"}, "optimizer": {"lr": -1}}\''
    )
    browser.find_element(By.ID, "submit").click()
    assert "optimizer.lr" in text(browser, "#error")

    with embedded_stack.client() as client:
        sweep = client.post(
            "/v1/sweeps",
            json={
                "name": "dashboard-sweep",
                "base": {**SOFTMAX_SPEC, "epochs": 2},
                "grid": {"optimizer.lr": [0.05, 0.00001]},
                "pruner": {"name": "asha"},
                "max_parallel": 1,
            },
        ).json()
    browser.get(embedded_stack.url + "/ui/sweeps")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-sweep="{sweep["id"]}"] a').click()
    wait_until(
        lambda: text(browser, "#status") == "succeeded",
        timeout=120,
        interval=0.5,
        what="the sweep page to show success",
    )
    ranks = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#trials tbody tr")]
    assert len(ranks) == 2 and "succeeded 2" in ranks[0] and "pruned 1" in ranks[1], ranks  # status, epochs
    assert ranks[1].startswith("2 1e-05 "), ranks  # the value as the CLI shows it
    assert text(browser, "#epochs-spent") == "3" and "asha pruner" in text(browser, ".card")
    assert not browser.find_elements(By.ID, "importances")  # two trials never make the five they need
    trials = browser.find_element(By.ID, "compare-trials").get_attribute("href")
    assert trials.count("jobs=") == 2, trials  # both trials' train and test curves, on the comparison page
    for image in ("compare", "history"):
        wait_until(
            lambda image=image: browser.execute_script(
                f"const i = document.querySelector('#{image}'); return i.complete && i.naturalWidth > 300"
            ),
            timeout=20,
            what=f"the sweep's {image} image",
        )

    browser.get(embedded_stack.url + "/ui/models")
    assert "dashboard-model" in text(browser, "#model-dashboard-model")

    boot, trouser = tmp_path / "boot.png", tmp_path / "trouser.png"
    boot.write_bytes(png_bytes(9, seed=4))
    import io

    from PIL import Image

    big = Image.open(io.BytesIO(png_bytes(1, seed=5))).convert("RGB").resize((56, 56), Image.Resampling.NEAREST)
    big.save(trouser)  # colour, twice the size: the model sees it grey at 28x28
    browser.get(embedded_stack.url + "/ui/predict")
    from selenium.webdriver.support.ui import Select

    choice = Select(browser.find_element(By.ID, "choice"))
    assert {"dashboard-model", "dashboard-model@production", "dashboard-model:1"} <= {o.text for o in choice.options}
    choice.select_by_value("dashboard-model:1")  # picked from the list
    assert browser.find_element(By.ID, "model").get_attribute("value") == "dashboard-model:1"
    browser.find_element(By.ID, "file").send_keys(f"{boot}\n{trouser}")
    browser.find_element(By.ID, "predict").click()
    results = browser.find_elements(By.CSS_SELECTOR, ".result")
    assert [r.find_element(By.CSS_SELECTOR, ".label").text for r in results] == ["ankle boot", "trouser"]
    assert all(len(r.find_elements(By.CSS_SELECTOR, ".bar-row")) == 3 for r in results)
    wait_until(
        lambda: browser.execute_script(
            "return [...document.querySelectorAll('img.preview, img.seen')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        ),
        timeout=10,
        what="the previews",
    )
    # What the model sees is its own input size (28x28), whatever size was sent.
    assert browser.execute_script("return [...document.querySelectorAll('img.seen')].map(i => i.naturalWidth)") == [
        28,
        28,
    ]
    browser.save_screenshot(str(tmp_path / "predict.png"))


def test_pages_need_a_token_when_tokens_are_set(tmp_path, data_dir):
    with Stack(
        home=tmp_path / "locked",
        data_dir=data_dir,
        with_worker=False,
        extra_env={"TRAINYARD_API_TOKENS": "rw-secret,ro-secret:read"},
    ) as stack:
        with httpx.Client(base_url=stack.url, follow_redirects=False) as client:
            for path in (
                "/",
                "/ui/submit",
                "/ui/models",
                "/ui/datasets",
                "/ui/predict",
                "/ui/fragments/jobs",
                "/ui/fragments/jobs/x/evaluation",
                "/ui/jobs/x/test-images/0.png",
            ):
                assert client.get(path).status_code == 303, path
            assert client.post("/ui/login", data={"token": "wrong"}).status_code == 401
            answer = client.post("/ui/login", data={"token": "ro-secret"})
            assert answer.status_code == 303 and answer.headers["location"] == "/"
            assert client.get("/").status_code == 200  # the session cookie the login gave
            assert client.post("/ui/submit", data={"spec": "{}"}).status_code == 403
            predicted = client.post(
                "/ui/predict", data={"model": "nothing"}, files={"files": ("x.png", png_bytes(1, seed=0))}
            )
            assert predicted.status_code not in (401, 403), predicted.text  # a predict changes nothing
            archive = {"file": ("locked.zip", image_folder_zip(["a", "b"], per_class=5, test_per_class=2))}
            assert client.post("/ui/datasets", files=archive).status_code == 403
            client.post("/ui/login", data={"token": "rw-secret"})  # the page's upload needs no bearer token
            uploaded = client.post("/ui/datasets", files=archive)
            assert uploaded.status_code == 201 and uploaded.json()["name"] == "locked", uploaded.text


def test_the_job_list_shows_an_uploaded_datasets_name(embedded_stack):
    with embedded_stack.client() as client:
        dataset = client.post(
            "/v1/datasets",
            data={"name": "listed-shapes"},
            files={"file": ("x.zip", image_folder_zip(["a", "b"], per_class=5, test_per_class=2), "application/zip")},
        ).json()
        job_id = submit(client, {**SOFTMAX_SPEC, "epochs": 1, "data": {"dataset": f"uploaded:{dataset['id']}"}})
        for page in ("/", "/ui/fragments/jobs"):
            row = client.get(page).text.split(f'<tr data-job="{job_id}">', 1)[1].split("</tr>", 1)[0]
            assert f'<td class="dataset" title="uploaded:{dataset["id"]}">listed-shapes</td>' in row, row
        embedded_stack.wait_for_job(client, job_id)


def test_the_submit_form_names_fields_as_written(embedded_stack):
    with httpx.Client(base_url=embedded_stack.url, timeout=30) as client:
        bad = client.post(
            "/ui/submit",
            data={"spec": '{"model": {"arch": "mlp", "activation": "swish"}, "data": {"dataset": "fashion-mnist"}}'},
        )
        assert (
            bad.status_code == 422
            and "model.activation: Input should be" in bad.text
            and "mlp.activation" not in bad.text
        )
        broken = client.post("/ui/submit", data={"spec": '{"model": '})
        assert broken.status_code == 422 and "not JSON" in broken.text


def test_the_predict_page_says_not_sure_below_the_threshold(embedded_stack):
    import json

    import torch
    from safetensors.torch import save

    from models.nets.archs import build_model
    from models.spec.job import MODEL_SPEC

    torch.manual_seed(0)  # random weights over ten classes: never 90% sure
    weights = build_model(MODEL_SPEC.validate_python({"arch": "mlp", "hidden": [8]}), [1, 28, 28], 10).state_dict()
    image = [("files", ("shirt.png", png_bytes(6, seed=2), "image/png"))]
    with httpx.Client(base_url=embedded_stack.url, timeout=30) as client:
        imported = client.post(
            "/v1/models/import",
            files={"file": ("w.safetensors", save(weights))},
            data={
                "name": "dashboard-unsure",
                "model": json.dumps({"arch": "mlp", "hidden": [8]}),
                "classes": json.dumps([f"k{i}" for i in range(10)]),
                "threshold": "0.9",
            },
        )
        assert imported.status_code == 201, imported.text
        by_default = client.post("/ui/predict", data={"model": "dashboard-unsure", "threshold": ""}, files=image)
        assert by_default.status_code == 200 and 'class="label not-sure">not sure<' in by_default.text
        assert "threshold 0.9" in by_default.text
        sure = client.post("/ui/predict", data={"model": "dashboard-unsure", "threshold": "0"}, files=image)
        assert sure.status_code == 200 and "not sure" not in sure.text.split('id="predict"')[1]
        assert '<span class="label">k' in sure.text
        for typed in ("abc", "1.5"):  # said on the page, as other mistakes are
            wrong = client.post("/ui/predict", data={"model": "dashboard-unsure", "threshold": typed}, files=image)
            assert wrong.status_code == 422 and "threshold: give a number from 0 to 1" in wrong.text, wrong.text[:300]


def test_datasets_page_uploads_lists_and_deletes(browser, embedded_stack, tmp_path):
    from selenium.webdriver.common.by import By

    shapes, other, notes = tmp_path / "page-shapes.zip", tmp_path / "other.zip", tmp_path / "notes.txt"
    shapes.write_bytes(image_folder_zip(["circle", "square"], per_class=5, test_per_class=2))
    other.write_bytes(image_folder_zip(["a", "b"], per_class=6, test_per_class=2))
    notes.write_text("not a zip")

    def upload(path, name: str = "") -> None:
        browser.find_element(By.ID, "upload-name").clear()
        browser.find_element(By.ID, "upload-name").send_keys(name)
        browser.find_element(By.ID, "upload-file").send_keys(str(path))
        browser.find_element(By.ID, "upload-button").click()

    browser.get(embedded_stack.url + "/ui/datasets")
    # The page's script reloads it once the upload is in: its progress events are kept across the reload.
    browser.execute_script("""const send = XMLHttpRequest.prototype.send;
        XMLHttpRequest.prototype.send = function (body) {
          this.upload.addEventListener("progress", e => sessionStorage.setItem("sent", `${e.loaded}/${e.total}`));
          return send.call(this, body);
        };""")
    upload(shapes)
    row = wait_until(
        lambda: [
            r
            for r in browser.find_elements(By.CSS_SELECTOR, "#datasets tr[data-dataset]")
            if r.find_element(By.CSS_SELECTOR, ".name").text == "page-shapes"
        ],
        timeout=20,
        what="the uploaded dataset's row",
    )[0]
    loaded, total = map(int, browser.execute_script("return sessionStorage.getItem('sent')").split("/"))
    assert loaded == total > shapes.stat().st_size
    dataset_id = row.get_attribute("data-dataset")
    assert "ready" in row.text and "image_folder" in row.text and "2: circle, square" in row.text
    assert [row.find_element(By.CSS_SELECTOR, f"td.{c}").text for c in ("train", "test", "input")] == [
        "10",
        "4",
        "grayscale 28×28",
    ]
    wait_until(
        lambda: browser.execute_script(
            "return [...arguments[0].querySelectorAll('.thumbs img')].map(i => i.complete && i.naturalWidth)"
            ".join() == '28,28,28,28,28,28'",
            row,
        ),
        timeout=10,
        what="six 28-pixel thumbnails",
    )
    assert [i.get_attribute("title") for i in row.find_elements(By.CSS_SELECTOR, ".thumbs img")][:2] == [
        "circle",
        "square",
    ]
    browser.save_screenshot(str(tmp_path / "datasets.png"))

    listed = len(browser.find_elements(By.CSS_SELECTOR, "#datasets tr[data-dataset]"))
    upload(other, "page-shapes")  # a name taken by another archive
    problem = wait_until(lambda: browser.find_element(By.ID, "upload-error").text, timeout=20, what="the refusal")
    assert "a dataset named 'page-shapes' exists" in problem, problem
    upload(notes, "notes")
    wait_until(
        lambda: "zip" in browser.find_element(By.ID, "upload-error").text,
        timeout=20,
        what="the refusal of a file that is no zip",
    )
    assert len(browser.find_elements(By.CSS_SELECTOR, "#datasets tr[data-dataset]")) == listed

    row.find_element(By.CSS_SELECTOR, ".name").click()
    assert text(browser, "#status") == "ready" and text(browser, "#classes") == "circle, square"
    wait_until(
        lambda: (
            browser.execute_script(
                "return [...document.querySelectorAll('.thumbs img')]"
                ".filter(i => i.complete && i.naturalWidth == 28).length"
            )
            == 8
        ),
        timeout=10,
        what="four examples of each class",
    )

    with embedded_stack.client() as client:  # asks for a GPU no worker has: it stays queued
        waiting = submit(client, {**SOFTMAX_SPEC, "device": "cuda", "data": {"dataset": "uploaded:page-shapes"}})
    browser.get(embedded_stack.url + "/ui/datasets")
    browser.execute_script("window.confirm = () => true")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-dataset="{dataset_id}"] button.delete').click()
    assert waiting in text(browser, "#error") and "unfinished" in text(browser, "#error")
    with embedded_stack.client() as client:
        assert client.post(f"/v1/jobs/{waiting}/cancel").status_code == 202
    browser.execute_script("window.confirm = () => true")
    browser.find_element(By.CSS_SELECTOR, f'tr[data-dataset="{dataset_id}"] button.delete').click()
    wait_until(lambda: browser.current_url.endswith("/ui/datasets"), timeout=20, what="back to the datasets")
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-dataset="{dataset_id}"]')


def test_a_job_page_registers_a_version_that_the_models_page_aliases_and_exports(
    browser, embedded_stack, unsure_job, tmp_path
):
    from selenium.webdriver.common.by import By

    with embedded_stack.client() as client:
        job = client.get(f"/v1/jobs/{unsure_job}").json()
    browser.get(f"{embedded_stack.url}/ui/jobs/{unsure_job}")
    best = browser.find_element(By.CSS_SELECTOR, "#metrics tr.best")
    assert best.find_element(By.TAG_NAME, "td").text == f"{job['best_metrics']['epoch']} best"
    assert (
        browser.find_element(By.ID, "predict-link")
        .get_attribute("href")
        .endswith(f"/ui/predict?model=job:{unsure_job}")
    )
    browser.save_screenshot(str(tmp_path / "job.png"))
    browser.find_element(By.ID, "evaluate-link").click()
    wait_until(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#evaluation #classes"), timeout=20, what="the evaluation report"
    )
    exported = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#actions a.export")}
    assert list(exported) == ["safetensors", "pt2", "torchscript", "onnx", "onnx (uint8 pixels in)"]

    name = browser.find_element(By.ID, "register-name")
    name.clear()
    name.send_keys("Not A Name")
    browser.find_element(By.ID, "register-button").click()
    assert text(browser, "#register-error").startswith("name: should be 1 to 64 lower-case letters")
    name = browser.find_element(By.ID, "register-name")
    name.clear()
    name.send_keys("from-the-page")
    browser.find_element(By.ID, "register-threshold").send_keys("0.4")
    browser.find_element(By.ID, "register-button").click()
    wait_until(
        lambda: browser.current_url.endswith("/ui/models/from-the-page#version-1"),
        timeout=20,
        what="the new version on its model's page",
    )
    version = browser.find_element(By.ID, "version-1")
    assert unsure_job[:8] in version.text and "0.4" in version.text
    assert version.find_element(By.CSS_SELECTOR, "a.predict").get_attribute("href").endswith("?model=from-the-page%3A1")

    version.find_element(By.CSS_SELECTOR, ".set-alias input[name=alias]").send_keys("staging")
    version.find_element(By.CSS_SELECTOR, ".set-alias button").click()
    wait_until(
        lambda: [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#version-1 .badge")] == ["staging"],
        timeout=20,
        what="the alias beside its version",
    )
    version = browser.find_element(By.ID, "version-1")
    version.find_element(By.CSS_SELECTOR, ".set-alias input[name=alias]").send_keys("Bad Alias")
    version.find_element(By.CSS_SELECTOR, ".set-alias button").click()
    assert "'Bad Alias' is not a name" in text(browser, "#error")

    links = {a.text: a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#version-1 a.export")}
    with httpx.Client(timeout=60) as client:
        model_file = client.get(links["onnx (pixels)"])
        job_file = client.get(exported["safetensors"])
    assert model_file.status_code == 200 and len(model_file.content) > 1000
    disposition = model_file.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="from-the-page-v1') and disposition.endswith('.onnx"')
    assert job_file.status_code == 200
    assert job_file.headers["content-disposition"].endswith(f'job-{unsure_job}-epoch-1.safetensors"')
    with embedded_stack.client() as client:
        assert client.get("/v1/models/from-the-page").json()["aliases"] == {"staging": 1}


def test_submitting_shows_the_warnings_and_the_list_shows_the_best_epoch(browser, embedded_stack, unsure_job):
    from selenium.webdriver.common.by import By

    browser.get(embedded_stack.url + "/ui/submit")
    browser.execute_script(
        "document.querySelector('#spec').value = arguments[0]",
        '{"name": "warned", "model": {"arch": "softmax_regression"}, "data": {"dataset": "mnist"}, "epochs": 1}',
    )
    browser.find_element(By.ID, "submit").click()
    assert "dataset mnist is not in this service's data folder" in text(browser, "#warnings")
    warned = browser.current_url.rsplit("/", 1)[-1]

    with embedded_stack.client() as client:
        best = client.get(f"/v1/jobs/{unsure_job}").json()["best_metrics"]
    browser.get(embedded_stack.url + "/")
    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{unsure_job}"]')
    assert row.find_element(By.CSS_SELECTOR, ".best-epoch").text == str(best["epoch"])
    assert row.find_element(By.CSS_SELECTOR, ".best-acc").text == f"{best['test_acc']:.3f}"
    assert "warning" in browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{warned}"]').text
    with embedded_stack.client() as client:
        embedded_stack.wait_for_job(client, warned)


def test_unknown_dashboard_pages_are_its_own_404_page(browser, embedded_stack):

    with httpx.Client(base_url=embedded_stack.url, timeout=30) as client:
        for path, said in (
            ("/ui/no-such-page", "there is no page at /ui/no-such-page"),
            ("/ui/datasets/0123456789ab", "dataset 0123456789ab not found"),
            ("/ui/models/no-such-model", "no-such-model"),
            ("/ui/jobs/0123456789", "job 0123456789 not found"),
        ):
            answer = client.get(path)
            assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/html"), path
            assert 'id="error-status">404 Not Found<' in answer.text and said in answer.text, answer.text
            assert '<a href="/ui/datasets">datasets</a>' in answer.text  # the dashboard's own navigation
        for path in ("/ui", "/ui/", "/ui/jobs", "/ui/jobs/"):  # the dashboard's own address: its first page, the jobs
            first = client.get(path, follow_redirects=True)
            assert first.status_code == 200 and first.url.path == "/" and 'id="jobs"' in first.text, path
        action = client.get("/ui/jobs/0123456789/resume")  # an action's address, typed in
        assert action.status_code == 405 and action.headers["allow"] == "POST", action.text
        assert "/ui/jobs/0123456789/resume is an action: it takes POST from the button on its page" in action.text
        fragment = client.get("/ui/fragments/jobs/0123456789/evaluation")  # a page's script reads its detail
        assert fragment.status_code == 404 and fragment.json()["detail"] == "job 0123456789 not found"
    browser.get(embedded_stack.url + "/ui/jobs/0123456789/nothing/here")
    assert text(browser, "#error-status") == "404 Not Found" and "trainyard" in text(browser, "header")


def test_an_unknown_example_is_said_not_silently_replaced(embedded_stack):
    with embedded_stack.client() as client:
        page = client.get("/ui/submit", params={"example": "no-such-example"})
        assert page.status_code == 200 and "there is no example &#39;no-such-example&#39;" in page.text, page.text
        assert 'id="error"' not in client.get("/ui/submit", params={"example": "lenet"}).text


def test_a_register_form_field_that_does_not_fit_is_said_on_the_page(embedded_stack, unsure_job):
    with embedded_stack.client() as client:
        page = client.post(
            f"/ui/jobs/{unsure_job}/register", data={"name": "form-check", "checkpoint": "best", "threshold": "abc"}
        )
        assert page.status_code == 422 and 'id="register-error"' in page.text, page.text[:500]
        assert "threshold" in page.text.split('id="register-error"')[1][:300]
        odd = client.post(f"/ui/jobs/{unsure_job}/register", data={"name": "form-check", "checkpoint": "first"})
        assert odd.status_code == 422 and 'id="register-error"' in odd.text
