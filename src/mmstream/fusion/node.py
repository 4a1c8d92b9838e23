"""The fusion node: live metrics beside the patient's stored biomarkers, as ``fused`` messages.

Input ``bus``: the publisher's internal bus (``metrics.*`` and ``event.*``). For every metrics
message it publishes one :class:`~mmstream.messages.Fused` for the message's (patient, site, side),
taken from the clinical context the analyzer copies into it (``set_context``). A ``capture``
control event makes the stream's next metrics message one of the site's three protocol images;
the mean of three becomes the site's ``captured`` echo value (:mod:`mmstream.calibration`).

Nothing here can stop the live path: a patient without biomarkers, a missing context or an
unreadable store still gives a fused message with the live values and a flag saying why.
"""

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

from mmstream.calibration import CAPTURE_FRAMES, PendingCaptures, capture_mean
from mmstream.codec import Decoded
from mmstream.errors import StoreError
from mmstream.fusion.assess import (
    SCORE_FORMULA,
    FusionRules,
    assess_site,
    own_or_sideless,
    rank_patient,
    reference_z,
    stored_values,
)
from mmstream.fusion.cache import PatientCache
from mmstream.messages import Event, Fused, FusedValue, Metrics
from mmstream.nodes.base import Node, Out, Port

SiteKey = tuple[str, str, str | None]  # (patient, site, side)
MAX_RANKED = 256  # sites in one ranking message (Fused.biopsy); beyond: flagged biopsy_ranking_cut


