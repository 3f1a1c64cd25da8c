"""Every Triton kernel launch in ssmkit passes the shared launch options (``ops._triton.LAUNCH``).

The interpreter ignores compile options, so this is checked on the source: a launch that
left them out would compile without fused multiply-adds under Triton >= 3.10's default.
"""

import ast
import pathlib

import ssmkit
from ssmkit.ops._triton import LAUNCH


def _launches():
    """(file:line, call) of every ``<name>_kernel[grid](...)`` call in the package."""
    root = pathlib.Path(ssmkit.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript):
                target = node.func.value
                if isinstance(target, ast.Name) and target.id.endswith("_kernel"):
                    yield f"{path.relative_to(root)}:{node.lineno}", node


def test_launch_options_turn_fp_fusion_on():
    assert LAUNCH["enable_fp_fusion"] is True


def test_every_kernel_launch_passes_the_launch_options():
    found = list(_launches())
    assert len(found) >= 16, [where for where, _ in found]  # the scan, SSD, conv, norm and step kernels
    missing = [
        where for where, call in found
        if not any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == "LAUNCH" for k in call.keywords)
    ]  # fmt: skip
    assert not missing, f"launches without **LAUNCH: {missing}"
