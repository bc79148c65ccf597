"""The wheels the GPU run carries to the device machine: lock, fetch, check, size.

The device (CPython 3.12 on manylinux x86_64, no network) lacks asv and jsonschema; their
wheels travel with the working tree in ``.whl/`` (git-ignored, named in the run's ``carry``).

    python3 tools/gpu/wheels.py lock     # resolve requirements.txt for cp312, write wheels.txt (network)
    python3 tools/gpu/wheels.py fetch    # download exactly wheels.txt into .whl/ (network, hash-checked)
    python3 tools/gpu/wheels.py check    # .whl/ == the lock, cp312 tags, closure, size (offline)

``lock`` walks the requirements' ``Requires-Dist`` (markers evaluated for the device) and
stops at packages the device already has (``device-packages.txt``: a carried copy would
shadow the device's own) and at :data:`NOT_CARRIED`; only the wheels it reaches are locked.
``wheels-build.txt`` (setuptools) goes to ``.whl/build/``: it is only pip's isolated build
environment for optspec's own wheel, never installed into the run's site.

Standard library only, except ``packaging`` (on the device and in every optspec environment;
pip's vendored copy otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.tags import Tag, compatible_tags, cpython_tags, sys_tags
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pragma: no cover - pip always vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.tags import Tag, compatible_tags, cpython_tags, sys_tags  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WHEEL_DIR = REPO / ".whl"
LOCK = HERE / "wheels.txt"
BUILD_LOCK = HERE / "wheels-build.txt"
REQUIREMENTS = HERE / "requirements.txt"
BUILD_REQUIREMENTS = HERE / "build-requirements.txt"
DEVICE_PACKAGES = HERE / "device-packages.txt"
#: The run's tree and carried paths travel together, 64 MiB in all (the device notes).
TRAVEL_LIMIT = 64 * 2**20

#: The device: CPython 3.12.3, glibc manylinux x86_64.
DEVICE_PYTHON = (3, 12)
DEVICE_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
    "extra": "",
}
PIP_PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    *[arg for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64") for arg in ("--platform", p)],
]

#: Declared dependencies the run does not need, with the reason (they are not carried).
NOT_CARRIED = {
    "virtualenv": "asv imports it only to build environments (environment_type virtualenv); the run uses --python=same",
}


@dataclass(frozen=True)
class Locked:
    name: str
    version: str
    sha256: str
    build_only: bool

    @property
    def directory(self) -> Path:
        return WHEEL_DIR / "build" if self.build_only else WHEEL_DIR


def device_packages() -> set[str]:
    return {
        canonicalize_name(line.strip())
        for line in DEVICE_PACKAGES.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }


def device_tags() -> set[Tag]:
    abis = ["cp312", "abi3", "none"]
    tags = set(cpython_tags(DEVICE_PYTHON, abis=["cp312"], platforms=DEVICE_PLATFORMS))
    tags |= set(compatible_tags(DEVICE_PYTHON, "cp312", DEVICE_PLATFORMS))
    return {t for t in tags if t.abi in abis}


def read_lock(path: Path, build_only: bool) -> list[Locked]:
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^ ]+) --hash=sha256:([0-9a-f]{64})", line)
        if match is None:
            raise SystemExit(f"{path.name}:{number}: expected 'name==version --hash=sha256:HEX', got {line!r}")
        entries.append(Locked(canonicalize_name(match[1]), match[2], match[3], build_only))
    return entries


def lock_entries() -> list[Locked]:
    return read_lock(LOCK, False) + read_lock(BUILD_LOCK, True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def metadata_requirements(wheel: Path) -> list[Requirement]:
    """``Requires-Dist`` of a wheel whose marker holds on the device (extras not requested)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        headers = HeaderParser().parsestr(archive.read(name).decode())
    requirements = []
    for text in headers.get_all("Requires-Dist") or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate(DEVICE_MARKERS):
            requirements.append(requirement)
    return requirements


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    name, version, _, _ = parse_wheel_filename(wheel.name)
    return canonicalize_name(name), str(version)