class FusionNode(Node):
    name = "fusion"
    inputs = (Port("bus", capacity=256, policy="fifo"),)
    outputs = (Port("fused"), Port("events"))

    def __init__(self, store_path: Path | str, rules: FusionRules = FusionRules(), check_interval_s: float = 0.5,
                 store_timeout_s: float = 0.05, biopsy_every_s: float = 1.0, today: Callable[[], dt.date] = dt.date.today,
                 name: str | None = None):  # fmt: skip
        super().__init__(name)
        self.biopsy_every_s = biopsy_every_s
        self._biopsy_sent: dict[str, tuple] = {}  # stream -> (ranking sent, when)
        self.rules = rules
        self.cache = PatientCache(store_path, check_interval_s=check_interval_s, timeout_s=store_timeout_s)
        self._today = today
        self._pending = PendingCaptures()
        self._captures: dict[SiteKey, list[tuple[float, bool]]] = {}  # (grey level, calibrated) per image
        self._captured: dict[str, dict[tuple[str, str | None], FusedValue]] = {}  # patient -> (site, side) -> 3-image value
        self._views: dict[tuple, dict] = {}  # (patient, age, sex, generation, n captured) -> view
        self._last_seq: dict[str, tuple[str, int]] = {}  # stream -> (session, seq) of its last metrics
        self._store_failed = False

    # -- inputs ------------------------------------------------------------------------------------
    def process(self, port: str, msg: Decoded) -> list[Out]:
        h = msg.header
        if isinstance(h, Event):
            if h.reason == "capture" and h.stream_id is not None:
                self._pending.ask(h.stream_id, h.t_host_s)
            return []
        if not isinstance(h, Metrics):
            return []  # fused messages (our own, echoed on the bus) and anything else
        t0 = time.monotonic()
        last = self._last_seq.get(h.stream_id)
        if last is not None and last[0] == h.session_id and h.parent[1] > last[1] + 1:
            self.count("frames_not_seen", h.parent[1] - last[1] - 1)  # latest-wins drops upstream or bus gaps
        self._last_seq[h.stream_id] = (h.session_id, h.parent[1])
        out: list[Out] = []
        fused = self._fuse(h, out, t0)
        self.count("fused")
        out.insert(0, Out("fused", fused))
        return out

    # -- pieces --------------------------------------------------------------------------------------
    def _live_values(self, h: Metrics, site: str | None) -> list[FusedValue]:
        ctx, e = h.clinical, h.echogenicity
        vals = []
        if e is not None and e.mean is not None:
            vals.append(FusedValue(name="us_echo_intensity", source="live", modality="US", value=e.mean, unit="grey_level"))
            if e.calibrated_mean is not None:
                vals.append(FusedValue(name="us_echo_calibrated", source="live", modality="US", value=e.calibrated_mean,
                                       unit="grey_level", z=e.z_score, abnormal=e.abnormal))  # fmt: skip
        for name, m, value in (("csa_mm2", h.csa, h.csa and h.csa.area_mm2),
                               ("thickness_mm", h.thickness, h.thickness and h.thickness.thickness_mm)):  # fmt: skip
            if value is not None:
                z, ab = (None, None) if site is None else reference_z(name, value, site, self.rules, ctx.age_years, ctx.sex)
                vals.append(FusedValue(name=name, source="live", modality="US", value=value,
                                       unit=name.rsplit("_", 1)[1], z=z, abnormal=ab, confidence=m.confidence))  # fmt: skip
        return vals

    def _capture(self, h: Metrics, key: SiteKey | None, out: list[Out]) -> None:
        if not self._pending.take(h.stream_id, h.stamps):
            return
        e = h.echogenicity
        if key is None or e is None or e.mean is None or e.region == "frame":
            why = ("no patient/site context" if key is None else "no probe contact" if h.quality and h.quality.no_contact
                   else "featureless frame (no image)" if h.quality and h.quality.featureless
                   else "no echogenicity of a muscle region (ROI or CSA) in this frame")  # fmt: skip
            out.append(self.reject("capture_refused", f"capture on {h.stream_id} refused: {why}", h.stream_id, h.parent[1]))
            return
        value, calibrated = (e.calibrated_mean, True) if e.calibrated_mean is not None else (e.mean, False)
        taken = self._captures.setdefault(key, [])
        if len(taken) == CAPTURE_FRAMES:  # a fourth capture starts a new set of three
            taken.clear()
        if taken and taken[0][1] != calibrated:  # never a mean of raw and calibrated grey levels
            taken.clear()
            out.append(self.event("warning", "capture_set_restarted", f"capture set on {h.stream_id} restarted: "
                                  "the device calibration changed between images", h.stream_id, h.parent[1]))  # fmt: skip
        taken.append((value, calibrated))
        self.count("captures")
        if len(taken) == CAPTURE_FRAMES:
            mean = capture_mean([v for v, _ in taken])
            name = "us_echo_calibrated" if calibrated else "us_echo_intensity"  # scored when used (_scored)
            self._captured.setdefault(key[0], {})[key[1:]] = FusedValue(name=name, source="captured", modality="US",
                                                                        value=mean, unit="grey_level")  # fmt: skip
        out.append(self.event("info", "captured", f"capture {len(taken)}/{CAPTURE_FRAMES} on {h.stream_id}",
                              h.stream_id, h.parent[1]))  # fmt: skip

    def _scored(self, v: FusedValue, site: str, age, sex) -> FusedValue:
        """A captured echo with its z-score for the context now (age and sex may be given or
        corrected after the capture). Echo references are in reference-device grey levels: only a
        calibrated mean has one."""
        if v.name != "us_echo_calibrated":
            return v
        z, ab = reference_z("us_echo_intensity", v.value, site, self.rules, age, sex)
        return v.model_copy(update={"z": z, "abnormal": ab})

    def _view(self, patient: str, age, sex, out: list[Out]) -> dict | None:
        """Stored values per site and the biopsy ranking of ``patient`` (cached until the store or a
        capture changes); None when the store cannot be read."""
        try:
            records = self.cache.records(patient)
        except StoreError as exc:
            if not self._store_failed:
                self._store_failed = True
                out.append(self.event("error", f"store_{exc.reason}", f"biomarker store unavailable: {exc}"))
            self.count(f"store_{exc.reason}")
            return None
        if self._store_failed:
            self._store_failed = False
            out.append(self.event("info", "store_ok", "biomarker store readable again"))
        captured = {k: self._scored(v, k[0], age, sex) for k, v in self._captured.get(patient, {}).items()}
        today = self._today()
        captures = tuple(sorted((site, side or "", v.value) for (site, side), v in captured.items()))  # None < str fails
        vkey = (patient, age, sex, today, self.cache.generation, captures)
        view = self._views.get(vkey)
        if view is not None:
            return view
        ranking = rank_patient(records, self.rules, age, sex, today, captured)
        view = {"records": records, "stored": {}, "biopsy": ranking[:MAX_RANKED], "ranking_cut": len(ranking) > MAX_RANKED}
        if len(self._views) > 1024:
            self._views.clear()
        self._views[vkey] = view
        return view

    def _fuse(self, h: Metrics, out: list[Out], t0: float) -> Fused:
        ctx = h.clinical
        key = (ctx.patient_id, ctx.site, ctx.side) if ctx.patient_id and ctx.site else None
        self._capture(h, key, out)
        live = self._live_values(h, ctx.site)
        base = dict(stream_id=h.stream_id, session_id=h.session_id, parent=h.parent, patient_id=ctx.patient_id,
                    site=ctx.site, side=ctx.side, score_formula=SCORE_FORMULA)  # fmt: skip
        if key is None:
            self.count("no_context")
            return Fused(**base, values=tuple(live), flags=("no_context",), stamps=self._stamps(h, t0))
        flags = []
        view = self._view(ctx.patient_id, ctx.age_years, ctx.sex, out)
        if view is None:
            flags.append("store_unavailable")
            stored, biopsy = (), ()
        else:
            stored = self._stored_for(view, ctx.site, ctx.side, ctx.age_years, ctx.sex)
            biopsy = view["biopsy"]
            if not view["records"]:
                flags.append("no_biomarkers")
            if view["ranking_cut"]:
                flags.append("biopsy_ranking_cut")
            if ctx.side is None and any(r.site == ctx.site and r.side is not None for r in view["records"]):
                flags.append("side_not_set")  # that site's sided values are not shown: set the side
        captured = own_or_sideless(self._captured.get(ctx.patient_id, {}), ctx.site, ctx.side)  # a side-less one: as records
        if captured is not None:
            captured = self._scored(captured, ctx.site, ctx.age_years, ctx.sex)
        values = (*live, *((captured,) if captured else ()), *stored)
        a = assess_site(ctx.site, ctx.side, values, self.rules, explain=False)
        if any(v.stale for v in stored):
            flags.append("stale_biomarkers")
        if a.disagreements:
            flags.append("disagreement")
        return Fused(**base, values=values, captures=len(self._captures.get(key, ())), score=a.score,
                     score_inputs=a.score_inputs, flags=tuple(flags), disagreements=a.disagreements[:64],
                     biopsy=self._biopsy_due(h.stream_id, biopsy), stamps=self._stamps(h, t0))  # fmt: skip

    @staticmethod
    def _stamps(h: Metrics, t0: float) -> dict[str, float]:
        return {**h.stamps, "fusion_start": t0, "fused": time.monotonic()}

    def _biopsy_due(self, stream_id: str, biopsy: tuple):
        """``biopsy`` when it changed for this stream or was last sent ``biopsy_every_s`` ago, else None."""
        now = time.monotonic()
        last = self._biopsy_sent.get(stream_id)
        if last is not None and last[0] is biopsy and now - last[1] < self.biopsy_every_s:
            return None
        self._biopsy_sent[stream_id] = (biopsy, now)
        return biopsy

    def _stored_for(self, view: dict, site: str, side, age, sex) -> tuple[FusedValue, ...]:
        got = view["stored"].get((site, side))
        if got is None:  # a site with no stored record for this side (or no side given)
            got = stored_values(view["records"], site, side, self.rules, age, sex, self._today())
            view["stored"][(site, side)] = got
        return got

    def close(self) -> None:
        self.cache.close()

    def status(self) -> dict:
        out = super().status()
        out["store_error"] = None if self.cache.error is None else self.cache.error.reason
        out["patients_loaded"] = self.cache.loads
        return out


def attach_fusion(graph) -> FusionNode | None:
    """Attach a fusion node to ``graph`` (before start) when its config names a biomarker store:
    it reads the publisher's bus and pushes ``fused`` messages and events back to the publisher."""
    from mmstream.calibration import ReferenceTable, load_model
    from mmstream.graph import SocketSpec

    sec = graph.config.biomarkers
    if sec.store is None:
        return None
    table = None if sec.echo_reference is None else load_model(sec.echo_reference, ReferenceTable)
    rules = FusionRules(table, sec.end_stage_fat_fraction, sec.stale_after_days)
    node = FusionNode(sec.store, rules, check_interval_s=sec.check_interval_s, store_timeout_s=sec.store_timeout_s)
    graph.attach(node, {"bus": SocketSpec("sub", graph.internal["bus"], bind=False)},
                 {"fused": [graph.fused_spec()], "events": [graph.events_spec()]})  # fmt: skip
    graph.control.captures = True
    return node
