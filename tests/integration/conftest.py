import pytest
import ray


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the integration tier, on loopback, always shut down."""
    # address="local": a new Ray of our own, never a `ray start` cluster another process left on this machine.
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()
