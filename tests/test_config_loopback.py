"""A server bound beyond loopback needs its access control, or the configuration is refused: the
web view a token, the DICOM Storage SCP an AE-title allow-list, the OpenIGTLink output
``allow_remote``. The wildcard addresses ``0.0.0.0`` and ``::`` (every interface) and host names
other than ``localhost`` are beyond loopback."""

import re

import pytest

from mmstream.config import load_config
from mmstream.errors import ConfigError

BEYOND = ("0.0.0.0", "::", "192.168.1.20", "fe80::1", "bedside.example")
LOOPBACK = ("127.0.0.1", "127.0.0.2", "::1", "localhost")
SERVERS = {  # section path -> (its settings but the host, what the refusal asks for, the access control)
    ("web",): ({}, "set web.token", {"token": "t" * 16}),
    ("volumes", "scp"): ({"enabled": True}, "set allowed_calling_aets", {"allowed_calling_aets": ["SCANNER"]}),
    ("igtl_output",): ({"enabled": True}, "set igtl_output.allow_remote = true", {"allow_remote": True}),
}


def _load(path: tuple[str, ...], settings: dict):
    """The configuration with ``settings`` in the section at ``path``, and that section."""
    overrides = settings
    for name in reversed(path[1:]):
        overrides = {name: overrides}
    cfg = load_config(None, **{path[0]: overrides})
    for name in path:
        cfg = getattr(cfg, name)
    return cfg


@pytest.mark.parametrize("path", SERVERS, ids=".".join)
@pytest.mark.parametrize("host", BEYOND)
def test_beyond_loopback_needs_access_control(path, host):
    base, asks, allow = SERVERS[path]
    with pytest.raises(ConfigError, match=re.escape(f"{host!r} is beyond loopback") + ".*" + re.escape(asks)):
        _load(path, {**base, "host": host})
    assert _load(path, {**base, "host": host, **allow}).host == host


@pytest.mark.parametrize("path", SERVERS, ids=".".join)
@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_needs_none(path, host):
    base, _, _ = SERVERS[path]
    assert _load(path, {**base, "host": host}).host == host
