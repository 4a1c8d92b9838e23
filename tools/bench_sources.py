"""Source drivers beside their libraries: what the driver adds to the library's own cost.

In one run, interleaved, best of ``--repeats``:

* **DICOM cine** -- ``color3d_jpeg_baseline.dcm`` from ``../shared/data/dicom-us`` (120 frames,
  480 x 640 JPEG baseline YBR; or ``--dicom FILE``):
  *pydicom alone* = ``dcmread`` + ``pydicom.pixels.iter_pixels`` over every frame (JPEG decode and
  YBR -> RGB); *driver* = :class:`mmstream_drivers.dicom.DicomCineSource` (``realtime=false``: header
  checks, B-mode crop, RGB -> grey, frame records) with every frame sent by
  :class:`mmstream.source.FrameSender` to a PULL socket drained by another thread (decode and publish).
* **OpenIGTLink ingest** -- a loopback TCP peer sends the same packed 480 x 640 uint8 IMAGE message
  ``--igtl-frames`` times as fast as it can:
  *pyigtl alone* = a minimal blocking reader (``recv_into`` header and body, then pyigtl's
  ``MessageBase.parse_header``, ``create_message``, ``unpack``), and pyigtl's own receive code (the
  per-message function its client thread runs, ``_receive_message_from_socket``, counted per
  message: the client itself keeps only the newest message per device, so it gives no ingest rate);
  *driver* = :class:`mmstream_drivers.igtl.IgtlSource` (checked framing, CRC-64, grey conversion,
  spacing and orientation, frame records) publishing as above; also with ``check_crc=false``.

Ratio = driver time / library time per frame (target: at most 1.20). Prints a table and writes JSON.

    python tools/bench_sources.py [--repeats 3] [--igtl-frames 400] [--json bench_sources.json]
"""

import argparse
import json
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

TARGET_RATIO = 1.20
DEFAULT_DICOM = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom-us" / "color3d_jpeg_baseline.dcm"


class Drain:
    """A bound PULL socket emptied by a thread; ``wait(n)`` returns when n messages arrived."""

    def __init__(self):
        from mmstream.transport import make_socket

        self.sock = make_socket("pull", "tcp://127.0.0.1:*", bind=True, hwm=1000)
        self.endpoint = self.sock.last_endpoint
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        from mmstream.transport import TransportTimeout

        while not self._stop.is_set():
            try:
                self.sock.recv(timeout_ms=50)
                self.count += 1
            except TransportTimeout:
                pass

    def wait(self, n, timeout_s=60.0):
        deadline = time.monotonic() + timeout_s
        while self.count < n and time.monotonic() < deadline:
            time.sleep(0.0005)
        if self.count < n:
            raise RuntimeError(f"only {self.count} of {n} messages arrived")

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def consume(frames, drain: Drain | None, n_expected=None) -> int:
    """Take ``frames`` (up to ``n_expected``); with a ``drain``, send each with a FrameSender and wait
    until all arrived. Returns the count."""
    from mmstream.source import FrameSender

    start = drain.count if drain is not None else 0
    n = 0
    sender = FrameSender(drain.endpoint, "bench") if drain is not None else None
    try:
        for f in frames:
            if sender is not None:
                sender.send(f)
            n += 1
            if n_expected is not None and n >= n_expected:
                break
    finally:
        if sender is not None:
            sender.close()
    if drain is not None:
        drain.wait(start + n)
    return n


# --- DICOM --------------------------------------------------------------------------------------


def dicom_library(path) -> tuple[float, int]:
    import pydicom
    import pydicom.pixels

    t0 = time.perf_counter()
    ds = pydicom.dcmread(path)
    n = sum(1 for _ in pydicom.pixels.iter_pixels(ds))
    return time.perf_counter() - t0, n


def dicom_driver(path, drain) -> tuple[float, int]:
    from mmstream_drivers.dicom import DicomCineSource

    t0 = time.perf_counter()
    src = DicomCineSource(str(path), realtime=False)
    n = consume(src.source_frames(), drain)
    return time.perf_counter() - t0, n


# --- OpenIGTLink --------------------------------------------------------------------------------


class Peer:
    """Loopback TCP server sending one packed message ``n`` times to each connection."""

    def __init__(self, packed: bytes, n: int):
        self.packed, self.n = packed, n
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.port = self.listen.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.listen.accept()
            except OSError:
                return
            with conn:
                try:
                    for _ in range(self.n):
                        conn.sendall(self.packed)
                    conn.recv(1)  # until the client closes
                except OSError:
                    pass

    def close(self):
        self.listen.close()


def igtl_library(port, n) -> tuple[float, int]:
    from pyigtl.messages import MessageBase

    t0 = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    header = bytearray(58)

    def fill(buf):
        view, got = memoryview(buf), 0
        while got < len(buf):
            got += sock.recv_into(view[got:])

    for _ in range(n):
        fill(header)
        fields = MessageBase.parse_header(bytes(header))
        body = bytearray(fields["body_size"])
        fill(body)
        msg = MessageBase.create_message(fields["message_type"])
        msg.unpack(fields, bytes(body))
        assert msg.image.shape[1:] == (480, 640)
    sock.close()
    return time.perf_counter() - t0, n


