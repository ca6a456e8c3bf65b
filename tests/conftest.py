"""Shared fixtures (a tiny synthetic benchmark generated once per test session) and a
progress line per test module, so a long quiet run (``pytest -q``) shows where it is."""

import time

import pytest

from d2r.datasets.synthetic import generate


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 16-image synthetic benchmark (4 landmarks, 4 queries) in the revisitop layout."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return generate(out, seed=0, num_landmarks=4, num_db_images=16, num_distractors=4,
                    queries_per_landmark=1)


class _ModuleProgress:
    """Writes ``[i/n modules, elapsed] tests/test_x.py`` when a test module starts."""

    def __init__(self, config: pytest.Config) -> None:
        self.config, self.modules, self.current, self.start = config, [], None, time.monotonic()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.modules = list(dict.fromkeys(item.nodeid.split("::")[0] for item in session.items))

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        module = nodeid.split("::")[0]
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if module == self.current or reporter is None or module not in self.modules:
            return
        self.current = module
        minutes, seconds = divmod(int(time.monotonic() - self.start), 60)
        reporter.write(f"\n[{self.modules.index(module) + 1}/{len(self.modules)} modules, "
                       f"{minutes}m{seconds:02d}s] {module}\n")


def pytest_configure(config: pytest.Config) -> None:
    if not config.option.collectonly:
        config.pluginmanager.register(_ModuleProgress(config), "d2r-module-progress")
