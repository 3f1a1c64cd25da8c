"""Which waits of a compiled kernel's main loop wait on global loads, and what shares their scoreboard.

sm_90 SASS carries, per instruction, the dependency scoreboard its result is tracked on
(write barrier), the one that guards its source registers (read barrier) and the mask of
scoreboards it waits for (the control bits 105-125 of the 128-bit instruction, printed by
``nvdisasm -hex``). There are six per warp. When ptxas runs out, a short-latency operation
(a special-function result, a shared-memory load) shares a scoreboard with global loads, and
whoever waits for it also waits for memory: a prefetch stops hiding anything. Used by
``scan_codegen.py --scoreboards``.
"""

from __future__ import annotations

import re
import subprocess


def decode(cubin_path: str, bin_dir: str) -> list[tuple[int, str, int, int, int]]:
    """(address, instruction, write scoreboard, read scoreboard, wait mask) per instruction; 7 = none."""
    out = subprocess.run([f"{bin_dir}/nvdisasm", "-hex", "-c", cubin_path], capture_output=True, text=True).stdout
    rows, cur = [], None
    for line in out.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);\s*/\*\s*0x[0-9a-f]{16}\s*\*/", line)
        if m:
            cur = (int(m.group(1), 16), m.group(2).strip())
            continue
        m = re.match(r"\s*/\*\s*0x([0-9a-f]{16})\s*\*/", line)
        if m and cur:
            ctl = int(m.group(1), 16) >> 41  # bits 105.. of the instruction
            rows.append((cur[0], cur[1], (ctl >> 5) & 7, (ctl >> 8) & 7, (ctl >> 11) & 0x3F))
            cur = None
    return rows


def _opcode(text: str) -> str:
    words = text.split()
    return (words[1] if words[0].startswith("@") else words[0]).split(".")[0]


def load_waits(rows, first: int, last: int) -> list[tuple[int, str, int, int, list[str]]]:
    """Waits inside the loop rows[first..last] on a scoreboard with a global load pending:
    (address, instruction, scoreboard, instructions since that load, other opcodes pending on it)."""
    body = rows[first : last + 1]
    n, found = len(body), []
    for k, (addr, text, _, _, wait) in enumerate(body):
        for sb in range(6):
            if not (wait >> sb) & 1:
                continue
            pending = []  # walk back (around the loop) to the previous wait on this scoreboard
            for d in range(1, n + 1):
                _, t2, wb2, rb2, w2 = body[(k - d) % n]
                if (w2 >> sb) & 1:
                    break
                if wb2 == sb or rb2 == sb:
                    pending.append((d, _opcode(t2)))
            loads = [d for d, op in pending if op == "LDG"]
            if loads:
                others = sorted({op for _, op in pending if op != "LDG"})
                found.append((addr, text, sb, min(loads), others))
    return found


def report(rows, first: int, last: int) -> str:
    """Text lines for the loop rows[first..last]."""
    waits = load_waits(rows, first, last)
    lines = [f"    {a:05x} {t[:44]:44s} SB{sb}: load {d} instr. before; shared with {o or '-'}"
             for a, t, sb, d, o in waits]  # fmt: skip
    mixed = sum(1 for *_, o in waits if o)
    lines.append(f"    {len(waits)} waits on loads, {mixed} sharing the scoreboard with other operations")
    return "\n".join(lines)
