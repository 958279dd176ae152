"""JupyterLab with aidc's extension vs without it: page load, and the sidebar's first render.

Goals (issue 15): the page load of ``/user/NAME/lab`` with the extension at most 1.10x the
same page without it (median), and the "AI Data Center" sidebar fully rendered at most
0.5 s after Lab is ready (median).

How
---
One real platform (``aidc up`` through ``tests/platform_helpers.py``, as root, with the
suite's fake NVML: four H100s and an A100 in two MIG slices), one user (role
``scientist``) whose server runs on the ``gpu-1`` profile, so the sidebar has a simulated
GPU to show. The *same* server serves both sides; only the user's own page configuration
changes between loads: ``~/.jupyter/labconfig/page_config.json`` with
``{"disabledExtensions": {"aidc": true}}`` (what ``jupyter labextension disable --level=user
aidc`` writes) for "without", the same file without that key for "with". JupyterLab reads
it on every page request, so no restart is needed; every load checks which side it was
(the sidebar's tab is there, or not). Both sides set ``exposeAppInBrowser`` (the page's
``window.jupyterapp``), which the sidebar measurement uses.

Headless Chromium through Playwright (``executable_path`` as the tests use), signed in once
through the hub's login form; the cookies are reused by every load. Each round, for each
side (ABBA order across rounds, so drift hits both): the Lab workspace is reset (the
layout a previous load saved, e.g. an open sidebar, is not restored), then

- **cold**: a new browser context (empty HTTP cache, the same cookies) opens the page;
- **warm**: the same page is reloaded (scripts cached, as for a user coming back).

A page's load is the time from navigation start to *Lab ready*: the shell is attached and
the splash screen is gone (JupyterLab removes it once its layout is restored), taken in
the page (``performance.now()`` in a ``MutationObserver``), so no Playwright round trip is
counted. On the warm "with" load, the moment Lab is ready the page itself runs
``aidc:open-sidebar``; the sidebar's *first full render* is when its three sections
(Resources, Jobs, Models) have all replaced "Loading…" with their content and the
Resources section shows the server's GPU table: three calls through the server
extension's relay to the hub services. After each warm load the page's Resource Timing
says what it requested until Lab was ready: how many labextension files went to the
server rather than coming from the cache (a ``304`` revalidation each, before
``aidc.lab.assets`` made them immutable behind the hub), and which of aidc's files it loaded.

Usage (as root, from the repository root): ``.venv/bin/python benchmarks/lab.py
[--rounds 7]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_platforms import begin, clean_up, report_end  # noqa: E402
from conftest import fake_nvml_env  # noqa: E402
from jobs_helpers import put  # noqa: E402
from platform_helpers import Platform, new_prefix  # noqa: E402
from test_browser import ARGS, CHROMIUM  # noqa: E402

GOAL_RATIO = 1.10
GOAL_SIDEBAR_S = 0.5
TMP_PREFIX = "aidc-bench-lab-"
PAGE_CONFIG = ".jupyter/labconfig/page_config.json"

#: runs in every page before its own scripts: records when Lab is ready and, when asked
#: (sessionStorage), opens the sidebar at that moment and records its first full render
PROBE = """
(() => {
  const bench = (window.__aidcBench = {});
  const full = () => {
    const sidebar = document.getElementById('aidc-sidebar');
    if (!sidebar) return false;
    const sections = sidebar.querySelectorAll('.aidc-Section .aidc-content');
    if (sections.length !== 3) return false;
    for (const s of sections) {
      if (s.querySelector('.aidc-loading') || !s.childNodes.length) return false;
    }
    const error = sidebar.querySelector('.aidc-content > .aidc-error');
    if (error) { bench.error = error.textContent; return true; }
    return !!sidebar.querySelector('table.aidc-my-gpus');
  };
  const seen = () => {
    const now = performance.now();
    if (bench.ready === undefined) {
      if (!document.querySelector('.jp-LabShell') || document.getElementById('jupyterlab-splash')) {
        return;
      }
      bench.ready = now;
      bench.extension = !!document.querySelector('.lm-TabBar-tab[data-id="aidc-sidebar"]');
      if (sessionStorage.getItem('aidcBenchSidebar') === '1' && window.jupyterapp) {
        bench.opened = now;
        window.jupyterapp.commands.execute('aidc:open-sidebar');
      }
    }
    if (bench.opened !== undefined && bench.sidebar === undefined && full()) {
      bench.sidebar = now;
    }
  };
  new MutationObserver(seen).observe(document, { childList: true, subtree: true });
})();
"""


#: the page's requests until Lab was ready (Resource Timing, in the page): how many, how many
#: of them labextension files that went to the server (a 304 revalidation or a download,
#: not the cache), and which of aidc's files were loaded
REQUESTS = """
(ready) => {
  const before = performance.getEntriesByType('resource').filter(e => e.startTime < ready);
  const ext = before.filter(e => e.name.includes('/lab/extensions/'));
  return {
    requests: before.length,
    extensionFiles: ext.length,
    extensionFilesFromServer: ext.filter(e => e.transferSize > 0).length,
    aidcFiles: ext.filter(e => e.name.includes('/extensions/aidc/'))
      .map(e => e.name.split('/').pop().split('?')[0]).sort()
  };
}
"""


def set_extension(platform, user, enabled: bool) -> None:
    """The user's page configuration: aidc's Lab extension enabled or disabled."""
    config = {"exposeAppInBrowser": True}
    if not enabled:
        config["disabledExtensions"] = {"aidc": True}
    put(platform, user, PAGE_CONFIG, json.dumps(config))


def reset_workspace(platform, user) -> None:
    r = platform.api(user.token).delete(
        f"{platform.url}/user/{user.name}/lab/api/workspaces/default", timeout=60)
    if r.status_code not in (204, 404):
        raise RuntimeError(f"cannot reset the Lab workspace: {r.status_code} {r.text[:200]}")


def measure(page, url: str | None, enabled: bool, timeout_s: float = 180) -> dict:
    """Load (``url``) or reload the page; its figures from the probe, checked for the side."""
    if url is None:
        page.reload(wait_until="commit")
    else:
        page.goto(url, wait_until="commit")
    page.wait_for_function("window.__aidcBench && window.__aidcBench.ready !== undefined",
                           timeout=timeout_s * 1000)
    wants_sidebar = page.evaluate("sessionStorage.getItem('aidcBenchSidebar') === '1'")
    if wants_sidebar and enabled:
        page.wait_for_function("window.__aidcBench.sidebar !== undefined", timeout=timeout_s * 1000)
    bench = page.evaluate("window.__aidcBench")
    bench["requests"] = page.evaluate(REQUESTS, bench["ready"])
    if bench["extension"] != enabled:
        raise RuntimeError(f"the page was not the side it should be (extension shown: "
                           f"{bench['extension']}, wanted {enabled})")
    if bench.get("error"):
        raise RuntimeError(f"the sidebar showed an error: {bench['error']}")
    return bench


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7,
                    help="measured rounds (each: a cold load and a warm reload per side)")
    args = ap.parse_args(argv)
    root = begin(TMP_PREFIX, "aidc up makes Unix accounts", lambda m: print(m, file=sys.stderr))
    if root is None:
        return 2
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    load0 = os.getloadavg()[0]
    p = Platform(root / "platform", prefix=new_prefix(), env=fake_nvml_env(root))
    problems: list[str] = []
    times = {(side, kind): [] for side in (True, False) for kind in ("cold", "warm")}
    sidebar: list[float] = []
    requests = {side: [] for side in (True, False)}  # the warm loads' requests until ready
    interrupted = False
    try:
        p.start(timeout=180)
        user = p.new_user("scientist")
        r = p.spawn(user, "gpu-1")
        if r.status_code not in (201, 202):
            raise RuntimeError(f"spawn refused: {r.status_code} {r.text}")
        p.wait_ready(user)
        url = f"{p.url}/user/{user.name}/lab"
        set_extension(p, user, True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                login = browser.new_context()
                page = login.new_page()
                page.goto(f"{p.url}/hub/login?next=/user/{user.name}/lab")
                page.fill("#username_input", user.name)
                page.fill("#password_input", user.password)
                page.click("#login_submit")
                page.wait_for_url(f"**/user/{user.name}/lab**", timeout=180_000)
                state = login.storage_state()
                login.close()
                # one warm-up load per side, not counted (the server's first page, file caches)
                for rnd in range(args.rounds + 1):
                    order = (True, False) if rnd % 2 == 0 else (False, True)
                    line = []
                    for enabled in order:
                        set_extension(p, user, enabled)
                        reset_workspace(p, user)
                        context = browser.new_context(storage_state=state,
                                                      viewport={"width": 1400, "height": 900})
                        try:
                            context.add_init_script(PROBE)
                            page = context.new_page()
                            cold = measure(page, url, enabled)
                            reset_workspace(p, user)
                            page.evaluate("sessionStorage.setItem('aidcBenchSidebar', '1')")
                            warm = measure(page, None, enabled)
                        finally:
                            context.close()
                        side = "with" if enabled else "without"
                        line.append(f"{side} cold {cold['ready'] / 1000:.2f} s warm "
                                    f"{warm['ready'] / 1000:.2f} s")
                        if enabled:
                            render = (warm["sidebar"] - warm["opened"]) / 1000
                            line.append(f"sidebar {render:.3f} s")
                        if rnd == 0:
                            continue
                        times[enabled, "cold"].append(cold["ready"] / 1000)
                        times[enabled, "warm"].append(warm["ready"] / 1000)
                        requests[enabled].append(warm["requests"])
                        if enabled:
                            sidebar.append(render)
                    label = "warm-up" if rnd == 0 else f"round {rnd}/{args.rounds}"
                    print(f"{label}: {', '.join(line)}", file=sys.stderr, flush=True)
            finally:
                browser.close()
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: cleaning up", file=sys.stderr)
    finally:
        problems = clean_up(p)
    elapsed = time.monotonic() - started

    print()
    print("JupyterLab page load, aidc's extension enabled vs disabled (same server, user's "
          "page_config)")
    print(f"machine: {os.cpu_count()} CPUs; load average at start {load0:.2f}, at end "
          f"{os.getloadavg()[0]:.2f}")
    n = len(times[True, "cold"])
    print(f"{n} rounds (ABBA, + 1 warm-up round); navigation start -> Lab ready (shell attached, "
          "splash gone)")
    print("  {:<10} {:>16} {:>18} {:>8}".format("load", "with median s", "without median s",
                                                 "ratio"))
    ratios = {}
    for kind in ("cold", "warm"):
        w, wo = median(times[True, kind]), median(times[False, kind])
        ratios[kind] = w / wo if wo else float("nan")
        print("  {:<10} {:>16.3f} {:>18.3f} {:>7.3f}x".format(kind, w, wo, ratios[kind]))
    # the spread: each round's own ratio (its two sides loaded one after the other)
    for kind in ("cold", "warm"):
        paired = sorted(a / b for a, b in zip(times[True, kind], times[False, kind]) if b)
        if len(paired) >= 4:
            q1, _, q3 = statistics.quantiles(paired, n=4)
            print(f"  {kind} ratio per round: median {median(paired):.3f}x, quartiles "
                  f"{q1:.3f}-{q3:.3f}x, range {paired[0]:.3f}-{paired[-1]:.3f}x; with slower "
                  f"in {sum(r > 1 for r in paired)} of {len(paired)} rounds")
    for enabled in (True, False):
        seen = requests[enabled]
        if seen:
            aidc = sorted({f for r in seen for f in r["aidcFiles"]})
            print(f"warm, {'with' if enabled else 'without'}: requests until ready (median) "
                  f"{median([r['requests'] for r in seen]):.0f}, labextension files "
                  f"{median([r['extensionFiles'] for r in seen]):.0f}, of them from the server "
                  f"(not the cache) {median([r['extensionFilesFromServer'] for r in seen]):.0f}; "
                  f"aidc's: {', '.join(aidc) or 'none'}")
    s_med = median(sidebar)
    s_max = max(sidebar) if sidebar else float("nan")
    print(f"sidebar: Lab ready -> first full render (3 sections, GPU table): median "
          f"{s_med:.3f} s, max {s_max:.3f} s")
    if n:
        worst = max(ratios.values())
        print(f"goal: page load with the extension <= {GOAL_RATIO:.2f}x without (median, cold "
              f"and warm): {worst:.3f}x: {'PASS' if worst <= GOAL_RATIO else 'FAIL'}")
        print(f"goal: sidebar's first full render <= {GOAL_SIDEBAR_S:.1f} s after Lab is ready "
              f"(median): {s_med:.3f} s: {'PASS' if s_med <= GOAL_SIDEBAR_S else 'FAIL'}")
    print()
    report_end(problems, "the platform stopped, every Unix account and process it made is gone",
               elapsed)
    if interrupted:
        return 130
    return 1 if problems or n < args.rounds else 0


if __name__ == "__main__":
    sys.exit(main())
