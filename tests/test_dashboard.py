"""`mdagent dashboard` in a real headless browser (Debian's Chromium driven by Playwright): the server is a real
process on the tests' AiiDA profile, the runs are real agent runs (real LAMMPS) with answers replayed by
FakeOpenAIServer. Screenshots are kept: the folder is printed at the end of the module (and is
$MDAGENT_TEST_ARTEFACTS/dashboard when that is set)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai_server import FakeOpenAIServer

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "mdagent_hpc" / "examples" / "demo"
TASK_OK = "Heat a small Cu crystal with EAM to 800 K in NVT (dashboard alpha) <i>as text</i>"  # shown, not markup
TASK_BAD = "Heat a small Cu crystal with EAM to 800 K in NVT (dashboard beta)"
TASK_LIVE = "Melt a Lennard-Jones crystal for a long time (dashboard gamma)"


def answer(script: str) -> str:
    return json.dumps({"script": script, "files": [], "potentials": [], "notes": ""})


def demo(name: str) -> str:
    return answer((DATA / name).read_text())


# A LAMMPS job of ~10 s of CPU (256 LJ atoms, 60000 steps): long enough to watch, short enough to wait for
LONG_LJ = answer(
    "units lj\nlattice fcc 0.8442\nregion box block 0 4 0 4 0 4\ncreate_box 1 box\ncreate_atoms 1 box\nmass 1 1.0\n"
    "velocity all create 1.0 87287 loop geom\npair_style lj/cut 2.5\npair_coeff 1 1 1.0 1.0 2.5\nfix 1 all nve\n"
    "thermo 1000\nrun 60000\n"
)


def mdagent(*args, model: str, answers: list[str]):
    with FakeOpenAIServer(answers, model=model) as server:
        env = {
            **os.environ,
            "MDAGENT_LLM_BASE_URL": server.base_url,
            "MDAGENT_LLM_MODEL": model,
            "MDAGENT_LLM_MAX_RETRIES": "0",
        }
        return subprocess.run(
            [sys.executable, "-m", "mdagent_hpc.cli", *args], capture_output=True, text=True, env=env, timeout=600
        )


@pytest.fixture(scope="module")
def runs():
    """Two finished runs: one passed after three attempts, one that never got past preflight."""
    ok = mdagent(
        "run",
        TASK_OK,
        "--json",
        model="model-a",
        answers=[demo("wrong-potential.lammps"), demo("lost-atoms.lammps"), demo("good.lammps")],
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = mdagent(
        "run", TASK_BAD, "--json", "--max-attempts", "1", model="model-b", answers=[demo("wrong-potential.lammps")]
    )
    assert bad.returncode == 1, bad.stderr[-2000:]
    return {"ok": json.loads(ok.stdout)["pk"], "bad": json.loads(bad.stdout)["pk"]}


@pytest.fixture(scope="module")
def sweep_pk(tmp_path_factory):
    """A finished two-point sweep (workflows/sweeps/lj-melt-temperature.yaml at two temperatures)."""
    import yaml

    spec = yaml.safe_load((REPO / "workflows" / "sweeps" / "lj-melt-temperature.yaml").read_text())
    spec["parameters"][0] = {"name": "T", "values": [0.6, 2.4]}
    path = tmp_path_factory.mktemp("dashboard-sweep") / "two-points.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [sys.executable, "-m", "mdagent_hpc.cli", "sweep", "--spec", str(path), "--yes", "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)["pk"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(runs):
    """`mdagent dashboard` as a real process, stopped by its PID at the end of the module."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdagent_hpc.cli", "dashboard", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the dashboard did not answer within 60 s"
        time.sleep(0.2)
    yield url
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert "Traceback" not in stderr, stderr[-3000:]  # no page failed on the server side either


