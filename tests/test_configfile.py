"""The one config loader under pploy and gate: every way a file is unusable is the same
ConfigError, naming the file (and the key, when there is one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pploy import configfile
from pploy.deploy import config as pploy_config
from pploy.gate import config as gate_config

LOADERS: dict[str, Callable[[Path], Any]] = {
    "pploy": lambda path: pploy_config.load_config(path, environ={}),
    "gate": gate_config.load_config,
}


def test_one_error_type_for_both() -> None:
    assert pploy_config.ConfigError is gate_config.ConfigError is configfile.ConfigError


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"port: \xff\n", "not UTF-8 text"),
        (b"port: 2001-13-45\n", "not valid YAML"),  # PyYAML raises a bare ValueError here
        (b"a: [unclosed\n", "not valid YAML"),
        (b"!!python/object/apply:os.system [echo]\n", "not valid YAML"),
        (b"- a\n- b\n", "the top level must be a mapping"),
        (b"nope: 1\n", "nope: unknown key"),
    ],
)
def test_every_failure_names_the_file(
    loader: str, content: bytes, fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "conf.yml"
    path.write_bytes(content)
    with pytest.raises(configfile.ConfigError) as info:
        LOADERS[loader](path)
    assert f"{path}: " in str(info.value) and fragment in str(info.value), str(info.value)


def test_keys_are_dotted_with_list_indices() -> None:
    assert configfile.dotted_key(("proxy", 0, "dest")) == "proxy[0].dest"
    assert configfile.dotted_key(("auth", "function-after[_x(), AuthConf]", "mode")) == "auth.mode"
    assert configfile.dotted_key(()) == ""


def test_a_self_containing_value_is_walked_once() -> None:
    """YAML anchors can make a list contain itself; the placeholder walk must still end."""
    loop: list[Any] = ["CHANGE-ME"]
    loop.append(loop)
    with pytest.raises(configfile.ConfigError, match=r"^x\[0\]: still holds"):
        configfile.refuse_placeholders({"x": loop})


def test_any_nesting_is_walked_without_recursion() -> None:
    deep: Any = "CHANGE-ME"
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(configfile.ConfigError, match=r"^x(\[0\]){5000}: still holds"):
        configfile.refuse_placeholders({"x": deep})