def igtl_pyigtl_receive(port, n) -> tuple[float, int]:
    """pyigtl's own receive code (what its client thread runs per message), on a connected socket."""
    from pyigtl.comm import OpenIGTLinkBase

    base = OpenIGTLinkBase()
    t0 = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(0.01)  # as pyigtl's client sets it
    got = 0
    while got < n:
        got += bool(base._receive_message_from_socket(sock))
    sock.close()
    return time.perf_counter() - t0, n


def igtl_driver(port, n, drain, check_crc=True) -> tuple[float, int]:
    from mmstream_drivers.igtl import IgtlSource

    src = IgtlSource(port=port, check_crc=check_crc)
    t0 = time.perf_counter()
    got = consume(src.source_frames(), drain, n_expected=n)
    elapsed = time.perf_counter() - t0
    src.close()
    return elapsed, got


# --- run ----------------------------------------------------------------------------------------


def interleaved(fns: dict, repeats: int) -> dict:
    """Best time of each function over ``repeats`` rounds, the functions taking turns."""
    times, counts = {k: [] for k in fns}, {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, counts[k] = fn()
            times[k].append(t)
    return {k: (min(v), counts[k]) for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dicom", type=Path, default=DEFAULT_DICOM)
    ap.add_argument("--igtl-frames", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import pyigtl

    rows = []  # (what, library, frames, library s, driver s)
    drain = Drain()
    try:
        if args.dicom.is_file():
            r = interleaved({
                "lib": lambda: dicom_library(args.dicom),
                "decode": lambda: dicom_driver(args.dicom, None),
                "publish": lambda: dicom_driver(args.dicom, drain),
            }, args.repeats)  # fmt: skip
            (lib_t, n) = r["lib"]
            rows.append(("DICOM cine: driver decode", "pydicom iter_pixels", n, lib_t, r["decode"][0]))
            rows.append(("DICOM cine: driver decode + publish", "pydicom iter_pixels", n, lib_t, r["publish"][0]))
        else:
            print(f"skipping DICOM: {args.dicom} not found", file=sys.stderr)

        img = np.random.default_rng(0).integers(0, 256, (1, 480, 640), dtype=np.uint8)
        ijk = np.diag([0.1, 0.1, 1.0, 1.0])
        packed = pyigtl.ImageMessage(img, ijk_to_world_matrix=ijk, device_name="Image_Reference").pack()
        n = args.igtl_frames
        peer = Peer(packed, n)
        try:
            r = interleaved({
                "lib": lambda: igtl_library(peer.port, n),
                "pyigtl_recv": lambda: igtl_pyigtl_receive(peer.port, n),
                "ingest": lambda: igtl_driver(peer.port, n, None),
                "ingest_nocrc": lambda: igtl_driver(peer.port, n, None, check_crc=False),
                "publish": lambda: igtl_driver(peer.port, n, drain),
            }, args.repeats)  # fmt: skip
        finally:
            peer.close()
        lib_t = r["lib"][0]
        lib = "pyigtl parse+unpack"
        rows.append(("OpenIGTLink: driver ingest (CRC checked)", lib, n, lib_t, r["ingest"][0]))
        rows.append(("OpenIGTLink: driver ingest, check_crc=false", lib, n, lib_t, r["ingest_nocrc"][0]))
        rows.append(("OpenIGTLink: driver ingest + publish", lib, n, lib_t, r["publish"][0]))
        recv_t, recv = r["pyigtl_recv"][0], "pyigtl client receive"
        rows.append(("OpenIGTLink: driver ingest (CRC checked)", recv, n, recv_t, r["ingest"][0]))
        rows.append(("OpenIGTLink: driver ingest + publish", recv, n, recv_t, r["publish"][0]))
    finally:
        drain.close()

    results = []
    print(f"{'what':44s} {'library':22s} {'frames':>6s} {'lib fps':>9s} {'driver fps':>10s} {'ratio':>6s}  "
          f"target<={TARGET_RATIO}")
    for what, lib, n, lib_t, drv_t in rows:
        ratio = drv_t / lib_t
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        print(f"{what:44s} {lib:22s} {n:6d} {n / lib_t:9.1f} {n / drv_t:10.1f} {ratio:6.2f}  {verdict}")
        results.append({"what": what.strip(), "library": lib, "frames": n, "library_s_per_frame": lib_t / n,
                        "driver_s_per_frame": drv_t / n, "library_fps": n / lib_t, "driver_fps": n / drv_t,
                        "ratio": ratio, "target_ratio": TARGET_RATIO, "met": ratio <= TARGET_RATIO})  # fmt: skip
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(), "repeats": args.repeats}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    from mmstream.transport import close_context

    code = main()
    close_context()
    sys.exit(code)
