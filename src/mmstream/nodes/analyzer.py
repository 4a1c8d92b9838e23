"""Analyzer: runs :func:`mmstream.analysis.analyze_frame` on each stream's latest frame.

Per-stream settings (seed, ROI, metrics, clinical context) live in a shared, thread-safe
:class:`StreamSettings` that the control endpoint edits; the analyzer keeps each stream's previous
result so the CSA contour and thickness lines are tracked. Several analyzer workers may run (one
thread each; the kernels release the GIL); a stream always goes to the same worker.
"""

import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from mmstream.analysis import METRICS, NOT_MEASURED, FrameAnalysis, analyze_frame, validate_spacing
from mmstream.calibration import Device, EchoReferences
from mmstream.codec import Decoded, buffer_specs
from mmstream.errors import InputError, MmstreamError, SpacingError
from mmstream.messages import (
    ClinicalContext, CsaSummary, EchoSummary, Frame, Metrics, QualitySummary, ThicknessSummary,
)  # fmt: skip
from mmstream.nodes.base import Node, Out, Port

LINES = ("superficial", "deep")  # the thickness lines a click may hold


@dataclass(frozen=True)
class StreamConfig:
    """What to measure on one stream. ``seed_version`` grows with each new click in the nerve or
    muscle; ``line_versions`` (superficial, deep) with each click on (or release of) an aponeurosis."""

    seed_rc: tuple[float, float] | None = None
    seed_version: int = 0
    superficial_at_rc: tuple[float, float] | None = None
    deep_at_rc: tuple[float, float] | None = None
    line_versions: tuple[int, int] = (0, 0)
    roi: tuple[int, int, int, int] | None = None
    metrics: tuple[str, ...] = METRICS
    clinical: ClinicalContext = ClinicalContext()

    @property
    def lines_version(self) -> int:
        """Line clicks and releases so far (both lines)."""
        return sum(self.line_versions)


class StreamSettings:
    """Thread-safe per-stream settings shared by the control endpoint and the analyzers, for at
    most ``max_streams`` streams besides the configured ones (a bound against a client inventing
    stream names: settings are never forgotten, so beyond it a new stream's are refused)."""

    def __init__(self, defaults: StreamConfig = StreamConfig(), initial: dict[str, StreamConfig] | None = None,
                 max_streams: int = 1024):  # fmt: skip
        self._lock = threading.Lock()
        self._defaults = defaults
        self._by_stream: dict[str, StreamConfig] = dict(initial or {})
        self._max = len(self._by_stream) + max_streams

    def get(self, stream_id: str) -> StreamConfig:
        with self._lock:
            return self._by_stream.get(stream_id, self._defaults)

    def update(self, stream_id: str, **changes) -> StreamConfig:
        """Apply changes; a new ``seed_rc`` (or clearing it) bumps ``seed_version``, a new
        ``superficial_at_rc`` or ``deep_at_rc`` that line's entry of ``line_versions``.

        Raises InputError (reason ``too_many_streams``) for a new stream beyond the bound."""
        with self._lock:
            if stream_id not in self._by_stream and len(self._by_stream) >= self._max:
                raise InputError(f"settings are held for {self._max} streams already: restart the service to "
                                 "configure more", reason="too_many_streams")  # fmt: skip
            cur = self._by_stream.get(stream_id, self._defaults)
            if "seed_rc" in changes:
                changes["seed_version"] = cur.seed_version + 1
            changes["line_versions"] = tuple(v + (f"{line}_at_rc" in changes)
                                             for v, line in zip(cur.line_versions, LINES))  # fmt: skip
            new = replace(cur, **changes)
            self._by_stream[stream_id] = new
            return new

    def snapshot(self) -> dict[str, StreamConfig]:
        with self._lock:
            return dict(self._by_stream)


def _held(t) -> set[str]:
    """The lines a thickness result holds at a click (none for None)."""
    return set() if t is None else {line for line in LINES if getattr(t, f"{line}_at_rc") is not None}


