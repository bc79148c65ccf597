"""Check the run's temporary site: what run.sh installed is what it imports, and it is whole.

    PYTHONPATH=SITE python3 tools/gpu/site_check.py SITE

* every locked wheel (wheels.txt) is installed in SITE at the locked version; in a dry run on
  another Python, a cp312-only wheel (rpds-py) cannot be, and the line says which copy this
  interpreter uses instead;
* every requirement of every carried distribution and of optspec (markers evaluated for this
  interpreter) is installed, in the site or among the interpreter's own packages; a version
  outside what it asks for is a warning (on the device: a package of the image, attrs,
  typing-extensions..., which the run must not replace; the imports below decide);
* optspec comes from SITE (not from some other installation), and the modules the run uses
  import: asv, asv_runner, jsonschema, optspec's CUDA adapter and build module.

Exit 1 with one line per problem; warnings are printed and do not fail.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wheels import LOCK, NOT_CARRIED, Requirement, Version, canonicalize_name, read_lock

MODULES = ("asv", "asv_runner", "jsonschema", "optspec", "optspec.impls.cuda.adapter", "optspec.impls.cuda.build")


def located_in(dist: metadata.Distribution, site: Path) -> bool:
    return Path(str(dist.locate_file(""))).resolve() == site


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: site_check.py SITE", file=sys.stderr)
        return 2
    site = Path(argv[0]).resolve()
    problems: list[str] = []
    warnings: list[str] = []
    checked: list[metadata.Distribution] = []
    for entry in read_lock(LOCK, False):
        try:
            dist = metadata.distribution(entry.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{entry.name}=={entry.version}: not installed")
            continue
        checked.append(dist)
        if located_in(dist, site) and dist.version == entry.version:
            continue
        where = "the site" if located_in(dist, site) else Path(str(dist.locate_file(""))).as_posix()
        line = f"{entry.name}: {dist.version} from {where} instead of the locked {entry.version} in the site"
        if (site / ".cp312-only").exists() and entry.name in (site / ".cp312-only").read_text().split():
            print(f"  note: {line} (its wheel is cp312-only; tag-checked)")
        else:
            problems.append(line)
    try:
        optspec = metadata.distribution("optspec")
        checked.append(optspec)
        if not located_in(optspec, site):
            problems.append(f"optspec is installed at {optspec.locate_file('')}, not in the site")
    except metadata.PackageNotFoundError:
        problems.append("optspec: not installed")
    for dist in checked:
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(requirement.name)
            if name in NOT_CARRIED:
                continue
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                problems.append(f"{dist.metadata['Name']} needs {requirement}: not installed")
                continue
            if requirement.specifier and not requirement.specifier.contains(Version(version), prereleases=True):
                # a device package older or newer than a carried one asks for: reported, not fatal
                # (the imports below decide), since the device's own copy must not be replaced
                warnings.append(f"{dist.metadata['Name']} asks for {requirement}: {version} is installed")
    for module in MODULES:
        try:
            imported = importlib.import_module(module)
        except Exception as exc:  # report every failure, not the first
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
            continue
        if module == "optspec" and site not in Path(imported.__file__).resolve().parents:
            problems.append(f"optspec imports from {imported.__file__}, not from the site")
    for warning in warnings:
        print(f"site: warning: {warning}")
    for problem in problems:
        print(f"site: {problem}", file=sys.stderr)
    if not problems:
        print(f"site: {len(checked)} distributions at their locked versions, requirements met, {len(MODULES)} modules import")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
