"""Every public docstring is valid reStructuredText.

The API page (book/api.md) renders the docstrings with autodoc, and the book builds with -W: a
stray `*` (``(N, *shape)``) or a bad indent in one docstring fails the whole build half an hour in.
This test finds it in a second, naming the object and the docutils message.
"""
import importlib
import inspect
import io

import docutils.core
import pytest
from docutils import nodes
from docutils.parsers.rst import roles

import neuroforge_lit

# Sphinx's cross-reference roles, which plain docutils does not know.
for _role in ("class", "func", "meth", "mod", "attr", "data", "exc", "obj"):
    roles.register_generic_role(_role, nodes.literal)

MODULES = neuroforge_lit.GENERATED_MODULES + neuroforge_lit.HAND_WRITTEN_MODULES


def documented_objects(module):
    """The module, its public functions and classes, and the public methods of those classes."""
    yield module.__name__, module
    for name in module.__all__:
        obj = getattr(module, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue                      # data: autodoc shows its value, not the type's docstring
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if not attr.startswith("_") and (inspect.isfunction(value) or isinstance(value, property)):
                    yield f"{module.__name__}.{name}.{attr}", value


def rst_problems(text: str) -> str:
    stream = io.StringIO()
    docutils.core.publish_doctree(text, settings_overrides={"warning_stream": stream, "report_level": 2})
    return stream.getvalue().strip()


@pytest.mark.parametrize("module_name", MODULES)
def test_public_docstrings_are_valid_rst(module_name):
    module = importlib.import_module(f"neuroforge_lit.{module_name}")
    problems = [f"{label}: {rst_problems(doc)}" for label, obj in documented_objects(module)
                if (doc := inspect.getdoc(obj)) and rst_problems(doc)]
    assert not problems, "docstrings that would break the API page:\n" + "\n".join(problems)


def test_the_check_sees_a_stray_star():
    assert "emphasis start-string" in rst_problems("Reshapes (N, ...) -> (N, *shape).")
    assert rst_problems("Reshapes ``(N, ...) -> (N, *shape)``.") == ""