def metrics_message(h: Frame, res: FrameAnalysis, stamps: dict[str, float]) -> tuple[Metrics, tuple]:
    """The ``metrics`` message (header and arrays) of analysis ``res`` of frame ``h``; its
    ``spacing_mm`` is the one the analysis used (None when it refused the frame's: pixels only)."""
    arrays = {}
    e, c, t, q = res.echogenicity, res.csa, res.thickness, res.quality
    if e is not None:
        arrays["histogram"] = np.asarray(e.histogram, np.int64)
    if c is not None:
        arrays["contour_rc"] = np.asarray(c.contour_rc, np.float32)
    if t is not None:
        arrays["superficial_rc"] = np.asarray(t.superficial_rc, np.float32)
        arrays["deep_rc"] = np.asarray(t.deep_rc, np.float32)
    header = Metrics(
        stream_id=h.stream_id,
        session_id=h.session_id,
        parent=(h.stream_id, h.seq),
        t_device_s=h.t_device_s,
        spacing_mm=res.spacing_mm,
        clinical=h.clinical,
        echogenicity=None if e is None else EchoSummary(region=e.region, mean=e.mean, std=e.std, n_px=e.n_px),
        csa=None if c is None else CsaSummary(**c.model_dump(exclude={"contour_rc"})),
        thickness=None if t is None else ThicknessSummary(**t.model_dump(exclude={"superficial_rc", "deep_rc"})),
        quality=None if q is None else QualitySummary(**q.model_dump()),
        annotations=h.annotations,
        stamps=stamps,
        buffers=buffer_specs(**arrays),
    )
    return header, tuple(arrays.values())


