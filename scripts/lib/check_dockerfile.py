#!/usr/bin/env python3
"""Static checks of deploy/Dockerfile (no engine runs here): every COPY source
exists, the dependency layer stubs every target the manifests name, the
builder's Rust is the one the tests ran with, and the runtime runs as non-root
with ffmpeg and bubblewrap.

Usage: check_dockerfile.py
"""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import report

ROOT = Path(__file__).resolve().parents[2]
text = (ROOT / "deploy/Dockerfile").read_text()
failures = []

for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
    for s in src.split():
        if not (ROOT / s).exists():
            failures.append(f"COPY {s}: not in the repository")

stubbed = set(re.findall(r"> ((?:crates|tests)/[\w/.-]+\.rs)", text))
stubbed |= {f"crates/{c}/src/lib.rs" for c in re.findall(r"for c in ([\w ]+); do", text)[0].split()}
for manifest in [*ROOT.glob("crates/*/Cargo.toml"), ROOT / "tests/Cargo.toml"]:
    crate = manifest.parent.relative_to(ROOT)
    data = tomllib.loads(manifest.read_text())
    targets = [t.get("path") for t in data.get("bin", []) + [data.get("lib", {})] if t.get("path")]
    for t in targets:
        if f"{crate}/{t}" not in stubbed:
            failures.append(f"{crate}/{t}: named by {manifest.relative_to(ROOT)} but not stubbed in the dependency layer")
    if f"COPY {crate}/Cargo.toml" not in text:
        failures.append(f"{crate}/Cargo.toml is not copied into the dependency layer")

rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.split()[1]
want = ".".join(rustc.split(".")[:2])
if f"FROM rust:{want}-" not in text:
    failures.append(f"the builder image is not rust:{want} (the toolchain the tests ran with)")
runtime = text.split("FROM debian:", 1)[-1]
if not re.search(r"^USER (?!0|root)", runtime, re.M):
    failures.append("the runtime stage must run as a non-root USER")
if "ffmpeg" not in runtime:
    failures.append("the runtime stage must install ffmpeg")
if "bubblewrap" not in runtime:
    failures.append("the runtime stage must install bubblewrap (media.sandbox)")

report.finish("Dockerfile", failures, f"sources, dependency-layer stubs, rust:{want}, non-root runtime with ffmpeg and bubblewrap")
