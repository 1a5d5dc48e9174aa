"""tools/untested_exports.py, the check that the test suite runs every exported function, on a
synthetic module and synthetic coverage lines."""

import textwrap

from untested_exports import functions, untested

SOURCE = textwrap.dedent('''\
    def run_me(x):
        """Docstring."""
        return 2 * x


    class Layer:
        def forward(self, x):
            raise NotImplementedError

        def hook(self):
            """Nothing to run."""

        def backward(self, dout):
            y = dout + 1
            return y
    ''')


def test_names_and_body_lines_leave_out_docstrings_and_abstract_methods():
    found = dict(functions(SOURCE))
    assert set(found) == {"run_me", "Layer.backward"}
    assert found["run_me"] == {3}
    assert found["Layer.backward"] == {14, 15}


def test_a_function_whose_body_never_ran_is_listed():
    assert untested(SOURCE, executed={3, 14, 15}) == []
    assert untested(SOURCE, executed={3}) == ["Layer.backward"]
    assert untested(SOURCE, executed={1, 2, 13}) == ["run_me", "Layer.backward"]   # def lines do not count
