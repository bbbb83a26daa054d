"""The synthetic population: normal users, legitimate hard cases and spam strategies.

Offline (`simulator.offline.simulate`) a scenario becomes signals built by the relay's own
`SignalBook` plus ground truth; live (`simulator.live.run_live`) it drives real SDK clients
through a relay. Scenario files: `data/scenarios/*.yaml`, schema in docs/scenarios.md.
"""

from simulator.errors import SimulatorError

__all__ = ["SimulatorError"]
