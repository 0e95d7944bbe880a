"""Collection rules for the whole tree: a module that needs an extra which is not installed (or too old)
has its docstring examples skipped with the one-line reason, where any other import error stays an error."""

import pytest
from _pytest.doctest import DoctestModule

from agentrl.utils.extras import MissingExtra


class _DoctestsNeedingExtras(DoctestModule):
    def collect(self):
        try:
            yield from super().collect()
        except self.CollectError as e:  # pytest wraps the module's ImportError
            if not isinstance(e.__cause__, MissingExtra):
                raise
            pytest.skip(str(e.__cause__))


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path, parent):
    collectors = yield
    return [_DoctestsNeedingExtras.from_parent(parent, path=file_path) if type(c) is DoctestModule else c
            for c in collectors]
