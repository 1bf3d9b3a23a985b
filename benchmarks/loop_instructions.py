"""Instructions per element in the native kernels' vectorized loops, counted in the machine code.

Compiles ``src/detloss/_fused/kernels.h`` alone (it needs no torch) with the native build's
flags, disassembles the object (``objdump -d``) and, in each instantiated block function, counts
the instructions of its innermost vector loops (a backward jump whose span holds no other loop,
with at least 10 instructions on ``ymm``/``zmm`` registers): the loop bodies that run once per
vector of elements (8 float pairs with AVX2, 16 with AVX-512). The forward of a pair kind is one
loop; its backward two (the interior gradients, then their routing to the corners), and it
recomputes the forward. Divisions and memory operands (loads, stores and register spills) are
counted apart: division is the slowest vector instruction, and AVX2 has 16 vector registers.

    python benchmarks/loop_instructions.py            # float32, the IoU kinds and the binary family
    python benchmarks/loop_instructions.py --dtype double
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HEADER = Path(__file__).resolve().parents[1] / "src" / "detloss" / "_fused" / "kernels.h"
FLAGS = ("-std=c++20", "-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd")  # as native.FLAG_SETS
IOU_KINDS = ("IOU", "GIOU", "DIOU", "CIOU", "EIOU", "SIOU4", "SIOU")  # SIOU: a theta other than 4
BINARY_KINDS = (("BCE", "false"), ("FOCAL", "true"), ("QUALITY", "true"), ("VARIFOCAL", "true"), ("FOCAL", "false"))


@dataclass
class Loops:
    loops: int
    instructions: int
    divisions: int
    memory: int


def source(dtype: str) -> str:
    """One function per kernel loop, each instantiating one block function."""
    t = dtype
    lines = [f'#include "{HEADER}"', "using namespace detloss_kernels;"]
    for kind in IOU_KINDS:
        lines.append(
            f"template void iou_forward_block<{t}, Variant<{kind}>>(const {t}*, const {t}*, {t}*, {t}*, int64_t,"
            " const IoUOptions&);"
        )
        lines.append(
            f"template void iou_backward_block<{t}, Variant<{kind}>, false>(const {t}*, const {t}*, const {t}*,"
            f" const {t}*, {t}*, {t}*, int64_t, const IoUOptions&);"
        )
    for kind, g2 in BINARY_KINDS:
        lines.append(
            f"template void binary_forward_block<{t}, {kind}, {g2}>(const {t}*, const {t}*, {t}*, int64_t,"
            " const BinaryOptions&);"
        )
        lines.append(
            f"template void binary_backward_block<{t}, {kind}, {g2}, false>(const {t}*, const {t}*, const {t}*,"
            f" {t}*, {t}*, int64_t, const BinaryOptions&);"
        )
    return "\n".join(lines) + "\n"


def disassemble(dtype: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        cpp, obj = Path(folder) / "loops.cpp", Path(folder) / "loops.o"
        cpp.write_text(source(dtype))
        subprocess.run(["g++", *FLAGS, "-c", str(cpp), "-o", str(obj)], check=True)
        dump = ["objdump", "-d", "--no-show-raw-insn", "-C", str(obj)]
        return subprocess.run(dump, check=True, capture_output=True, text=True).stdout


def _wide(args: str) -> bool:
    return "ymm" in args or "zmm" in args


def inner_loops(body: str, alternatives: bool) -> Loops:
    """The innermost 32- or 64-byte vector loops of one disassembled function (of 30 instructions
    or more: not the transposes); ``alternatives``: its loops do the same work for different
    compile-time options (the binary family's alpha factor), so the largest counts."""
    code: list[tuple[int, str, str]] = []
    for line in body.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(.*)", line)
        if m:
            code.append((int(m.group(1), 16), m.group(2), m.group(3)))
    where = {address: i for i, (address, _, _) in enumerate(code)}
    spans = []
    for i, (address, op, args) in enumerate(code):
        target = re.match(r"([0-9a-f]+) <", args)
        if op.startswith("j") and target and int(target.group(1), 16) < address:
            spans.append((where[int(target.group(1), 16)], i))
    innermost = [s for s in spans if not any(o != s and o[0] >= s[0] and o[1] <= s[1] for o in spans)]
    loops = [code[a : b + 1] for a, b in innermost if b - a >= 30]
    wide = [loop for loop in loops if sum(_wide(args) for _, _, args in loop) >= 10]
    if alternatives:  # one loop per compile-time option of the same work: the largest
        wide = sorted(wide, key=len)[-1:]
    flat = [ins for loop in wide for ins in loop]
    return Loops(
        loops=len(wide),
        instructions=len(flat),
        divisions=sum(op.startswith("vdiv") for _, op, _ in flat),
        memory=sum("(" in args for _, _, args in flat),
    )


IOU_IDS = {0: "iou", 1: "giou", 2: "diou", 3: "ciou", 4: "eiou", 5: "siou, theta 3", 6: "siou"}  # kernels.h IoUKind
BINARY_IDS = {0: "bce", 1: "focal", 2: "quality", 3: "varifocal"}  # kernels.h BinaryKind


def label(demangled: str) -> str | None:
    """``"ciou forward"``, ``"focal (gamma 1.5) backward"``, ... of a block function's name."""
    pattern = r"detloss_kernels::(iou|binary)_(forward|backward)_block<\w+, (?:detloss_kernels::Variant<)?(\d+), (\w+)"
    m = re.search(pattern, demangled)
    if not m:
        return None
    family, step, kind, flag = m.groups()
    if family == "iou":
        return f"{IOU_IDS[int(kind)]} {step}"
    exponent = "" if kind == "0" else (" (gamma 2)" if flag == "true" else " (gamma 1.5)")
    return f"{BINARY_IDS[int(kind)]}{exponent} {step}"


def count(dtype: str) -> dict[str, Loops]:
    found = {}
    for chunk in re.split(r"\n(?=[0-9a-f]+ <)", disassemble(dtype)):
        name = label(chunk.split("\n", 1)[0])
        if name is not None:
            found[name] = inner_loops(chunk, alternatives=not name.startswith(tuple(IOU_IDS.values())))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", choices=("float", "double"), default="float")
    args = parser.parse_args()
    print(f"{args.dtype}; the innermost vector loops of each block function of {HEADER.name}, per vector of elements")
    print("| kernel | loops | instructions | divisions | memory operands |")
    print("|---|---|---|---|---|")
    for name, loops in count(args.dtype).items():
        print(f"| {name} | {loops.loops} | {loops.instructions} | {loops.divisions} | {loops.memory} |")


if __name__ == "__main__":
    main()
