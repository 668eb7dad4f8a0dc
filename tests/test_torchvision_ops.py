"""diffusion.torchvision_ops: where torchvision's compiled library cannot load (a CUDA wheel next to
a CPU torch), the two operator schemas its import registers fakes for are declared first; where
torchvision is already imported, nothing is declared.

Each case runs in a fresh interpreter, since operator declarations last for the process; a stand-in
"torchvision" package on sys.path carries an _C library that cannot load, as the CUDA build's does.
"""
import subprocess
import sys
import textwrap

from tests.paths import REPO

PROBE = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {stand_in!r})
    if {import_first}:
        import torchvision
    from diffusion import torchvision_ops
    torchvision_ops.ensure_importable()
    declared = [name for name in ("nms", "qnms") if hasattr(torch.ops.torchvision, name)]
    print(",".join(declared) or "none")
""")


def probe(tmp_path, import_first: bool) -> str:
    stand_in = tmp_path / "site"
    package = stand_in / "torchvision"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "_C.so").write_bytes(b"not a shared library")
    code = PROBE.format(stand_in=str(stand_in), import_first=import_first)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=REPO, timeout=300,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_schemas_are_declared_when_the_library_cannot_load(tmp_path):
    assert probe(tmp_path, import_first=False) == "nms,qnms"


def test_nothing_is_declared_once_torchvision_is_imported(tmp_path):
    # torchvision registers what it needs as it imports; declaring again would clash
    assert probe(tmp_path, import_first=True) == "none"