def top_level(path: Path) -> list[Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def walk(requirements: list[Requirement], wheels: dict[str, Path], device: set[str]) -> tuple[list[str], list[str]]:
    """Names the requirements reach (carried), and problems; stops at device packages and NOT_CARRIED."""
    carried: list[str] = []
    problems: list[str] = []
    queue = [(r, "requirements") for r in requirements]
    while queue:
        requirement, needed_by = queue.pop(0)
        name = canonicalize_name(requirement.name)
        if name in carried or name in NOT_CARRIED or name in device:
            continue
        wheel = wheels.get(name)
        if wheel is None:
            problems.append(f"{name} (needed by {needed_by}) is neither on the device nor in the wheel set")
            continue
        version = wheel_name_version(wheel)[1]
        if requirement.specifier and not requirement.specifier.contains(Version(version), prereleases=True):
            problems.append(f"{name}=={version} does not satisfy {requirement} (needed by {needed_by})")
        carried.append(name)
        queue += [(r, f"{name}=={version}") for r in metadata_requirements(wheel)]
    return carried, problems


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"pip failed ({' '.join(args[:1])}, exit {result.returncode}):\n{tail}")


# --------------------------------------------------------------------------- commands


def command_lock(_: argparse.Namespace) -> int:
    """Resolve for the device and write wheels.txt and wheels-build.txt."""
    device = device_packages()
    with tempfile.TemporaryDirectory(prefix="optspec-wheels-lock.") as tmp:
        outputs = []
        for requirements, lock, build_only in ((REQUIREMENTS, LOCK, False), (BUILD_REQUIREMENTS, BUILD_LOCK, True)):
            target = Path(tmp) / lock.stem
            pip(
                "download",
                "-q",
                *PIP_PLATFORM_ARGS,
                "-d",
                str(target),
                "-c",
                str(REPO / "constraints.txt"),
                "-r",
                str(requirements),
            )
            wheels = {wheel_name_version(w)[0]: w for w in target.glob("*.whl")}
            if build_only:  # the build backend alone: its environment is pip's own, isolated one
                carried, problems = [canonicalize_name(r.name) for r in top_level(requirements)], []
            else:
                carried, problems = walk(top_level(requirements), wheels, device)
            if problems:
                raise SystemExit("lock: " + "; ".join(problems))
            what = (
                "the build backend of optspec's wheel (pip's isolated build environment on the device)"
                if build_only
                else "CPython 3.12 manylinux x86_64 wheels the device machine lacks"
            )
            lines = [
                f"# Generated by `python3 tools/gpu/wheels.py lock` from {requirements.name} (do not edit):",
                f"# {what}; `wheels.py fetch` downloads them.",
            ]
            for name in sorted(carried):
                wheel = wheels[name]
                lines.append(f"{name}=={wheel_name_version(wheel)[1]} --hash=sha256:{sha256(wheel)}")
            lock.write_text("\n".join(lines) + "\n")
            outputs.append(f"{lock.name}: {len(carried)} wheels")
    print("lock: " + ", ".join(outputs))
    return 0


def command_fetch(_: argparse.Namespace) -> int:
    """Download exactly the locked wheels (hash-checked) into .whl/ and .whl/build/; drop others."""
    for lock, build_only in ((LOCK, False), (BUILD_LOCK, True)):
        directory = WHEEL_DIR / "build" if build_only else WHEEL_DIR
        directory.mkdir(parents=True, exist_ok=True)
        entries = read_lock(lock, build_only)
        if all(_present(e) for e in entries):
            continue
        pip("download", "-q", "--no-deps", "--require-hashes", *PIP_PLATFORM_ARGS, "-d", str(directory), "-r", str(lock))
    _remove_unlocked()
    print(f"fetch: {len(lock_entries())} wheels in {WHEEL_DIR.relative_to(REPO)}/")
    return 0


def _present(entry: Locked) -> bool:
    return any(
        wheel_name_version(w) == (entry.name, entry.version) and sha256(w) == entry.sha256 for w in entry.directory.glob("*.whl")
    )


def _remove_unlocked() -> None:
    wanted = {(e.directory, e.name, e.version) for e in lock_entries()}
    for directory in (WHEEL_DIR, WHEEL_DIR / "build"):
        for wheel in directory.glob("*.whl"):
            if (directory, *wheel_name_version(wheel)) not in wanted:
                wheel.unlink()


