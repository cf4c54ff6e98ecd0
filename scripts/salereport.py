"""A sale's report: a readable table for the terminal and a self-contained HTML page
(inline SVG charts, no request to any other host): orders per second and answers by
outcome over time, latency over time, units over time, and the final counters."""
import html, time


def percentile(values, q):
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).rjust(w) if isinstance(c, (int, float)) else str(c).ljust(w)
                             for c, w in zip(r, widths)))
    return "\n".join(out)


class Recorder:
    """Answers as they come (time, outcome, latency) and counter samples over time."""

    def __init__(self):
        self.t0 = time.time()
        self.answers = []  # (t, outcome, latency_ms)
        self.samples = []  # (t, {"available":..,"reserved":..,"sold":..})

    def answer(self, started, outcome):
        self.answers.append((started - self.t0, outcome, (time.time() - started) * 1000))

    def sample(self, view):
        items = view.get("items", [])
        self.samples.append((time.time() - self.t0, {k: sum(i[k] for i in items)
                                                      for k in ("available", "reserved", "sold")}))


def bins(answers, width):
    """Per bin of `width` seconds: ({outcome: count}, [latencies])."""
    if not answers:
        return []
    n = int(max(a[0] for a in answers) / width) + 1
    out = [({}, []) for _ in range(n)]
    for t, outcome, ms in answers:
        counts, lat = out[int(t / width)]
        counts[outcome] = counts.get(outcome, 0) + 1
        lat.append(ms)
    return out


COLORS = ["#2458d3", "#e07b00", "#2a9d4b", "#c62b2b", "#7a3fc4", "#00838f", "#8d6e63"]


def svg_lines(title, xs, series, unit, w=640, h=220):
    pad = 44
    keys = list(series)
    ymax = max([1e-9] + [v for k in keys for v in series[k] if v is not None])
    xmax = max(xs) if xs else 1
    parts = [f'<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<rect width="{w}" height="{h}" fill="#fbfcfd" stroke="#e3e5e8"/>']
    for i in range(5):
        y = h - pad + (2 * pad - h) * i / 4
        parts.append(f'<line x1="{pad}" x2="{w - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e5e8"/>'
                     f'<text x="4" y="{y - 2:.1f}" font-size="10" fill="#5b6470">{ymax * i / 4:,.1f}</text>')
    parts.append(f'<text x="{w - 8}" y="{h - 8}" font-size="10" fill="#5b6470" text-anchor="end">seconds</text>'
                 f'<text x="{pad}" y="14" font-size="11" fill="#5b6470">{html.escape(unit)}</text>')
    for n, k in enumerate(keys):
        pts = [(pad + (w - pad - 8) * x / max(xmax, 1e-9), h - pad - (h - 2 * pad) * v / ymax)
               for x, v in zip(xs, series[k]) if v is not None]
        if pts:
            d = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f'<polyline fill="none" stroke="{COLORS[n % len(COLORS)]}" stroke-width="2" points="{d}"/>')
    parts.append("</svg>")
    legend = " ".join(f'<span><i style="background:{COLORS[n % len(COLORS)]}"></i>{html.escape(k)}</span>'
                      for n, k in enumerate(keys))
    return f'<figure><figcaption>{html.escape(title)}</figcaption>{"".join(parts)}<div class="legend">{legend}</div></figure>'


def write_html(path, title, rec, final_view, checks):
    span = max((a[0] for a in rec.answers), default=1.0)
    width = max(0.02, round(span / 40, 2))  # about 40 points over the burst
    b = bins(rec.answers, width)
    xs = [i * width for i in range(len(b))]
    outcomes = sorted({o for counts, _ in b for o in counts})
    per_sec = {o: [c.get(o, 0) / width for c, _ in b] for o in outcomes}
    lat = {"p50": [percentile(l, 0.5) for _, l in b], "p99": [percentile(l, 0.99) for _, l in b]}
    sx = [t for t, _ in rec.samples]
    units = {k: [s[k] for _, s in rec.samples] for k in ("available", "reserved", "sold")}
    rows = "".join(f"<tr><td>{html.escape(i['sku_id'])}</td><td>{i['stock_total']:,}</td><td>{i['available']:,}</td>"
                   f"<td>{i['reserved']:,}</td><td>{i['sold']:,}</td></tr>" for i in final_view.get("items", []))
    totals = {}
    for _, o, _ in rec.answers:
        totals[o] = totals.get(o, 0) + 1
    all_ms = [a[2] for a in rec.answers]
    answer_rows = "".join(f"<tr><td>{html.escape(o)}</td><td>{n:,}</td></tr>" for o, n in sorted(totals.items()))
    check_rows = "".join(f"<tr><td>{'ok' if ok else 'FAIL'}</td><td>{html.escape(name)}</td></tr>"
                         for name, ok in checks.items())
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24}} table{{border-collapse:collapse;margin:8px 0 20px}}
td,th{{padding:3px 10px;border-bottom:1px solid #e3e5e8;text-align:left;font-variant-numeric:tabular-nums}}
figure{{display:inline-block;margin:0 16px 16px 0}} figcaption{{font-weight:600;margin-bottom:4px}}
.legend span{{margin-right:12px;font-size:12px}} .legend i{{display:inline-block;width:10px;height:10px;margin-right:4px}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>{len(rec.answers):,} answers; latency p50 {percentile(all_ms, 0.5) or 0:.1f} ms, p99 {percentile(all_ms, 0.99) or 0:.1f} ms
(client side, {width * 1000:.0f} ms bins below).</p>
{svg_lines("Answers per second, by outcome", xs, per_sec, "answers/s")}
{svg_lines("Latency over time", xs, lat, "ms")}
{svg_lines("Units over time (all skus)", sx, units, "units")}
<h2>Final counters</h2><table><tr><th>sku</th><th>stock</th><th>available</th><th>reserved</th><th>sold</th></tr>{rows}</table>
<h2>Answers</h2><table><tr><th>outcome</th><th>count</th></tr>{answer_rows}</table>
<h2>Invariants</h2><table>{check_rows}</table></body></html>"""
    with open(path, "w") as f:
        f.write(page)
