"""``mmstream biomarkers import|list|export|compute|vocabulary`` and ``mmstream biopsy PATIENT``.

The store is ``--db FILE`` or the ``[biomarkers] store`` of ``--config FILE``. Exit status: 0 when
everything was done; 1 when some rows were refused, conflicted or a computation failed (valid rows
are still stored); 2 for usage errors or an unusable store.
"""

import argparse
import csv
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path

from mmstream.cli_args import age_years
from mmstream.errors import MmstreamError, ReadError
from mmstream.privacy import file_tag

DICOM_MODALITIES = {"MR": "MRI", "PT": "PET", "CT": "CT", "US": "US"}  # DICOM (0008,0060) -> store modality


def _store_path(args) -> Path:
    if args.db is not None:
        return args.db
    if args.config is not None:
        from mmstream.config import load_config

        path = load_config(args.config).biomarkers.store
        if path is not None:
            return path
    raise MmstreamError("no biomarker store: give --db FILE or a --config with [biomarkers] store", reason="usage")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", type=Path, help="biomarker store (SQLite file)")
    p.add_argument("--config", type=Path, help="service config whose [biomarkers] names the store and rules")


def _print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, "") if r.get(c) is not None else "")) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str("" if r.get(c) is None else r.get(c)).ljust(widths[c]) for c in columns))


def _key_text(rec) -> str:
    return f"{rec.patient_id} {rec.site} {rec.side or '-'} {rec.modality} {rec.biomarker} {rec.acquired_on}" + (
        f" {rec.tracer}" if rec.tracer else ""
    )


def cmd_import(args) -> int:
    from mmstream.biomarkers import BiomarkerStore, read_records

    status = 0
    with BiomarkerStore(_store_path(args)) as store:
        for path in args.files:
            try:
                res = read_records(path)
            except MmstreamError as exc:
                print(f"{path}: error: {exc.reason}: {str(exc).removeprefix(f'{path}: ')}", file=sys.stderr)
                status = 1
                continue
            report = store.add(res.records, n_invalid=len(res.errors), source=(file_tag(path), res.sha256))
            line_of = {id(r): n for r, n in zip(res.records, res.lines)}
            for e in res.errors:
                print(f"{path}: {e}", file=sys.stderr)
            for r in report.duplicates:
                print(f"{path}: line {line_of[id(r)]}: duplicate (already stored, skipped): {_key_text(r)}", file=sys.stderr)
            for r, old in report.conflicts:
                print(f"{path}: line {line_of[id(r)]}: conflict: {_key_text(r)} = {r.value:g} {r.unit} but {old:g} is "
                      "stored; kept the stored value", file=sys.stderr)  # fmt: skip
            print(f"{path}: {report.added} added, {len(report.duplicates)} duplicate, {len(report.conflicts)} conflict, "
                  f"{len(res.errors)} invalid")  # fmt: skip
            if res.errors or report.conflicts:
                status = 1
    return status


def _records(args):
    from mmstream.biomarkers import BiomarkerStore

    with BiomarkerStore(_store_path(args), create=False) as store:
        return store.query(patient_id=args.patient, site=args.site, biomarker=args.biomarker)


def cmd_list(args) -> int:
    recs = _records(args)
    cols = ["patient_id", "site", "side", "modality", "biomarker", "value", "unit", "acquired_on", "tracer", "source_file"]
    _print_table([r.model_dump(mode="json") for r in recs], cols)
    return 0


def cmd_export(args) -> int:
    from mmstream.biomarkers.importer import csv_text_out
    from mmstream.biomarkers.records import FIELDS

    recs = [r.model_dump(mode="json") for r in _records(args)]
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        if args.format == "csv":
            w = csv.DictWriter(out, fieldnames=list(FIELDS))
            w.writeheader()
            w.writerows({k: csv_text_out(v) for k, v in r.items()} for r in recs)  # no formula runs in a spreadsheet
        elif args.format == "json":
            json.dump(recs, out, indent=1)
            out.write("\n")
        else:
            out.writelines(json.dumps(r) + "\n" for r in recs)
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


