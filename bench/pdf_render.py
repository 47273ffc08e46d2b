"""Invoice PDF render time: the warm renderer against plain WeasyPrint, in the same run.

    .venv/bin/python bench/pdf_render.py [--runs 15] [--memory-renders 1000]

(a) baseline: `weasyprint.HTML(string=html).write_pdf()` of the same one-page invoice, its
    CSS inlined, set in the system's sans-serif (no shipped font, a new font configuration
    each time, as a plain call makes);
(b) `render_invoice_pdf` of that invoice in the warm renderer, after a warm-up render;
(c) a 100-line invoice (target: under 1 s);
(d) resident memory before and after --memory-renders warm renders (target: flat).
The issue's baseline (350-390 ms, "most of it fontTools subsetting") is plain WeasyPrint as
it runs without HarfBuzz's subsetter (libharfbuzz-subset0); the subsetter is one of the
three things the service adds. So the baseline is timed with fontTools as the subsetter,
and, for reference, also with HarfBuzz's, which this project's set-up installs system-wide
(then plain WeasyPrint gains most of the same speed-up). Medians over --runs.
Last line: the ratio warm / plain WeasyPrint with fontTools (target: at most 0.3).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import weasyprint  # noqa: E402
import weasyprint.pdf.fonts  # noqa: E402

from billing.documents.invoice_pdf import Seller, render_invoice_pdf, renderer  # noqa: E402
from billing.documents.view import invoice_view  # noqa: E402
from tests.support.invoices import make_invoice  # noqa: E402

SELLER = Seller(
    name="Example Billing Ltd",
    address_lines=("1 Main Street", "London EC1A 1AA", "United Kingdom"),
    tax_id="GB123456789",
    email="billing@example.com",
    payment_instructions="IBAN GB33 BUKB 2020 1555 5555 55\nBIC BUKBGB22",
)


def median_ms(action: Callable[[], object], runs: int) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def baseline_html(invoice: object) -> str:
    """The warm renderer's HTML with its layout CSS inlined, minus the shipped font."""
    html = renderer().html(invoice_view(invoice, SELLER, "en_US"))  # type: ignore[arg-type]
    css = (ROOT / "billing" / "documents" / "templates" / "invoice.css").read_text()
    return html.replace("</head>", f"<style>{css}</style></head>", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--memory-renders", type=int, default=1000)
    args = parser.parse_args()

    one_page = make_invoice(line_count=8)
    html = baseline_html(one_page)
    baseline_pdf = weasyprint.HTML(string=html).write_pdf()  # warm-up: imports, Pango
    baseline = median_ms(lambda: weasyprint.HTML(string=html).write_pdf(), args.runs)

    harfbuzz_subset = weasyprint.pdf.fonts.harfbuzz_subset
    logging.getLogger("weasyprint").setLevel(logging.ERROR)  # "using fontTools" warnings
    weasyprint.pdf.fonts.harfbuzz_subset = None
    try:
        fonttools = median_ms(lambda: weasyprint.HTML(string=html).write_pdf(), args.runs)
    finally:
        weasyprint.pdf.fonts.harfbuzz_subset = harfbuzz_subset
        logging.getLogger("weasyprint").setLevel(logging.NOTSET)

    first_started = time.perf_counter()
    warm_pdf = render_invoice_pdf(one_page, SELLER).content  # warm-up render
    first = (time.perf_counter() - first_started) * 1000
    warm = median_ms(lambda: render_invoice_pdf(one_page, SELLER), args.runs)

    hundred = make_invoice(line_count=100)
    render_invoice_pdf(hundred, SELLER)
    hundred_ms = median_ms(lambda: render_invoice_pdf(hundred, SELLER), max(3, args.runs // 3))

    process = psutil.Process()
    rss_start = process.memory_info().rss
    for _ in range(args.memory_renders):
        render_invoice_pdf(one_page, SELLER)
    rss_end = process.memory_info().rss

    subsetter = "HarfBuzz" if harfbuzz_subset else "fontTools"
    print(
        f"baseline, plain write_pdf ({subsetter}):     {baseline:7.1f} ms  ({len(baseline_pdf)} B)"
    )
    print(f"baseline, fontTools subsetter (reference): {fonttools:7.1f} ms")
    print(f"render_invoice_pdf, first (cold) render:     {first:7.1f} ms")
    print(f"render_invoice_pdf, warm:                    {warm:7.1f} ms  ({len(warm_pdf)} B)")
    print(f"render_invoice_pdf, 100 lines, warm:         {hundred_ms:7.1f} ms  (target < 1000)")
    print(
        f"RSS over {args.memory_renders} warm renders: {rss_start / 2**20:.1f} MiB -> "
        f"{rss_end / 2**20:.1f} MiB ({(rss_end - rss_start) / 2**20:+.1f} MiB)"
    )
    print(f"warm / plain write_pdf with {subsetter}, for reference: {warm / baseline:.2f}")
    print(f"ratio warm / plain write_pdf with fontTools (target <= 0.3): {warm / fonttools:.2f}")


if __name__ == "__main__":
    main()