class Analyzer(Node):
    name = "analyzer"
    inputs = (Port("frames", capacity=1, policy="latest"),)
    outputs = (Port("metrics"), Port("events"))

    def __init__(self, settings: StreamSettings, name: str | None = None, echo: EchoReferences | None = None,
                 every_frame: bool = False, max_streams: int = 64):  # fmt: skip
        """``max_streams``: the tracking state of at most this many streams is kept (ingest's
        bound); beyond it the stream seen longest ago is forgotten and, if it comes back, starts as
        a new stream (its seed and line clicks apply anew, count ``streams_forgotten``)."""
        super().__init__(name)
        if every_frame:  # lossless: stop reading when behind, so that ZeroMQ pushes back on ingest
            self.inputs = (Port("frames", capacity=4, policy="block"),)
        self.settings = settings
        self.echo = echo  # reference table and device calibration: live echo z-scores (mmstream.calibration)
        self._previous: dict[str, FrameAnalysis] = {}
        self._session: dict[str, str] = {}  # stream -> session_id of its last frame
        self._seed_version: dict[str, int] = {}
        self._line_versions: dict[str, tuple[int, int]] = {}  # stream -> StreamConfig.line_versions applied
        self._max_streams = max_streams
        self._failing: dict[str, tuple] = {}  # stream -> (reason, message, tap versions) of its failing frames

    def process(self, port: str, msg: Decoded) -> list[Out]:
        try:
            return self._process(msg)
        except Exception as exc:  # unforeseen (a bug): this frame is lost; the stream starts afresh, its taps used up
            h = msg.header
            cfg = self.settings.get(h.stream_id)
            self._previous.pop(h.stream_id, None)
            self._seed_version[h.stream_id], self._line_versions[h.stream_id] = cfg.seed_version, cfg.line_versions
            self.count("internal_error")
            return [self.event("error", "internal_error", f"analysis failed unexpectedly: {type(exc).__name__}: {exc}",
                               h.stream_id, h.seq)]  # fmt: skip

    def _process(self, msg: Decoded) -> list[Out]:
        h: Frame = msg.header
        cfg = self.settings.get(h.stream_id)
        t0 = time.monotonic()
        out = self._new_session(h)
        seed = None
        seed_applied = self._seed_version.get(h.stream_id, 0)
        if cfg.seed_version != seed_applied:
            self._seed_version[h.stream_id] = cfg.seed_version
            seed = cfg.seed_rc
            if seed is None:  # the seed was cleared: stop tracking
                prev = self._previous.get(h.stream_id)
                if prev is not None:
                    self._previous[h.stream_id] = prev.with_tracking(csa=None)
        clicks = self._line_clicks(h.stream_id, cfg)
        prev = self._previous.get(h.stream_id)
        held_before = _held(None if prev is None else prev.tracking_state.thickness)
        tracked_csa = prev is not None and prev.tracking_state.csa is not None
        clinical = cfg.clinical if cfg.clinical != ClinicalContext() else h.clinical
        lines_applied = "thickness" in cfg.metrics  # until then clicks wait
        spacing = self._spacing(h)
        try:
            res = self._analyze(msg, cfg, spacing, seed, clicks)
        except MmstreamError as exc:
            res, refused = self._without_failing_taps(msg, cfg, spacing, seed, clicks, exc)
            if res is None:  # an unanalysable frame: tracking ends; a new seed waits for the next frame
                if seed is not None:
                    self._seed_version[h.stream_id] = seed_applied
                self._previous.pop(h.stream_id, None)
                lost = self._hold_lost(h, held_before) if "thickness" in cfg.metrics else []
                if tracked_csa:  # the contour is gone with the tracking: say so (tap again)
                    lost.append(self._csa_lost(h))
                ev = self.reject(exc.reason, f"analysis failed: {exc} (announced once while it lasts)", h.stream_id, h.seq)
                key = (exc.reason, str(exc), cfg.seed_version, cfg.line_versions)  # a new tap gets its answer
                repeated = self._failing.get(h.stream_id) == key  # as the last frame's: counted, not announced
                self._failing[h.stream_id] = key
                return [*out, *([] if repeated else [ev]), *lost]
            if exc.reason in NOT_MEASURED:  # nothing to tap on: the taps wait for a measured frame
                if seed is not None:
                    self._seed_version[h.stream_id] = seed_applied
                lines_applied = False
            else:
                out.append(self.reject(exc.reason, f"{refused} refused: {exc}", h.stream_id, h.seq))
        self._failing.pop(h.stream_id, None)  # analysed: a failure after this is announced again
        if lines_applied:
            self._line_versions[h.stream_id] = cfg.line_versions
        if "thickness" in cfg.metrics:  # a hold that ends without a release: say so (tap again)
            out += self._hold_lost(h, held_before - _held(res.tracking_state.thickness))
        if tracked_csa and seed is None and "csa" in cfg.metrics and res.tracking_state.csa is None:
            out.append(self._csa_lost(h))  # e.g. a new frame size: the contour cannot follow
        stamps = {**h.stamps, "analysis_start": t0, "analyzed": time.monotonic()}
        header, arrays = metrics_message(h.model_copy(update={"clinical": clinical}), res, stamps)
        if self.echo is not None and header.echogenicity is not None:
            header = header.model_copy(update={"echogenicity": self._assess(header.echogenicity, h, clinical)})
        self._previous[h.stream_id] = res  # only a result that made a message is tracked from
        self.count("analyzed")
        return [*out, Out("metrics", header, arrays)]

    def _new_session(self, h: Frame) -> list[Out]:
        """A stream whose source restarted (new ``session_id``) starts afresh, as at service start:
        nothing is tracked from the old session; the stream's seed (a setting the configuration can
        give too) applies to the new session's first frame with contact, line clicks (taps on the old
        session's image) do not. Returns the ``info`` event saying so."""
        last = self._session.pop(h.stream_id, None)
        self._session[h.stream_id] = h.session_id  # (re)inserted last: the dict is ordered by last frame
        if last is None and len(self._session) > self._max_streams:
            gone = next(iter(self._session))
            for state in (self._session, self._previous, self._seed_version, self._line_versions, self._failing):
                state.pop(gone, None)
            self.count("streams_forgotten")
        if last is None or last == h.session_id:
            return []
        self._previous.pop(h.stream_id, None)
        self._seed_version.pop(h.stream_id, None)
        self._failing.pop(h.stream_id, None)
        self._line_versions[h.stream_id] = self.settings.get(h.stream_id).line_versions
        self.count("session_restarts")
        return [self.event("info", "session_restart", "new session: nothing tracked from the old one; the seed "
                           "applies anew, line taps do not (tap again)", h.stream_id, h.seq)]  # fmt: skip

    def _hold_lost(self, h: Frame, lines) -> list[Out]:
        """Warnings (counted) that ``lines`` are no longer held where they were tapped."""
        if lines:
            self.count("line_hold_lost", len(lines))
        return [self.event("warning", "line_hold_lost", f"the {line} line is no longer held where it was tapped "
                           "(lines lost, analysis failed, new ROI or frame size): tap it again", h.stream_id, h.seq)
                for line in sorted(lines)]  # fmt: skip

    def _csa_lost(self, h: Frame) -> Out:
        """The warning (counted) that the tracked CSA contour is gone."""
        self.count("csa_lost")
        return self.event("warning", "csa_lost", "the CSA contour is no longer tracked (analysis failed or the "
                          "frame size changed): tap the structure again", h.stream_id, h.seq)  # fmt: skip

    def _without_failing_taps(self, msg: Decoded, cfg: StreamConfig, spacing, seed, clicks, exc: MmstreamError):
        """After analysis with the taps failed: (the frame analysed with the taps that work, or None
        when it fails without any, and which taps were refused). With a seed and line clicks,
        each is tried alone first; on a frame not measured (no probe contact, featureless) no tap can apply."""
        tries = []
        if seed is not None and clicks != (None, None) and exc.reason not in NOT_MEASURED:
            tries += [(seed, (None, None), "line click"), (None, clicks, "seed")]
        given = [what for what, tapped in (("seed", seed is not None), ("line click", clicks != (None, None))) if tapped]
        if given:
            tries.append((None, (None, None), " and ".join(given)))
        for s, c, refused in tries:
            try:
                return self._analyze(msg, cfg, spacing, s, c), refused
            except MmstreamError:
                continue
        return None, ""

    def _spacing(self, h: Frame) -> tuple[float, float] | None:
        """The frame's spacing, or None (counted ``spacing_refused``) when the analysis's bounds
        refuse it: e.g. 150 or 1e200 mm per pixel is unknown, for the results and the metrics
        message alike (pixels only; no millimetre position is derived from it downstream)."""
        try:
            return validate_spacing(h.spacing_mm)
        except SpacingError:
            self.count("spacing_refused")
            return None

    def _analyze(self, msg: Decoded, cfg: StreamConfig, spacing, seed, clicks) -> FrameAnalysis:
        return analyze_frame(
            msg.arrays["image"],
            spacing_mm=spacing,
            roi=cfg.roi,
            seed=seed,
            previous=self._previous.get(msg.header.stream_id),
            metrics=cfg.metrics,
            superficial_at_rc=clicks[0],
            deep_at_rc=clicks[1],
        )

    def _line_clicks(self, stream_id: str, cfg: StreamConfig) -> tuple:
        """(superficial, deep) clicks new since the last analysed frame, None for the others (the
        kernel keeps an earlier click on the other line where that line is now). A released line
        is no longer held (it stays as tracked); a release that leaves no line held has the lines
        found afresh. Clicks wait while thickness is not measured."""
        applied = self._line_versions.get(stream_id, (0, 0))
        if cfg.line_versions == applied or "thickness" not in cfg.metrics:
            return None, None
        new = [v != a for v, a in zip(cfg.line_versions, applied)]
        clicks = (cfg.superficial_at_rc, cfg.deep_at_rc)
        prev = self._previous.get(stream_id)
        released = {f"{line}_at_rc": None for line, n, at in zip(LINES, new, clicks) if n and at is None}
        if released and prev is not None and prev.tracking_state.thickness is not None:
            t = prev.tracking_state.thickness.model_copy(update=released)
            self._previous[stream_id] = prev.with_tracking(thickness=t if _held(t) else None)
        return tuple(at if n else None for at, n in zip(clicks, new))

    def _assess(self, e: EchoSummary, h: Frame, clinical: ClinicalContext) -> EchoSummary:
        im = h.imaging
        device = Device(scanner=im.scanner, probe=im.probe, preset=im.preset) if im.scanner and im.probe and im.preset else None
        a = self.echo.assess(e.mean, e.region, clinical.site, clinical.age_years, clinical.sex, device)
        return e.model_copy(update={
            "calibrated_mean": a.calibrated_mean, "z_score": None if a.z is None else a.z.oriented,
            "abnormal": None if a.z is None else a.z.abnormal, "z_unavailable": a.unavailable,
        })  # fmt: skip
