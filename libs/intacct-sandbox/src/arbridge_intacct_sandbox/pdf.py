"""A real, minimal PDF of an invoice, as the sandbox company's print template would make it.

One A4-sized page in PDF 1.4 with the standard Helvetica fonts (nothing
embedded), text laid out line by line, a correct cross-reference table, so
any PDF reader opens it and text extractors read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PAGE_WIDTH, PAGE_HEIGHT = 595, 842


@dataclass(frozen=True)
class Line:
    text: str
    size: int = 11
    bold: bool = False
    x: int = 56


def _escape(text: str) -> str:
    # PDF literal strings: backslash, parentheses; non-Latin-1 characters become "?"
    # (the standard fonts carry WinAnsi only).
    safe = text.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def render(lines: Sequence[Line], title: str) -> bytes:
    """The PDF bytes of one page holding ``lines`` from the top down."""
    stream_parts = []
    y = PAGE_HEIGHT - 64
    for line in lines:
        font = "F2" if line.bold else "F1"
        stream_parts.append(
            f"BT /{font} {line.size} Tf {line.x} {y} Td ({_escape(line.text)}) Tj ET"
        )
        y -= line.size + 8
        if y < 48:
            break
    content = "\n".join(stream_parts).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_WIDTH} {PAGE_HEIGHT}] "
            "/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>"
        ).encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        b"<< /Length " + str(len(content)).encode() + b" >>\nstream\n" + content + b"\nendstream",
        f"<< /Title ({_escape(title)}) /Producer (arbridge Intacct sandbox) >>".encode("latin-1"),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info {len(objects)} 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)


def invoice_pdf(
    *,
    company: str,
    template: str,
    number: str,
    customer: str,
    dates: Sequence[tuple[str, str]],
    items: Sequence[tuple[str, str]],
    totals: Sequence[tuple[str, str]],
) -> bytes:
    """An invoice laid out like a plain Intacct print template."""
    lines = [
        Line(company, 16, bold=True),
        Line(template.upper(), 13, bold=True),
        Line(f"Invoice number: {number}", 12, bold=True),
        Line(f"Bill to: {customer}"),
        *(Line(f"{label}: {value}") for label, value in dates),
        Line(""),
        Line("Description                                   Amount", bold=True),
        *(Line(f"{description[:40]:<44}{amount:>12}") for description, amount in items),
        Line(""),
        *(Line(f"{label}: {value}", 12, bold=True) for label, value in totals),
    ]
    return render(lines, f"{template} {number}")
