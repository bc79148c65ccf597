"""Make a published asv dashboard work offline: serve its JavaScript and CSS from local copies.

asv 0.6's ``index.html`` loads jQuery, flot, Bootstrap, stupidtable and blueimp-md5 from CDNs.
A CI runner or a machine without internet access then shows asv's "external dependencies
failed to load" page. This tool copies the libraries from Debian's packages (``libjs-jquery``,
``libjs-jquery-flot``, ``libjs-bootstrap``, ``libjs-jquery-stupidtable``, ``node-blueimp-md5``,
all under ``/usr/share/javascript``) into ``<html>/vendor/`` and rewrites the tags.

Debian ships flot 4, a single bundle that already contains the time, selection and
categories plugins; the separate CDN plugin tags are dropped. The flot-orderBars plugin is
not packaged; without it asv draws grouped bars without offsets (used only for bar plots
over a parameter axis). Usage::

    python asv_bench/tools/localize_dashboard.py asv_bench/html
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

#: CDN file name in asv's index.html -> local source under the JavaScript root (None: drop the tag)
REPLACEMENTS: dict[str, str | None] = {
    "jquery-3.3.1.min.js": "jquery/jquery.min.js",
    "jquery.flot.min.js": "jquery-flot/jquery.flot.min.js",
    "jquery.flot.time.min.js": None,
    "jquery.flot.selection.min.js": None,
    "jquery.flot.categories.min.js": None,
    "jquery.flot.orderBars.js": None,
    "stupidtable.min.js": "jquery-stupidtable/stupidtable.js",
    "md5.min.js": "blueimp-md5/md5.min.js",
    "bootstrap.min.js": "bootstrap/js/bootstrap.min.js",
    "bootstrap.min.css": "bootstrap/css/bootstrap.min.css",
}
_TAG = re.compile(r"<(script|link)\b[^>]*?(?:src|href)=\"(https?://[^\"]+)\"[^>]*>(?:\s*</script>)?")


def localize(html_dir: Path, js_root: Path = Path("/usr/share/javascript")) -> list[str]:
    """Rewrite ``index.html`` in place; returns the URLs it replaced or dropped."""
    index = html_dir / "index.html"
    text = index.read_text(encoding="utf-8")
    vendor = html_dir / "vendor"
    vendor.mkdir(exist_ok=True)
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        kind, url = match.group(1), match.group(2)
        name = url.rsplit("/", 1)[-1]
        if name not in REPLACEMENTS:
            raise SystemExit(f"{index}: no local copy known for {url}; extend REPLACEMENTS in {__file__}")
        changed.append(url)
        source = REPLACEMENTS[name]
        if source is None:
            return ""
        path = js_root / source
        if not path.is_file():
            raise SystemExit(
                f"{path} is missing: apt-get install libjs-jquery libjs-jquery-flot libjs-bootstrap "
                "libjs-jquery-stupidtable node-blueimp-md5"
            )
        shutil.copyfile(path, vendor / name)
        if kind == "link":
            return f'<link rel="stylesheet" href="vendor/{name}">'
        return f'<script src="vendor/{name}" onerror="js_load_failure()"></script>'

    index.write_text(_TAG.sub(replace, text), encoding="utf-8")
    return changed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", type=Path, help="the html_dir asv publish wrote")
    parser.add_argument("--js-root", type=Path, default=Path("/usr/share/javascript"))
    args = parser.parse_args()
    for url in localize(args.html_dir, args.js_root):
        print(f"localized {url}")


if __name__ == "__main__":
    main()
