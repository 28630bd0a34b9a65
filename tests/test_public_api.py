"""Every name of the flat public API resolves to the object of its own module."""

import importlib

import pytest

import hcral


@pytest.mark.parametrize("name", sorted(hcral._EXPORTS))
def test_export_resolves(name):
    module = importlib.import_module(f"hcral.{hcral._EXPORTS[name]}")
    assert getattr(hcral, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such"):
        hcral.no_such  # noqa: B018
