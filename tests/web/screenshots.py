"""Screenshots of each page at 1280 px and 375 px into docs/screenshots/ (see docs/ui.md).

Run from the repository root: ``python3 -m tests.web.screenshots``. It starts a real pploy on
loopback (the same one the browser tests use), gives it a project with a history, a rollback and
a colourful log, and photographs the pages in Chromium (/usr/bin/chromium). Japanese pages need
a Japanese font on the machine (Debian: fonts-ipafont-gothic)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from tests.deploy.support import git, make_remote, push_commit
from tests.helpers import CHROMIUM_ARGS
from tests.web.live import LivePploy, printf, script

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WIDTHS = {"wide": (1280, 860), "narrow": (375, 760)}

DEPLOY = script(
    printf("\x1b[1mBuilding webshop\x1b[0m\n::group::Install dependencies\n"),
    'i=1; while [ $i -le 40 ]; do echo "  fetched package-$i"; i=$((i+1)); done',
    printf("::endgroup::\n\x1b[32m✓ tests passed\x1b[0m (128 tests)\n"),
    printf("\x1b[33mwarning:\x1b[0m image is 3 days old\n"),
    printf("release notes: https://example.com/releases/42\n"),
    printf("\x1b[36mdeployed to $DEPLOY_ENV\x1b[0m\n"),
)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="pploy-shots-"))
    live = LivePploy(root)
    try:
        remote = make_remote(root / "remotes", name="webshop", deploy_script=DEPLOY)
        older = git("rev-parse", "main", cwd=remote).strip()
        push_commit(remote, "Show prices with tax", {"prices.txt": "tax\n"})
        pp = live.pploy

        async def history() -> tuple[str, int]:
            project = await pp.add_project(remote)
            await pp.gain(project)
            await pp.wait_job(await pp.checkout(project, "main"))
            job = 0
            for env in ("staging", "production", "staging"):
                job = await pp.deploy(project, env)
                await pp.wait_job(job)
            await pp.wait_job(await pp.checkout(project, older))  # production now rolls back
            return project, job

        project, job = live.run(history())
        pages = {
            "index": "/",
            "project": f"/projects/{project}",
            "job": f"/jobs/{job}",
            "login": "/login",
        }
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            for width_name, (width, height) in WIDTHS.items():
                for language in ("en", "ja"):
                    context = browser.new_context(
                        viewport={"width": width, "height": height},
                        extra_http_headers={"Accept-Language": language},
                    )
                    page = context.new_page()
                    for name, path in pages.items():
                        if name != "login":
                            context.add_cookies(
                                [{"name": "user", "value": "alice", "url": live.base}]
                            )
                        else:
                            context.clear_cookies()
                        page.goto(live.url(path))
                        if name == "job":
                            page.wait_for_selector("#log[data-connection=ended]")
                            page.fill("#log-search", "package-1")
                            page.press("#log-search", "Enter")
                        if name == "project":
                            page.click('tr[data-env="production"] details.rollback summary')
                        page.screenshot(path=str(OUT / f"{name}-{language}-{width}.png"))
                    context.close()
            browser.close()
    finally:
        live.close()
    for path in sorted(OUT.glob("*.png")):
        print(f"{path.relative_to(OUT.parents[1])}: {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
