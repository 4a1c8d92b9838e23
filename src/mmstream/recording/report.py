"""Session report: one self-contained HTML page (plots and thumbnails embedded as base64 PNG).

``mmstream report FILE -o report.html`` shows, per stream, the recording summary (frames, duration,
frame rate, drops), echogenicity, CSA and thickness over time (matplotlib; long sessions are reduced
to at most :data:`PLOT_BINS` time bins per metric, each drawn as its mean with a min-max band, so a
short artefact is never averaged away), and evenly spaced frame thumbnails. The page needs no
network and no script; the patient pseudonym is left out on purpose.
"""

import base64
import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PLOT_BINS = 1500
THUMB_COUNT = 12
THUMB_WIDTH_PX = 220


class Binned:
    """Streaming reduction of a time series to ``n_bins`` equal time bins over [t0_s, t1_s]:
    per bin the mean, min and max of the finite values (memory: O(n_bins), whatever the length)."""

    def __init__(self, t0_s: float, t1_s: float, n_bins: int = PLOT_BINS):
        self.t0_s = float(t0_s)
        self.width_s = max(float(t1_s) - self.t0_s, 1e-9) / n_bins
        self.n = np.zeros(n_bins, np.int64)
        self.sum = np.zeros(n_bins)
        self.lo = np.full(n_bins, np.inf)
        self.hi = np.full(n_bins, -np.inf)

    def add(self, t_s: np.ndarray, values: np.ndarray) -> None:
        ok = np.isfinite(t_s) & np.isfinite(values)
        t_s, values = t_s[ok], values[ok]
        i = np.clip(((t_s - self.t0_s) / self.width_s).astype(np.int64), 0, self.n.size - 1)
        np.add.at(self.n, i, 1)
        np.add.at(self.sum, i, values)
        np.minimum.at(self.lo, i, values)
        np.maximum.at(self.hi, i, values)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(bin centre time s, mean, min, max) of the non-empty bins."""
        ok = self.n > 0
        t = self.t0_s + (np.flatnonzero(ok) + 0.5) * self.width_s
        return t, self.sum[ok] / self.n[ok], self.lo[ok], self.hi[ok]


@dataclass(frozen=True)
class Panel:
    """One plotted metric: its title, axis label with unit, and its binned values."""

    title: str
    ylabel: str
    binned: Binned | None  # None: the metric was not recorded for this stream


@dataclass(frozen=True)
class Thumbnail:
    seq: int
    t_s: float
    png_b64: str


@dataclass(frozen=True)
class StreamSection:
    stream_id: str
    facts: list[tuple[str, str]]  # label, value
    panels: list[Panel]
    thumbnails: list[Thumbnail]
    table: list[tuple[str, ...]] = ()  # metric summary rows: name, unit, n, mean, std, min, max
    gaps_s: tuple[float, ...] = ()  # times (s since the first frame) right after missing frames


def thumbnail(seq: int, t_s: float, image: np.ndarray, width_px: int = THUMB_WIDTH_PX) -> Thumbnail:
    """A PNG thumbnail of ``image`` (H, W) uint8, ``width_px`` wide (never enlarged)."""
    h, w = image.shape
    if w > width_px:
        image = cv2.resize(image, (width_px, max(1, round(h * width_px / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", image)
    return Thumbnail(seq, t_s, base64.b64encode(buf.tobytes()).decode("ascii"))


def thumbnail_indices(n_frames: int, count: int = THUMB_COUNT) -> list[int]:
    """``count`` frame indices evenly spread over ``n_frames`` (first and last included)."""
    if n_frames <= 0:
        return []
    return sorted(set(np.linspace(0, n_frames - 1, min(count, n_frames)).round().astype(int).tolist()))


def plot_panels(panels: list[Panel], gaps_s: tuple[float, ...] = ()) -> str:
    """The panels stacked over a shared time axis, missing frames marked, as base64 PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 2.1 * len(panels) + 0.6), dpi=110, layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, p in zip(axes, panels):
        ax.set_title(p.title, loc="left", fontsize=10, fontweight="bold")
        ax.set_ylabel(p.ylabel, fontsize=9)
        ax.grid(True, color="#e4e4e4", linewidth=0.6)
        ax.tick_params(labelsize=8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        t, mean, lo, hi = p.binned.result() if p.binned is not None else ((),) * 4
        if len(t) == 0:
            ax.text(0.5, 0.5, "not measured" if p.binned is None else "no valid values",
                    transform=ax.transAxes, ha="center", va="center", color="#888", fontsize=9)  # fmt: skip
            ax.set_yticks([])
            continue
        if np.any(hi > lo):
            ax.fill_between(t, lo, hi, color="#9ecae1", alpha=0.6, linewidth=0, label="min-max per bin", step="mid")
        ax.plot(t, mean, color="#08519c", linewidth=1.0, label="mean")
        for k, g in enumerate(gaps_s):
            ax.axvline(g, color="#c1121f", linewidth=0.8, linestyle="--", alpha=0.7, label="frames missing" if k == 0 else None)
        lo_all, hi_all = float(lo.min()), float(hi.max())
        if hi_all - lo_all < 1e-9 * max(1.0, abs(hi_all)):  # constant: centre it instead of plotting rounding noise
            ax.set_ylim(lo_all - max(1.0, abs(lo_all)) * 0.05, hi_all + max(1.0, abs(hi_all)) * 0.05)
    if gaps_s:
        axes[0].legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False)
    axes[-1].set_xlabel("time since first frame (s)", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1d2733;background:#f4f6f8}
header{background:#1d3557;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px;font-weight:600}
header p{margin:4px 0 0;opacity:.8;font-size:13px}
main{max-width:1120px;margin:0 auto;padding:20px 32px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 22px;margin:18px 0}
h2{font-size:18px;margin:0 0 12px}
h3{font-size:14px;margin:18px 0 8px;color:#44505c;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;font-size:13px}
td,th{padding:4px 14px 4px 0;text-align:left;vertical-align:top}
th{color:#5b6773;font-weight:500;white-space:nowrap}
table.metrics{margin-top:10px;font-variant-numeric:tabular-nums}
table.metrics td,table.metrics th{text-align:right;padding:3px 10px;border-bottom:1px solid #eef0f2}
table.metrics td:first-child,table.metrics th:first-child,table.metrics td:nth-child(2),table.metrics th:nth-child(2){text-align:left}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px 18px;margin-bottom:6px}
.fact{font-size:12px;color:#5b6773}.fact b{display:block;font-size:15px;color:#1d2733;font-weight:600}
.plot{width:100%;height:auto;display:block}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px}
figure{margin:0;background:#0b0f14;border-radius:4px;overflow:hidden}
figure img{width:100%;display:block}
figcaption{font-size:11px;color:#d0d6dc;padding:3px 6px;font-variant-numeric:tabular-nums}
.warn{color:#a4161a;font-weight:600}
footer{font-size:11px;color:#7a8590;text-align:center;padding:10px}
"""


def render_html(title: str, subtitle: str, session_facts: list[tuple[str, str]], streams: list[StreamSection],
                notes: list[str] = ()) -> str:  # fmt: skip
    """The whole page; every value is HTML-escaped, images are inline ``data:`` URIs."""
    e = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<header><h1>{e(title)}</h1><p>{e(subtitle)}</p></header><main>",
        "<section><h2>Session</h2><table>",
        *(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in session_facts),
        "</table>",
        *(f"<p class='warn'>{e(n)}</p>" for n in notes),
        "</section>",
    ]
    for s in streams:
        parts.append(f"<section><h2>Stream {e(s.stream_id)}</h2><div class='facts'>")
        parts += [f"<div class='fact'>{e(k)}<b>{e(v)}</b></div>" for k, v in s.facts]
        parts.append("</div>")
        if s.panels:
            png = plot_panels(s.panels, s.gaps_s)
            alt = ", ".join(p.title for p in s.panels) + " over time"
            parts.append(f"<h3>Metrics over time</h3><img class='plot' alt='{e(alt)}' src='data:image/png;base64,{png}'>")
        if s.table:
            parts.append("<table class='metrics'><tr><th>metric</th><th>unit</th><th>frames</th><th>mean</th>"
                         "<th>std</th><th>min</th><th>max</th></tr>")
            parts += ["<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>" for row in s.table]
            parts.append("</table>")
        if s.thumbnails:
            parts.append("<h3>Frames</h3><div class='thumbs'>")
            parts += [
                f"<figure><img alt='frame {t.seq}' src='data:image/png;base64,{t.png_b64}'>"
                f"<figcaption>seq {t.seq} &middot; t = {t.t_s:.2f} s</figcaption></figure>"
                for t in s.thumbnails
            ]
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</main><footer>generated by mmstream report</footer></body></html>")
    return "\n".join(parts)




# (title, column in mm units, column in pixel units or None, axis label in mm, axis label in pixels)
METRIC_PANELS = (
    ("Echogenicity (mean grey level in the region)", "echo_mean", None, "grey level (0-255)", None),
    ("Cross-sectional area", "csa_area_mm2", "csa_area_px", "CSA (mm²)", "CSA (pixel², spacing unknown)"),
    ("Thickness (median over columns)", "thickness_mm", "thickness_px", "thickness (mm)", "thickness (pixel, spacing unknown)"),
)  # fmt: skip


TABLE_METRICS = (
    ("echogenicity mean", "echo_mean"), ("echogenicity std", "echo_std"), ("CSA", "csa_area_mm2"),
    ("CSA (pixels)", "csa_area_px"), ("CSA confidence", "csa_confidence"), ("thickness", "thickness_mm"),
    ("thickness (pixels)", "thickness_px"), ("thickness confidence", "thickness_confidence"),
)  # fmt: skip


def _fmt(v, spec=".2f", unit="") -> str:
    return "-" if v is None else f"{v:{spec}}{unit}"


def _number(v: float | None) -> str:
    """About four significant digits, never in exponent notation (table cells)."""
    if v is None:
        return "-"
    if abs(v) < 5e-5:
        return "0"
    decimals = min(4, max(0, 3 - math.floor(math.log10(abs(v)))))
    return f"{v:,.{decimals}f}"


_PRETTY_UNITS = {"mm^2": "mm²", "pixel^2": "pixel²", "": "-"}
MAX_GAP_MARKS = 200


def _time_column(first: np.ndarray) -> str:
    return "t_device_s" if np.isfinite(first["t_device_s"][0]) else "t_recorded_s"


def _stream_section(sr, st: dict, n_thumbs: int, tick) -> StreamSection:
    from mmstream.recording.inspect import READ_CHUNK_ROWS

    n_frames, n_metrics = st["frames"], st["metrics_rows"]
    head = sr.frame_headers(0, 1)
    facts = [
        ("frames", f"{n_frames}  ({sr.shape[0]} x {sr.shape[1]} px)"),
        ("duration", _fmt(st["duration_s"], ".1f", " s")),
        ("frame rate", _fmt(st["frame_rate_fps"], ".1f", " fps")),
        ("dropped frames (seq gaps)", str(st["dropped_frames"])),
        ("longest interval", _fmt(st["max_interval_ms"], ".0f", " ms")),
        ("pixel spacing", ", ".join("unknown" if v is None else f"{v[0]:g} x {v[1]:g} mm" for v in st["spacing_mm"]) or "-"),
    ]
    if head:
        # the context the metrics carry: the source's, or the one set on the service (config, set_context),
        # which the recorded frames do not hold
        sites = [h.clinical for h, _ in (sr.metrics_messages(0, 1) + sr.metrics_messages(n_metrics - 1, n_metrics))]
        places = [" / ".join(v for v in (c.site, c.side, c.plane) if v) for c in sites or [head[0].clinical]]
        im = head[0].imaging
        facts += [("site", " -> ".join(dict.fromkeys(p for p in places if p)) or "-"),
                  ("probe, preset", ", ".join(v for v in (im.probe, im.preset) if v) or "-")]  # fmt: skip
    facts.append(("quality flags (frames)", ", ".join(f"{k} {v}" for k, v in st["quality_flags"].items() if v) or "none"))
    panels = []
    if n_metrics:
        first, last = sr.metrics_table(0, 1), sr.metrics_table(n_metrics - 1, n_metrics)
        clock = _time_column(first)
        t_origin = float(sr.index(0, 1)[clock][0]) if clock == "t_device_s" and n_frames else float(first[clock][0])
        t0, t1 = float(first[clock][0]) - t_origin, float(last[clock][0]) - t_origin
        use_mm = {mm: st["metrics"].get(mm, {}).get("n", 0) > 0 for _, mm, _, _, _ in METRIC_PANELS}
        binned = {}
        for title, mm, px, label_mm, label_px in METRIC_PANELS:
            col = mm if use_mm[mm] or px is None else px
            binned[col] = Binned(t0, t1)
            panels.append(Panel(title, label_mm if col == mm else label_px, binned[col]))
        for rows in sr.iter_metrics(chunk=READ_CHUNK_ROWS):
            rows = rows[: n_metrics]
            t = rows[clock] - t_origin
            for col, b in binned.items():
                b.add(t, rows[col])
            if tick is not None:
                tick(len(rows))
            n_metrics -= len(rows)
            if n_metrics <= 0:
                break
    thumbs = []
    if n_frames:
        clock = st["clock"]
        t_first = float(sr.index(0, 1)[clock][0])
        for i in thumbnail_indices(n_frames, n_thumbs):
            row = sr.index(i, i + 1)
            thumbs.append(thumbnail(int(row["seq"][0]), float(row[clock][0]) - t_first, sr.frames(i, i + 1)[0]))
            if tick is not None:
                tick(1)
    table = [
        (label, _PRETTY_UNITS.get(m["unit"], m["unit"]), str(m["n"]), *(_number(m[k]) for k in ("mean", "std", "min", "max")))
        for label, col in TABLE_METRICS
        if (m := st["metrics"][col])["n"]
    ]
    return StreamSection(sr.stream_id, facts, panels, thumbs, table, _gap_times(sr, st) if st["dropped_frames"] else ())


def _gap_times(sr, st: dict) -> tuple[float, ...]:
    """Times (s since the first frame, on the metrics clock) of frames that follow a seq gap."""
    from mmstream.recording.inspect import READ_CHUNK_ROWS

    clock, out, t0 = st["clock"], [], None
    for start in range(0, st["frames"], READ_CHUNK_ROWS):
        rows = sr.index(start, min(start + READ_CHUNK_ROWS, st["frames"]))
        t0 = float(rows[clock][0]) if t0 is None else t0
        out += (rows[clock][rows["gap_before"] > 0] - t0).tolist()
        if len(out) >= MAX_GAP_MARKS:
            break
    return tuple(out[:MAX_GAP_MARKS])


def build_report(path, out, *, thumbnails: int = THUMB_COUNT, progress: Callable[[int], object] | None = None) -> Path:
    """Write the HTML report of the session file ``path`` to ``out``; returns ``out``.
    ``progress(total)`` may return a tqdm-like bar (``update(n)``, ``close()``)."""
    from mmstream.recording.inspect import Summarizer, damage, open_session, spacing_text

    path, out = Path(path), Path(out)
    with open_session(path) as reader:
        summary = Summarizer(reader).update()
        streams = summary["streams"]
        total = sum(s["metrics_rows"] + min(s["frames"], thumbnails) for s in streams.values())
        bar = progress(total) if progress is not None else None
        try:
            sections = [_stream_section(reader.stream(sid), st, thumbnails, None if bar is None else bar.update)
                        for sid, st in streams.items()]  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
    state = "closed cleanly" if summary["closed"] else "not closed: still being written, or the recorder stopped"
    events = summary["events"]
    session_facts = [
        ("session", summary["session_id"]),
        ("file", path.name),
        ("started (UTC)", summary["start_wall"] or "-"),
        ("stopped (UTC)", summary["stop_wall"] or "-"),
        ("state", state),
        ("recorded by", f"mmstream {summary['software_version']}"),
        ("frames lost by the recorder", str(summary["lost_frames"])),
        ("messages rejected by the service", str(summary["rejected_messages"])),
        ("events", ", ".join(f"{k.partition(':')[2]} ({k.partition(':')[0]}) ×{v}" for k, v in events.items()) or "none"),
        ("volumes", "; ".join(f"{v['volume_id']} v{v['version']} {v['modality']} {'x'.join(map(str, v['shape_kji']))}"
                              f" voxels, spacing {spacing_text(v)} mm"
                              for v in summary["volumes"]) or "none"),
    ]
    notes = [f"{w}." for w in damage(summary)]
    if not summary["closed"]:
        notes.append("This file was not closed cleanly: it shows what was flushed before the recorder stopped.")
    dropped = sum(s["dropped_frames"] for s in streams.values()) + summary["lost_frames"]
    if dropped:
        notes.append(f"{dropped} frame(s) missing from the recording (sequence gaps and frames the recorder lost).")
    page = render_html(f"Session report: {summary['session_id'] or path.stem}", f"{path.name} · {len(streams)} stream(s)",
                       session_facts, sections, notes)  # fmt: skip
    try:
        out.write_text(page, encoding="utf-8")
    except OSError as exc:
        from mmstream.recording.export import ExportError

        raise ExportError(f"{out}: cannot write the report: {exc.strerror}", reason="unwritable") from None
    return out