def cmd_vocabulary(args) -> int:
    from mmstream.biomarkers import VOCABULARY

    rows = [{"biomarker": b.name, "unit": b.unit, "modalities": ",".join(b.modalities), "description": b.description}
            for b in VOCABULARY.values()]  # fmt: skip
    _print_table(rows, ["biomarker", "unit", "modalities", "description"])
    return 0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(f.read_bytes())
    except OSError as exc:
        raise ReadError(f"{path}: {exc.strerror or exc}", reason="not_found" if isinstance(exc, FileNotFoundError) else "unreadable") from None
    return h.hexdigest()


def _label_sites(text: str) -> dict[int, str]:
    """``--labels 1=tibialis_anterior,2=soleus`` as {label: site}; MmstreamError ``usage`` if malformed."""
    out = {}
    for item in text.split(","):
        n, sep, site = item.strip().partition("=")
        if not (sep and n.strip().isdigit() and site.strip()):
            raise MmstreamError(f"--labels item {item!r} is not N=site (e.g. 1=tibialis_anterior)", reason="usage")
        out[int(n)] = site.strip()
    return out


def _emit(args, raws: list[dict]) -> int:
    """Validate computed records; store them with --db/--config, else print them as JSON lines."""
    from mmstream.biomarkers import BiomarkerStore, parse_record

    recs = [parse_record(r) for r in raws]
    if args.db is None and args.config is None:
        for r in recs:
            print(r.model_dump_json())
        return 0
    with BiomarkerStore(_store_path(args)) as store:
        report = store.add(recs, source=(recs[0].source_file, recs[0].source_sha256) if recs else None)
    for r, old in report.conflicts:
        print(f"conflict: {_key_text(r)} = {r.value:g} but {old:g} is stored; kept the stored value", file=sys.stderr)
    print(f"{report.added} added, {len(report.duplicates)} duplicate, {len(report.conflicts)} conflict")
    return 1 if report.conflicts else 0


def _check_date(args, vol) -> None:
    """Warn when --date differs from the DICOM file's own acquisition date (a typo, or the shifted
    date of a de-identified file): the records carry --date."""
    file_date = vol.meta.get("acquired_on")
    if file_date is not None and file_date != args.date:
        print(f"mmstream biomarkers compute: warning: --date {args.date} differs from the file's acquisition "
              f"date {file_date}; the records say {args.date}", file=sys.stderr)  # fmt: skip


