from __future__ import annotations

import pytest

from appliance.logs import setup_logging
from tests.support.harness import make_config, start_server

setup_logging("debug")


@pytest.fixture
def config_path(tmp_path):
    """A test config; tests wanting other settings call tests.support.harness.make_config themselves."""
    return make_config(tmp_path)


@pytest.fixture
async def server(nursery, config_path):
    """The real appliance, in this test's nursery, on a free loopback port with real TLS."""
    handle = await start_server(nursery, config_path)
    yield handle
    handle.stop()