def check() -> dict:
    """Everything about .whl/ that needs no network: files, hashes, tags, closure, size."""
    problems: list[str] = []
    entries = lock_entries()
    tags = device_tags()
    here = set(sys_tags())
    files: dict[str, Path] = {}
    rows = []
    for entry in entries:
        candidates = [w for w in entry.directory.glob("*.whl") if wheel_name_version(w) == (entry.name, entry.version)]
        if not candidates:
            problems.append(
                f"{entry.name}=={entry.version} missing from {entry.directory.relative_to(REPO)}/ (run wheels.py fetch)"
            )
            continue
        wheel = candidates[0]
        if sha256(wheel) != entry.sha256:
            problems.append(f"{wheel.name}: sha256 differs from the lock")
        wheel_tags = parse_wheel_filename(wheel.name)[3]
        if not wheel_tags & tags:
            problems.append(f"{wheel.name}: no tag the device (cp312 manylinux x86_64) accepts")
        files[entry.name] = wheel
        rows.append(
            {
                "wheel": str(wheel.relative_to(REPO)),
                "bytes": wheel.stat().st_size,
                "build_only": entry.build_only,
                "installs_here": bool(wheel_tags & here),
            }
        )
    for directory in (WHEEL_DIR, WHEEL_DIR / "build"):
        known = {Path(r["wheel"]).name for r in rows}
        extra = [w.name for w in directory.glob("*.whl") if w.name not in known]
        if extra:
            problems.append(
                f"{directory.relative_to(REPO)}/ holds wheels outside the lock: {', '.join(extra)} "
                "(two versions stop the install)"
            )
    if not problems:
        device = device_packages()
        site = {n: w for n, w in files.items() if not any(e.name == n and e.build_only for e in entries)}
        import tomllib

        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        wanted = [Requirement(r) for r in project["dependencies"]] + top_level(REQUIREMENTS)
        carried, walk_problems = walk(wanted, site, device)
        problems += walk_problems
        unused = sorted(set(site) - set(carried))
        if unused:
            problems.append(f"locked but not needed: {', '.join(unused)}")
    total = sum(r["bytes"] for r in rows)
    return {"wheels": rows, "bytes": total, "problems": problems}


def command_check(args: argparse.Namespace) -> int:
    report = check()
    for row in report["wheels"]:
        where = "build env" if row["build_only"] else ("site" if row["installs_here"] else "site (cp312 only: tag-checked here)")
        print(f"  {row['bytes'] / 1e6:6.2f} MB  {row['wheel']}  [{where}]")
    print(f"wheels: {len(report['wheels'])} files, {report['bytes'] / 2**20:.2f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    for problem in report["problems"]:
        print(f"wheels: {problem}", file=sys.stderr)
    return 1 if report["problems"] else 0


def command_installable(_: argparse.Namespace) -> int:
    """Print the site wheels this interpreter can install (one path a line)."""
    here = set(sys_tags())
    for entry in read_lock(LOCK, False):
        for wheel in WHEEL_DIR.glob("*.whl"):
            if wheel_name_version(wheel) == (entry.name, entry.version) and parse_wheel_filename(wheel.name)[3] & here:
                print(wheel)
    return 0


def device_provided() -> list[Requirement]:
    """Requirements of the carried wheels that the device's own packages meet (not carried)."""
    device = device_packages()
    found: dict[str, Requirement] = {}
    for entry in read_lock(LOCK, False):
        for wheel in WHEEL_DIR.glob("*.whl"):
            if wheel_name_version(wheel) == (entry.name, entry.version):
                for requirement in metadata_requirements(wheel):
                    name = canonicalize_name(requirement.name)
                    if name in device and name not in found:
                        found[name] = requirement
    return [found[name] for name in sorted(found)]


def command_standins(args: argparse.Namespace) -> int:
    """Dry run only: install, from the registry, the device-provided packages this interpreter lacks.

    They are stand-ins for the device image's own copies, in a folder of their own that the
    dry run puts after the site on the path; nothing of them travels.
    """
    import importlib.metadata

    missing = []
    for requirement in device_provided():
        try:
            importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(canonicalize_name(requirement.name))
    if missing:
        pip("install", "-q", "--no-deps", "--target", args.target, "-c", str(REPO / "constraints.txt"), *missing)
    print(
        f"standins: the device provides {len(device_provided())} of the carried wheels' requirements; "
        f"missing here and installed for the rehearsal: {', '.join(missing) or 'none'}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/gpu/wheels.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lock", help="resolve requirements.txt for cp312 manylinux and write wheels.txt (network)")
    sub.add_parser("fetch", help="download the locked wheels into .whl/ (network)")
    checker = sub.add_parser("check", help="check .whl/ against the lock: hashes, cp312 tags, closure, size")
    checker.add_argument("--json", help="also write the report as JSON here")
    sub.add_parser("installable", help="print the site wheels this interpreter can install")
    standins = sub.add_parser("standins", help="dry run: install the device-provided requirements this interpreter lacks")
    standins.add_argument("target")
    args = parser.parse_args(argv)
    handlers = {
        "lock": command_lock,
        "fetch": command_fetch,
        "check": command_check,
        "installable": command_installable,
        "standins": command_standins,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