def cmd_compute(args) -> int:
    from mmstream.biomarkers import compute as C

    base = {"patient_id": args.patient, "side": args.side, "acquired_on": args.date}
    first = Path(args.inputs[0])

    base |= {"source_file": file_tag(first), "source_sha256": _sha256(first)}  # never the name: it may be the patient's
    if args.kind == "stats":
        if len(args.inputs) != 2 or not args.site:
            raise MmstreamError("stats needs IMAGE MASK and --site", reason="usage")
        if (args.biomarker is None) != (args.unit is None):
            raise MmstreamError("--biomarker and --unit go together (the mean is recorded as that biomarker in "
                                "that unit)", reason="usage")  # fmt: skip
        img, mask = (C.read_volume(p, args.index_4d) for p in args.inputs)
        _check_date(args, img)
        C.check_same_grid(img, mask)
        modality = args.modality or DICOM_MODALITIES.get(img.modality)
        if modality is None:  # never a CT or PET value stored as MRI by default
            raise MmstreamError(f"{first.name} does not say its modality (DICOM Modality {img.modality!r}): give "
                                "--modality MRI, PET, CT or US", reason="usage")  # fmt: skip
        if args.modality and DICOM_MODALITIES.get(img.modality, args.modality) != args.modality:
            raise MmstreamError(f"--modality {args.modality} but {first.name} is DICOM {img.modality}", reason="usage")
        base["modality"] = modality
        st = C.mask_statistics(img.voxels, mask.voxels, img.spacing_mm, args.label)
        if st.n_voxels == 0:
            raise MmstreamError(f"mask has no voxel{'' if args.label is None else f' with label {args.label}'}", reason="empty_mask")
        mean_name, unit = args.biomarker or "mask_mean", args.unit or "au"
        raws = [{**base, "site": args.site, "biomarker": mean_name, "value": st.mean, "unit": unit, "method": "mean in mask"}]
        if img.meta.get("spatial_unit") == "unknown":  # never a volume in mm3 from a guessed unit
            print(f"mmstream biomarkers compute: warning: {first.name} gives no spatial unit or voxel spacing: "
                  "no volume_mm3 recorded", file=sys.stderr)  # fmt: skip
        else:
            raws.insert(0, {**base, "site": args.site, "biomarker": "volume_mm3", "value": st.volume_mm3, "unit": "mm3"})
        if args.biomarker is None:
            raws.append({**base, "site": args.site, "biomarker": "mask_median", "value": st.median, "unit": "au"})
    elif args.kind == "fat-fraction":
        if len(args.inputs) != 3 or not args.labels:
            raise MmstreamError("fat-fraction needs FAT WATER LABELS and --labels N=site,...", reason="usage")
        fat, water, labels = (C.read_volume(p, args.index_4d) for p in args.inputs)
        _check_date(args, fat)
        C.check_same_grid(fat, water, "water image")
        C.check_same_grid(fat, labels, "label map")
        names = _label_sites(args.labels)
        ff = C.dixon_fat_fraction(fat.voxels, water.voxels, labels.voxels)
        missing = [f"{n}={site} ({'not in the label map' if n not in ff else 'no voxel with signal'})"
                   for n, site in names.items() if n not in ff or ff[n].fat_fraction is None]  # fmt: skip
        if missing:  # never a silently shorter result than asked for
            raise MmstreamError(f"no fat fraction for label(s) {', '.join(missing)}", reason="empty_mask")
        raws = [{**base, "modality": "MRI", "site": site, "biomarker": "fat_fraction", "value": ff[n].fat_fraction,
                 "unit": "1", "method": f"Dixon mean F/(F+W) in label {n}: {ff[n].n_voxels} voxels, {ff[n].n_excluded} "
                 "without signal (F+W = 0) excluded"} for n, site in names.items()]  # fmt: skip
    else:  # suv
        if not args.tracer or not args.site:
            raise MmstreamError("suv needs --tracer (e.g. FDG) and --site", reason="usage")
        if len(args.inputs) != 2:  # a site's SUV is over its mask, never over the whole field of view
            raise MmstreamError("suv needs PET MASK (the site's mask on the PET grid)", reason="usage")
        suv, factor = C.pet_suv_volume(first)
        _check_date(args, suv)
        mask = C.read_volume(args.inputs[1], args.index_4d)
        C.check_same_grid(suv, mask)
        vals = C.values_in(suv.voxels, C.label_region(mask.voxels, args.label), "PET image")
        if vals.size == 0:
            raise MmstreamError("mask has no voxel in the PET grid", reason="empty_mask")
        how = f"SUVbw, decay {factor.decay_correction}, delay {factor.delay_s:.0f} s, weight {factor.weight_kg} kg"
        raws = [{**base, "modality": "PET", "site": args.site, "tracer": args.tracer, "biomarker": b, "value": float(v),
                 "unit": "g/mL", "method": how} for b, v in (("pet_suv_mean", vals.mean()), ("pet_suv_max", vals.max()))]  # fmt: skip
    return _emit(args, raws)


def cmd_biopsy(args) -> int:
    from mmstream.biomarkers import BiomarkerStore
    from mmstream.calibration import ReferenceTable, load_model
    from mmstream.fusion import FusionRules, rank_patient

    sec = None
    if args.config is not None:
        from mmstream.config import load_config

        sec = load_config(args.config).biomarkers
    ref_path = args.reference or (sec and sec.echo_reference)
    limit = args.end_stage_fat_fraction if args.end_stage_fat_fraction is not None else sec and sec.end_stage_fat_fraction
    if limit is not None and not 0 < limit <= 1:  # as the configuration checks it (a percent typo, nan, -1)
        raise MmstreamError(f"--end-stage-fat-fraction {limit} is not a fraction in (0, 1]", reason="usage")
    rules = FusionRules(
        references=None if ref_path is None else load_model(ref_path, ReferenceTable),
        end_stage_fat_fraction=limit,
        stale_after_days=sec and sec.stale_after_days,
    )
    with BiomarkerStore(_store_path(args), create=False) as store:
        recs = store.query(patient_id=args.patient)
    if not recs:
        print(f"no biomarkers stored for patient {args.patient}", file=sys.stderr)
        return 1
    ranked = rank_patient(recs, rules, args.age_years, args.sex, dt.date.today())
    if args.format == "json":
        print(json.dumps([c.model_dump(mode="json") for c in ranked], indent=1))
    else:
        _print_table([c.model_dump(mode="json") for c in ranked], ["rank", "site", "side", "category", "score", "reason"])
    if rules.references is None:
        print("note: no reference table (--reference or [biomarkers] echo_reference): no z-scores, every site 'unknown'",
              file=sys.stderr)  # fmt: skip
    return 0


