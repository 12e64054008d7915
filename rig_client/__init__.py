"""The library a rig runs (protocol, RigClient) and the simulated rig (CNN units, noise, faults)."""


class RigError(RuntimeError):
    """A rig-side failure: connection lost for good, server refused us, bad local configuration."""
