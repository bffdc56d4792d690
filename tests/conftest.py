"""Fixtures shared by the whole suite live in tests/fixtures/, one module per idea."""

pytest_plugins = [
    "tests.fixtures.fake_api",
    "tests.fixtures.docker_engine",
    "tests.fixtures.docker_provider",
    "tests.fixtures.sandbox_host",
    "tests.fixtures.sandbox_tools",
    "tests.fixtures.tether_cli",
    "tests.fixtures.tui",
]
