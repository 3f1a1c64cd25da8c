"""Files with Triton kernels or torch.library custom ops keep their annotations evaluated.

``from __future__ import annotations`` turns annotations into strings. torch 2.4's
``custom_op`` cannot infer a schema from strings ("Parameter y has unsupported type
Tensor"), and Triton 3.0/3.1's interpreter no longer sees ``tl.constexpr`` parameters
("arange's arguments must be of type tl.constexpr"). Newer versions accept both, so only
a check of the source keeps the oldest supported versions working.
"""

import ast
import pathlib

import ssmkit


def _decorator_names(node: ast.AST):
    for dec in getattr(node, "decorator_list", []):
        target = dec.func if isinstance(dec, ast.Call) else dec
        yield ast.unparse(target)


def _kernel_and_op_files():
    """(path, tree) of every package file that defines a @triton.jit kernel or a custom op."""
    root = pathlib.Path(ssmkit.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        names = {name for node in ast.walk(tree) for name in _decorator_names(node)}
        if names & {"triton.jit", "torch.library.custom_op"}:
            yield path.relative_to(root), tree


def _postpones_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.ImportFrom) and node.module == "__future__" and any(a.name == "annotations" for a in node.names)
        for node in tree.body
    )  # fmt: skip


def test_kernel_and_custom_op_files_do_not_postpone_annotations():
    found = list(_kernel_and_op_files())
    assert len(found) >= 15, [str(p) for p, _ in found]  # scan, SSD, conv, norm and step kernels and their ops
    offending = [str(path) for path, tree in found if _postpones_annotations(tree)]
    assert not offending, f"from __future__ import annotations in: {offending}"
