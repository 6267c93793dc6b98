"""The plugin registry: entry points, lazy import, name resolution and its errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from embedkit import registry
from embedkit.cli_errors import explain


def test_core_and_dense_are_registered():
    names = {(s.interface, s.short_name) for s in registry.specs()}
    assert ("EmbeddingBackend", "GPUBackend") in names
    assert ("FeedForward", "SwiGLU") in names
    assert ("Router", "IdentityRouter") in names


def test_every_registered_class_loads_and_implements_its_interface():
    interfaces = registry.known_interfaces()
    for spec in registry.specs():
        assert issubclass(spec.load(), interfaces[spec.interface])


def test_import_embedkit_imports_no_plugin_and_no_torch():
    code = (
        "import sys, embedkit; "
        "print(sorted(m for m in sys.modules if m.startswith(('embedkit_', 'torch', 'lightning'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_plugin_is_imported_only_when_its_interface_is_resolved():
    code = (
        "import sys; from embedkit import registry; import embedkit.interfaces as i; "
        "assert 'embedkit_dense.swiglu' not in sys.modules; "
        "i.EmbeddingBackend.__subclasses__(); "
        "assert 'embedkit_dense.swiglu' not in sys.modules; "
        "i.FeedForward.__subclasses__(); "
        "assert 'embedkit_dense.swiglu' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["SwiGLU", "embedkit_dense.swiglu.SwiGLU"])
def test_resolve_short_and_full_names(name):
    from embedkit_dense.swiglu import SwiGLU

    assert registry.resolve("FeedForward", name) is SwiGLU


def test_unknown_name_lists_known_and_closest():
    with pytest.raises(ValueError) as info:
        registry.resolve("FeedForward", "SwiGLUU")
    message = str(info.value)
    assert "unknown FeedForward 'SwiGLUU'" in message
    assert "known: MoEFeedForward, SwiGLU" in message and "did you mean SwiGLU" in message


def test_jsonargparse_errors_are_explained():
    message = (
        'Parser key "model.decoder":\n  Problem with given class_path '
        "'embedkit.model.decoder.Decoder':\n    Parser key \"feed_forward\":\n"
        "      - Expected a dot import path string: SwiGlu\n"
    )
    explained = explain(message)
    assert "unknown FeedForward 'SwiGlu'" in explained
    assert "did you mean SwiGLU" in explained
