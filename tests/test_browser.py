"""A person in headless Chromium signs in through the real login page and lands in JupyterLab."""

import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
# Chromium as root, on a machine with no network beyond loopback
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_scientist_signs_in_and_lands_in_jupyterlab(platform, browser):
    user = platform.new_user("scientist", with_token=False)
    page = browser.new_page()
    page.goto(f"{platform.url}/hub/login")
    assert page.title() == "aidc"
    page.fill("#username_input", user.name)
    page.fill("#password_input", user.password)
    page.click("#login_submit")
    # the spawn form offers the resource profiles, with the GPUs free for each
    page.wait_for_selector("#spawn_form")
    labels = page.inner_text(".aidc-profiles")
    for name in ("CPU only", "1 GPU", "2 GPUs", "MIG"):
        assert name in labels
    assert "free" in labels and "simulated" not in labels  # the session platform's GPUs are "real"
    assert page.is_checked("#profile-cpu")
    page.click("#spawn_form button[type=submit]")
    # the hub starts the server, then JupyterLab loads in the user's space
    page.wait_for_url(f"**/user/{user.name}/lab**", timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.wait_for_selector(".jp-Launcher", timeout=120_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-after-login.png"))
    assert f"/user/{user.name}/lab" in page.url
    page.close()


def test_wrong_password_shows_the_generic_error(platform, browser):
    user = platform.new_user("scientist", with_token=False)
    page = browser.new_page()
    page.goto(f"{platform.url}/hub/login")
    page.fill("#username_input", user.name)
    page.fill("#password_input", "definitely-wrong")
    page.click("#login_submit")
    page.wait_for_selector(".login_error")
    assert page.inner_text(".login_error").strip() == "Invalid username or password"
    assert "/hub/login" in page.url
    page.close()