@pytest.fixture(scope="module")
def shots(tmp_path_factory, request):
    folder = (
        Path(os.environ["MDAGENT_TEST_ARTEFACTS"]) / "dashboard"
        if os.environ.get("MDAGENT_TEST_ARTEFACTS")
        else tmp_path_factory.mktemp("dashboard-screenshots")
    )
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"dashboard screenshots: {folder} ({len(list(folder.glob('*.png')))} files)")


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no {CHROMIUM}: `bash scripts/install.sh --test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def submit(page) -> None:
    """Press Filter and wait for the page it loads (evaluating the old page's table would race)."""
    with page.expect_navigation():
        page.click("button[type=submit]")


def listed(page) -> list[int]:
    return [int(pk) for pk in page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.pk)")]


@pytest.mark.slow  # real agent runs, a real sweep and a real browser
def test_the_runs_list_loads_and_its_filters_narrow_it(server, runs, page, shots):
    page.goto(f"{server}/runs")
    page.screenshot(path=shots / "runs.png", full_page=True)
    assert {runs["ok"], runs["bad"]} <= set(listed(page))

    page.fill("input[name=task]", "Dashboard BETA")  # substring, any case
    submit(page)
    assert listed(page) == [runs["bad"]]
    assert "1 run matching the filters" in page.inner_text("#count")
    assert page.url == f"{server}/runs?task=Dashboard+BETA"  # empty fields stay out of the URL

    page.goto(f"{server}/runs")
    page.select_option("select[name=verdict]", "passed")
    page.fill("input[name=model]", "model-a")
    submit(page)
    page.screenshot(path=shots / "runs-filtered.png", full_page=True)
    assert runs["ok"] in listed(page) and runs["bad"] not in listed(page)
    assert page.input_value("input[name=model]") == "model-a"  # the form keeps what was asked
    assert "model-b" in page.locator("#model-list").inner_html()  # suggested from the recent runs

    page.goto(f"{server}/runs")
    page.select_option("select[name=stop]", "no_valid_script")
    submit(page)
    assert runs["bad"] in listed(page) and runs["ok"] not in listed(page)
    row = page.locator(f"#runs tr[data-pk='{runs['bad']}']").inner_text()
    assert "failed" in row and "model-b" in row and "no_valid_script" in row

    page.goto(f"{server}/runs?grade=pass&task=re:dashboard%20(alpha|beta)")
    assert listed(page) == [runs["ok"]]
    page.goto(f"{server}/runs?until=2000-01-01")
    assert listed(page) == [] and "No run matches these filters" in page.inner_text("main")
    # the "more filters": ranges (other modules' runs in this session's profile can match them too)
    page.goto(f"{server}/runs?attempts=3..&obs.temp_final=500..")
    assert runs["ok"] in listed(page) and runs["bad"] not in listed(page)
    page.goto(f"{server}/runs?attempts=3..&obs.temp_final=500..&task=re:dashboard%20alpha")
    assert listed(page) == [runs["ok"]]
    assert page.locator("form details").get_attribute("open") is not None


@pytest.mark.slow  # real agent runs, a real sweep and a real browser
def test_a_runs_page_shows_its_attempts_diffs_diagnostics_and_plots(server, runs, page, shots):
    page.goto(f"{server}/runs")
    page.click(f"#runs tr[data-pk='{runs['ok']}'] a")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=shots / "run.png", full_page=True)
    assert page.url == f"{server}/runs/{runs['ok']}"
    assert page.inner_text("#verdict") == "passed" and page.inner_text("#stop") == "passed"
    assert page.inner_text("#task") == TASK_OK and page.locator("#task i").count() == 0
    assert page.locator("section.attempt").count() == 3

    first = page.locator("#attempt-1")
    assert "reached preflight" in first.locator("h3").first.inner_text()
    diagnostic = first.locator("table.diagnostics tr", has_text="potential.missing")
    assert "Cu_u3_typo.eam" in diagnostic.inner_text()
    link = diagnostic.locator("a")
    line = link.get_attribute("href").removeprefix("#")  # the diagnostic points at its line of the script
    assert page.locator(f"li#{line}").get_attribute("class") == "error"
    assert "Cu_u3_typo.eam" in page.locator(f"li#{line}").text_content()
    assert first.locator("img.plot").count() == 0  # it never ran LAMMPS

    second = page.locator("#attempt-2")
    assert "lost_atoms" in second.locator("table.findings").inner_text()
    assert second.locator("table.diff .diff_chg, table.diff .diff_add").count() > 0  # changed from attempt 1
    assert page.locator("#attempt-3 table.diff").count() == 1

    plots = page.locator("img.plot")
    assert plots.count() == 2  # attempts 2 and 3 ran LAMMPS
    widths = plots.evaluate_all("imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
    assert all(w > 300 for w in widths), widths  # real images the browser decoded
    png = httpx.get(f"{server}/runs/{runs['ok']}/attempts/3/thermo.png")
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    temp = page.locator("#observables tr", has_text="temp").inner_text().split()
    assert temp[0] == "temp" and 500 < float(temp[1]) < 1200  # final, mean and std of the passed attempt


@pytest.mark.parametrize(
    "path, status, words",
    [
        ("/runs/abc", 404, "is not a run number"),
        ("/runs/99999999", 404, "no node with pk 99999999"),
        ("/runs?verdict=bogus", 400, "verdict 'bogus' is not one of"),
        ("/runs?since=yesterday", 400, "since: 'yesterday' is neither a span"),
        ("/runs?colour=red", 400, "unknown filter 'colour'"),
        ("/runs?limit=0", 400, "limit '0' is not a whole number"),
        ("/nowhere", 404, "there is no page at /nowhere"),
        ("/runs/{ok}/attempts/1/thermo.png", 404, "LAMMPS never ran"),
        ("/runs/{ok}/attempts/7/thermo.png", 404, "there is no attempt 7"),
        ("/sweeps/abc", 404, "is not a sweep number"),
        ("/sweeps/{ok}", 404, "is not a sweep"),
    ],
)
@pytest.mark.slow  # real agent runs, a real sweep and a real browser
def test_bad_urls_give_a_clear_4xx_page(server, runs, page, path, status, words):
    response = page.goto(server + path.format(ok=runs["ok"]))
    assert response.status == status
    assert words in page.inner_text("#error-message")
    assert "Traceback" not in page.content()


@pytest.mark.slow  # real agent runs, a real sweep and a real browser
def test_the_json_routes_and_a_read_only_server(server, runs):
    summary = httpx.get(f"{server}/api/runs/{runs['bad']}").json()
    assert summary["verdict"] == "failed" and summary["models"] == ["model-b"] and summary["attempts"] == 1
    missing = httpx.get(f"{server}/api/runs/abc")
    assert missing.status_code == 404 and "is not a run number" in missing.json()["error"]
    assert httpx.post(f"{server}/runs").status_code == 405
    # only requests addressed to this machine: a page elsewhere cannot read it through a rebound DNS name
    assert httpx.get(f"{server}/runs", headers={"Host": "attacker.example"}).status_code == 400


@pytest.mark.slow  # real agent runs, a real sweep and a real browser
def test_the_command_refuses_a_reachable_address_and_a_busy_port(server):
    cli = [sys.executable, "-m", "mdagent_hpc.cli", "dashboard"]
    remote = subprocess.run([*cli, "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert remote.returncode == 2 and "--allow-remote" in remote.stderr and "no login" in remote.stderr
    busy = subprocess.run([*cli, "--port", server.rsplit(":", 1)[1]], capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and "pick another port" in busy.stderr and "Traceback" not in busy.stderr


@pytest.mark.slow  # real agent runs, a real sweep and a real browser
def test_a_sweep_shows_its_table_and_plot_and_its_points_are_in_the_runs_list(server, sweep_pk, page, shots):
    page.goto(f"{server}/sweeps")
    page.click(f"#sweeps tr[data-pk='{sweep_pk}'] a")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=shots / "sweep.png", full_page=True)
    assert page.inner_text("#verdict") == "passed" and "2 of 2 passed" in page.inner_text("#points")
    header = page.locator("#table thead").inner_text()
    assert all(name in header for name in ("point", "T", "ok", "pe", "pe_err"))
    assert page.locator("#table tbody tr").count() == 2
    assert page.locator("img.plot").evaluate("i => i.complete ? i.naturalWidth : 0") > 300

    assert page.goto(f"{server}/sweeps/{sweep_pk + 100000}").status == 404
    assert "no node with pk" in page.inner_text("#error-message")

    listed = subprocess.run(  # the point's pk as a user finds it (not through this process's AiiDA state)
        [sys.executable, "-m", "mdagent_hpc.cli", "runs", "query", "--sweep", str(sweep_pk), "--kind", "point"]
        + ["--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    point = json.loads(listed.stdout)[0]["pk"]
    page.goto(f"{server}/runs/{point}")  # a point (listed with the runs) leads to its sweep
    assert page.url == f"{server}/sweeps/{sweep_pk}"

    page.click("text=in the runs list")  # the sweep's points (and its template's agent run), through the queries
    page.screenshot(path=shots / "sweep-points.png", full_page=True)
    points = page.locator("#runs tbody tr", has_text=f"sweep {sweep_pk} point")
    assert points.count() == 2


@pytest.mark.slow  # real agent runs, a real sweep and a real browser
def test_live_progress_of_a_running_run(server, page, shots):
    with FakeOpenAIServer([LONG_LJ], model="model-c") as llm:
        env = {**os.environ, "MDAGENT_LLM_BASE_URL": llm.base_url, "MDAGENT_LLM_MODEL": "model-c"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "mdagent_hpc.cli", "run", TASK_LIVE, "--max-attempts", "1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            live, deadline = None, time.monotonic() + 120
            while live is None or not (live["step"] or "").startswith("run"):
                assert proc.poll() is None and time.monotonic() < deadline, "the run never reached its LAMMPS job"
                time.sleep(0.3)
                live = next((r for r in httpx.get(f"{server}/api/running").json() if r["task"] == TASK_LIVE), None)
            pk = live["pk"]
            page.goto(f"{server}/runs")
            assert str(pk) in page.inner_text("#running") and live["attempt"] == 1 and live["messages"]
            page.screenshot(path=shots / "runs-live.png", full_page=True)
            run_page = page.context.new_page()
            run_page.goto(f"{server}/runs/{pk}")
            assert run_page.locator("meta[http-equiv=refresh]").count() == 1
            assert "Running: attempt 1, run" in run_page.inner_text("#live")
            run_page.screenshot(path=shots / "run-live.png", full_page=True)
            _, stderr = proc.communicate(timeout=600)  # the job ends by itself
        finally:
            if proc.poll() is None:  # the test failed early: stop the run (Ctrl-C cancels its job), by its PID
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=120)
    assert proc.returncode in (0, 1), stderr[-2000:]
    verdict = "passed" if proc.returncode == 0 else "failed"
    # The list polls /api/running and reloads once the run has ended; the run page refreshes until it has.
    page.wait_for_selector(f"#runs tr[data-pk='{pk}']:has-text('{verdict}')", timeout=30_000)
    assert page.locator("#running").is_hidden()
    run_page.wait_for_selector(f"#verdict:has-text('{verdict}')", timeout=30_000)
    assert run_page.locator("meta[http-equiv=refresh]").count() == 0 and run_page.locator("#live").count() == 0
    run_page.screenshot(path=shots / "run-ended.png", full_page=True)


def test_filters_read_from_a_url_are_the_queries_filters():
    from mdagent_hpc.dashboard.filters import QueryError, read_filters

    query, values = read_filters(
        [("task", " copper "), ("obs.temp_final", "..900"), ("param.T", "1200.."), ("verdict", ""), ("limit", "5")]
    )
    assert query.task.pattern == "copper" and query.obs["temp_final"].high == 900 and query.params["T"].low == 1200
    assert (
        query.limit == 5
        and query.verdict is None
        and values == {"task": "copper", "obs.temp_final": "..900", "param.T": "1200..", "limit": "5"}
    )
    for params, says in [
        ([("colour", "red")], "unknown filter 'colour'"),
        ([("task", "a"), ("task", "b")], "twice"),
        ([("limit", "5000")], "from 1 to 1000"),
        ([("reward", "high")], "is not a number"),
        ([("obs.1x", "2")], "is not a name"),
    ]:
        with pytest.raises(QueryError, match=says):
            read_filters(params)


def test_a_diagnostic_marks_its_script_line_and_the_diff_escapes_the_script():
    from mdagent_hpc.dashboard.view import pairs, script_diff, script_lines, where
    from mdagent_hpc.models import Attempt, Diagnostic, Stage

    bad = Diagnostic(severity="error", code="potential.missing", message="no file", line=2, file="in.lammps")
    first = Attempt(number=1, stage=Stage.PREFLIGHT, script="units metal\npair_coeff * * <x>.eam\n", diagnostics=[bad])
    lost = Attempt(number=2, stage=Stage.GENERATE)  # no script: the next diff is against attempt 1
    third = Attempt(number=3, stage=Stage.EVALUATE, script="units metal\npair_coeff * * Cu.eam\n")
    assert script_lines(first)[1] == (2, "pair_coeff * * <x>.eam", "error") and where(first, 2, "in.lammps") == "#a1-L2"
    assert where(first, 2, "other.in") == ""  # a line of an included file is not in this listing
    assert [(p and p.number, a.number) for p, a in pairs([first, lost, third])] == [(None, 1), (1, 2), (1, 3)]
    diff = script_diff(first, third)
    assert "&lt;x&gt;" in diff and "<x>" not in diff and "Cu" in diff
    assert "the same script" in script_diff(third, third) and script_diff(None, first) is None


# -- the remote proxy (`mdagent dashboard` with MDAGENT_SERVER): a per-launch secret ---------------------------
class Upstream:
    """A stand-in for the shared server's /dashboard/: answers a page and records what each request carried."""

    def __init__(self):
        import http.server
        import threading

        seen = self.seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                seen.append({"path": self.path, "authorization": self.headers.get("authorization"), **self.headers})
                body = b"<html><body>the runs of the key's user</body></html>"
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def proxy():
    """`mdagent dashboard --port 0` in remote mode (a process of its own, stopped by its PID) and its upstream."""
    upstream = Upstream()
    env = {**os.environ, "MDAGENT_SERVER": upstream.url, "MDAGENT_API_KEY": "mdk_the-users-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mdagent_hpc.cli", "dashboard", "--port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        said = proc.stderr.readline()  # the one line with the link; blocks until it is printed (or the exit)
        assert "?token=" in said, said + proc.stderr.read()
        link = next(w for w in said.split() if "?token=" in w)
        yield {"link": link, "base": link.split("/?")[0], "upstream": upstream, "said": said}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        upstream.stop()


def test_the_remote_dashboard_lets_in_only_the_browser_with_the_launchs_secret(proxy):
    base, link, upstream = proxy["base"], proxy["link"], proxy["upstream"]
    token = link.split("?token=", 1)[1]
    assert base.startswith("http://127.0.0.1:") and base != "http://127.0.0.1:8765"
    # another local account: no token, a wrong one, a forged cookie, another method -> 401, nothing forwarded
    for path in ("/", "/runs", "/api/running", "/runs?token=" + "x" * len(token), "/favicon.ico"):
        assert httpx.get(base + path, timeout=30).status_code == 401, path
    assert httpx.get(base + "/runs", cookies={"mdagent_dashboard": token}, timeout=30).status_code == 401
    assert httpx.post(base + "/runs?token=" + token, timeout=30).status_code == 401
    assert upstream.seen == []
    # the printed link: a redirect without the token, and the cookie (HttpOnly, SameSite=Strict) for this launch
    with httpx.Client(timeout=30) as browser:
        first = browser.get(f"{base}/runs?verdict=passed&token={token}")
        assert first.status_code == 303 and first.headers["location"] == "/runs?verdict=passed"
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and token.lower() in cookie
        page = browser.get(base + first.headers["location"])
        assert page.status_code == 200 and "the runs of the key's user" in page.text
        again = browser.get(base + "/sweeps")  # the cookie alone from now on
        assert again.status_code == 200
    # upstream got the user's key, the path and the filters, never the token nor the cookie
    assert [s["path"] for s in upstream.seen] == ["/dashboard/runs?verdict=passed", "/dashboard/sweeps"]
    for request in upstream.seen:
        assert request["authorization"] == "Bearer mdk_the-users-key"
        assert token not in json.dumps(request)


def test_the_remote_dashboard_listens_on_loopback_only_and_not_on_the_servers_port():
    from mdagent_hpc.cli.dashboard import DEFAULT_PORT
    from mdagent_hpc.cli.server import DEFAULT_PORT as SERVER_PORT

    assert DEFAULT_PORT != SERVER_PORT
    env = {**os.environ, "MDAGENT_SERVER": "http://127.0.0.1:9", "MDAGENT_API_KEY": "mdk_k"}
    cli = [sys.executable, "-m", "mdagent_hpc.cli", "dashboard", "--port", "0", "--host", "0.0.0.0"]
    for extra in ([], ["--allow-remote"]):
        refused = subprocess.run([*cli, *extra], capture_output=True, text=True, env=env, timeout=60)
        assert refused.returncode == 2 and "127.0.0.1 only" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
