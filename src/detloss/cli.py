"""The ``detloss`` command-line tool (typer). Every command uses only the public API.

Errors in what the user typed give one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.exceptions import TyperException

from detloss.errors import DetLossError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Object-detection losses: compare, plot, simulate, benchmark, train.",
)

DEMO_GT = "120,80,200,150"
DEMO_PREDS = ("300,90,120,160", "140,100,160,120", "100,60,240,100", "150,95,50,200")


def parse_box(text: str, name: str) -> list[float]:
    """``"x,y,w,h"`` -> four floats, else a one-line usage error naming the option."""
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or not all(v == v and abs(v) != float("inf") for v in values):
        raise typer.BadParameter(f"expected four comma-separated finite numbers, got {text!r}", param_hint=name)
    return values


def echo_error(message: str) -> None:
    typer.echo(f"detloss: error: {message}", err=True)


@app.command()
def boxes(
    gt: Annotated[str, typer.Option(help="Ground-truth box, four comma-separated numbers.")] = DEMO_GT,
    pred: Annotated[list[str] | None, typer.Option(help="Predicted box (repeat for several).")] = None,
    box_format: Annotated[str, typer.Option("--format", help="xywh (left, top, w, h), xyxy or cxcywh.")] = "xywh",
    out: Annotated[Path | None, typer.Option(help="Draw the boxes to this PNG.")] = None,
) -> None:
    """Print IoU, GIoU, DIoU, CIoU, EIoU, SIoU and their losses for each prediction."""
    from rich.console import Console
    from rich.table import Table

    from detloss._checks import check_choice
    from detloss.boxes import BOX_FORMATS
    from detloss.experiments.boxes import box_table, draw_boxes

    check_choice("detloss boxes", "--format", box_format, BOX_FORMATS)
    target = parse_box(gt, "--gt")
    preds = [parse_box(p, "--pred") for p in (pred or list(DEMO_PREDS))]
    rows = box_table(target, preds, box_format)
    table = Table(title=f"ground truth {target} ({box_format})")
    table.add_column("prediction")
    for kind in ("iou", "giou", "diou", "ciou", "eiou", "siou"):
        table.add_column(kind.replace("iou", "IoU").upper().replace("IOU", "IoU"), justify="right")
    for row in rows:
        table.add_row(
            ",".join(f"{v:g}" for v in row["pred"]),
            *(f"{row[k]:.4f} | loss {row[k + '_loss']:.4f}" for k in ("iou", "giou", "diou", "ciou", "eiou", "siou")),
        )
    Console(width=200).print(table)
    if out is not None:
        draw_boxes(target, preds, box_format, out, rows)
        typer.echo(f"picture: {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's results.")] = Path("runs/demo"),
) -> None:
    """Run the built-in demo: the boxes table and picture on example boxes."""
    out.mkdir(parents=True, exist_ok=True)
    boxes(gt=DEMO_GT, pred=list(DEMO_PREDS), box_format="xywh", out=out / "boxes.png")
    typer.echo(f"demo results: {out.resolve()}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; user errors give one line and exit 2."""
    try:
        result: Any = app(args=argv, standalone_mode=False)
    except DetLossError as exc:
        echo_error(str(exc))
        sys.exit(2)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        echo_error(" ".join(message.split()))
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        echo_error("aborted")
        sys.exit(130)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        echo_error(str(exc))
        sys.exit(2)
    sys.exit(result if isinstance(result, int) else 0)
