"""File names out of events: what is replaced, and what is left alone."""

import os

from mmstream.privacy import file_tag, redact_paths, source_paths


def test_paths_base_names_and_urls_are_replaced_by_a_hash_and_nothing_else():
    path = "/data/Doe_Jane_1961/Doe_Jane_cine.dcm"
    text = f"{path}: no pixel data; Doe_Jane_cine.dcm frame 3; the live stream stopped"
    out = redact_paths(text, [path, "rtsp://camera/live"])
    assert "Doe" not in out and out.count(file_tag(path)) == 2 and "the live stream stopped" in out
    assert redact_paths("video rtsp://camera/live: device lost", ["rtsp://camera/live"]) == \
        f"video {file_tag('rtsp://camera/live')}: device lost"  # a URL whole, not its last word
    assert redact_paths("a stream named a", ["a", "", None]) == "a stream named a"  # too short to be a file name
    assert file_tag("/x/Doe.dcm") == file_tag("Doe.dcm")  # the base name's hash only
    assert source_paths({"path": "/x/a.dcm", "url": "rtsp://c/s", "plus_config": "c.xml", "device": 0, "loop": True}) == \
        ["/x/a.dcm", "rtsp://c/s", "c.xml"]


def test_a_path_is_found_as_the_readers_print_it_and_a_link_loop_does_not_break_it(tmp_path):
    written = "./Doe_Jane_1961//IM0001"  # as configured; readers print it normalised, or absolute
    out = redact_paths("ReadError: Doe_Jane_1961/IM0001: unknown image format", [written])
    assert "Doe" not in out and file_tag(written) in out
    assert "Doe" not in redact_paths(f"{os.path.abspath(written)}: gone", [written])
    real = tmp_path / "export" / "Doe_Jane_1961"  # configured through a link, printed with the link followed
    real.mkdir(parents=True)
    (real / "cine.dcm").write_bytes(b"")
    (tmp_path / "today").symlink_to(real)
    linked = tmp_path / "today" / "cine.dcm"
    assert "Doe" not in redact_paths(f"{real / 'cine.dcm'}: no pixel data", [str(linked)])
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert redact_paths(f"{loop}: too many levels of symbolic links", [str(loop)]).startswith("<file ")
    assert redact_paths("../x and ./y", ["..", "./"]) == "../x and ./y"  # not file names


def test_the_data_file_a_header_names_is_hidden_whatever_its_quotes(tmp_path):
    """A MetaImage source whose header names a missing data file: the reader's message quotes that
    name (often the patient's); it leaves the process as <file>, in the service's source_failed too."""
    from mmstream.io import read_frames

    hdr = tmp_path / "Roe_Rick_1944" / "seq.mhd"
    hdr.parent.mkdir()
    hdr.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 2\nElementType = MET_UCHAR\n"
                   "ElementDataFile = Roe_Rick_1944_frames.raw\n")  # fmt: skip
    try:
        list(read_frames(hdr))
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        message = f"{type(exc).__name__}: {exc}"
    out = redact_paths(message, [str(hdr)])
    assert "Roe" not in out and "ElementDataFile <file>" in out, out
    for name in ("../O'BRIEN_\"J\"/y.raw", "a'b/x.raw"):
        assert redact_paths(f"data file {name!r} not found", []) == "data file <file> not found"
