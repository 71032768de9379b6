"""The chat page, driven in headless Chromium (Debian's chromium + chromium-driver) against the real server.

The server is serving.app's app on werkzeug's threaded server, in a thread of this process, holding a
tiny random model whose EOS embedding is zeroed, so a greedy reply only ends at max_tokens or when the
page stops it.
"""
import json
import shutil
import threading

import pytest
import torch
from conftest import tiny_config
from test_api_tools import FixedStream

import serving.replies
from model.model import MiniMindForCausalLM
from model.tokenizer import EOS_ID
from model.toolcall import render_call
from serving.app import create_app
from serving.protocol import Defaults

KEY = "page-key"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="no chromium/chromedriver on PATH (Debian: apt-get install -y chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def server_url(tokenizer):
    from werkzeug.serving import make_server

    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(max_seq_len=512)).eval()  # room for the calculator's schema
    with torch.no_grad():
        model.model.embed_tokens.weight[EOS_ID].zero_()
    app = create_app(model, tokenizer, "full_sft_64x2", Defaults(max_tokens=5000), api_key=KEY)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=900,700",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))  # no driver download
    yield driver
    driver.quit()


def set_field(driver, field_id: str, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element("id", field_id)
    field.clear()
    field.send_keys(value, Keys.TAB)  # leaving the field fires `change`


def say(driver, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.find_element("id", "input").send_keys(text, Keys.ENTER)


def test_chat_page_streams_stops_restarts_and_shows_errors(server_url, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    text_of = lambda element_id: browser.find_element("id", element_id).text  # noqa: E731
    browser.get(server_url)

    # The server wants a key: the page says so and opens the settings, then works once the key is entered.
    wait.until(lambda d: "401" in text_of("status"))
    assert browser.find_element("id", "api_key").is_displayed()
    set_field(browser, "api_key", KEY)
    wait.until(lambda d: "full_sft_64x2" in text_of("status"))
    set_field(browser, "temperature", "0")
    set_field(browser, "max_tokens", "5000")
    browser.refresh()  # the key and the settings stay in this browser's localStorage
    wait.until(lambda d: "full_sft_64x2" in text_of("status"))
    assert browser.find_element("id", "max_tokens").get_attribute("value") == "5000"
    browser.find_element("id", "toggle-settings").click()  # closed again after the reload: open it

    # Record every text the reply bubble shows while it streams.
    browser.execute_script("""
        window.seen = [];
        new MutationObserver(() => {
          const bubbles = document.querySelectorAll('.msg.assistant');
          if (bubbles.length) window.seen.push(bubbles[bubbles.length - 1].textContent);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    """)
    say(browser, "你好，请介绍一下长江。")
    wait.until(lambda d: len({t for t in d.execute_script("return window.seen") if t}) >= 3)
    # A long reply scrolls the conversation along with it.
    scroll = "const v = document.getElementById('messages'); return [v.scrollHeight, v.scrollTop, v.clientHeight];"
    wait.until(lambda d: d.execute_script(scroll)[0] > d.execute_script(scroll)[2] + 100)
    height, top, visible = browser.execute_script(scroll)
    assert top + visible >= height - 60
    browser.find_element("id", "stop").click()
    wait.until(lambda d: d.find_elements("css selector", ".meta"))
    assert "stopped" in browser.find_element("css selector", ".meta").text
    assert browser.find_element("id", "stop").get_attribute("disabled")
    seen = [t for t in browser.execute_script("return window.seen") if t]
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:]))  # a growing reply
    assert seen[-1] == browser.find_element("css selector", ".msg.assistant").get_attribute("textContent")
    assert len(browser.find_elements("css selector", ".msg.user")) == 1
    # Chinese kept intact
    assert browser.find_element("css selector", ".msg.user").text == "你好，请介绍一下长江。"

    # A new chat clears the view; the next reply runs to completion (the stopped one released the model).
    browser.find_element("id", "new-chat").click()
    assert not browser.find_elements("css selector", ".msg")
    set_field(browser, "max_tokens", "6")
    say(browser, "再见")
    wait.until(lambda d: d.find_elements("css selector", ".meta"))
    assert "6 tokens" in text_of("messages") and "max tokens" in browser.find_element("css selector", ".meta").text
    assert len(browser.find_elements("css selector", ".msg.assistant")) == 1

    # Server errors are shown in the page, and the unsent text is given back for a retry.
    set_field(browser, "temperature", "5")
    say(browser, "温度太高")
    wait.until(lambda d: d.find_elements("css selector", ".msg.error"))
    error = browser.find_element("css selector", ".msg.error").text
    assert "400" in error and "temperature" in error
    assert browser.find_element("id", "input").get_attribute("value") == "温度太高"

    set_field(browser, "temperature", "0")
    set_field(browser, "api_key", "wrong-key")
    browser.find_element("id", "send").click()
    wait.until(lambda d: len(d.find_elements("css selector", ".msg.error")) == 2)
    assert "401" in browser.find_elements("css selector", ".msg.error")[-1].text


def test_calculator_toggle_runs_the_tool_loop(server_url, browser, monkeypatch):
    """With 计算器 on, the page offers the tool; the reply's call is shown, run by the server and answered,
    and the model is asked again. Generation is replaced by two fixed replies: a random model never calls."""
    from selenium.webdriver.support.ui import WebDriverWait

    replies = [render_call("calculator", {"expression": "(3+4)*2"}), "答案是14。"]
    in_pieces = lambda text: FixedStream([text[i:i + 3] for i in range(0, len(text), 3)])  # noqa: E731
    monkeypatch.setattr(serving.replies, "stream_generate", lambda *a, **k: in_pieces(replies.pop(0)))
    wait = WebDriverWait(browser, 60, poll_frequency=0.05)
    browser.get(server_url)
    set_field(browser, "api_key", KEY)
    wait.until(lambda d: d.find_element("id", "calculator").is_enabled())
    browser.execute_script("""
        window.sent = [];
        const real = window.fetch;
        window.fetch = (url, options) => { window.sent.push([url, options?.body ?? null]); return real(url, options); };
    """)
    browser.find_element("id", "calculator").click()
    say(browser, "(3+4)*2等于几？")
    wait.until(lambda d: len(d.find_elements("css selector", ".meta")) == 2)
    assert browser.find_element("css selector", ".tool").text == "计算器：(3+4)*2 = 14"
    assert browser.find_element("css selector", ".msg.assistant").text == "答案是14。"
    assert "called a tool" in browser.find_elements("css selector", ".meta")[0].text
    sent = [(url, json.loads(body) if body else None) for url, body in browser.execute_script("return window.sent")]
    chats = [body for url, body in sent if url == "/v1/chat/completions"]
    assert [body["tools"][0]["function"]["name"] for body in chats] == ["calculator", "calculator"]
    assert ("/v1/tools/run", {"name": "calculator", "arguments": {"expression": "(3+4)*2"}}) in sent
    asked, answer = chats[1]["messages"][-2:]
    assert asked["role"] == "assistant" and asked["content"] is None and asked["tool_calls"][0]["id"].startswith("call_")
    assert answer == {"role": "tool", "tool_call_id": asked["tool_calls"][0]["id"], "content": "14"}
    assert not replies  # both fixed replies were asked for