def _run(fn):
    def wrapped(args) -> int:
        cmd = f"biomarkers {args.biomarkers_command}" if getattr(args, "biomarkers_command", None) else "biopsy"
        try:
            return fn(args)
        except MmstreamError as exc:
            print(f"mmstream {cmd}: error: {exc.reason}: {exc}", file=sys.stderr)
            return 2 if exc.reason in ("usage", "locked", "corrupt", "unavailable", "newer_schema", "config") else 1
        except OSError as exc:  # an output file that cannot be written (a directory, a missing folder)
            print(f"mmstream {cmd}: error: unwritable: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
            return 1

    return wrapped


def register(sub) -> None:
    bio = sub.add_parser("biomarkers", help="MRI/PET/US biomarker store: import, list, export, compute")
    bsub = bio.add_subparsers(dest="biomarkers_command", required=True)
    p = bsub.add_parser("import", help="import CSV/JSON/JSONL records (bad rows reported with line numbers)")
    p.add_argument("files", nargs="+", type=Path)
    _common(p)
    p.set_defaults(func=_run(cmd_import))
    for name, fn in (("list", cmd_list), ("export", cmd_export)):
        p = bsub.add_parser(name, help=f"{name} stored records")
        _common(p)
        p.add_argument("--patient")
        p.add_argument("--site")
        p.add_argument("--biomarker")
        if name == "export":
            p.add_argument("--format", choices=("csv", "json", "jsonl"), default="csv")
            p.add_argument("-o", "--output", type=Path)
        p.set_defaults(func=_run(fn))
    p = bsub.add_parser("vocabulary", help="the controlled vocabulary: biomarkers and canonical units")
    p.set_defaults(func=_run(cmd_vocabulary))
    p = bsub.add_parser("compute", help="biomarkers from volumes: stats IMAGE MASK | fat-fraction FAT WATER LABELS | suv PET MASK")
    p.add_argument("kind", choices=("stats", "fat-fraction", "suv"))
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--patient", required=True)
    p.add_argument("--site", help="site name (stats, suv)")
    p.add_argument("--side", choices=("left", "right", "midline"))
    p.add_argument("--modality", choices=("MRI", "PET", "CT", "US"),
                   help="stats: the image's modality (default: from its DICOM Modality; required for NIfTI, NRRD, MetaImage)")
    p.add_argument("--date", required=True, help="acquisition date YYYY-MM-DD")
    p.add_argument("--label", type=int, help="mask label (default: every non-zero voxel)")
    p.add_argument("--index-4d", type=int, help="the volume to take from a 4-D NIfTI/NRRD input (3-D inputs are read whole)")
    p.add_argument("--labels", help="fat-fraction: label=site pairs, e.g. 1=tibialis_anterior,2=soleus")
    p.add_argument("--biomarker", help="stats: record the mean as this biomarker (e.g. t2_water_ms) ...")
    p.add_argument("--unit", help="... in this unit (e.g. ms)")
    p.add_argument("--tracer", help="suv: tracer, e.g. FDG")
    _common(p)
    p.set_defaults(func=_run(cmd_compute))
    p = sub.add_parser("biopsy", help="rank a patient's sites for biopsy (moderately affected first)")
    p.add_argument("patient")
    _common(p)
    p.add_argument("--reference", type=Path, help="reference table (TOML/JSON) for z-scores")
    p.add_argument("--end-stage-fat-fraction", type=float, help="fat fraction from which a muscle is end-stage")
    p.add_argument("--age-years", type=age_years)
    p.add_argument("--sex", choices=("female", "male"))
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_run(cmd_biopsy))
